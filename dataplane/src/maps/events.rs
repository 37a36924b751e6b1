//! The data path's event maps ([`dataplane_common::events`]): the ring
//! buffer the agent reads, the limits it writes, and the counters it and
//! the metrics read (from the loaded object or from the pins).
use anyhow::{Context, Result, anyhow};
use aya::maps::{Array, Map, MapData, PerCpuArray, RingBuf};
use dataplane_common::events::{EVENT_KINDS, EventBucket, EventConfig, EventCounts, KIND_DROP};
use dataplane_common::maps;

use crate::Dataplane;
use crate::maps::deny_cache::HeldEvents;
use crate::maps::pins::Pins;

/// The event limits as the host config gives them (`[events]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLimits {
    /// Events per second per tenant and CPU (0: no data-path events).
    pub rate: u32,
    pub burst: u32,
    /// One allowed packet in `flow_sample` reported (0: none).
    pub flow_sample: u32,
}

impl EventLimits {
    /// What the programs read: the budget as the nanoseconds one event
    /// costs, bounded so that the programs' arithmetic cannot overflow.
    pub fn to_config(self) -> EventConfig {
        EventConfig {
            interval_ns: 1_000_000_000 / u64::from(self.rate.clamp(1, 1_000_000_000)),
            burst: self.burst.clamp(1, 1_000_000),
            flow_sample: self.flow_sample,
            ready: 1,
            disabled: u32::from(self.rate == 0),
        }
    }
}

/// Every kind's counters, summed over the CPUs (index: `KIND_*`).
fn sum_counts(map: &PerCpuArray<impl std::borrow::Borrow<MapData>, EventCounts>) -> Result<Vec<EventCounts>> {
    (0..EVENT_KINDS)
        .map(|k| {
            let per_cpu = map
                .get(&k, 0)
                .with_context(|| format!("reading {} [{k}]", maps::EVENT_STATS))?;
            Ok(per_cpu.iter().fold(EventCounts::default(), |a, c| EventCounts {
                emitted: a.emitted + c.emitted,
                suppressed: a.suppressed + c.suppressed,
                lost: a.lost + c.lost,
            }))
        })
        .collect()
}

impl Dataplane {
    /// The ring buffer of events, taken out of the object: its reader owns it.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(maps::EVENTS)
            .ok_or_else(|| anyhow!("no map {} in the eBPF object (taken already?)", maps::EVENTS))?;
        Ok(RingBuf::try_from(map)?)
    }

    pub fn set_event_limits(&mut self, limits: EventLimits) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(maps::EVENT_CONFIG)
            .ok_or_else(|| anyhow!("no map {}", maps::EVENT_CONFIG))?;
        let mut a: Array<_, EventConfig> = Array::try_from(map)?;
        a.set(0, limits.to_config(), 0).context("writing EVENT_CONFIG")
    }

    /// Every kind's counters, with the drop events the denial cache's
    /// slots hold back counted as suppressed.
    pub fn event_counts(&self) -> Result<Vec<EventCounts>> {
        let stats = PerCpuArray::try_from(self.map_ref(maps::EVENT_STATS)?)?;
        let cache = PerCpuArray::try_from(self.map_ref(maps::DENY_CACHE)?)?;
        let (mut counts, held) = HeldEvents::around(&cache, || sum_counts(&stats))?;
        add_held(&mut counts, &held);
        Ok(counts)
    }

    /// Tenant `id`'s bucket on each CPU (see [`Dataplane::event_buckets_of`]).
    pub fn event_buckets(&self, id: u32) -> Result<Vec<EventBucket>> {
        Ok(self.event_buckets_of(&[id])?.pop().map(|(_, b)| b).unwrap_or_default())
    }

    /// The buckets of tenants `ids` on each CPU, with the drop events the
    /// denial cache's slots hold back for them counted as suppressed: what
    /// the budgets held back, whichever place counts it yet.
    pub fn event_buckets_of(&self, ids: &[u32]) -> Result<Vec<(u32, Vec<EventBucket>)>> {
        let buckets: PerCpuArray<_, EventBucket> = PerCpuArray::try_from(self.map_ref(maps::EVENT_BUCKETS)?)?;
        let cache = PerCpuArray::try_from(self.map_ref(maps::DENY_CACHE)?)?;
        let (mut all, held) = HeldEvents::around(&cache, || {
            ids.iter()
                .map(|&id| {
                    let per_cpu = buckets.get(&id, 0).context("reading EVENT_BUCKETS")?;
                    Ok((id, per_cpu.iter().copied().collect::<Vec<EventBucket>>()))
                })
                .collect::<Result<Vec<_>>>()
        })?;
        for (id, per_cpu) in &mut all {
            let of = held.of(*id, per_cpu.len());
            for (b, n) in per_cpu.iter_mut().zip(of) {
                b.suppressed += n;
            }
        }
        Ok(all)
    }
}

/// The held drop events into the `drop` kind's suppressed count.
fn add_held(counts: &mut [EventCounts], held: &HeldEvents) {
    if let Some(c) = counts.get_mut(KIND_DROP as usize) {
        c.suppressed += held.total();
    }
}

impl Pins {
    /// Every kind's counters (empty when pinned by a carwash without events).
    pub fn event_counts(&self) -> Result<Vec<EventCounts>> {
        if !self.has(maps::EVENT_STATS) {
            return Ok(Vec::new());
        }
        let stats = PerCpuArray::try_from(Map::PerCpuArray(self.map(maps::EVENT_STATS)?))?;
        // Pinned by carwash since the fast path held events in it.
        if !self.has(maps::DENY_CACHE) {
            return sum_counts(&stats);
        }
        let cache = PerCpuArray::try_from(Map::PerCpuArray(self.map(maps::DENY_CACHE)?))?;
        let (mut counts, held) = HeldEvents::around(&cache, || sum_counts(&stats))?;
        add_held(&mut counts, &held);
        Ok(counts)
    }
}
