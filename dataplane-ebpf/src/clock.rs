//! carwash's clock: the kernel's tick counter (`bpf_jiffies64`, which the
//! verifier turns into one load) times the tick length the agent measured
//! (`HostConfig::ns_per_tick`), in nanoseconds. Userspace reads the same
//! timeline with `times(2)`. A tick (1 to 10 ms) is plenty of resolution
//! for lifetimes of seconds, and the clock costs the data path nothing.
use aya_ebpf::{bindings::xdp_action, helpers::bpf_jiffies64, programs::XdpContext};
use dataplane_common::types::HostConfig;

use crate::packet::write;

/// Now, in nanoseconds of carwash's clock.
#[inline(always)]
pub fn now(cfg: &HostConfig) -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_jiffies64() }.wrapping_mul(cfg.ns_per_tick as u64)
}

/// `carwash_clock`: the tick counter, native-endian, over the first eight
/// bytes of the packet.
#[inline(always)]
pub fn report(ctx: &XdpContext) -> u32 {
    // SAFETY: plain helper call.
    let ticks = unsafe { bpf_jiffies64() };
    if write(ctx, 0, ticks.to_ne_bytes()) {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_ABORTED
    }
}
