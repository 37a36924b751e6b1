//! Maintenance by hand through the API socket: drain and undrain a machine,
//! make a core active. The agent's loop runs these, so they are ordered with
//! applies; the rules are `crate::health`'s, the writes the owners' of the
//! maps (`HEALTH`: `health::store`, the tenant record: `tables`).

use anyhow::Result;
use carwash_policy::Tenant;
use dataplane_common::types::TenantHealth;
use tracing::info;

use super::Agent;
use super::messages::Manual;
use crate::api::Response;
use crate::clock::wall_ms;
use crate::health::apply::write_record;
use crate::health::store::{availability, machines, record, slot};
use crate::health::{Availability, CoreChoice, Machine, ManualError, Role, check_activate, check_machine, choose_core};

/// Carries out `op` on `machine` of `tenant`, or says why not.
impl Agent {
    pub fn manual(&mut self, op: Manual, tenant: &str, machine: &str) -> Response {
        match run(self, op, tenant, machine) {
            Ok(()) => Response {
                ok: true,
                ..Default::default()
            },
            Err(e) => Response::error(format!("{e:#}")),
        }
    }
}

fn run(agent: &mut Agent, op: Manual, tenant: &str, machine: &str) -> Result<()> {
    let machine: Machine = machine.parse().map_err(anyhow::Error::msg)?;
    let id = *agent
        .engine
        .ids()
        .get(tenant)
        .ok_or_else(|| ManualError::UnknownTenant(tenant.to_string()))?;
    let t = agent
        .engine
        .installed
        .get(&id)
        .and_then(|i| i.policy())
        .ok_or_else(|| ManualError::UnknownTenant(tenant.to_string()))?;
    check_machine(tenant, machine, t.connectors.len().min(2), t.cores.len().min(2))?;
    // The maps are read and written here: the probes' copy of them is
    // stale from now on.
    if let Some(p) = agent.probing.as_mut() {
        p.known.forget(id);
    }
    let now = wall_ms();
    let mut stored = agent.dp.tenant_health(id)?.unwrap_or_default();
    let ids = machines(&t);
    let mut avail: Vec<Availability> = ids
        .iter()
        .map(|(m, vtep, mac)| availability(&stored.machines[slot(*m)], *vtep, *mac, now))
        .collect();
    let pos = ids.iter().position(|(m, _, _)| *m == machine).expect("checked above");
    let info = agent
        .dp
        .tenant_info(id)?
        .ok_or_else(|| anyhow::anyhow!("tenant {tenant:?} has no record in the maps"))?;
    let mut active = info.active_core;
    let first_active = active;
    let mut switched = false;
    let mut drain_changed = None;
    match op {
        Manual::Drain | Manual::Undrain => {
            let drained = op == Manual::Drain;
            if avail[pos].drained != drained {
                avail[pos].drained = drained;
                info!(tenant, %machine, drained, "machine {}", if drained { "drained" } else { "undrained" });
                drain_changed = Some(drained);
            }
            let cores: Vec<Availability> = core_avail(&ids, &avail);
            if let CoreChoice::Switch { to, .. } = choose_core(active, &cores, false, now, None, 1000) {
                info!(tenant, from = %core(active), to = %core(to), "active core switched: the active core was drained");
                active = to;
                switched = true;
            }
        }
        Manual::Activate { force } => {
            check_activate(machine, avail[pos], force)?;
            if active != machine.index {
                info!(tenant, from = %core(active), to = %machine, force, "active core switched by hand");
                active = machine.index;
                switched = true;
            }
        }
    }
    let all_out = write(agent, id, &t, &ids, &avail, &mut stored, active, switched, now)?;
    if let Some(drained) = drain_changed {
        let mut f = serde_json::Map::new();
        f.insert("tenant".into(), tenant.into());
        f.insert("machine".into(), machine.to_string().into());
        f.insert("drained".into(), drained.into());
        f.insert("all_connectors_out".into(), all_out.into());
        agent.events.emit("drain", f);
    }
    if switched {
        let why = if matches!(op, Manual::Activate { .. }) {
            "activate"
        } else {
            "drain"
        };
        agent.emit_core_switch(tenant, first_active, active, why);
    }
    Ok(())
}

fn core(index: u8) -> Machine {
    Machine {
        role: Role::Core,
        index,
    }
}

fn core_avail(ids: &[(Machine, [u8; 4], [u8; 6])], avail: &[Availability]) -> Vec<Availability> {
    ids.iter()
        .zip(avail)
        .filter(|((m, _, _), _)| m.role == Role::Core)
        .map(|(_, a)| *a)
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn write(
    agent: &mut Agent,
    id: u32,
    t: &Tenant,
    ids: &[(Machine, [u8; 4], [u8; 6])],
    avail: &[Availability],
    stored: &mut TenantHealth,
    active: u8,
    switched: bool,
    now: u64,
) -> Result<bool> {
    for ((m, vtep, mac), a) in ids.iter().zip(avail) {
        let old = stored.machines[slot(*m)];
        let same = old.vtep == *vtep && old.mac == *mac;
        let transitions = if same { old.transitions } else { 0 };
        let latency = if same { old.last_latency_us } else { 0 };
        stored.machines[slot(*m)] = record(*a, *vtep, *mac, transitions, latency);
    }
    if switched {
        stored.last_switch_ms = now;
    }
    // HEALTH first: if the agent dies between the writes, the next one
    // rewrites the record from it; the other order could lose a drain.
    agent.dp.set_tenant_health(id, stored)?;
    write_record(&mut agent.dp, id, t, ids, avail, active)
}
