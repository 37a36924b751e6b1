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
    types::{CLASS_NONE, CLASSES},
};

use crate::packet::{IPPROTO_TCP, IPPROTO_UDP};
use crate::parse::Flow;

#[map(name = "DENY_CACHE")]
pub static DENY_CACHE: PerCpuArray<DenySlot> = PerCpuArray::with_max_entries(DENY_CACHE_SLOTS, 0);

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
    e.hits += 1;
    // Bounded where the verifier sees it: the counters index by class, and
    // a bound checked on a copy of the register does not reach it. Only
    // the full path writes the slot, with a class below `CLASSES`.
    let class = (e.class_why >> 8) & 0xff;
    let class = if class < CLASSES as u32 {
        class
    } else {
        CLASS_NONE as u32
    };
    Some(Hit {
        tenant: e.tenant,
        class: class as u8,
        why: e.class_why & 0xff,
    })
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
/// `epoch`; replaces whatever the slot held.
#[inline(always)]
pub fn remember(flow: &Flow, epoch: u32, tenant: u32, class_why: u32, action: u32) {
    if tenant == 0 || !cacheable(flow, class_why & 0xff, action) {
        return;
    }
    let Some(e) = slot_of(flow) else {
        return;
    };
    // SAFETY: this CPU's slot.
    let e = unsafe { &mut *e };
    e.src = flow.src;
    e.dst = flow.dst;
    e.dport = flow.dport;
    e.proto = flow.proto;
    e.v6 = flow.v6 as u8;
    e.epoch = epoch;
    e.tenant = tenant;
    e.class_why = class_why;
    e.hits = 0;
}
