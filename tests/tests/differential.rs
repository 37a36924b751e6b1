//! The programs against the reference model (`carwash_tests::model`):
//! random policies (overlapping prefixes, both families, both lanes,
//! connectors down or drained, the standby core active, tenants not ready)
//! and random and edge-case frames through `carwash_uplink` and
//! `carwash_fabric` with BPF_PROG_TEST_RUN, every field compared: action,
//! every counter and drop reason, the output frame. Any difference fails
//! with the frame and the policy. DESIGN's isolation invariants are
//! checked on every frame besides.
//!
//! `CARWASH_DIFF_CASES` sets the number of frames (CI default below;
//! `cargo xtask fuzz` runs 1,000,000), `CARWASH_SEED` the seed.
use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Instant;

use carwash_policy::{MacAddr, Tenant};
use carwash_tests::fabric::{
    FABRIC_MAC, FABRIC_MTU, FabricNs, HOST_VTEP, INTERNET_ROUTER_MAC, ROUTER_MAC, UPLINK_MAC, vtep_mac,
};
use carwash_tests::fixture::{XDP_DROP, action_name};
use carwash_tests::frames::{Rng, fabric_frame, policy, uplink_frame, vtep_pool};
use carwash_tests::model::{self, Host, MTenant, Model, Out, Verdict};
use carwash_tests::require_root;
use dataplane::Dataplane;
use dataplane::tables::{DEFAULT_SNAT_PORTS, Health};
use dataplane_common::types::{SIDE_FABRIC, SIDE_UPLINK};
use dataplane_common::{Counter, DropReason, programs};

const CI_CASES: u64 = 150_000;
/// Frames per random policy.
const PER_POLICY: u64 = 5_000;

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn host(fab: &FabricNs) -> Host {
    let _ = fab;
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
fn health(r: &mut Rng, t: &Tenant) -> Health {
    let double = t.connectors.len() == 2;
    let connectors_up = match (double, r.below(10)) {
        (false, _) => [true, false],
        (true, 0) => [false, true],
        (true, 1) => [true, false],
        (true, 2) if r.chance(30) => [false, false],
        _ => [true, true],
    };
    let connectors_up = if !double && r.chance(5) { [false, false] } else { connectors_up };
    Health {
        connectors_up,
        active_core: if double && r.chance(40) { 1 } else { 0 },
    }
}

fn describe_policy(m: &Model) -> String {
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
fn compare(dp: &Dataplane, m: &mut Model, fabric: bool, frame: &[u8], tally: &mut Tally) -> Result<(), String> {
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
struct Tally {
    actions: HashMap<&'static str, u64>,
    reasons: HashMap<&'static str, u64>,
    translated: u64,
}

#[test]
fn programs_agree_with_the_model() {
    require_root();
    let cases = env_u64("CARWASH_DIFF_CASES", CI_CASES);
    let seed = env_u64(
        "CARWASH_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    println!("differential: {cases} frames, seed {seed} (CARWASH_SEED={seed} repeats the run)");
    let fab = FabricNs::new(&[]).unwrap();
    for v in vtep_pool() {
        fab.ns.neigh("fabric", &v.to_string(), MacAddr(vtep_mac(v))).unwrap();
    }
    let started = Instant::now();
    let (tally, failures) = fab
        .ns
        .enter(|| run(&fab, cases, seed))
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "differential: {cases} frames in {secs:.1} s ({:.0} frames/s); actions {:?}; {} translations checked",
        cases as f64 / secs,
        tally.actions,
        tally.translated
    );
    let mut reasons: Vec<_> = tally.reasons.into_iter().collect();
    reasons.sort();
    println!("differential: drop reasons {reasons:?}");
    assert!(
        failures.is_empty(),
        "{} frames where the programs and the model differ (seed {seed}); the first:\n{}",
        failures.len(),
        failures.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
    );
}

fn run(fab: &FabricNs, cases: u64, seed: u64) -> (Tally, Vec<String>) {
    let mut r = Rng::new(seed);
    let mut dp = Dataplane::load(None).unwrap();
    dp.set_host(&fab.host_params()).unwrap();
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    let mut done = 0u64;
    let mut serial = 0u64;
    while done < cases && failures.len() < 200 {
        let n_tenants = 2 + r.below(5);
        let tenants = policy(&mut r, n_tenants);
        let mut installed = Vec::new();
        for (i, t) in tenants.iter().enumerate() {
            let h = health(&mut r, t);
            let id = i as u32 + 1;
            dp.install_tenant_with(id, t, &h).unwrap();
            installed.push((id, h));
        }
        let mut m = Model {
            host: host(fab),
            tenants: vec![],
            replies: HashMap::new(),
        };
        for ((id, h), t) in installed.iter().zip(&tenants) {
            let ready = !r.chance(8);
            if !ready {
                dp.set_tenant_ready(*id, false).unwrap();
            }
            let info = dp.tenant_info(*id).unwrap().unwrap();
            let mt = MTenant {
                id: *id,
                policy: t.clone(),
                ready,
                connectors_up: [h.connectors_up[0], h.connectors_up[1] && t.connectors.len() > 1],
                active_core: h.active_core as usize,
                maglev: info.maglev.to_vec(),
            };
            if let Err(e) = mt.check_maglev() {
                failures.push(format!("{e}\npolicy:\n{}", describe_policy(&m)));
            }
            m.tenants.push(mt);
        }
        let n = PER_POLICY.min(cases - done);
        for _ in 0..n {
            let fabric = r.chance(45);
            serial += 1;
            let frame = if fabric {
                fabric_frame(&mut r, &tenants, HOST_VTEP, serial)
            } else {
                let replies: Vec<model::ReplyKey> = m.replies.keys().take(64).copied().collect();
                uplink_frame(&mut r, &tenants, &replies)
            };
            if let Err(e) = compare(&dp, &mut m, fabric, &frame, &mut tally) {
                failures.push(format!("{e}policy:\n{}", describe_policy(&m)));
                if failures.len() >= 200 {
                    break;
                }
            }
        }
        done += n;
        for (id, _) in &installed {
            dp.remove_tenant(*id, &tenants[*id as usize - 1]).unwrap();
        }
        dp.reclaim_conntrack(0, |_| false).unwrap();
    }
    (tally, failures)
}
