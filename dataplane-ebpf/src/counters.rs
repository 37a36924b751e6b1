//! Bumping the per-CPU counters. Per-CPU slots need no atomics.
use dataplane_common::Counter;

use crate::maps::COUNTERS;

#[inline(always)]
pub fn add(c: Counter, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(c.index()) {
        // SAFETY: the slot belongs to this CPU and the program is not
        // preempted while it runs.
        unsafe { *p += n };
    }
}

#[inline(always)]
pub fn inc(c: Counter) {
    add(c, 1)
}
