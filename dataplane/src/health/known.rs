//! What the maps say of each probed tenant, kept in the agent's memory so
//! that a probe result that changes nothing costs no map syscall. At
//! 10,000 tenants × 4 machines every second, reading `HEALTH` and the
//! tenant record and writing `HEALTH` back for every result was three
//! syscalls 40,000 times a second; almost every result only repeats the
//! last one.
//!
//! A tenant's entry is read from the pinned maps the first time a result
//! of it comes (so a restarted agent continues from its predecessor's
//! counts, states and active core) and written through on every change.
//! The agent is the only writer of both maps; whatever else rewrites a
//! tenant's record or `HEALTH` (an apply, a request by hand) makes the
//! agent forget the entry, and the next result reads it afresh.

use std::collections::HashMap;

use anyhow::Result;
use dataplane_common::types::TenantHealth;

use crate::Dataplane;

/// How old the last passing probe's latency in `HEALTH` may get: it
/// changes with every result, and writing it each time is the cost this
/// cache exists to avoid. `carwash health` and the latency metric show a
/// value at most this old.
pub const LATENCY_REFRESH_MS: u64 = 10_000;

/// One tenant as the maps have it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// `HEALTH`'s record of the tenant, as last read or written.
    pub stored: TenantHealth,
    /// The active core in the tenant's record.
    pub active: u8,
    /// When `stored` was last written (for [`LATENCY_REFRESH_MS`]).
    pub written_ms: u64,
}

/// The entries of every tenant a result came for, and how many `HEALTH`
/// writes they took.
#[derive(Debug, Default)]
pub struct Known {
    tenants: HashMap<u32, Entry, foldhash::fast::FixedState>,
    writes: u64,
}

impl Known {
    pub fn new() -> Known {
        Known::default()
    }

    /// Tenant `id`'s entry, read from the maps if there is none yet.
    pub fn entry(&mut self, dp: &Dataplane, id: u32, name: &str) -> Result<&mut Entry> {
        use std::collections::hash_map::Entry as Slot;
        match self.tenants.entry(id) {
            Slot::Occupied(e) => Ok(e.into_mut()),
            Slot::Vacant(e) => {
                let stored = dp.tenant_health(id)?.unwrap_or_default();
                let info = dp
                    .tenant_info(id)?
                    .ok_or_else(|| anyhow::anyhow!("tenant {name:?} has no record in the maps"))?;
                Ok(e.insert(Entry {
                    stored,
                    active: info.active_core,
                    written_ms: 0,
                }))
            }
        }
    }

    /// Writes `h` as tenant `id`'s `HEALTH` record and keeps it.
    pub fn write(&mut self, dp: &mut Dataplane, id: u32, h: &TenantHealth, now_ms: u64) -> Result<()> {
        if let Err(e) = dp.set_tenant_health(id, h) {
            // Whatever the map holds now, the next result reads it.
            self.tenants.remove(&id);
            return Err(e);
        }
        self.writes += 1;
        if let Some(e) = self.tenants.get_mut(&id) {
            e.stored = *h;
            e.written_ms = now_ms;
        }
        Ok(())
    }

    /// Drops tenant `id`'s entry: something else wrote its maps.
    pub fn forget(&mut self, id: u32) {
        self.tenants.remove(&id);
    }

    /// Drops every entry (after an apply).
    pub fn clear(&mut self) {
        self.tenants.clear();
    }

    /// `HEALTH` writes made through [`Known::write`] so far.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }
}

/// Whether `new` says more than `old` beyond a fresher latency: the
/// changes that are written at once.
pub fn changed(old: &TenantHealth, new: &TenantHealth) -> bool {
    let strip = |h: &TenantHealth| {
        let mut h = *h;
        for m in h.machines.iter_mut() {
            // Only whether a latency was ever recorded counts.
            m.last_latency_us = (m.last_latency_us != 0) as u32;
        }
        h
    };
    strip(old) != strip(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresher_latency_alone_is_no_change() {
        let mut a = TenantHealth::default();
        a.machines[0].last_latency_us = 120;
        let mut b = a;
        b.machines[0].last_latency_us = 340;
        assert!(!changed(&a, &b));
        // The first latency ever recorded is.
        let mut c = a;
        c.machines[1].last_latency_us = 90;
        assert!(changed(&a, &c));
        // So is everything else.
        let mut d = a;
        d.machines[2].streak = 1;
        assert!(changed(&a, &d));
        let mut e = a;
        e.last_switch_ms = 5;
        assert!(changed(&a, &e));
    }
}
