//! The uplink's cache of recent denials (`dataplane_common::deny`), as
//! userspace sees it: the drop events its slots hold back for the event
//! counters' readers ([`HeldEvents`]), and for tests and benchmarks, what
//! tells a remembered verdict from one of the full path.
use std::borrow::Borrow;

use anyhow::{Context, Result};
use aya::maps::{Array, MapData, PerCpuArray};
use dataplane_common::deny::{DENY_CACHE_SLOTS, DenySlot};
use dataplane_common::maps;

use crate::Dataplane;

/// Drop events the tenants' budgets held back on the uplink's fast path
/// and that are still counted in the denial cache's slots
/// (`DenySlot::held`), not yet in the buckets and the `drop` kind's
/// counters. Readers of those counters add them.
#[derive(Debug, Default, Clone)]
pub struct HeldEvents {
    /// `(slot, the slot on each CPU)`, for slots holding any.
    slots: Vec<(u32, Vec<DenySlot>)>,
}

/// How many times [`HeldEvents::around`] reads again when the data path
/// moved held events into the counters while it read.
const HELD_TRIES: usize = 8;

impl HeldEvents {
    /// Every held event.
    pub fn total(&self) -> u64 {
        self.slots.iter().flat_map(|(_, c)| c).map(|s| s.held as u64).sum()
    }

    /// `tenant`'s held events on each of `cpus` CPUs.
    pub fn of(&self, tenant: u32, cpus: usize) -> Vec<u64> {
        let mut v = vec![0; cpus];
        for (_, per_cpu) in &self.slots {
            for (cpu, s) in per_cpu.iter().enumerate() {
                if u32::from(s.tenant) == tenant
                    && let Some(n) = v.get_mut(cpu)
                {
                    *n += s.held as u64;
                }
            }
        }
        v
    }

    /// Runs `read` (a read of the buckets or of the kinds' counters)
    /// between two reads of the slots holding events, again while the data
    /// path moved any of them into the counters in between: what `read`
    /// returns and the held events it returns with are then disjoint
    /// (none counted twice). The slots holding events are found by one
    /// scan first; the reads around `read` take only those, so that the
    /// window a move can fall in is short.
    pub fn around<T>(
        map: &PerCpuArray<impl Borrow<MapData>, DenySlot>,
        mut read: impl FnMut() -> Result<T>,
    ) -> Result<(T, HeldEvents)> {
        let mut holding = Vec::new();
        for slot in 0..DENY_CACHE_SLOTS {
            let per_cpu = map.get(&slot, 0).context("reading DENY_CACHE")?;
            if per_cpu.iter().any(|s| s.held != 0) {
                holding.push(slot);
            }
        }
        let take = |slots: &[u32]| -> Result<HeldEvents> {
            let mut out = HeldEvents::default();
            for &slot in slots {
                let per_cpu = map.get(&slot, 0).context("reading DENY_CACHE")?;
                out.slots.push((slot, per_cpu.iter().copied().collect()));
            }
            Ok(out)
        };
        let mut tries = 0;
        loop {
            let before = take(&holding)?;
            let value = read()?;
            let after = take(&holding)?;
            tries += 1;
            if !after.moved_since(&before) || tries == HELD_TRIES {
                return Ok((value, after));
            }
        }
    }

    /// Whether held events of `earlier` left their slot since (moved into
    /// the counters: the count fell, or the slot was given to another
    /// flow).
    fn moved_since(&self, earlier: &HeldEvents) -> bool {
        self.slots.iter().zip(&earlier.slots).any(|((_, now), (_, then))| {
            now.iter()
                .zip(then)
                .any(|(n, t)| t.held != 0 && (!n.same_entry(t) || n.held < t.held))
        })
    }
}

impl Dataplane {
    /// Slot `slot` of the denial cache, one copy per CPU.
    pub fn deny_slots(&self, slot: u32) -> Result<Vec<DenySlot>> {
        let m: PerCpuArray<_, DenySlot> = PerCpuArray::try_from(self.map_ref(maps::DENY_CACHE)?)?;
        Ok(m.get(&slot, 0)?.iter().copied().collect())
    }

    /// The drop events the denial cache's slots hold back (read alone; the
    /// event counters' readers take them with [`HeldEvents::around`]).
    pub fn held_events(&self) -> Result<HeldEvents> {
        let m: PerCpuArray<_, DenySlot> = PerCpuArray::try_from(self.map_ref(maps::DENY_CACHE)?)?;
        Ok(HeldEvents::around(&m, || Ok(()))?.1)
    }

    /// Packets dropped on a remembered verdict, by either path, over every
    /// slot and CPU (since each slot was last written; each slot's counts
    /// wrap at 2^32).
    pub fn deny_cache_hits(&self) -> Result<u64> {
        self.sum_slots(|s| s.hits as u64 + s.fast_hits as u64)
    }

    /// Frames the uplink's fast path dropped on a remembered denial (part
    /// of [`Dataplane::deny_cache_hits`]).
    pub fn deny_fast_drops(&self) -> Result<u64> {
        self.sum_slots(|s| s.fast_hits as u64)
    }

    fn sum_slots(&self, f: impl Fn(&DenySlot) -> u64) -> Result<u64> {
        let m: PerCpuArray<_, DenySlot> = PerCpuArray::try_from(self.map_ref(maps::DENY_CACHE)?)?;
        let mut n = 0;
        for slot in 0..DENY_CACHE_SLOTS {
            n += m.get(&slot, 0)?.iter().map(&f).sum::<u64>();
        }
        Ok(n)
    }

    /// Turns the fast path off until the full path next drops a frame on a
    /// remembered denial: for benchmarks of traffic outside a flood, after
    /// one.
    pub fn disarm_deny_fast(&mut self) -> Result<()> {
        let mut m: Array<_, u64> = Array::try_from(self.map_mut(maps::DENY_FAST)?)?;
        m.set(0, 0, 0)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(tenant: u16, held: u32) -> DenySlot {
        DenySlot {
            tenant,
            held,
            src: [198, 51, 100, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ..Default::default()
        }
    }

    fn held(per_cpu: &[DenySlot]) -> HeldEvents {
        HeldEvents {
            slots: vec![(5, per_cpu.to_vec())],
        }
    }

    #[test]
    fn held_events_by_tenant_and_cpu() {
        let h = HeldEvents {
            slots: vec![(5, vec![slot(1, 3), slot(2, 4)]), (9, vec![slot(2, 0), slot(1, 10)])],
        };
        assert_eq!(h.total(), 17);
        assert_eq!(h.of(1, 2), vec![3, 10]);
        assert_eq!(h.of(2, 2), vec![0, 4]);
        assert_eq!(h.of(3, 2), vec![0, 0]);
    }

    #[test]
    fn a_move_into_the_counters_is_seen_and_growth_is_not() {
        let then = held(&[slot(1, 5), slot(1, 0)]);
        // More held back meanwhile, on either CPU: nothing moved.
        assert!(!held(&[slot(1, 9), slot(1, 2)]).moved_since(&then));
        // The count fell: moved into the bucket at a quiet tick's end.
        assert!(held(&[slot(1, 0), slot(1, 0)]).moved_since(&then));
        // The slot went to another flow: moved when it was replaced.
        let mut other = slot(1, 7);
        other.src[3] = 8;
        assert!(held(&[other, slot(1, 0)]).moved_since(&then));
        assert!(held(&[slot(2, 7), slot(1, 0)]).moved_since(&then));
        // A slot that held nothing cannot have moved anything.
        assert!(!held(&[slot(1, 5), slot(3, 0)]).moved_since(&then));
    }
}
