//! The agent's side of the health probes: it sets up the probe path and the
//! checker at start, hands the checker the machines of the policy in force
//! after every apply, and turns each result into map writes
//! (`health::apply::record_probe`) and events (`health`, `core_switch`).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use carwash_policy::Tenant;
use dataplane_common::types::ProbeHost;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tracing::{error, warn};

use super::Agent;
use super::checker::{self, Checker, Probing, Reply, Targets};
use super::probe_path;
use super::syn_probe::{HostSide, SynProber};
use crate::config::ProbeResets;
use crate::health::apply::{Outcome, record_probe};
use crate::health::known::Known;
use crate::health::{Machine, Probe, Role, State};

/// Every probe in flight holds a socket: 40,000 machines probed every
/// second, each probe open up to its timeout, would run past the usual soft
/// limit of 1,024 descriptors as soon as answers slow down. The soft limit
/// goes up to the hard one.
fn raise_open_files() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let old = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                tracing::info!(from = old, to = lim.rlim_max, "open files limit raised for the probes");
            }
        }
    }
}

fn core(index: u8) -> Machine {
    Machine {
        role: Role::Core,
        index,
    }
}

impl Agent {
    /// Sets up the probe path and starts the checker (with `[probes]`
    /// enabled). Without a probe path the agent runs on: drains and
    /// activations by hand still work, and the error is logged.
    pub async fn start_probing(&mut self) -> Option<mpsc::Receiver<Vec<Reply>>> {
        if !self.cfg.probes.enabled {
            return None;
        }
        if self.cfg.cluster.is_some() {
            // Behind ECMP the hosts share the VTEP a machine answers to: a
            // probe's reply may reach another host, and a machine would be
            // declared down for it.
            warn!("no health probes on a host of a fleet ([cluster]): their replies may reach another host");
            return None;
        }
        match self.probe_path().await {
            Ok(()) => {}
            Err(e) => {
                error!(error = %format!("{e:#}"), "no health probes: the probe path could not be set up");
                return None;
            }
        }
        raise_open_files();
        let syn = match self.syn_prober() {
            Ok(p) => Some(p),
            Err(e) => {
                warn!(error = %format!("{e:#}"), "TCP checks by connect: no half-open probes");
                None
            }
        };
        let (tx, rx) = mpsc::channel(checker::RESULT_BATCHES);
        self.probing = Some(Probing {
            checker: Checker::spawn(self.cfg.probes.source, tx, syn),
            policies: HashMap::new(),
            digest: None,
            known: Known::new(),
        });
        self.refresh_probes();
        Some(rx)
    }

    /// The half-open prober of the TCP checks (`super::syn_probe`).
    fn syn_prober(&mut self) -> Result<SynProber> {
        let ring = self.dp.take_probe_replies()?;
        let resets = match self.dp.take_probe_resets() {
            Ok(m) => Some(m),
            Err(e) => {
                warn!("the fabric's probe resets are not checked: {e:#}");
                None
            }
        };
        SynProber::new(
            HostSide {
                vtep: self.cfg.vtep,
                router_mac: self.cfg.router_mac.map(|m| m.0).unwrap_or(self.fabric.mac),
                source: self.cfg.probes.source,
            },
            ring,
            resets,
        )
    }

    async fn probe_path(&mut self) -> Result<()> {
        let p = self.cfg.probes.clone();
        probe_path::ensure(&p, &self.fabric.name).await?;
        self.dp.attach_probe(probe_path::PROBE_DEVICE)?;
        let in_path = p.resets == ProbeResets::Fabric
            && match self.dp.attach_probe_reset(&self.fabric.name) {
                Ok(()) => true,
                Err(e) => {
                    warn!("probe resets sent by the agent: {e:#}");
                    false
                }
            };
        self.dp
            .set_probe_host(&ProbeHost {
                addr: p.source.octets(),
                fabric_mac: self.fabric.mac,
                resets_in_path: u8::from(in_path),
                _pad: 0,
            })
            .context("writing PROBE_HOST")
    }

    /// Hands the checker the machines of the policy in force (after an
    /// apply; the checker ignores a set that did not change).
    pub fn refresh_probes(&mut self) {
        let Some(p) = self.probing.as_mut() else {
            return;
        };
        if p.digest.as_deref() == Some(self.engine.digest.as_str()) {
            return;
        }
        p.digest = Some(self.engine.digest.clone());
        // An apply may have rewritten any tenant's record or `HEALTH`.
        p.known.clear();
        let mut targets = Targets::default();
        let mut policies = HashMap::new();
        for (id, inst) in &self.engine.installed {
            let Some(t) = inst.policy() else { continue };
            for target in checker::targets(*id, &t) {
                targets.insert(target.mark() as u64, target);
            }
            let t = match p.policies.get(id) {
                Some(old) if **old == t => old.clone(),
                _ => Arc::new(t),
            };
            policies.insert(*id, t);
        }
        p.policies = policies;
        p.checker.set(targets);
    }

    /// One probe result at `now_ms`: recorded, decided on, written,
    /// announced.
    pub fn on_probe(&mut self, reply: Reply, now_ms: u64) {
        let Some(p) = self.probing.as_mut() else {
            return;
        };
        let Some(t) = p.policies.get(&reply.tenant).cloned() else {
            return;
        };
        let probe = reply.probe.clone();
        match record_probe(
            &mut self.dp,
            &mut p.known,
            reply.tenant,
            &t,
            reply.machine,
            reply.probe,
            now_ms,
        ) {
            Ok(out) => self.announce_outcome(&t, &probe, &out),
            Err(e) => warn!(tenant = t.name, machine = %reply.machine, error = %format!("{e:#}"), "recording a probe"),
        }
    }

    fn announce_outcome(&self, t: &Tenant, probe: &Probe, out: &Outcome) {
        if let Some(tr) = &out.transition {
            let mut f = Map::new();
            f.insert("tenant".into(), t.name.clone().into());
            f.insert("machine".into(), tr.machine.to_string().into());
            f.insert("state".into(), (if tr.to == State::Up { "up" } else { "down" }).into());
            f.insert("from".into(), (if tr.from == State::Up { "up" } else { "down" }).into());
            f.insert("at_ms".into(), tr.at_ms.into());
            match probe {
                Probe::Pass { latency_us } => {
                    f.insert("result".into(), "pass".into());
                    f.insert("latency_us".into(), (*latency_us).into());
                }
                Probe::Fail { why } => {
                    f.insert("result".into(), "fail".into());
                    f.insert("why".into(), why.clone().into());
                }
            }
            f.insert("all_connectors_out".into(), out.all_connectors_out.into());
            self.events.emit("health", f);
        }
        if let Some((from, to)) = out.core_switch {
            self.emit_core_switch(&t.name, from, to, "probe");
        }
    }

    /// A `core_switch` event: `why` is `probe` (a failure or a failback)
    /// or `drain` / `activate` (by hand).
    pub fn emit_core_switch(&self, tenant: &str, from: u8, to: u8, why: &str) {
        let mut f = Map::new();
        f.insert("tenant".into(), tenant.into());
        f.insert("machine".into(), core(to).to_string().into());
        f.insert("from".into(), core(from).to_string().into());
        f.insert("to".into(), core(to).to_string().into());
        f.insert("why".into(), Value::from(why));
        self.events.emit("core_switch", f);
    }
}
