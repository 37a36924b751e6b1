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

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use agent_common::{AgentProc, AgentSetup, TempDir, carwash_bin, diff_maps, dump_maps, repo_policies_dir};
use carwash_tests::{require_root, synthetic};
use netlab::netns::{Daemon, NetNs, unique_tag, veth_pair};

const SUBNET: &str = "10.210.0";

/// etcd members on a bridge in a namespace of their own.
struct Etcd {
    ns: NetNs,
    dir: TempDir,
    members: Vec<Option<Daemon>>,
    names: usize,
    agents: usize,
}

impl Etcd {
    fn url(i: usize) -> String {
        format!("http://{SUBNET}.{}:2379", i + 1)
    }

    fn new(members: usize) -> Etcd {
        let ns = NetNs::new("cwet").unwrap();
        ns.ip(&["link", "add", "br0", "type", "bridge"]).unwrap();
        ns.link_up("br0").unwrap();
        ns.link_up("lo").unwrap();
        for i in 0..members {
            ns.addr("br0", &format!("{SUBNET}.{}/24", i + 1)).unwrap();
        }
        let mut e = Etcd {
            ns,
            dir: TempDir::new("etcd"),
            members: Vec::new(),
            names: members,
            agents: 0,
        };
        for i in 0..members {
            let d = e.start(i);
            e.members.push(Some(d));
        }
        e.wait_healthy();
        e
    }

    fn start(&self, i: usize) -> Daemon {
        let peer = |i: usize| format!("http://{SUBNET}.{}:2380", i + 1);
        let cluster: Vec<String> = (0..self.names).map(|k| format!("m{k}={}", peer(k))).collect();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("m{i}.log")))
            .unwrap();
        let mut cmd = self.ns.command("etcd").unwrap();
        cmd.args(["--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("m{i}")))
            .args(["--listen-client-urls", &Etcd::url(i)])
            .args(["--advertise-client-urls", &Etcd::url(i)])
            .args(["--listen-peer-urls", &peer(i)])
            .args(["--initial-advertise-peer-urls", &peer(i)])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-token", "carwash-test"])
            // One push of 10,000 tenants is one transaction of ~10 MB.
            .args(["--max-txn-ops", "100000", "--max-request-bytes", "67108864"])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        Daemon::start(cmd).unwrap()
    }

    fn endpoints(&self) -> String {
        (0..self.names).map(Etcd::url).collect::<Vec<_>>().join(",")
    }

    fn live_endpoints(&self) -> String {
        (0..self.names)
            .filter(|i| self.members[*i].is_some())
            .map(Etcd::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn etcdctl(&self, args: &[&str]) -> Output {
        self.ns
            .command("etcdctl")
            .unwrap()
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.live_endpoints()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn wait_healthy(&self) {
        let t0 = Instant::now();
        loop {
            let out = self.etcdctl(&["endpoint", "health"]);
            if out.status.success() {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "etcd did not become healthy: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An agent set up with `[etcd]`, wired to the bridge.
    fn agent(&mut self, prefix: &str, host: &str) -> AgentSetup {
        let setup = AgentSetup::new(&[]).unwrap();
        let i = self.agents;
        self.agents += 1;
        let peer = format!("ea{i}");
        veth_pair(&setup.ns, "etcd0", None, &self.ns, &peer, None).unwrap();
        self.ns.ip(&["link", "set", &peer, "master", "br0"]).unwrap();
        setup.ns.addr("etcd0", &format!("{SUBNET}.{}/24", 100 + i)).unwrap();
        let endpoints: Vec<String> = (0..self.names).map(|k| format!("\"{}\"", Etcd::url(k))).collect();
        let mut cfg = std::fs::read_to_string(&setup.config).unwrap();
        cfg.push_str(&format!(
            "\n[etcd]\nendpoints = [{}]\nprefix = \"{prefix}\"\nhost = \"{host}\"\nlease_ttl_secs = 3\ntimeout_ms = 2000\nmax_backoff_ms = 2000\n",
            endpoints.join(", ")
        ));
        std::fs::write(&setup.config, cfg).unwrap();
        setup
    }

    /// `carwash ARGS` inside the etcd namespace.
    fn carwash(&self, args: &[&str]) -> Output {
        self.ns
            .command(carwash_bin().to_str().unwrap())
            .unwrap()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn push(&self, dir: &Path, prefix: &str) -> serde_json::Value {
        let out = self.carwash(&[
            "policy",
            "push",
            dir.to_str().unwrap(),
            "--etcd",
            &self.live_endpoints(),
            "--prefix",
            prefix,
            "--config",
            "/nonexistent",
            "-o",
            "json",
        ]);
        assert!(
            out.status.success(),
            "push failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn fleet(&self, prefix: &str) -> serde_json::Value {
        let out = self.carwash(&[
            "fleet",
            "status",
            "--etcd",
            &self.live_endpoints(),
            "--prefix",
            prefix,
            "--config",
            "/nonexistent",
            "-o",
            "json",
        ]);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("fleet status: {e}: {}", String::from_utf8_lossy(&out.stderr)))
    }

    fn kill(&mut self, i: usize) {
        self.members[i] = None;
    }
}

fn prefix() -> String {
    format!("/cw-{}", unique_tag())
}

/// Waits until `done` holds for the fleet; the last view in the message.
fn until_fleet(
    etcd: &Etcd,
    prefix: &str,
    timeout: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        let f = etcd.fleet(prefix);
        if done(&f) {
            return f;
        }
        assert!(t0.elapsed() < timeout, "the fleet did not get there: {f:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn until_agent(agent: &AgentProc, timeout: Duration, done: impl Fn(&dataplane::api::AgentStatus) -> bool) {
    let t0 = Instant::now();
    loop {
        let s = agent.status();
        if done(&s) {
            return;
        }
        assert!(
            t0.elapsed() < timeout,
            "the agent did not get there: {s:?}\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn hosts_with(f: &serde_json::Value, digest: &str) -> usize {
    f["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["digest"] == digest && h["error"].is_null())
        .count()
}

fn write_tenants(dir: &Path, n: u32) {
    for i in 1..=n {
        let t = synthetic::tenant(i);
        std::fs::write(
            dir.join(format!("{}.json", t.name)),
            serde_json::to_string_pretty(&t).unwrap(),
        )
        .unwrap();
    }
}

fn policy_dir_of(setup: &AgentSetup) -> PathBuf {
    setup.policy_dir.clone()
}

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

    // Back: a change made at once is caught up with.
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
    until_fleet(&etcd, &p, Duration::from_secs(30), |f| hosts_with(f, &d2) == 1);
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
