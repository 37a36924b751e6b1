//! The uplink's per-CPU cache of recent denials (`dataplane_common::deny`),
//! checked once a packet is known to be for a VIP, before the service
//! lookup. A hit is counted and reported exactly as the full path would
//! count and report it; the full path then costs a denied flood only its
//! first packet per CPU and policy epoch.
//!
//! Kept: `not_allowed` (the service and the tenant's allowlist decide it)
//! and `no_service` for TCP and UDP (the address and port decide it).
//! Not kept: anything that depends on more than the packet's addresses,
//! port and protocol and the policy: a tenant failing closed (its state
//! changes by itself), no backend (health), fragments, sizes, tracking,
//! ICMP errors, and every verdict that is not a plain drop.
//!
//! A slot is valid under one value of the whole `GENERATION` word (the
//! epoch: the generation bit and the count of writes above it), read once
//! per packet before any policy lookup. Userspace bumps it after every
//! write a packet could see (a policy switch, a health or readiness change,
//! new allowlist tries): a verdict stored under the current value was
//! reached with every such write in place.
use aya_ebpf::{macros::map, maps::PerCpuArray};
use dataplane_common::{
    DropReason,
    deny::{DENY_CACHE_SLOTS, DenySlot, deny_slot_words},
    types::{CLASS_NONE, CLASSES, MAX_TENANTS},
};

use aya_ebpf::programs::XdpContext;
use dataplane_common::types::VXLAN_PORT;

use crate::packet::{ETH_LEN, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP, IPV6_LEN, load_half, load_words};
use crate::parse::Flow;

#[map(name = "DENY_CACHE")]
pub static DENY_CACHE: PerCpuArray<DenySlot> = PerCpuArray::with_max_entries(DENY_CACHE_SLOTS, 0);

/// The tick until which the fast path runs, on every CPU (`maps::DENY_FAST`):
/// a global of its own data section, read with one load rather than a map
/// lookup. Written only when the full path drops a frame on a remembered
/// denial; CPUs racing to write it write values a tick apart.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data.deny_fast")]
static mut DENY_FAST_UNTIL: u64 = 0;

/// Ticks (1 to 10 ms each) the fast path stays on after the full path
/// last dropped a frame on a remembered denial: while a flood lasts.
const FAST_TICKS: u64 = 256;

/// Turns the fast path on (a remembered denial was just used: a flood may
/// be on).
#[inline(always)]
pub fn arm_fast() {
    // SAFETY: a plain helper call (a load, inlined), and a store to the
    // global: any value a CPU writes is a valid tick.
    unsafe {
        let until = aya_ebpf::helpers::bpf_jiffies64() + FAST_TICKS;
        core::ptr::write_volatile(&raw mut DENY_FAST_UNTIL, until);
    }
}

/// A remembered denial.
pub struct Hit {
    pub tenant: u32,
    pub class: u8,
    pub why: u32,
}

#[inline(always)]
fn words(a: &[u8; 16]) -> &[u64; 2] {
    // SAFETY: the addresses of a `Flow` and a `DenySlot` are their first
    // fields, in align(8) structs; every bit pattern is a valid u64.
    unsafe { &*(a.as_ptr() as *const [u64; 2]) }
}

#[inline(always)]
fn slot_of(flow: &Flow) -> Option<*mut DenySlot> {
    // SAFETY: as in `words`, read as u32 words.
    let (s, d) = unsafe {
        (
            &*(flow.src.as_ptr() as *const [u32; 4]),
            &*(flow.dst.as_ptr() as *const [u32; 4]),
        )
    };
    DENY_CACHE.get_ptr_mut(deny_slot_words(s, d, flow.dport, flow.proto))
}

#[inline(always)]
fn same_key(e: &DenySlot, flow: &Flow) -> bool {
    let (es, fs, ed, fd) = (words(&e.src), words(&flow.src), words(&e.dst), words(&flow.dst));
    es[0] == fs[0]
        && es[1] == fs[1]
        && ed[0] == fd[0]
        && ed[1] == fd[1]
        && e.dport == flow.dport
        && e.proto == flow.proto
        && e.v6 == flow.v6 as u8
}

/// The denial remembered for the packet's flow under `epoch`, if any.
#[inline(always)]
pub fn lookup(flow: &Flow, epoch: u32) -> Option<Hit> {
    if flow.later_fragment {
        return None;
    }
    // SAFETY: this CPU's slot; the program is not preempted while it runs.
    let e = unsafe { &mut *slot_of(flow)? };
    if e.tenant == 0 || e.epoch != epoch || !same_key(e, flow) {
        return None;
    }
    e.hits = e.hits.wrapping_add(1);
    // Bounded where the verifier sees it: the counters index by class, and
    // a bound checked on a copy of the register does not reach it. Only
    // the full path writes the slot, with a class below `CLASSES`.
    let class = (e.class_why >> 8) as u32;
    let class = if class < CLASSES as u32 {
        class
    } else {
        CLASS_NONE as u32
    };
    Some(Hit {
        tenant: e.tenant as u32,
        class: class as u8,
        why: (e.class_why & 0xff) as u32,
    })
}

/// What [`fast`] found.
pub struct Fast {
    /// The tenant of a remembered denial; 0: none.
    pub tenant: u32,
    /// Its class, below `CLASSES`.
    pub class: u32,
    /// Its reason (a `DropReason`'s index), below `DropReason::COUNT`.
    pub why: u32,
    pub v6: bool,
    /// UDP (else TCP).
    pub udp: bool,
    /// The tick counter, read once.
    pub now_tick: u64,
    /// The hit's slot, this CPU's (null without a hit).
    pub slot: *mut DenySlot,
}

const OTHER: Fast = Fast {
    tenant: 0,
    class: 0,
    why: 0,
    v6: false,
    udp: false,
    now_tick: 0,
    slot: core::ptr::null_mut(),
};

/// The uplink's fast path: the denial remembered under `epoch` for a frame
/// of the shape a flood has, read straight from the frame without the
/// full parse: untagged IPv4 without options or IPv6 without extension
/// headers, not a later fragment, TCP or UDP, well formed as
/// `parse::parse` would find it. Any other frame (VLAN tags, options,
/// extension headers, other protocols, anything `parse` would count as
/// malformed, VXLAN that may be the fabric's) is left to the full path,
/// which consults the cache itself.
///
/// Fields are checked by words, several at a time (`x ^ expected`, or'ed,
/// one branch): on this path every instruction counts, and a chain of
/// separate conditions costs the BPF target four or five each.
///
/// It runs only while armed ([`arm_fast`]): outside a flood, traffic that
/// is not denied (nearly all of it) would pay for reading the frame twice.
#[inline(always)]
pub fn fast(ctx: &XdpContext, epoch: u32) -> Fast {
    // SAFETY: plain helper call (a load, inlined); a load of the global.
    let (now_tick, until) = unsafe {
        (
            aya_ebpf::helpers::bpf_jiffies64(),
            core::ptr::read_volatile(&raw const DENY_FAST_UNTIL),
        )
    };
    if now_tick >= until {
        return OTHER;
    }
    Fast {
        now_tick,
        ..fast_probe(ctx, epoch)
    }
}

#[inline(always)]
fn fast_probe(ctx: &XdpContext, epoch: u32) -> Fast {
    let start = ctx.data();
    let end = ctx.data_end();
    let p = start as *const u8;
    // The shortest frame read below: Ethernet, IPv4 and UDP.
    if start + ETH_LEN + 20 + 8 > end {
        return OTHER;
    }
    // SAFETY (every read below): inside the bounds checked before it.
    // The ethertype and the byte after it, as they sit in memory.
    let [head] = load_words::<1>(unsafe { p.add(12) });
    if head & 0xffff == ETH_P_IPV4.swap_bytes() as u32 {
        // Version 4 and no options (0x45); the fragment offset (0x1fff,
        // as the bytes read little-endian) zero; a total length `parse`
        // accepts; TTL and protocol in the same word as the offset.
        let [frag_proto] = load_words::<1>(unsafe { p.add(ETH_LEN + 6) });
        let tot_len = u16::from_be(load_half(unsafe { p.add(ETH_LEN + 2) }));
        if ((head & 0x00ff_0000) ^ 0x0045_0000) | (frag_proto & 0xff1f) != 0 || tot_len < 20 {
            return OTHER;
        }
        let [s, d] = load_words::<2>(unsafe { p.add(ETH_LEN + 12) });
        probe::<{ ETH_LEN + 20 }>(
            start,
            end,
            [s, 0, 0, 0],
            [d, 0, 0, 0],
            (frag_proto >> 24) as u8,
            false,
            epoch,
        )
    } else if head & 0xffff == ETH_P_IPV6.swap_bytes() as u32 {
        if start + ETH_LEN + IPV6_LEN + 8 > end {
            return OTHER;
        }
        // Version 6: the high nibble of the byte after the ethertype.
        let proto = unsafe { *p.add(ETH_LEN + 6) };
        if head & 0x00f0_0000 != 0x0060_0000 {
            return OTHER;
        }
        let s = load_words::<4>(unsafe { p.add(ETH_LEN + 8) });
        let d = load_words::<4>(unsafe { p.add(ETH_LEN + 24) });
        probe::<{ ETH_LEN + IPV6_LEN }>(start, end, s, d, proto, true, epoch)
    } else {
        OTHER
    }
}

/// [`fast`] from the transport header at `L4` on: its checks, the slot.
#[inline(always)]
fn probe<const L4: usize>(start: usize, end: usize, s: [u32; 4], d: [u32; 4], proto: u8, v6: bool, epoch: u32) -> Fast {
    let p = start as *const u8;
    let udp = proto == IPPROTO_UDP;
    if !udp {
        // TCP: the whole header, with a data offset `parse` accepts.
        if proto != IPPROTO_TCP || start + L4 + 20 > end || unsafe { *p.add(L4 + 12) } < 0x50 {
            return OTHER;
        }
    }
    let dport = u16::from_be(load_half(unsafe { p.add(L4 + 2) }));
    // Perhaps the fabric's, when the fabric is the uplink.
    if !v6 && udp && dport == VXLAN_PORT {
        return OTHER;
    }
    let Some(e) = DENY_CACHE.get_ptr_mut(deny_slot_words(&s, &d, dport, proto)) else {
        return OTHER;
    };
    // SAFETY: this CPU's slot; the program is not preempted while it runs.
    let e = unsafe { &mut *e };
    let (es, ed) = (words(&e.src), words(&e.dst));
    let pair = |a: u32, b: u32| a as u64 | (b as u64) << 32;
    // `dport`, `proto`, `v6` and `epoch`, in the slot's order, as one word.
    let key = dport as u64 | (proto as u64) << 16 | (v6 as u64) << 24 | (epoch as u64) << 32;
    // SAFETY: the four fields fill bytes 32..40 of the align(8) slot.
    let slot_key = unsafe { *(core::ptr::addr_of!(e.dport) as *const u64) };
    let differs = (slot_key ^ key)
        | (es[0] ^ pair(s[0], s[1]))
        | (es[1] ^ pair(s[2], s[3]))
        | (ed[0] ^ pair(d[0], d[1]))
        | (ed[1] ^ pair(d[2], d[3]));
    let (class, why) = ((e.class_why >> 8) as u32, (e.class_why & 0xff) as u32);
    // The bounds, where the verifier sees them (the counters index by
    // them); only the full path writes a slot, with both in range.
    if differs != 0 || e.tenant == 0 || class >= CLASSES as u32 || why >= DropReason::COUNT {
        return OTHER;
    }
    e.fast_hits = e.fast_hits.wrapping_add(1);
    Fast {
        tenant: e.tenant as u32,
        class,
        why,
        v6,
        udp,
        now_tick: 0,
        slot: e,
    }
}

/// Whether a verdict may be remembered (see the module's notes).
#[inline(always)]
fn cacheable(flow: &Flow, why: u32, action: u32) -> bool {
    action == aya_ebpf::bindings::xdp_action::XDP_DROP
        && !flow.later_fragment
        && (why == DropReason::NotAllowed.index()
            || (why == DropReason::NoService.index() && (flow.proto == IPPROTO_TCP || flow.proto == IPPROTO_UDP)))
}

/// Remembers the full path's denial of the packet's flow, reached under
/// `epoch`; replaces whatever the slot held, after moving the events its
/// budget held back into their tenant's bucket.
#[inline(always)]
pub fn remember(flow: &Flow, epoch: u32, tenant: u32, class_why: u32, action: u32) {
    if tenant == 0 || tenant >= MAX_TENANTS || !cacheable(flow, class_why & 0xff, action) {
        return;
    }
    let Some(e) = slot_of(flow) else {
        return;
    };
    // SAFETY: this CPU's slot.
    let e = unsafe { &mut *e };
    if e.held != 0 {
        let held = e.held;
        e.held = 0;
        crate::events::fold_held(e.tenant as u32, held);
    }
    e.src = flow.src;
    e.dst = flow.dst;
    e.dport = flow.dport;
    e.proto = flow.proto;
    e.v6 = flow.v6 as u8;
    e.epoch = epoch;
    // Below `MAX_TENANTS` (at most 2^16), and a class and reason of a
    // byte each.
    e.tenant = tenant as u16;
    e.class_why = class_why as u16;
    e.hits = 0;
    e.fast_hits = 0;
    e.quiet_until = 0;
}
