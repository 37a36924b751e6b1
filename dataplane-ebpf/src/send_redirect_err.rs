//! Redirects that cannot be delivered: an XDP program returns
//! XDP_REDIRECT and the kernel drops the frame afterwards when the target
//! cannot take XDP frames (a driver without `ndo_xdp_xmit`, a veth whose
//! peer runs no NAPI, an interface that is down). The kernel reports each
//! such drop on the `xdp:xdp_redirect_err` tracepoint; this program counts
//! them per target interface, so they show up in `carwash stats`, the
//! metrics and `carwash status` instead of as packets counted `steered`
//! that never arrive. The tracepoint fires on failures only: a redirect
//! that succeeds never runs this program.
use aya_ebpf::{bindings::BPF_NOEXIST, programs::RawTracePointContext};
use dataplane_common::types::RedirectErrors;

use crate::maps::REDIRECT_ERRORS;

/// `bpf_redirect(ifindex)` reports its target as map type 0 with map id
/// `INT_MAX` and the ifindex as index (`_trace_xdp_redirect_err`).
const MAP_ID_NONE: u32 = i32::MAX as u32;

/// `xdp_redirect_err(dev, xdp, tgt, err, map_type, map_id, index)`.
#[inline(always)]
pub fn count(ctx: &RawTracePointContext) {
    let err: i64 = ctx.arg(3);
    let map_type: u64 = ctx.arg(4);
    let map_id: u64 = ctx.arg(5);
    let index: u64 = ctx.arg(6);
    let ifindex = if map_type == 0 && map_id as u32 == MAP_ID_NONE {
        index as u32
    } else {
        0
    };
    let errno = (err as i32).unsigned_abs();
    if let Some(e) = REDIRECT_ERRORS.get_ptr_mut(ifindex) {
        // SAFETY: this CPU's copy of the value, valid for this run.
        unsafe {
            (*e).frames += 1;
            (*e).last_errno = errno;
        }
        return;
    }
    let first = RedirectErrors {
        frames: 1,
        last_errno: errno,
        _pad: 0,
    };
    // Another CPU may have created the entry in between: its own copy of
    // the value starts at zero, so the frame is counted by trying again.
    if REDIRECT_ERRORS.insert(ifindex, first, BPF_NOEXIST as u64).is_err()
        && let Some(e) = REDIRECT_ERRORS.get_ptr_mut(ifindex)
    {
        // SAFETY: as above.
        unsafe {
            (*e).frames += 1;
            (*e).last_errno = errno;
        }
    }
}
