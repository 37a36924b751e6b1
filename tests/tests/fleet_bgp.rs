//! Three carwash hosts behind an upstream router, through real BIRD 2
//! daemons: each host runs the real agent (`[cluster]`) and its own BIRD,
//! which learns the agent's announcement table and speaks eBGP to the
//! router's BIRD (multipath into the kernel, L4 hashing). The router learns
//! every VIP and egress IP with three next hops; a clean stop withdraws a
//! host's routes (two next hops) while a killed agent's stay; a host whose
//! uplink goes down is dropped from the routes (the convergence time is
//! printed); a host that comes back is a next hop again.
//!
//! Skipped (with a message) where `bird` is not installed (`cargo xtask
//! setup` installs it).
mod agent_common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_common::{AgentProc, TempDir, repo_policies_dir};
use carwash_tests::require_root;
use netlab::netns::{Daemon, NetNs, PinDir, veth_pair};

const HOSTS: usize = 3;
const TABLE: u32 = 4242;
const ROUTER_AS: u32 = 65000;
const HOSTS_AS: u32 = 65001;

fn bird_bin() -> Option<PathBuf> {
    ["/usr/sbin/bird", "/usr/bin/bird"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn uplink_v4(i: usize) -> String {
    format!("100.64.{i}.1")
}
fn router_v4(i: usize) -> String {
    format!("100.64.{i}.2")
}
fn uplink_v6(i: usize) -> String {
    format!("fd00:64:{i}::1")
}
fn router_v6(i: usize) -> String {
    format!("fd00:64:{i}::2")
}
fn fabric_addr(i: usize) -> String {
    format!("10.200.0.{}", 11 + i)
}

/// A host's BIRD: its kernel protocols learn carwash's table, its BGP
/// sessions export what they learnt (and take nothing).
fn host_bird_conf(i: usize) -> String {
    format!(
        r#"router id {up4};
protocol device {{ scan time 1; }}
ipv4 table carwash4;
ipv6 table carwash6;
protocol kernel carwash_v4 {{
  kernel table {TABLE};
  learn;
  scan time 1;
  ipv4 {{ table carwash4; import all; export none; }};
}}
protocol kernel carwash_v6 {{
  kernel table {TABLE};
  learn;
  scan time 1;
  ipv6 {{ table carwash6; import all; export none; }};
}}
protocol bgp upstream_v4 {{
  local {up4} as {HOSTS_AS};
  neighbor {rt4} as {ROUTER_AS};
  hold time 3;
  connect retry time 1;
  ipv4 {{ table carwash4; import none; export all; next hop self; }};
}}
protocol bgp upstream_v6 {{
  local {up6} as {HOSTS_AS};
  neighbor {rt6} as {ROUTER_AS};
  hold time 3;
  connect retry time 1;
  ipv6 {{ table carwash6; import none; export all; next hop self; }};
}}
"#,
        up4 = uplink_v4(i),
        rt4 = router_v4(i),
        up6 = uplink_v6(i),
        rt6 = router_v6(i),
    )
}

/// The router's BIRD: a session per host, ECMP into the kernel.
fn router_bird_conf() -> String {
    let mut s = format!(
        r#"router id 100.64.255.1;
protocol device {{ scan time 1; }}
protocol kernel {{ merge paths on; ipv4 {{ import none; export all; }}; }}
protocol kernel {{ merge paths on; ipv6 {{ import none; export all; }}; }}
"#
    );
    for i in 0..HOSTS {
        s += &format!(
            r#"protocol bgp host{i}_v4 {{
  local {rt4} as {ROUTER_AS};
  neighbor {up4} as {HOSTS_AS};
  hold time 3;
  connect retry time 1;
  ipv4 {{ import all; export none; }};
}}
protocol bgp host{i}_v6 {{
  local {rt6} as {ROUTER_AS};
  neighbor {up6} as {HOSTS_AS};
  hold time 3;
  connect retry time 1;
  ipv6 {{ import all; export none; }};
}}
"#,
            rt4 = router_v4(i),
            up4 = uplink_v4(i),
            rt6 = router_v6(i),
            up6 = uplink_v6(i),
        );
    }
    s
}

fn start_bird(ns: &NetNs, bin: &Path, dir: &Path, name: &str, conf: &str) -> Daemon {
    let conf_path = dir.join(format!("{name}.conf"));
    std::fs::write(&conf_path, conf).unwrap();
    let mut cmd = ns.command(bin.to_str().unwrap()).unwrap();
    cmd.arg("-f")
        .arg("-c")
        .arg(&conf_path)
        .arg("-s")
        .arg(dir.join(format!("{name}.ctl")))
        .stdout(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
        .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).unwrap());
    Daemon::start(cmd).unwrap()
}

struct Host {
    ns: NetNs,
    _pins: PinDir,
    config: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    _bird: Daemon,
}

impl Host {
    fn start(&self) -> AgentProc {
        AgentProc::start(&self.ns, &self.config, &self.socket, &self.log).unwrap()
    }
}

/// The next hops the router's kernel has for each of `addrs`.
fn next_hops(rt: &NetNs, addrs: &BTreeSet<String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for a in addrs {
        let fam = if a.contains(':') { "-6" } else { "-4" };
        let text = rt.ip(&[fam, "route", "show", a]).unwrap_or_default();
        let hops: BTreeSet<String> = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .map(|w| w[1].to_string())
            .collect();
        out.insert(a.clone(), hops);
    }
    out
}

fn wait_hops(rt: &NetNs, addrs: &BTreeSet<String>, want: usize, what: &str, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let now = next_hops(rt, addrs);
        if now.values().all(|h| h.len() == want) {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < timeout, "{what}: the router's next hops are {now:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_router_spreads_every_address_over_the_hosts() {
    require_root();
    let Some(bird) = bird_bin() else {
        eprintln!("skipped: no bird (BIRD 2) installed; `cargo xtask setup` installs it");
        return;
    };
    let dir = TempDir::new("fleet-bgp");
    let rt = NetNs::new("cwrt").unwrap();
    rt.sysctls(&[
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv6.conf.all.forwarding", "1"),
        ("net.ipv4.fib_multipath_hash_policy", "1"),
        ("net.ipv6.fib_multipath_hash_policy", "1"),
    ])
    .unwrap();
    let policy_dir = dir.path().join("policies");
    std::fs::create_dir_all(&policy_dir).unwrap();
    for p in ["acme.toml", "beta.toml"] {
        std::fs::copy(repo_policies_dir().join(p), policy_dir.join(p)).unwrap();
    }
    let peers: Vec<String> = (0..HOSTS).map(|i| format!("\"{}\"", fabric_addr(i))).collect();
    let mut hosts = Vec::new();
    for i in 0..HOSTS {
        let ns = NetNs::new(&format!("cwfh{i}")).unwrap();
        veth_pair(&ns, "uplink", None, &rt, &format!("h{i}"), None).unwrap();
        veth_pair(&ns, "fabric", None, &ns, "fpeer", None).unwrap();
        ns.addr("uplink", &format!("{}/30", uplink_v4(i))).unwrap();
        ns.addr("uplink", &format!("{}/64", uplink_v6(i))).unwrap();
        rt.addr(&format!("h{i}"), &format!("{}/30", router_v4(i))).unwrap();
        rt.addr(&format!("h{i}"), &format!("{}/64", router_v6(i))).unwrap();
        for dev in ["uplink", "default", "all"] {
            ns.sysctl(&format!("net.ipv6.conf.{dev}.accept_dad"), "0").unwrap();
        }
        rt.sysctl(&format!("net.ipv6.conf.h{i}.accept_dad"), "0").unwrap();
        ns.addr("fabric", &format!("{}/16", fabric_addr(i))).unwrap();
        let pins = PinDir::new().unwrap();
        let socket = dir.path().join(format!("h{i}.sock"));
        let config = dir.path().join(format!("h{i}.toml"));
        std::fs::write(
            &config,
            format!(
                "uplink = \"uplink\"\nfabric = \"fabric\"\nvtep = \"10.200.0.1\"\npolicy_dir = \"{}\"\npin_path = \"{}\"\n\
                 api_socket = \"{}\"\nmetrics = \"off\"\n[cluster]\nindex = {i}\ncount = {HOSTS}\npeers = [{}]\n\
                 route_table = {TABLE}\n",
                policy_dir.display(),
                pins.path().display(),
                socket.display(),
                peers.join(", "),
            ),
        )
        .unwrap();
        let bird = start_bird(&ns, &bird, dir.path(), &format!("h{i}"), &host_bird_conf(i));
        hosts.push(Host {
            ns,
            _pins: pins,
            config,
            socket,
            log: dir.path().join(format!("h{i}.log")),
            _bird: bird,
        });
    }
    let _router_bird = start_bird(&rt, &bird, dir.path(), "rt", &router_bird_conf());

    let agents: Vec<AgentProc> = hosts.iter().map(Host::start).collect();
    let addrs: BTreeSet<String> = [
        "203.0.113.10",
        "203.0.113.20",
        "203.0.113.200",
        "203.0.113.201",
        "2001:db8:10::10",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    wait_hops(&rt, &addrs, HOSTS, "every host announcing", Duration::from_secs(60));
    let hops = next_hops(&rt, &addrs);
    assert_eq!(
        hops["203.0.113.10"],
        (0..HOSTS).map(uplink_v4).collect::<BTreeSet<_>>(),
        "{hops:?}"
    );
    for (i, a) in agents.iter().enumerate() {
        let c = a.status().cluster.expect("cluster status");
        assert_eq!(c.index as usize, i);
        assert!(c.announced_routes >= addrs.len(), "{c:?}");
    }

    // A clean stop withdraws host 1's routes.
    let mut agents: Vec<Option<AgentProc>> = agents.into_iter().map(Some).collect();
    let st = agents[1].take().unwrap().stop();
    assert!(st.success(), "{st}");
    wait_hops(&rt, &addrs, HOSTS - 1, "host 1 stopped", Duration::from_secs(30));
    assert!(next_hops(&rt, &addrs).values().all(|h| !h.contains(&uplink_v4(1))));

    // A killed agent's routes stay: its programs still forward.
    agents[0].take().unwrap().kill();
    std::thread::sleep(Duration::from_secs(2));
    wait_hops(&rt, &addrs, HOSTS - 1, "host 0 killed", Duration::from_secs(5));

    // Host 2 is lost: its uplink goes down; the router converges on the
    // others.
    hosts[2].ns.ip(&["link", "set", "uplink", "down"]).unwrap();
    let took = wait_hops(&rt, &addrs, 1, "host 2 lost", Duration::from_secs(30));
    eprintln!("convergence after a host's uplink went down: {} ms", took.as_millis());

    // Host 1 comes back and is a next hop again.
    agents[1] = Some(hosts[1].start());
    let took = wait_hops(&rt, &addrs, 2, "host 1 back", Duration::from_secs(30));
    eprintln!(
        "a host back in the routes after its agent started: {} ms",
        took.as_millis()
    );
    drop(agents);
}
