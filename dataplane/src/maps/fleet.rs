//! The fleet's maps: `FLEET` (this host's place among the carwash hosts and
//! the port blocks of the others, written by the agent) and `FLEET_STATS`
//! (replies passed on to and taken from other hosts, counted by the
//! programs).
use anyhow::{Context, Result};
use aya::maps::{Array, Map, PerCpuArray};
use dataplane_common::maps;
use dataplane_common::types::{Fleet, FleetStats};

use crate::maps::pins::Pins;

impl crate::Dataplane {
    /// Tells the data path this host's fleet (all zero: a host of its own).
    pub fn set_fleet(&mut self, f: &Fleet) -> Result<()> {
        let mut m: Array<_, Fleet> = Array::try_from(self.map_mut(maps::FLEET)?)?;
        m.set(0, *f, 0).context("writing FLEET")?;
        Ok(())
    }
}

impl crate::Dataplane {
    /// [`relay_stats`] of this load's own maps.
    pub fn relay_stats(&self) -> Result<FleetStats> {
        let map = self
            .ebpf
            .map(maps::FLEET_STATS)
            .context("no FLEET_STATS in the eBPF object")?;
        let m: PerCpuArray<_, FleetStats> = PerCpuArray::try_from(map)?;
        sum_stats(&m)
    }
}

fn sum_stats<T: std::borrow::Borrow<aya::maps::MapData>>(m: &PerCpuArray<T, FleetStats>) -> Result<FleetStats> {
    let mut sum = FleetStats::default();
    for v in m.get(&0, 0).context("reading FLEET_STATS")?.iter() {
        sum.sent += v.sent;
        sum.received += v.received;
    }
    Ok(sum)
}

/// Replies passed on to and taken from other hosts, summed over the CPUs;
/// zero when the pins predate the fleet.
pub fn relay_stats(pins: &Pins) -> Result<FleetStats> {
    if !pins.has(maps::FLEET_STATS) {
        return Ok(FleetStats::default());
    }
    let m: PerCpuArray<_, FleetStats> = PerCpuArray::try_from(Map::PerCpuArray(pins.map(maps::FLEET_STATS)?))?;
    sum_stats(&m)
}
