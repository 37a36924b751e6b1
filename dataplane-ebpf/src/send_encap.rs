//! VXLAN encapsulation of the untouched IP packet towards a backend's VTEP:
//! outer Ethernet (next hop from the kernel's FIB), outer IPv4 from the host
//! VTEP, UDP 4789 with a flow-derived source port, VXLAN with the tenant's
//! VNI, inner Ethernet to the backend's MAC from the router MAC.
use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action},
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use dataplane_common::{
    DropReason, checksum,
    hash::vxlan_source_port,
    types::{BackendEntry, BackendHop, HostConfig, NEXT_HOP_TTL_NS, NextHopEntry, NextHopKey, VXLAN_PORT},
};

use crate::clock;
use crate::maps::{BACKEND_HOPS, FIB_PARAMS, NEXT_HOPS, UNRESOLVED};
use crate::packet::{ETH_LEN, ETH_P_IPV4, ETH_P_IPV6, frame_len, ptr_at_mut};
use crate::parse::Flow;

/// Outer IPv4 + UDP + VXLAN + inner Ethernet: what encapsulation adds to
/// the IP packet, and so what the fabric MTU must leave room for.
pub const ENCAP_OVERHEAD: usize = 20 + 8 + 8 + ETH_LEN;
/// Everything before the inner IP packet.
const HEADERS: usize = ETH_LEN + ENCAP_OVERHEAD;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;

/// The route towards a VTEP: egress interface and MACs.
#[derive(Default)]
pub struct NextHop {
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

/// The next hop to a backend's `vtep` from its slot `hop` of the backend
/// next-hop array, if the slot holds it and is fresh at `now`.
#[inline(always)]
pub fn cached_hop(vtep: [u8; 4], hop: u32, now: u64) -> Option<NextHop> {
    // SAFETY: an array slot, valid for the program's run. Another CPU may
    // refresh it at the same time with the same values.
    let cached = unsafe { *BACKEND_HOPS.get_ptr(hop)? };
    if cached.vtep == vtep && now < cached.expires_ns {
        Some(NextHop {
            ifindex: cached.ifindex,
            smac: cached.smac,
            dmac: cached.dmac,
        })
    } else {
        None
    }
}

/// The next hop to a backend's `vtep`: from its slot `hop` of the backend
/// next-hop array while fresh, else from the kernel's FIB (and neighbour
/// table), refreshing the slot.
#[inline(always)]
pub fn next_hop(ctx: &XdpContext, cfg: &HostConfig, vtep: [u8; 4], hop: u32) -> Result<NextHop, DropReason> {
    let now = clock::now(cfg);
    if let Some(nh) = cached_hop(vtep, hop, now) {
        return Ok(nh);
    }
    let slot = BACKEND_HOPS.get_ptr_mut(hop).ok_or(DropReason::NoRoute)?;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&cfg.vtep);
    dst[..4].copy_from_slice(&vtep);
    let q = RouteQuery {
        ctx,
        ifindex: cfg.fabric_ifindex,
        v6: false,
        src: &src,
        dst: &dst,
    };
    let mut nh = NextHop::default();
    if !fib(&q, &mut nh) {
        return Err(DropReason::NoRoute);
    }
    // SAFETY: as in `cached_hop`.
    unsafe {
        *slot = BackendHop {
            vtep,
            ifindex: nh.ifindex,
            smac: nh.smac,
            dmac: nh.dmac,
            _pad: [0; 4],
            expires_ns: now + NEXT_HOP_TTL_NS,
        }
    };
    Ok(nh)
}

/// A route lookup: from `src` to `dst` (IPv4 in the first four bytes), as
/// if the packet had arrived on `ifindex`.
pub struct RouteQuery<'a> {
    pub ctx: &'a XdpContext,
    pub ifindex: u32,
    pub v6: bool,
    pub src: &'a [u8; 16],
    pub dst: &'a [u8; 16],
}

/// The next hop to any destination, from the LRU cache while it is fresh
/// at `now` (carwash's clock, `crate::clock`), else from the FIB.
#[inline(always)]
pub fn route(q: &RouteQuery, now: u64) -> Result<NextHop, DropReason> {
    let key = NextHopKey {
        ifindex: q.ifindex,
        family: q.v6 as u8,
        _pad: [0; 3],
        addr: *q.dst,
    };
    // SAFETY: copied out at once.
    if let Some(e) = unsafe { NEXT_HOPS.get(&key) }
        && now < e.expires_ns
    {
        return Ok(NextHop {
            ifindex: e.ifindex,
            smac: e.smac,
            dmac: e.dmac,
        });
    }
    let mut nh = NextHop::default();
    if !fib(q, &mut nh) {
        return Err(DropReason::NoRoute);
    }
    let entry = NextHopEntry {
        ifindex: nh.ifindex,
        smac: nh.smac,
        dmac: nh.dmac,
        expires_ns: now + NEXT_HOP_TTL_NS,
    };
    // A full cache evicts its least recently used entry; a failed insert
    // only means the next packet asks the FIB again.
    let _ = NEXT_HOPS.insert(&key, &entry, 0);
    Ok(nh)
}

// Not inlined: one copy for every caller. Its 64-byte
// parameter block lives in a per-CPU map slot, not on the stack, which
// keeps the programs' call chains within the verifier's 512 bytes. BPF
// calls take five arguments at most, hence the query struct and the
// out-parameter.
#[inline(never)]
fn fib(q: &RouteQuery, nh: &mut NextHop) -> bool {
    let (ctx, src, dst) = (q.ctx, q.src, q.dst);
    let Some(p) = FIB_PARAMS.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot, used by nothing else while the program runs.
    let p = unsafe { &mut *p };
    // SAFETY: an all-zero bpf_fib_lookup is a valid input.
    *p = unsafe { core::mem::zeroed() };
    p.ifindex = q.ifindex;
    if q.v6 {
        p.family = AF_INET6;
        // SAFETY: [u8; 16] and [u32; 4] have the same size; any bits valid.
        p.__bindgen_anon_3.ipv6_src = unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(*src) };
        p.__bindgen_anon_4.ipv6_dst = unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(*dst) };
    } else {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([src[0], src[1], src[2], src[3]]);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([dst[0], dst[1], dst[2], dst[3]]);
    }
    // SAFETY: valid context and parameter struct of the size passed.
    let rc = unsafe { bpf_fib_lookup(ctx.ctx as *mut _, p, core::mem::size_of::<FibParams>() as i32, 0) };
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH {
        // The route is there, the neighbour is not resolved: the kernel
        // put the next hop and its interface into the parameters. The
        // agent has the kernel resolve it (and keep it resolved).
        let mut key = NextHopKey {
            ifindex: p.ifindex,
            family: q.v6 as u8,
            _pad: [0; 3],
            addr: [0; 16],
        };
        // SAFETY: plain-data unions, filled by the helper.
        unsafe {
            if q.v6 {
                key.addr = core::mem::transmute::<[u32; 4], [u8; 16]>(p.__bindgen_anon_4.ipv6_dst);
            } else {
                key.addr[..4].copy_from_slice(&p.__bindgen_anon_4.ipv4_dst.to_ne_bytes());
            }
        }
        let _ = UNRESOLVED.insert(&key, &0u64, 0);
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS {
        return false;
    }
    nh.ifindex = p.ifindex;
    nh.smac = p.smac;
    nh.dmac = p.dmac;
    true
}

/// Encapsulates and transmits. `ip_len` is the inner IP packet's length.
#[inline(always)]
pub fn encapsulate(
    ctx: &XdpContext,
    flow: &Flow,
    cfg: &HostConfig,
    vni: u32,
    backend: &BackendEntry,
    hop: u32,
    hash: u32,
) -> Result<u32, DropReason> {
    let nh = next_hop(ctx, cfg, backend.vtep, hop)?;
    encapsulate_via(ctx, flow, cfg, vni, backend, &nh, hash)
}

/// [`encapsulate`] through a next hop already known.
#[inline(always)]
pub fn encapsulate_via(
    ctx: &XdpContext,
    flow: &Flow,
    cfg: &HostConfig,
    vni: u32,
    backend: &BackendEntry,
    nh: &NextHop,
    hash: u32,
) -> Result<u32, DropReason> {
    encapsulate_from(ctx, flow, cfg, &cfg.vtep, vni, backend, nh, hash)
}

/// As [`encapsulate_via`], from the tunnel source `src`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn encapsulate_from(
    ctx: &XdpContext,
    flow: &Flow,
    cfg: &HostConfig,
    src: &[u8; 4],
    vni: u32,
    backend: &BackendEntry,
    nh: &NextHop,
    hash: u32,
) -> Result<u32, DropReason> {
    let ip_len = frame_len(ctx) - flow.l3_off;
    // The inner frame keeps no VLAN tags: replace whatever L2 header came
    // in by the tunnel headers and a fresh inner Ethernet header.
    let grow = HEADERS as i32 - flow.l3_off as i32;
    // SAFETY: valid context; every pointer is re-derived afterwards.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -grow) } != 0 {
        return Err(DropReason::EncapFailed);
    }

    // Written straight into the frame: a 64-byte staging buffer would eat
    // an eighth of the BPF stack.
    let Some(p) = ptr_at_mut::<[u8; HEADERS]>(ctx, 0) else {
        return Err(DropReason::EncapFailed);
    };
    // SAFETY: ptr_at_mut checked the bounds; alignment 1; nothing else
    // refers to these bytes now.
    let h = unsafe { &mut *p };
    // Outer Ethernet.
    h[0..6].copy_from_slice(&nh.dmac);
    h[6..12].copy_from_slice(&nh.smac);
    h[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
    // Outer IPv4: DF set, since carwash already made the packet fit the
    // fabric and fragments would only slow the VPC side down.
    let tot_len = (ENCAP_OVERHEAD + ip_len) as u16;
    h[14] = 0x45;
    h[15] = 0;
    h[16..18].copy_from_slice(&tot_len.to_be_bytes());
    h[18..20].copy_from_slice(&[0, 0]);
    h[20] = 0x40;
    h[21] = 0;
    h[22] = 64;
    h[23] = 17;
    h[24..26].copy_from_slice(&[0, 0]);
    h[26..30].copy_from_slice(src);
    h[30..34].copy_from_slice(&backend.vtep);
    let csum = checksum::fold(checksum::sum_bytes(0, &h[14..34]));
    h[24..26].copy_from_slice(&csum.to_be_bytes());
    // UDP, checksum 0 (allowed over IPv4, and what VXLAN peers expect).
    h[34..36].copy_from_slice(&vxlan_source_port(hash).to_be_bytes());
    h[36..38].copy_from_slice(&VXLAN_PORT.to_be_bytes());
    h[38..40].copy_from_slice(&(tot_len - 20).to_be_bytes());
    h[40..42].copy_from_slice(&[0, 0]);
    // VXLAN: I flag, VNI in the top 24 bits of the second word.
    h[42..46].copy_from_slice(&[0x08, 0, 0, 0]);
    h[46..49].copy_from_slice(&vni.to_be_bytes()[1..4]);
    h[49] = 0;
    // Inner Ethernet.
    h[50..56].copy_from_slice(&backend.mac);
    h[56..62].copy_from_slice(&cfg.router_mac);
    let ethertype = if flow.v6 { ETH_P_IPV6 } else { ETH_P_IPV4 };
    h[62..64].copy_from_slice(&ethertype.to_be_bytes());

    Ok(transmit(ctx, nh.ifindex))
}

/// Sends the frame out of `ifindex`: back where it came from with XDP_TX,
/// elsewhere with a redirect.
#[inline(always)]
pub fn transmit(ctx: &XdpContext, ifindex: u32) -> u32 {
    // SAFETY: valid context.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    if ifindex == ingress {
        xdp_action::XDP_TX
    } else {
        // SAFETY: plain helper call.
        unsafe { bpf_redirect(ifindex, 0) as u32 }
    }
}
