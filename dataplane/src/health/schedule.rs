//! When each machine is probed: one sorted schedule for all of them, each
//! machine at a fixed phase of its interval derived from its key, so 40,000
//! probes a second arrive as a steady trickle, not a burst on every tick,
//! and a restarted agent probes each machine at the same phase as before.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// Probes due, in order of due time. Keys are the caller's machine ids.
#[derive(Debug, Default)]
pub struct Schedule {
    /// (due, key, version)
    heap: BinaryHeap<Reverse<(u64, u64, u32)>>,
    /// key → (interval, version); a heap entry of a key no longer here, or
    /// of an older version, is skipped when it comes due.
    entries: HashMap<u64, (u64, u32)>,
    versions: u32,
}

/// splitmix64: spreads consecutive keys over the whole interval.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Schedule {
    pub fn new() -> Schedule {
        Schedule::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Probes `key` every `interval_ms`, first at its phase after `now_ms`.
    /// Adding a key again changes its interval.
    pub fn insert(&mut self, key: u64, interval_ms: u64, now_ms: u64) {
        let interval = interval_ms.max(1);
        if self.entries.get(&key).is_some_and(|e| e.0 == interval) {
            return;
        }
        self.versions = self.versions.wrapping_add(1);
        self.entries.insert(key, (interval, self.versions));
        let first = self.next_at(key, interval, now_ms);
        self.heap.push(Reverse((first, key, self.versions)));
    }

    pub fn remove(&mut self, key: u64) {
        self.entries.remove(&key);
    }

    /// The earliest due time, for the caller's sleep.
    pub fn next_due(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Keys due at or before `now_ms`, each rescheduled one interval later
    /// (at its phase, so a late loop does not shift a machine for good).
    pub fn due(&mut self, now_ms: u64, out: &mut Vec<u64>) {
        while let Some(&Reverse((t, key, version))) = self.heap.peek() {
            if t > now_ms {
                break;
            }
            self.heap.pop();
            let Some(&(interval, current)) = self.entries.get(&key) else {
                continue;
            };
            if current != version {
                continue;
            }
            out.push(key);
            self.heap
                .push(Reverse((self.next_at(key, interval, now_ms), key, version)));
        }
    }

    /// The first time after `after_ms` at `key`'s phase of `interval`.
    fn next_at(&self, key: u64, interval: u64, after_ms: u64) -> u64 {
        let phase = mix(key) % interval;
        let base = after_ms - after_ms % interval + phase;
        if base > after_ms { base } else { base + interval }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forty_thousand_machines_are_probed_once_a_second_without_bursts() {
        let mut s = Schedule::new();
        let start = 1_000_000;
        for k in 0..40_000u64 {
            s.insert(k, 1000, start);
        }
        let mut per_key = vec![0u32; 40_000];
        let mut per_10ms = Vec::new();
        let mut out = Vec::new();
        for step in 1..=300u64 {
            out.clear();
            s.due(start + step * 10, &mut out);
            per_10ms.push(out.len());
            for &k in &out {
                per_key[k as usize] += 1;
            }
        }
        // Three seconds: every machine exactly three times.
        assert!(
            per_key.iter().all(|&n| n == 3),
            "{:?}",
            per_key.iter().filter(|&&n| n != 3).count()
        );
        let max = *per_10ms.iter().max().unwrap();
        assert!(max <= 2 * 400, "a 10 ms slice had {max} probes, the mean is 400");
        assert_eq!(s.len(), 40_000);
    }

    #[test]
    fn removed_keys_stop_and_a_changed_interval_takes_over() {
        let mut s = Schedule::new();
        s.insert(1, 1000, 0);
        s.insert(2, 1000, 0);
        s.remove(2);
        let mut out = Vec::new();
        for t in (0..=10_000).step_by(50) {
            s.due(t, &mut out);
        }
        assert_eq!(out.iter().filter(|&&k| k == 1).count(), 10);
        assert!(!out.contains(&2));
        out.clear();
        s.insert(1, 500, 10_000);
        for t in (10_050..=20_000).step_by(50) {
            s.due(t, &mut out);
        }
        assert_eq!(out.len(), 20, "every 500 ms from the change on: {out:?}");
    }
}
