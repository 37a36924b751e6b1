//! A probe's result carried into the maps: the machine's record in
//! `HEALTH`, and, when the result changes what takes traffic, the tenant
//! record (connectors in the choice, active core) in one write.

use anyhow::Result;
use arrayvec::ArrayVec;
use carwash_policy::Tenant;
use dataplane_common::types::TenantHealth;
use tracing::{info, warn};

use super::decide::{Availability, CoreChoice, choose_core, connectors_in_choice};
use super::known::{Known, LATENCY_REFRESH_MS, changed};
use super::store::{availability, machines, record, slot};
use super::tracker::{Machine, Probe, Role, State, Tracker, Transition};
use crate::Dataplane;
use crate::maps::policy::tenants::Health;

/// What one probe result led to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The machine's declared change, if this result made one.
    pub transition: Option<Transition>,
    /// The active core changed: (from, to).
    pub core_switch: Option<(u8, u8)>,
    /// No connector can take traffic: all are kept in the choice.
    pub all_connectors_out: bool,
}

/// Records `probe` of `machine` of tenant `id` (policy `t`) at `now_ms`
/// and applies what follows (rise/fall, connectors, failover, failback).
/// Every change is logged here, and returned for metrics and events.
///
/// The tenant's health and active core come from `known` (read from the
/// maps once); `HEALTH` is written only when the result changed something
/// other than the latency (or the latency there is older than
/// [`LATENCY_REFRESH_MS`]), the tenant record only when what takes traffic
/// changed.
pub fn record_probe(
    dp: &mut Dataplane,
    known: &mut Known,
    id: u32,
    t: &Tenant,
    machine: Machine,
    probe: Probe,
    now_ms: u64,
) -> Result<Outcome> {
    let ids = machines(t);
    let Some(pos) = ids.iter().position(|(m, _, _)| *m == machine) else {
        anyhow::bail!("tenant {:?} has no {machine}", t.name);
    };
    let entry = known.entry(dp, id, &t.name)?;
    let before = entry.stored;
    let written_ms = entry.written_ms;
    let mut active = entry.active;
    let mut stored = before;
    let mut avail: ArrayVec<Availability, 4> = ids
        .iter()
        .map(|(m, vtep, mac)| availability(&stored.machines[slot(*m)], *vtep, *mac, now_ms))
        .collect();
    let (_, vtep, mac) = ids[pos];
    let old = stored.machines[slot(machine)];
    let same = old.vtep == vtep && old.mac == mac;
    let mut tracker = Tracker::new(machine, avail[pos].state, avail[pos].since_ms);
    if same {
        tracker.streak = old.streak as u32;
        tracker.transitions = old.transitions as u64;
    }
    let latency = match probe {
        Probe::Pass { latency_us } => latency_us.max(1),
        Probe::Fail { .. } => 0,
    };
    let h = &t.health;
    let mut out = Outcome {
        transition: tracker.record(probe, h.rise, h.fall, now_ms),
        ..Default::default()
    };
    avail[pos].state = tracker.state;
    avail[pos].since_ms = tracker.since_ms;
    let mut rec = record(avail[pos], vtep, mac, tracker.transitions as u32, latency);
    rec.streak = tracker.streak.min(255) as u8;
    stored.machines[slot(machine)] = rec;
    if let Some(tr) = &out.transition {
        info!(tenant = t.name, machine = %tr.machine, from = ?tr.from, to = ?tr.to, probe = ?tr.probe, "machine {}", if tr.to == State::Up { "up" } else { "down" });
    }

    let cores: ArrayVec<Availability, 2> = ids
        .iter()
        .zip(&avail)
        .filter(|((m, _, _), _)| m.role == Role::Core)
        .map(|(_, a)| *a)
        .collect();
    let last_switch = (stored.last_switch_ms != 0).then_some(stored.last_switch_ms);
    if let CoreChoice::Switch { to, failback } =
        choose_core(active, &cores, h.failback, now_ms, last_switch, h.interval.0)
    {
        info!(tenant = t.name, from = %core(active), to = %core(to), failback, "active core switched");
        out.core_switch = Some((active, to));
        active = to;
        stored.last_switch_ms = now_ms;
    }
    if changed(&before, &stored) || (stored != before && now_ms.saturating_sub(written_ms) >= LATENCY_REFRESH_MS) {
        known.write(dp, id, &stored, now_ms)?;
    }
    if out.transition.is_some() || out.core_switch.is_some() {
        // Forgotten first: if the write fails, the next result reads what
        // the map holds.
        known.forget(id);
        out.all_connectors_out = write_record(dp, id, t, &ids, &avail, active)?;
        let e = known.entry(dp, id, &t.name)?;
        e.written_ms = now_ms;
    }
    Ok(out)
}

fn core(index: u8) -> Machine {
    Machine {
        role: Role::Core,
        index,
    }
}

/// Rewrites the tenant record from the machines' availability; says
/// whether no connector could take traffic.
pub fn write_record(
    dp: &mut Dataplane,
    id: u32,
    t: &Tenant,
    ids: &[(Machine, [u8; 4], [u8; 6])],
    avail: &[Availability],
    active: u8,
) -> Result<bool> {
    let conns: ArrayVec<Availability, 2> = ids
        .iter()
        .zip(avail)
        .filter(|((m, _, _), _)| m.role == Role::Connector)
        .map(|(_, a)| *a)
        .collect();
    let (up, all_out) = connectors_in_choice(&conns);
    if all_out {
        warn!(
            tenant = t.name,
            "no connector can take traffic: new flows are spread over all of them as if up"
        );
    }
    let mut h = Health {
        connectors_up: [true, true],
        active_core: active,
    };
    for (i, u) in up.iter().take(2).enumerate() {
        h.connectors_up[i] = *u;
    }
    dp.rewrite_health(id, t, &h)?;
    Ok(all_out)
}

/// The stored health of tenant `id`, for callers that only read.
pub fn stored(dp: &Dataplane, id: u32) -> Result<TenantHealth> {
    Ok(dp.tenant_health(id)?.unwrap_or_default())
}
