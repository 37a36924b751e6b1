//! Benchmark-only programs, never attached by the agent: they put the
//! original frame back before anything else runs. In the live-frames mode
//! of `BPF_PROG_TEST_RUN` the kernel copies the frame into each of its
//! pages once and, when it reuses a page, only resets the data pointers;
//! a path that rewrites the packet (carwash's NAT, or the kernel's own
//! forwarding and NAT) would see its own output the next time. The
//! benchmark writes the frame to `BENCH_FRAME`; these programs copy it over
//! the packet (its length is the packet's: the kernel resets that) and then
//! hand it on: to the fabric program, or to the kernel stack.
use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_store_bytes, macros::map, maps::Array, programs::XdpContext};
use dataplane_common::{jumps, types::BENCH_FRAME_MAX};

use crate::maps::JUMPS;

#[map(name = "BENCH_FRAME")]
static BENCH_FRAME: Array<[u8; BENCH_FRAME_MAX]> = Array::with_max_entries(1, 0);

#[inline(always)]
fn restore(ctx: &XdpContext) -> bool {
    let Some(frame) = BENCH_FRAME.get_ptr_mut(0) else {
        return false;
    };
    let len = ctx.data_end().wrapping_sub(ctx.data());
    // 1..=BENCH_FRAME_MAX (a power of two) by construction, which the
    // verifier follows; a frame of another length is refused below.
    let n = (len.wrapping_sub(1) & (BENCH_FRAME_MAX - 1)) + 1;
    // SAFETY: valid context; `frame` is a map value of BENCH_FRAME_MAX
    // bytes and `n` is at most that.
    let stored = unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, frame.cast(), n as u32) } == 0;
    stored && n == len
}

/// Restores the frame, then runs the fabric program on it.
#[inline(always)]
pub fn restore_then_fabric(ctx: &XdpContext) -> u32 {
    if restore(ctx) {
        // SAFETY: valid context and program array; returns only on failure.
        unsafe { JUMPS.tail_call(ctx, jumps::FABRIC) };
    }
    xdp_action::XDP_ABORTED
}

/// Restores the frame, then passes it to the kernel stack.
#[inline(always)]
pub fn restore_then_pass(ctx: &XdpContext) -> u32 {
    if restore(ctx) {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_ABORTED
    }
}
