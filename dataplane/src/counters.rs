//! Reading the per-CPU counters, from a loaded object or from the pin.
use std::collections::BTreeMap;

use anyhow::{Context, Result};
use aya::maps::{MapData, PerCpuArray};
use dataplane_common::{Counter, CounterBlock};

/// The global counters, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters(pub BTreeMap<Counter, u64>);

impl Counters {
    pub fn get(&self, c: Counter) -> u64 {
        self.0.get(&c).copied().unwrap_or(0)
    }

    pub fn read<T: std::borrow::Borrow<MapData>>(
        map: &PerCpuArray<T, CounterBlock>,
    ) -> Result<Counters> {
        let per_cpu = map.get(&0, 0).context("reading the counters")?;
        let out = Counter::ALL
            .iter()
            .map(|&c| {
                (
                    c,
                    per_cpu.iter().map(|block| block[c.index() as usize]).sum(),
                )
            })
            .collect();
        Ok(Counters(out))
    }

    /// What changed from `before` to `self`, counter by counter.
    pub fn since(&self, before: &Counters) -> Counters {
        Counters(
            Counter::ALL
                .iter()
                .map(|&c| (c, self.get(c).saturating_sub(before.get(c))))
                .collect(),
        )
    }
}
