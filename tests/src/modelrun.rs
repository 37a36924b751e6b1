//! Running frames through the programs and the reference model side by
//! side (`tests/differential.rs`, `tests/fuzz_frames.rs`): random policies
//! installed in a dataplane and in the model alike, and one frame compared
//! field by field.
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use carwash_policy::Tenant;
use dataplane::Dataplane;
use dataplane::tables::{DEFAULT_SNAT_PORTS, Health};
use dataplane_common::drop::{DROPPED_BYTES, STEERED_BYTES, STEERED_PACKETS, TENANT_STAT_SLOTS};
use dataplane_common::types::TenantStats;
use dataplane_common::types::{SIDE_FABRIC, SIDE_UPLINK};
use dataplane_common::{Counter, DropReason, programs};

use crate::fabric::{FABRIC_MAC, FABRIC_MTU, HOST_VTEP, INTERNET_ROUTER_MAC, ROUTER_MAC, UPLINK_MAC, vtep_mac};
use crate::fixture::{XDP_DROP, action_name};
use crate::frames::{Rng, policy, vtep_pool};
use crate::model::{Host, MTenant, Model, Out, Verdict};

/// The seed of a run: `CARWASH_SEED`, or the clock.
pub fn seed() -> u64 {
    env_u64(
        "CARWASH_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is past 1970")
            .as_nanos() as u64,
    )
}

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The model's view of the fixture namespace (`crate::fabric`), with
/// the VTEPs of [`vtep_pool`] resolved.
pub fn host() -> Host {
    Host {
        vtep: HOST_VTEP,
        router_mac: ROUTER_MAC,
        fabric_mac: FABRIC_MAC,
        fabric_mtu: FABRIC_MTU,
        uplink_mac: UPLINK_MAC,
        internet_mac: INTERNET_ROUTER_MAC,
        snat_ports: DEFAULT_SNAT_PORTS,
        fabric_net: "10.200.0.1/16".parse().unwrap(),
        fabric_neighbours: vtep_pool().into_iter().map(|v| (v, vtep_mac(v))).collect(),
        uplink_net4: "100.64.0.1/30".parse().unwrap(),
        uplink_router4: "100.64.0.2".parse().unwrap(),
        uplink_net6: "fd00:64::1/64".parse().unwrap(),
        uplink_router6: "fd00:64::2".parse().unwrap(),
    }
}

/// The machines' state for a tenant: connectors up, down or drained (the
/// maps say the same for both), the standby core active sometimes.
pub fn health(r: &mut Rng, t: &Tenant) -> Health {
    let double = t.connectors.len() == 2;
    let connectors_up = match (double, r.below(10)) {
        (false, _) => [true, false],
        (true, 0) => [false, true],
        (true, 1) => [true, false],
        (true, 2) if r.chance(30) => [false, false],
        _ => [true, true],
    };
    let connectors_up = if !double && r.chance(5) {
        [false, false]
    } else {
        connectors_up
    };
    Health {
        connectors_up,
        active_core: if double && r.chance(40) { 1 } else { 0 },
    }
}

pub fn describe_policy(m: &Model) -> String {
    let mut s = String::new();
    for t in &m.tenants {
        let _ = writeln!(
            s,
            "  tenant {} (id {}, ready {}, connectors up {:?}, active core {}):\n    {}",
            t.policy.name,
            t.id,
            t.ready,
            t.connectors_up,
            t.active_core,
            serde_json::to_string(&t.policy).unwrap()
        );
    }
    s
}

/// Runs one frame through the program and the model; `Err` lists every
/// field that differs.
pub fn compare(dp: &Dataplane, m: &mut Model, fabric: bool, frame: &[u8], tally: &mut Tally) -> Result<(), String> {
    let (prog, side) = if fabric {
        (programs::FABRIC, SIDE_FABRIC)
    } else {
        (programs::UPLINK, SIDE_UPLINK)
    };
    let before = dp.counters(side).map_err(|e| e.to_string())?;
    let (action, out) = dp.run(prog, frame).map_err(|e| e.to_string())?;
    let delta = dp.counters(side).map_err(|e| e.to_string())?.since(&before);
    let want: Verdict = if fabric { m.fabric(frame) } else { m.uplink(frame) };
    let mut errors = String::new();
    if let Err(e) = m.isolation(fabric, frame, action, &out) {
        let _ = writeln!(errors, "  ISOLATION: {e}");
    }
    if action != want.action {
        let _ = writeln!(
            errors,
            "  action: program {}, model {}",
            action_name(action),
            action_name(want.action)
        );
    }
    for &c in Counter::ALL {
        let w: u64 = want.counters.iter().filter(|(x, _)| *x == c).map(|(_, n)| n).sum();
        if delta.get(c) != w {
            let _ = writeln!(errors, "  counter {}: program {}, model {w}", c.name(), delta.get(c));
        }
    }
    for &r in DropReason::ALL {
        let w = want.drops.iter().filter(|x| **x == r).count() as u64;
        if delta.dropped(r) != w {
            let _ = writeln!(errors, "  drop {}: program {}, model {w}", r.name(), delta.dropped(r));
        }
    }
    if action == want.action && action != XDP_DROP {
        let expect = match &want.output {
            Out::Unchanged => Some(frame.to_vec()),
            Out::Exact(v) => Some(v.clone()),
            Out::Snat(s) if out.len() >= s.port_off + 2 => {
                let port = u16::from_be_bytes([out[s.port_off], out[s.port_off + 1]]);
                let (lo, hi) = m.host.snat_ports;
                if !(lo..=hi).contains(&port) {
                    let _ = writeln!(errors, "  translated port {port} outside {lo}-{hi}");
                }
                let e = s.with_port(port);
                if e == out {
                    m.track(s, port);
                    tally.translated += 1;
                }
                Some(e)
            }
            Out::Snat(_) => Some(vec![]),
        };
        if let Some(e) = expect
            && e != out
        {
            let _ = writeln!(errors, "  output:\n    program {:02x?}\n    model   {:02x?}", out, e);
        }
    }
    *tally.actions.entry(action_name(action)).or_default() += 1;
    for r in &want.drops {
        *tally.reasons.entry(r.name()).or_default() += 1;
    }
    if let Some(id) = want.tenant {
        let row = tally
            .tenant_expect
            .entry((id, want.class))
            .or_insert_with(|| vec![0; TENANT_STAT_SLOTS]);
        match want.drops.first() {
            Some(r) => {
                row[r.slot()] += 1;
                row[DROPPED_BYTES] += frame.len() as u64;
            }
            None => {
                row[STEERED_PACKETS] += 1;
                row[STEERED_BYTES] += frame.len() as u64;
            }
        }
    }
    for (c, _) in &want.counters {
        if matches!(
            c,
            Counter::Steered | Counter::Decapsulated | Counter::SnatReply | Counter::SnatIcmpError | Counter::SnatOut
        ) {
            *tally.paths.entry(c.name()).or_default() += 1;
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} frame {:02x?}\n  model verdict: {:?}\n{errors}",
            if fabric { "fabric" } else { "uplink" },
            frame,
            (want.action, &want.drops, want.tenant, want.backend)
        ))
    }
}

#[derive(Default)]
pub struct Tally {
    pub actions: HashMap<&'static str, u64>,
    pub reasons: HashMap<&'static str, u64>,
    /// What the model says each tenant's counters must move by since
    /// [`tenant_stats_before`]: by (tenant id, class), one row of slots.
    pub tenant_expect: HashMap<(u32, u8), Vec<u64>>,
    /// Frames by the path they took (the model's counters).
    pub paths: HashMap<&'static str, u64>,
    pub translated: u64,
}

/// Installs a random policy of `n` tenants (ids 1..=n) with random machine
/// states, some tenants not ready, and returns it with the model of it.
/// `Err` if a Maglev table the maps hold is wrong.
pub fn install_random(dp: &mut Dataplane, r: &mut Rng, n: usize) -> (Vec<Tenant>, Model, Result<(), String>) {
    let tenants = policy(r, n);
    let mut m = Model {
        host: host(),
        tenants: vec![],
        replies: BTreeMap::new(),
    };
    let mut result = Ok(());
    for (i, t) in tenants.iter().enumerate() {
        let h = health(r, t);
        let id = i as u32 + 1;
        dp.install_tenant_with(id, t, &h).expect("installing a tenant");
        let ready = !r.chance(8);
        if !ready {
            dp.set_tenant_ready(id, false).expect("marking a tenant not ready");
        }
        let info = dp.tenant_info(id).expect("reading a tenant").expect("installed");
        let mt = MTenant {
            id,
            policy: t.clone(),
            ready,
            connectors_up: [h.connectors_up[0], h.connectors_up[1] && t.connectors.len() > 1],
            active_core: h.active_core as usize,
            maglev: info.maglev.to_vec(),
        };
        if let Err(e) = mt.check_maglev() {
            result = Err(e);
        }
        m.tenants.push(mt);
    }
    (tenants, m, result)
}

/// Removes the tenants [`install_random`] installed and every tracked flow.
pub fn uninstall(dp: &mut Dataplane, tenants: &[Tenant]) {
    for (i, t) in tenants.iter().enumerate() {
        dp.remove_tenant(i as u32 + 1, t).expect("removing a tenant");
    }
    dp.reclaim_conntrack(0, |_| false).expect("emptying the tracking table");
}

/// Every tenant's counters (ids 1..=n), to compare against later.
pub fn tenant_stats_before(dp: &Dataplane, n: usize) -> Vec<TenantStats> {
    (1..=n as u32)
        .map(|id| dp.tenant_stats(id).expect("reading a tenant's counters"))
        .collect()
}

/// Checks each tenant's counters (by class: steered packets and bytes,
/// dropped bytes, every drop reason) against what the model expected since
/// `before`, and starts the expectation afresh: `Err` names every slot
/// that differs.
pub fn check_tenant_stats(dp: &Dataplane, before: &[TenantStats], tally: &mut Tally) -> Result<(), String> {
    let mut errors = Vec::new();
    for (i, b) in before.iter().enumerate() {
        let id = i as u32 + 1;
        let now = dp.tenant_stats(id).map_err(|e| e.to_string())?;
        for class in 0..3u8 {
            let want = tally
                .tenant_expect
                .remove(&(id, class))
                .unwrap_or_else(|| vec![0; TENANT_STAT_SLOTS]);
            for (slot, w) in want.iter().enumerate() {
                let got = now[class as usize][slot] - b[class as usize][slot];
                if got != *w {
                    let what = match slot {
                        STEERED_PACKETS => "steered packets".to_string(),
                        STEERED_BYTES => "steered bytes".to_string(),
                        DROPPED_BYTES => "dropped bytes".to_string(),
                        s => DropReason::ALL
                            .iter()
                            .find(|r| r.slot() == s)
                            .map_or(format!("slot {s}"), |r| r.name().to_string()),
                    };
                    errors.push(format!("tenant {id} class {class} {what}: program {got}, model {w}"));
                }
            }
        }
    }
    tally.tenant_expect.clear();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}
