//! Reading the per-CPU global counters, from a loaded object or from the pin.
use std::collections::BTreeMap;

use anyhow::{Context, Result};
use aya::maps::{MapData, PerCpuArray};
use dataplane_common::{Counter, CounterBlock, DropReason};

/// The global counters and drops by reason, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub counters: BTreeMap<Counter, u64>,
    pub drops: BTreeMap<DropReason, u64>,
}

impl Counters {
    pub fn get(&self, c: Counter) -> u64 {
        self.counters.get(&c).copied().unwrap_or(0)
    }

    pub fn dropped(&self, r: DropReason) -> u64 {
        self.drops.get(&r).copied().unwrap_or(0)
    }

    pub fn read<T: std::borrow::Borrow<MapData>>(map: &PerCpuArray<T, CounterBlock>, side: u32) -> Result<Counters> {
        let per_cpu = map.get(&side, 0).context("reading the counters")?;
        let sum = |slot: usize| per_cpu.iter().map(|block| block[slot]).sum();
        Ok(Counters {
            counters: Counter::ALL.iter().map(|&c| (c, sum(c.index() as usize))).collect(),
            drops: DropReason::ALL
                .iter()
                .map(|&r| (r, sum(Counter::COUNT as usize + r.index() as usize)))
                .collect(),
        })
    }

    /// What changed from `before` to `self`.
    pub fn since(&self, before: &Counters) -> Counters {
        Counters {
            counters: Counter::ALL
                .iter()
                .map(|&c| (c, self.get(c).saturating_sub(before.get(c))))
                .collect(),
            drops: DropReason::ALL
                .iter()
                .map(|&r| (r, self.dropped(r).saturating_sub(before.dropped(r))))
                .collect(),
        }
    }
}
