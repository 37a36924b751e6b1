//! Maintenance by hand through the API socket and `carwash machine` /
//! `carwash core`: a drained connector leaves the consistent-hash choice, a
//! core is made active with one write, requests about unknown tenants or
//! machines (or a core that cannot take traffic) are refused clearly, and
//! all of it survives an agent SIGKILL and restart.
mod agent_common;

use agent_common::{AgentSetup, carwash};
use carwash_tests::require_root;
use dataplane::Dataplane;
use dataplane::api::Request;
use dataplane::maglev;
use dataplane_common::types::TenantInfo;

fn record(pins: &std::path::Path, id: u32) -> TenantInfo {
    let dp = Dataplane::load(Some(pins)).unwrap();
    dp.tenant_info(id).unwrap().expect("acme has a record")
}

fn drain(tenant: &str, machine: &str) -> Request {
    Request::Drain {
        tenant: tenant.into(),
        machine: machine.into(),
    }
}

fn activate(machine: &str, force: bool) -> Request {
    Request::Activate {
        tenant: "acme".into(),
        machine: machine.into(),
        force,
    }
}

#[test]
fn drain_undrain_activate_are_checked_and_survive_a_restart() {
    require_root();
    let setup = AgentSetup::new(&["acme.toml", "beta.toml"]).unwrap();
    let a1 = setup.start().unwrap();
    let status = a1.status();
    let id = status.tenants.iter().find(|t| t.name == "acme").unwrap().id;
    let acme = carwash_tests::fabric::repo_policies()
        .tenants
        .into_iter()
        .find(|t| t.name == "acme")
        .unwrap();
    let ids: Vec<maglev::Identity> = acme.connectors.iter().map(|c| (c.vtep.octets(), c.mac.0)).collect();
    let both = maglev::build(&ids, &[true, true]);
    let before = record(setup.pin_path(), id);
    assert_eq!((before.connectors[1].up, before.active_core), (1, 0));
    assert_eq!(before.maglev, both);

    // Refusals, each saying what is wrong; nothing changes.
    for (req, says) in [
        (drain("nobody", "connector/0"), "no tenant \"nobody\""),
        (
            drain("acme", "core/5"),
            "has no core/5; it has connector/0, connector/1, core/0, core/1",
        ),
        (drain("acme", "server/0"), "expected connector/N or core/N"),
        (activate("connector/0", false), "not a core"),
    ] {
        let r = a1.call(&req);
        assert!(!r.ok, "{req:?} accepted");
        let e = r.error.unwrap_or_default();
        assert!(e.contains(says), "{req:?}: {e}");
    }
    assert_eq!(record(setup.pin_path(), id), before);

    // Drain connector/1 with the CLI: it leaves the table.
    let sock = setup.socket.to_str().unwrap();
    let out = carwash(&["machine", "drain", "acme", "connector/1", "--socket", sock]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let drained = record(setup.pin_path(), id);
    assert_eq!(drained.connectors[1].up, 0);
    assert_eq!(drained.maglev, maglev::build(&ids, &[true, false]));
    assert!(
        drained.maglev[..dataplane_common::types::MAGLEV_SIZE]
            .iter()
            .all(|&c| c == 0)
    );

    // Core/1 active by hand, one write.
    let out = carwash(&["core", "activate", "acme", "core/1", "--socket", sock]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(record(setup.pin_path(), id).active_core, 1);

    // A drained core is not activated without --force.
    assert!(a1.call(&drain("acme", "core/0")).ok);
    let r = a1.call(&activate("core/0", false));
    assert!(!r.ok);
    assert_eq!(
        r.error.as_deref(),
        Some("core/0 is drained; activate it anyway with --force")
    );
    let out = carwash(&["core", "activate", "acme", "core/0", "--socket", sock]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert!(
        a1.call(&Request::Undrain {
            tenant: "acme".into(),
            machine: "core/0".into()
        })
        .ok
    );
    assert_eq!(
        record(setup.pin_path(), id).active_core,
        1,
        "undraining core/0 does not move the core back"
    );

    // The metrics say the same.
    let pins = dataplane::pinned::Pins::open(setup.pin_path()).unwrap();
    let snap = dataplane::agent::metrics::Snapshot::read(&pins, &mut Default::default()).unwrap();
    let text = snap.encode(false).unwrap();
    for line in [
        "carwash_machine_drained{tenant=\"acme\",machine=\"connector/1\"} 1",
        "carwash_machine_drained{tenant=\"acme\",machine=\"core/0\"} 0",
        "carwash_machine_up{tenant=\"acme\",machine=\"core/0\"} 1",
        "carwash_tenant_active_core{tenant=\"acme\"} 1",
        "carwash_tenant_active_core{tenant=\"beta\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }

    // Every change by hand is an event: the drains (with what they left
    // of the connectors) and the switch by `core activate`.
    let log = setup.dir.path().join("log/events.jsonl");
    let events: Vec<serde_json::Value> = wait_events(&log, 4);
    let drain_of = |m: &str, drained: bool| {
        events
            .iter()
            .find(|e| e["type"] == "drain" && e["tenant"] == "acme" && e["machine"] == m && e["drained"] == drained)
    };
    let d = drain_of("connector/1", true).unwrap_or_else(|| panic!("no drain of connector/1 in {events:?}"));
    assert_eq!(d["all_connectors_out"], false);
    assert!(drain_of("core/0", true).is_some(), "{events:?}");
    assert!(drain_of("core/0", false).is_some(), "{events:?}");
    let sw = events
        .iter()
        .find(|e| e["type"] == "core_switch" && e["tenant"] == "acme")
        .unwrap_or_else(|| panic!("no core_switch in {events:?}"));
    assert_eq!(
        (&sw["from"], &sw["to"], &sw["why"]),
        (&"core/0".into(), &"core/1".into(), &"activate".into())
    );

    // SIGKILL and restart: connector/1 still out, core/1 still active.
    a1.kill();
    // `carwash health` answers from the pins while no agent runs.
    let pin = setup.pin_path().to_str().unwrap();
    let out = carwash(&["health", "--tenant", "acme", "--pin-path", pin, "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let seen: Vec<(String, String, bool)> = report["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["machine"].as_str().unwrap().to_string(),
                m["state"].as_str().unwrap().to_string(),
                m["takes_traffic"].as_bool().unwrap(),
            )
        })
        .collect();
    let want = [
        ("connector/0", "up", true),
        ("connector/1", "drained", false),
        ("core/0", "up", false),
        ("core/1", "up", true),
    ];
    assert_eq!(
        seen,
        want.map(|(m, s, t)| (m.to_string(), s.to_string(), t)).to_vec(),
        "{report}"
    );
    let out = carwash(&["health", "--tenant", "nobody", "--pin-path", pin]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no tenant \"nobody\""));
    let a2 = setup.start().unwrap();
    let after = record(setup.pin_path(), id);
    assert_eq!((after.connectors[1].up, after.active_core), (0, 1));
    assert_eq!(after.maglev, drained.maglev);
    let kept = Dataplane::load(Some(setup.pin_path()))
        .unwrap()
        .tenant_health(id)
        .unwrap()
        .unwrap();
    assert_eq!(
        kept.machines.map(|m| m.drained),
        [0, 1, 0, 0],
        "HEALTH keeps connector/1 drained"
    );
    assert_ne!(kept.last_switch_ms, 0, "and when the core last switched");
    // Undraining brings the buckets back.
    assert!(
        a2.call(&Request::Undrain {
            tenant: "acme".into(),
            machine: "connector/1".into()
        })
        .ok
    );
    let back = record(setup.pin_path(), id);
    assert_eq!((back.connectors[1].up, back.active_core), (1, 1));
    assert_eq!(back.maglev, both);

    // A policy without acme forgets its health with it.
    let beta = std::fs::read_to_string(setup.policy_dir.join("beta.toml")).unwrap();
    let r = a2.call(&Request::Apply {
        documents: vec![dataplane::api::Document {
            name: "beta.toml".into(),
            content: beta,
        }],
        tenants: Vec::new(),
        dry_run: false,
    });
    assert!(r.ok, "{:?}", r.error);
    let gone = Dataplane::load(Some(setup.pin_path()))
        .unwrap()
        .tenant_health(id)
        .unwrap();
    assert_eq!(gone, None);
    a2.stop();
}

/// The events of the flow log once it holds at least `n` of the health
/// family (written by the agent's event hub, a moment after the request).
fn wait_events(log: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let t0 = std::time::Instant::now();
    loop {
        let events: Vec<serde_json::Value> = std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let health = events
            .iter()
            .filter(|e| e["type"] == "drain" || e["type"] == "core_switch")
            .count();
        if health >= n || t0.elapsed() > std::time::Duration::from_secs(10) {
            return events;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
