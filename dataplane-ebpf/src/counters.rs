//! The per-CPU global counters. One map lookup per packet yields this CPU's
//! whole block; per-CPU slots need no atomics.
use dataplane_common::{Counter, CounterBlock};

use crate::maps::COUNTERS;

pub struct Counters(*mut CounterBlock);

impl Counters {
    /// This CPU's block. The map is an array with one slot, so the lookup
    /// cannot miss; should it, counting is skipped rather than the packet.
    #[inline(always)]
    pub fn this_cpu() -> Option<Counters> {
        COUNTERS.get_ptr_mut(0).map(Counters)
    }

    #[inline(always)]
    pub fn add(&self, c: Counter, n: u64) {
        // SAFETY: the block belongs to this CPU and the program is not
        // preempted while it runs. `get_mut` rather than indexing: a panic
        // path has no place in a BPF program.
        if let Some(slot) = unsafe { (*self.0).get_mut(c.index() as usize) } {
            *slot += n;
        }
    }

    #[inline(always)]
    pub fn inc(&self, c: Counter) {
        self.add(c, 1)
    }
}
