//! Shared by the fleet tests and `cargo xtask bench -- fleet`: real etcd
//! members on a bridge inside a namespace of their own (temporary data
//! dirs), agents wired to it each from its own namespace, and `carwash
//! policy push` / `carwash fleet status` run inside the etcd namespace.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::agent_common::{AgentProc, AgentSetup, TempDir, carwash_bin};
use carwash_tests::synthetic;
use netlab::netns::{Daemon, NetNs, unique_tag, veth_pair};

const SUBNET: &str = "10.210.0";

/// etcd members on a bridge in a namespace of their own.
pub struct Etcd {
    pub ns: NetNs,
    pub dir: TempDir,
    pub members: Vec<Option<Daemon>>,
    names: usize,
    agents: usize,
}

impl Etcd {
    pub fn url(i: usize) -> String {
        format!("http://{SUBNET}.{}:2379", i + 1)
    }

    pub fn new(members: usize) -> Etcd {
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

    pub fn start(&self, i: usize) -> Daemon {
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

    pub fn endpoints(&self) -> String {
        (0..self.names).map(Etcd::url).collect::<Vec<_>>().join(",")
    }

    pub fn live_endpoints(&self) -> String {
        (0..self.names)
            .filter(|i| self.members[*i].is_some())
            .map(Etcd::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn etcdctl(&self, args: &[&str]) -> Output {
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

    pub fn wait_healthy(&self) {
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
    pub fn agent(&mut self, prefix: &str, host: &str) -> AgentSetup {
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
    pub fn carwash(&self, args: &[&str]) -> Output {
        self.ns
            .command(carwash_bin().to_str().unwrap())
            .unwrap()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn push(&self, dir: &Path, prefix: &str) -> serde_json::Value {
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

    pub fn fleet(&self, prefix: &str) -> serde_json::Value {
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

    pub fn kill(&mut self, i: usize) {
        self.members[i] = None;
    }
}

pub fn prefix() -> String {
    format!("/cw-{}", unique_tag())
}

/// Waits until `done` holds for the fleet; the last view in the message.
pub fn until_fleet(
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

pub fn until_agent(agent: &AgentProc, timeout: Duration, done: impl Fn(&dataplane::api::AgentStatus) -> bool) {
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

pub fn hosts_with(f: &serde_json::Value, digest: &str) -> usize {
    f["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["digest"] == digest && h["error"].is_null())
        .count()
}

pub fn write_tenants(dir: &Path, n: u32) {
    for i in 1..=n {
        let t = synthetic::tenant(i);
        std::fs::write(
            dir.join(format!("{}.json", t.name)),
            serde_json::to_string_pretty(&t).unwrap(),
        )
        .unwrap();
    }
}

pub fn policy_dir_of(setup: &AgentSetup) -> PathBuf {
    setup.policy_dir.clone()
}
