//! The uplink's cache of recent denials (`dataplane_common::deny`), as
//! userspace sees it: for tests and benchmarks to tell a remembered
//! verdict from one of the full path.
use anyhow::Result;
use aya::maps::PerCpuArray;
use dataplane_common::deny::{DENY_CACHE_SLOTS, DenySlot};
use dataplane_common::maps;

use crate::Dataplane;

impl Dataplane {
    /// Slot `slot` of the denial cache, one copy per CPU.
    pub fn deny_slots(&self, slot: u32) -> Result<Vec<DenySlot>> {
        let m: PerCpuArray<_, DenySlot> = PerCpuArray::try_from(self.map_ref(maps::DENY_CACHE)?)?;
        Ok(m.get(&slot, 0)?.iter().copied().collect())
    }

    /// Packets dropped on a remembered verdict, over every slot and CPU
    /// (since each slot was last written).
    pub fn deny_cache_hits(&self) -> Result<u64> {
        let m: PerCpuArray<_, DenySlot> = PerCpuArray::try_from(self.map_ref(maps::DENY_CACHE)?)?;
        let mut hits = 0;
        for slot in 0..DENY_CACHE_SLOTS {
            hits += m.get(&slot, 0)?.iter().map(|s| s.hits).sum::<u64>();
        }
        Ok(hits)
    }

    /// Frames the uplink's fast path dropped on a remembered denial, over
    /// every CPU (part of [`Dataplane::deny_cache_hits`]).
    pub fn deny_fast_drops(&self) -> Result<u64> {
        let m: PerCpuArray<_, [u64; 2]> = PerCpuArray::try_from(self.map_ref(maps::DENY_FAST)?)?;
        Ok(m.get(&0, 0)?.iter().map(|v| v[1]).sum())
    }

    /// Turns the fast path off on every CPU until the full path next drops
    /// a frame on a remembered denial: for benchmarks of traffic outside a
    /// flood, after one.
    pub fn disarm_deny_fast(&mut self) -> Result<()> {
        let mut m: PerCpuArray<_, [u64; 2]> = PerCpuArray::try_from(self.map_mut(maps::DENY_FAST)?)?;
        let v: Vec<[u64; 2]> = m.get(&0, 0)?.iter().map(|c| [0, c[1]]).collect();
        m.set(0, aya::maps::PerCpuValues::try_from(v)?, 0)?;
        Ok(())
    }
}
