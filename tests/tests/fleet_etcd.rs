//! "Policy: etcd" against a real etcd: agents, each in a namespace of its
//! own with its own pins, reach etcd members that listen on a bridge inside
//! a namespace the test created (temporary data dirs), take their tenants
//! from `PREFIX/tenants/` and publish `PREFIX/hosts/HOST` under a lease.
//!
//! - `three_agents_converge_refuse_and_expire`: a push of 1,000 tenants, a
//!   push changing three (one generation on each host), a bad document
//!   (refused everywhere, shown by `fleet status`), an agent killed (gone
//!   from `fleet status` when its lease expires);
//! - `compacted_revision_forces_a_reread`: an agent cut off while the
//!   tenants change and etcd compacts, then let back;
//! - `etcd_down_for_thirty_seconds`: the maps and the set in force stay,
//!   an agent restarted meanwhile starts from `policy_dir`, everything
//!   catches up after etcd is back;
//! - `three_member_cluster_loses_one`: a member killed, the fleet goes on.
mod agent_common;
mod fleet_common;

use std::time::{Duration, Instant};

use agent_common::{AgentProc, AgentSetup, TempDir, diff_maps, dump_maps, repo_policies_dir};
use carwash_tests::{require_root, synthetic};
use fleet_common::{Etcd, hosts_with, policy_dir_of, prefix, until_agent, until_fleet, write_tenants};

#[test]
fn three_agents_converge_refuse_and_expire() {
    require_root();
    let mut etcd = Etcd::new(1);
    let p = prefix();
    let setups: Vec<AgentSetup> = (0..3).map(|i| etcd.agent(&p, &format!("h{i}"))).collect();
    let mut agents: Vec<AgentProc> = setups.iter().map(|s| s.start().unwrap()).collect();
    let src = TempDir::new("push");

    // 1,000 tenants in one push: every host on the same digest.
    write_tenants(src.path(), 1000);
    let pushed = etcd.push(src.path(), &p);
    assert_eq!(pushed["added"].as_array().unwrap().len(), 1000, "{pushed}");
    let digest = pushed["digest"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    let f = until_fleet(&etcd, &p, Duration::from_secs(120), |f| hosts_with(f, &digest) == 3);
    println!(
        "1,000 tenants: all three hosts applied {:?} after the push",
        t0.elapsed()
    );
    assert_eq!(f["agree"], true, "{f:#}");
    for h in f["hosts"].as_array().unwrap() {
        assert_eq!(h["tenants"], 1000);
        assert_eq!(h["revision"], pushed["revision"], "{h}");
    }
    // The applied set is in each policy_dir (what a restart starts from).
    for s in &setups {
        assert!(policy_dir_of(s).join("t1000.json").is_file());
    }
    let generations: Vec<u64> = agents.iter().map(|a| a.status().generation).collect();

    // Three tenants changed in one push: one generation more on each
    // host, and the maps say so.
    for i in 1..=3 {
        let mut t = synthetic::tenant(i);
        t.https_ports = vec![8443];
        std::fs::write(
            src.path().join(format!("t{i}.json")),
            serde_json::to_string_pretty(&t).unwrap(),
        )
        .unwrap();
    }
    let pushed = etcd.push(src.path(), &p);
    assert_eq!(pushed["changed"], serde_json::json!(["t1", "t2", "t3"]), "{pushed}");
    let digest2 = pushed["digest"].as_str().unwrap().to_string();
    until_fleet(&etcd, &p, Duration::from_secs(60), |f| hosts_with(f, &digest2) == 3);
    for (a, (s, g)) in agents.iter().zip(setups.iter().zip(&generations)) {
        let st = a.status();
        assert_eq!(st.generation, g + 1, "one push, one generation");
        for i in 1..=3 {
            let out = agent_common::carwash(&[
                "tenant",
                "show",
                &format!("t{i}"),
                "--pin-path",
                s.pin_path().to_str().unwrap(),
                "-o",
                "json",
            ]);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("8443"), "t{i} in the maps: {text}");
        }
    }

    // A bad document written past the CLI: refused by every host, the set
    // in force stays, and `fleet status` shows where.
    let bad = etcd.etcdctl(&["put", &format!("{p}/tenants/t5"), "{\"name\": \"t5\", \"vni\": \"x\"}"]);
    assert!(bad.status.success(), "{}", String::from_utf8_lossy(&bad.stderr));
    let f = until_fleet(&etcd, &p, Duration::from_secs(60), |f| {
        f["hosts"].as_array().unwrap().iter().all(|h| !h["error"].is_null())
    });
    for h in f["hosts"].as_array().unwrap() {
        assert_eq!(h["digest"], digest2.as_str(), "the set in force stays: {h}");
        assert!(h["flags"].as_array().unwrap().contains(&"refused".into()), "{h}");
        let errors = h["error"]["errors"].as_array().unwrap();
        assert!(
            errors.iter().any(|e| e["file"].as_str().unwrap().ends_with("t5.json")),
            "{h}"
        );
    }
    assert_eq!(f["agree"], false);
    let table = etcd.carwash(&[
        "fleet",
        "status",
        "--etcd",
        &etcd.endpoints(),
        "--prefix",
        &p,
        "--config",
        "/x",
    ]);
    assert_eq!(table.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&table.stdout).contains("t5.json"));
    for s in &setups {
        let t5 = std::fs::read_to_string(policy_dir_of(s).join("t5.json")).unwrap();
        assert!(!t5.contains("\"x\""), "a refused set is not stored");
    }
    // The good set again: everyone recovers.
    etcd.push(src.path(), &p);
    until_fleet(&etcd, &p, Duration::from_secs(60), |f| {
        f["agree"] == true && hosts_with(f, &digest2) == 3
    });

    // A killed agent leaves the fleet when its lease expires.
    agents.pop().unwrap().kill();
    let t0 = Instant::now();
    let f = until_fleet(&etcd, &p, Duration::from_secs(30), |f| {
        f["hosts"].as_array().unwrap().len() == 2
    });
    println!(
        "killed agent gone from fleet status after {:?} (lease 3 s)",
        t0.elapsed()
    );
    assert!(f["hosts"].as_array().unwrap().iter().all(|h| h["host"] != "h2"));
}

#[test]
fn compacted_revision_forces_a_reread() {
    require_root();
    let mut etcd = Etcd::new(1);
    let p = prefix();
    let setup = etcd.agent(&p, "h0");
    let agent = setup.start().unwrap();
    let src = TempDir::new("push");
    for f in ["acme.toml", "beta.toml"] {
        std::fs::copy(repo_policies_dir().join(f), src.path().join(f)).unwrap();
    }
    let d1 = etcd.push(src.path(), &p)["digest"].as_str().unwrap().to_string();
    until_agent(&agent, Duration::from_secs(30), |s| s.digest == d1);

    // Cut off: the tenants change and etcd forgets the history meanwhile.
    setup.ns.ip(&["link", "set", "etcd0", "down"]).unwrap();
    until_agent(&agent, Duration::from_secs(30), |s| {
        s.etcd.as_ref().is_some_and(|e| !e.connected)
    });
    std::fs::remove_file(src.path().join("beta.toml")).unwrap();
    let pushed = etcd.push(src.path(), &p);
    let d2 = pushed["digest"].as_str().unwrap().to_string();
    let rev = pushed["revision"].as_i64().unwrap();
    let c = etcd.etcdctl(&["compact", &rev.to_string()]);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    assert_eq!(agent.status().digest, d1, "cut off, the set in force stays");

    setup.ns.link_up("etcd0").unwrap();
    until_agent(&agent, Duration::from_secs(60), |s| s.digest == d2);
    let st = agent.status().etcd.unwrap();
    assert!(st.rereads >= 1, "a compacted revision means a full re-read: {st:?}");
    assert!(st.connected && st.reconnects >= 1, "{st:?}");
    // A full read is the set as of the cluster's revision at the read.
    assert!(st.revision >= rev, "{st:?}");
    assert!(agent.log_text().contains("compacted"));

    // A push of a set with an error writes nothing: the error at its line.
    std::fs::write(src.path().join("beta.toml"), "name = \"beta\"\nvni = \"x\"\n").unwrap();
    let before = etcd.etcdctl(&["get", "--prefix", &format!("{p}/tenants/"), "-w", "json"]);
    let out = etcd.carwash(&[
        "policy",
        "push",
        src.path().to_str().unwrap(),
        "--etcd",
        &etcd.endpoints(),
        "--prefix",
        &p,
        "--config",
        "/nonexistent",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("beta.json:") && err.contains("nothing was written"),
        "{err}"
    );
    let after = etcd.etcdctl(&["get", "--prefix", &format!("{p}/tenants/"), "-w", "json"]);
    let revision = |o: &std::process::Output| {
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["header"]["revision"].clone()
    };
    let kvs = |o: &std::process::Output| serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["kvs"].clone();
    assert_eq!(kvs(&before), kvs(&after));
    assert!(revision(&before).is_number());

    // A clean stop takes the host's record with it at once (the lease is
    // revoked), not a lease time to live later. The record itself may be
    // on its way back: cut off for longer than its lease, the agent took
    // a new lease when etcd came back.
    until_fleet(&etcd, &p, Duration::from_secs(30), |f| {
        f["hosts"].as_array().unwrap().len() == 1
    });
    assert!(agent.stop().success());
    let t0 = Instant::now();
    until_fleet(&etcd, &p, Duration::from_secs(10), |f| {
        f["hosts"].as_array().unwrap().is_empty()
    });
    assert!(t0.elapsed() < Duration::from_millis(1500), "{:?}", t0.elapsed());
}

#[test]
fn etcd_down_for_thirty_seconds() {
    require_root();
    let mut etcd = Etcd::new(1);
    let p = prefix();
    let setup = etcd.agent(&p, "h0");
    let mut agent = setup.start().unwrap();
    let src = TempDir::new("push");
    for f in ["acme.toml", "beta.toml"] {
        std::fs::copy(repo_policies_dir().join(f), src.path().join(f)).unwrap();
    }
    let d1 = etcd.push(src.path(), &p)["digest"].as_str().unwrap().to_string();
    until_agent(&agent, Duration::from_secs(30), |s| s.digest == d1);
    // The restarted agent's programs take over the jump table; the policy
    // maps stay byte for byte.
    let policy_maps = || {
        let mut m = dump_maps(setup.pin_path()).unwrap();
        m.remove("JUMPS");
        m
    };
    let maps = policy_maps();
    // acme's connectors resolved on the fabric, so the program's verdict
    // is the whole path (a redirect), not a missing neighbour.
    for (ip, mac) in [
        ("10.200.1.10", "02:00:0a:c8:01:0a"),
        ("10.200.1.11", "02:00:0a:c8:01:0b"),
    ] {
        setup
            .ns
            .ip(&[
                "neigh",
                "replace",
                ip,
                "lladdr",
                mac,
                "dev",
                "fabric",
                "nud",
                "permanent",
            ])
            .unwrap();
    }
    let generation = agent.status().generation;

    etcd.kill(0);
    let t0 = Instant::now();
    until_agent(&agent, Duration::from_secs(20), |s| {
        s.etcd.as_ref().is_some_and(|e| !e.connected && e.error.is_some())
    });
    let status = agent_common::carwash(&[
        "status",
        "--config",
        setup.config.to_str().unwrap(),
        "--netns",
        setup.ns.name(),
    ]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("OUT OF REACH"),
        "{text}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let metrics = setup
        .ns
        .command("curl")
        .unwrap()
        .args(["-s", "http://127.0.0.1:9464/metrics"])
        .output()
        .unwrap();
    let m = String::from_utf8_lossy(&metrics.stdout);
    assert!(m.contains("carwash_etcd_connected 0"), "{m}");

    // An agent restarted while etcd is down starts from policy_dir.
    agent.kill();
    agent = setup.start().unwrap();
    assert_eq!(agent.status().digest, d1);
    while t0.elapsed() < Duration::from_secs(30) {
        let s = agent.status();
        assert_eq!((s.digest.as_str(), s.generation), (d1.as_str(), generation));
        let diff = diff_maps(&maps, &policy_maps());
        assert!(diff.is_empty(), "{diff:?}");
        // The attached program still steers acme's traffic.
        let trace = agent_common::carwash(&[
            "trace",
            "--pin-path",
            setup.pin_path().to_str().unwrap(),
            "--netns",
            setup.ns.name(),
            "--src",
            "198.51.100.10",
            "--dst",
            "203.0.113.10",
            "--dport",
            "443",
            "--syn",
        ]);
        let text = String::from_utf8_lossy(&trace.stdout);
        assert!(text.contains("XDP_REDIRECT") && text.contains("acme"), "{text}");
        assert!(!s.attachments.is_empty());
        std::thread::sleep(Duration::from_secs(1));
    }

    // etcd back: the agent restarted meanwhile (it never reached etcd)
    // reads the tenants and applies a change made at once.
    let d = etcd.start(0);
    etcd.members[0] = Some(d);
    etcd.wait_healthy();
    std::fs::remove_file(src.path().join("beta.toml")).unwrap();
    let pushed = etcd.push(src.path(), &p);
    let d2 = pushed["digest"].as_str().unwrap().to_string();
    until_agent(&agent, Duration::from_secs(60), |s| s.digest == d2);
    let st = agent.status().etcd.unwrap();
    assert!(st.connected, "{st:?}");
    assert_eq!(st.revision, pushed["revision"].as_i64().unwrap());

    // Out of reach again while a change is made: once back, the agent
    // catches up from the revision it had (a watch from there, no new read
    // of all tenants).
    let reads = agent.log_text().matches("etcd: tenants read").count();
    setup.ns.ip(&["link", "set", "etcd0", "down"]).unwrap();
    until_agent(&agent, Duration::from_secs(30), |s| {
        s.etcd.as_ref().is_some_and(|e| !e.connected)
    });
    std::fs::copy(repo_policies_dir().join("beta.toml"), src.path().join("beta.toml")).unwrap();
    let pushed = etcd.push(src.path(), &p);
    assert_eq!(pushed["digest"].as_str(), Some(d1.as_str()));
    setup.ns.link_up("etcd0").unwrap();
    until_agent(&agent, Duration::from_secs(60), |s| s.digest == d1);
    let st = agent.status().etcd.unwrap();
    assert!(st.connected && st.reconnects >= 1 && st.rereads == 0, "{st:?}");
    assert_eq!(st.revision, pushed["revision"].as_i64().unwrap());
    assert_eq!(agent.log_text().matches("etcd: tenants read").count(), reads);
    until_fleet(&etcd, &p, Duration::from_secs(30), |f| hosts_with(f, &d1) == 1);
}

#[test]
fn three_member_cluster_loses_one() {
    require_root();
    let mut etcd = Etcd::new(3);
    let p = prefix();
    let setups: Vec<AgentSetup> = (0..3).map(|i| etcd.agent(&p, &format!("h{i}"))).collect();
    let _agents: Vec<AgentProc> = setups.iter().map(|s| s.start().unwrap()).collect();
    let src = TempDir::new("push");
    write_tenants(src.path(), 20);
    let d1 = etcd.push(src.path(), &p)["digest"].as_str().unwrap().to_string();
    until_fleet(&etcd, &p, Duration::from_secs(60), |f| hosts_with(f, &d1) == 3);

    etcd.kill(0);
    write_tenants(src.path(), 25);
    let d2 = etcd.push(src.path(), &p)["digest"].as_str().unwrap().to_string();
    let f = until_fleet(&etcd, &p, Duration::from_secs(60), |f| hosts_with(f, &d2) == 3);
    assert_eq!(f["agree"], true, "{f:#}");
}
