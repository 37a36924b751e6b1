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
}
