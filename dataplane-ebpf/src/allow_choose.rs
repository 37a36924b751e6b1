//! Inbound steering (path 1): service → tenant and class, the tenant's
//! allowlist for that class, then the backend: a connector by Maglev for
//! https, the active core for jms.
use aya_ebpf::btf_maps::lpm_trie::Key;
use dataplane_common::{
    DropReason,
    hash::{ADDR_FILTER_WORDS, addr_filter_bit},
    types::{
        AddrKey, AddrValue, BackendEntry, CLASS_HTTPS, FAMILY_V4, FAMILY_V6, MAGLEV_SIZE, SERVICE_GEN_BIT, ServiceKey,
        TENANT_READY, TenantInfo, tenant_key,
    },
};

use crate::maps::{ADDR_FILTER, ADDRS, ALLOW_V4, ALLOW_V6, SERVICES, TENANTS};
use crate::parse::Flow;

/// Whether `addr` may be a VIP or egress IP (no false negatives).
#[inline(always)]
pub fn maybe_ours(addr: &[u8; 16], generation: u32) -> bool {
    let bit = addr_filter_bit(addr);
    match ADDR_FILTER.get(generation * ADDR_FILTER_WORDS + (bit >> 6)) {
        Some(w) => (*w >> (bit & 63)) & 1 != 0,
        None => true,
    }
}

/// Whose VIP or egress IP `addr` is, if anyone's.
#[inline(always)]
pub fn address(addr: &[u8; 16], v6: bool, generation: u32) -> Option<AddrValue> {
    let key = AddrKey {
        addr: *addr,
        family: if v6 { FAMILY_V6 } else { FAMILY_V4 },
        _pad: [generation as u8, 0, 0],
    };
    // SAFETY: copied out at once.
    unsafe { ADDRS.get(&key) }.copied()
}

/// The service a packet is for.
pub struct Service {
    pub tenant: u32,
    pub class: u8,
}

#[inline(always)]
pub fn service(flow: &Flow, generation: u32) -> Option<Service> {
    let key = ServiceKey {
        addr: flow.dst,
        port_be: flow.dport.to_be_bytes(),
        proto: flow.proto,
        family: (if flow.v6 { FAMILY_V6 } else { FAMILY_V4 }) | if generation != 0 { SERVICE_GEN_BIT } else { 0 },
    };
    // SAFETY: the value is copied out at once.
    let v = unsafe { SERVICES.get(&key) }?;
    Some(Service {
        tenant: v.tenant,
        class: v.class,
    })
}

/// The tenant's fast-path record, if its policy is fully in place.
#[inline(always)]
pub fn tenant(id: u32, generation: u32) -> Result<&'static TenantInfo, DropReason> {
    // SAFETY: hash map values stay valid for the program's run (RCU), and an
    // update replaces the value as a whole.
    match unsafe { TENANTS.get(tenant_key(id, generation)) } {
        Some(t) if t.flags & TENANT_READY != 0 => Ok(t),
        _ => Err(DropReason::NotReady),
    }
}

/// Whether the tenant allows the packet's source for `class`.
#[inline(always)]
pub fn allowed(t: &TenantInfo, flow: &Flow, class: u8) -> bool {
    mask(t.allow_slot, &flow.src, flow.v6) & (1 << class) != 0
}

/// The mask for `addr` in the tenant's tries (slot `allow_slot`): the classes a source there may use
/// (`1 << CLASS_*`), `MASK_VPC` inside its VPC, `MASK_EGRESS` where it may
/// send to; 0 when no prefix covers it.
#[inline(always)]
pub fn mask(allow_slot: u32, addr: &[u8; 16], v6: bool) -> u32 {
    let m = if v6 {
        ALLOW_V6.get_value_ptr_mut(allow_slot, &Key::new(128, *addr))
    } else {
        let a4 = [addr[0], addr[1], addr[2], addr[3]];
        ALLOW_V4.get_value_ptr_mut(allow_slot, &Key::new(32, a4))
    };
    match m {
        // SAFETY: a value of the trie, read once.
        Some(m) => unsafe { *m },
        None => 0,
    }
}

/// Machine `slot` of the tenant (connectors 0-1, cores 2-3), if it takes
/// traffic.
#[inline(always)]
pub fn machine(t: &TenantInfo, slot: u32) -> Result<BackendEntry, DropReason> {
    let b = if slot < 2 {
        t.connectors.get(slot as usize & 1).copied()
    } else {
        t.cores.get(slot as usize & 1).copied()
    };
    match b {
        Some(b) if b.vtep != [0; 4] => Ok(b),
        _ => Err(DropReason::NoBackend),
    }
}

/// The machine that receives the flow.
#[inline(always)]
/// Returns the machine and its slot (connectors 0-1, cores 2-3).
pub fn backend(t: &TenantInfo, class: u8, hash: u32) -> Result<(BackendEntry, u32), DropReason> {
    let (b, slot) = if class == CLASS_HTTPS {
        let bucket = hash % MAGLEV_SIZE as u32;
        // LLVM turns the modulo into a multiply-shift whose range the
        // verifier cannot follow; a volatile read keeps the mask (a no-op,
        // since bucket < 251) from being optimised away.
        // SAFETY: reading a local.
        let bucket = unsafe { core::ptr::read_volatile(&bucket) } as usize & 0xff;
        let idx = t.maglev.get(bucket).copied().unwrap_or(0) as usize & 1;
        (t.connectors.get(idx).copied(), idx as u32)
    } else {
        let idx = t.active_core as usize & 1;
        (t.cores.get(idx).copied(), 2 + idx as u32)
    };
    match b {
        Some(b) if b.up != 0 && b.vtep != [0; 4] => Ok((b, slot)),
        _ => Err(DropReason::NoBackend),
    }
}
