//! Handing a packet on to another program with a tail call: the parse and
//! what is known of the sender travel in a per-CPU slot, so that the next
//! program neither parses again nor needs a large stack frame for it.
use aya_ebpf::programs::XdpContext;
use dataplane_common::DropReason;

use crate::maps::{HANDOFF, JUMPS, Outbound};
use crate::parse::Flow;
use crate::verdict::Refused;

/// The largest header offset a handed-on packet may have: the receiving
/// program bounds every offset before it points into the packet.
const MAX_OFF: usize = 1023;

/// Tail-calls program `jump` (`dataplane_common::jumps`). Only returns if
/// the call failed: the reason to drop the packet.
#[inline(always)]
pub fn hand_on(
    ctx: &XdpContext,
    flow: &Flow,
    generation: u32,
    tenant: u32,
    origin: u32,
    inner_off: usize,
    jump: u32,
) -> Refused {
    if let Some(h) = HANDOFF.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; the callee runs on this CPU right after.
        unsafe {
            (*h).flow = *flow;
            (*h).tenant = tenant;
            (*h).origin = origin;
            (*h).inner_off = inner_off as u32;
            (*h).generation = generation;
        };
        // SAFETY: valid context and program array.
        unsafe { JUMPS.tail_call(ctx, jump) };
    }
    DropReason::NoHandoff.into()
}

/// The outbound part of the hand-off, for the fabric program to fill in
/// before it hands a packet to `carwash_snat_out`.
#[inline(always)]
pub fn outbound_mut() -> Option<&'static mut Outbound> {
    // SAFETY: this CPU's slot; the program runs to its tail call without
    // anything else on this CPU using it.
    HANDOFF.get_ptr_mut(0).map(|h| unsafe { &mut (*h).out })
}

/// The outbound part of the hand-off (see [`outbound_mut`]), read in place.
#[inline(always)]
pub fn outbound() -> Result<&'static Outbound, DropReason> {
    // SAFETY: this CPU's slot, written by the caller just before; only read.
    HANDOFF
        .get_ptr(0)
        .map(|h| unsafe { &(*h).out })
        .ok_or(DropReason::NoHandoff)
}

/// The common part of a hand-off, copied out of the slot.
pub struct Taken {
    pub flow: Flow,
    pub tenant: u32,
    pub origin: u32,
    pub inner_off: u32,
    pub generation: u32,
}

/// What the calling program handed on, with its offsets bounded for the
/// verifier.
#[inline(always)]
pub fn take() -> Result<Taken, DropReason> {
    // SAFETY: this CPU's slot, written by the caller just before.
    let s = unsafe { &*HANDOFF.get_ptr(0).ok_or(DropReason::NoHandoff)? };
    let mut h = Taken {
        flow: s.flow,
        tenant: s.tenant,
        origin: s.origin,
        inner_off: s.inner_off,
        generation: s.generation,
    };
    if h.flow.l3_off > MAX_OFF || h.flow.l4_off > MAX_OFF || h.inner_off as usize > MAX_OFF {
        return Err(DropReason::Malformed);
    }
    h.flow.l3_off &= MAX_OFF;
    h.flow.l4_off &= MAX_OFF;
    h.inner_off &= MAX_OFF as u32;
    h.generation &= 1;
    Ok(h)
}
