//! When each machine is probed: one sorted schedule for all of them, each
//! machine at a fixed phase of its interval derived from its key, so 40,000
//! probes a second arrive as a steady trickle, not a burst on every tick,
//! and a restarted agent probes each machine at the same phase as before.

use std::collections::HashMap;

/// The wheel's slots, one millisecond each: an entry waits in the slot of
/// its due time modulo this, and a turn of the checker looks only at the
/// slots of the milliseconds gone by since the last. Intervals longer
/// than the wheel wait there for more than one round.
const SLOTS: u64 = 1024;

/// Probes due, by due time (a timing wheel: adding and taking a probe cost
/// the same at 40,000 machines as at 4). Keys are the caller's machine ids.
#[derive(Debug)]
pub struct Schedule {
    /// (due, key, version) by due time modulo `SLOTS`.
    slots: Vec<Vec<(u64, u64, u32)>>,
    /// key → (interval, version); a slot's entry of a key no longer here,
    /// or of an older version, is dropped when it comes due.
    entries: HashMap<u64, (u64, u32), foldhash::fast::FixedState>,
    versions: u32,
    /// Every entry due at or before this has been handed out.
    done_ms: u64,
    /// Entries in the slots, stale ones included.
    queued: usize,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            slots: vec![Vec::new(); SLOTS as usize],
            entries: HashMap::default(),
            versions: 0,
            done_ms: 0,
            queued: 0,
        }
    }
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
        let first = next_at(key, interval, now_ms);
        self.queue(first, key, self.versions);
    }

    pub fn remove(&mut self, key: u64) {
        self.entries.remove(&key);
    }

    fn queue(&mut self, due: u64, key: u64, version: u32) {
        // A due time the wheel has passed (the clock went back) is taken
        // at the next turn.
        let slot = due.max(self.done_ms + 1) % SLOTS;
        self.slots[slot as usize].push((due, key, version));
        self.queued += 1;
    }

    /// The earliest due time, for the caller's sleep (never later than
    /// the real one; a removed key may make it earlier).
    pub fn next_due(&self) -> Option<u64> {
        if self.queued == 0 {
            return None;
        }
        let base = self.done_ms + 1;
        let mut best = u64::MAX;
        // The slot `i` after the cursor holds nothing due before
        // `base + i`: stop once that is no earlier than the best found.
        for i in 0..SLOTS {
            let t = base + i;
            if t >= best {
                break;
            }
            for e in &self.slots[(t % SLOTS) as usize] {
                best = best.min(e.0);
            }
        }
        Some(best)
    }

    /// Keys due at or before `now_ms`, each rescheduled one interval later
    /// (at its phase, so a late loop does not shift a machine for good).
    pub fn due(&mut self, now_ms: u64, out: &mut Vec<u64>) {
        if now_ms <= self.done_ms {
            return;
        }
        // Every slot once if the wheel has been left for a round or more.
        let span = (now_ms - self.done_ms).min(SLOTS);
        for t in now_ms + 1 - span..=now_ms {
            let i = (t % SLOTS) as usize;
            let mut slot = std::mem::take(&mut self.slots[i]);
            for (due, key, version) in slot.drain(..) {
                if due > now_ms {
                    // A later round's.
                    self.slots[i].push((due, key, version));
                    continue;
                }
                self.queued -= 1;
                let Some(&(interval, current)) = self.entries.get(&key) else {
                    continue;
                };
                if current != version {
                    continue;
                }
                out.push(key);
                // Later than `now_ms`: never taken again in this call.
                self.queue(next_at(key, interval, now_ms), key, version);
            }
            // The slot keeps its allocation for its next round.
            if self.slots[i].is_empty() {
                self.slots[i] = slot;
            } else {
                self.slots[i].append(&mut slot);
            }
        }
        self.done_ms = now_ms;
    }
}

/// The first time after `after_ms` at `key`'s phase of `interval`.
fn next_at(key: u64, interval: u64, after_ms: u64) -> u64 {
    let phase = mix(key) % interval;
    let base = after_ms - after_ms % interval + phase;
    if base > after_ms { base } else { base + interval }
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
    fn intervals_longer_than_the_wheel_and_late_turns_keep_their_phase() {
        let mut s = Schedule::new();
        let start = 5_000_000;
        s.insert(1, 5000, start);
        s.insert(2, 1500, start);
        s.insert(3, 1024, start);
        let phase = |k: u64, i: u64| mix(k) % i;
        let mut fired: Vec<(u64, u64)> = Vec::new();
        let mut out = Vec::new();
        let mut t = start;
        while t < start + 20_000 {
            // The earliest due time is never later than a key's real one.
            let next = s.next_due().unwrap();
            t += 1;
            out.clear();
            s.due(t, &mut out);
            for &k in &out {
                assert!(next <= t, "next_due said {next}, key {k} fired at {t}");
                fired.push((k, t));
            }
        }
        for (k, interval) in [(1u64, 5000u64), (2, 1500), (3, 1024)] {
            let times: Vec<u64> = fired.iter().filter(|f| f.0 == k).map(|f| f.1).collect();
            let want = (start + 1..=start + 20_000)
                .filter(|t| t % interval == phase(k, interval))
                .count();
            assert_eq!(times.len(), want, "key {k}: {times:?}");
            assert!(
                times.iter().all(|t| t % interval == phase(k, interval)),
                "key {k}: {times:?}"
            );
        }
        // A turn 10 s late: each key once, at the next phase after it.
        out.clear();
        s.due(t + 10_000, &mut out);
        out.sort();
        assert_eq!(out, vec![1, 2, 3]);
        out.clear();
        s.due(t + 10_001, &mut out);
        assert!(out.is_empty(), "{out:?}");
        // The clock gone back: what falls due is taken at the next turn.
        s.insert(4, 1000, t);
        s.due(t + 10_002, &mut out);
        assert!(s.next_due().unwrap() <= t + 10_000 + 1000);
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
