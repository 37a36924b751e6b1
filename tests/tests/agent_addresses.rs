//! The agent makes the uplink answer for the VIPs and egress IPs in force:
//! a real `carwash agent` in a namespace whose uplink faces a peer
//! namespace; the peer's ARP and neighbour solicitations for the VIPs get
//! answered with the uplink's MAC, and for other addresses not; a VIP that
//! leaves the policy stops being answered; the operator's addresses on the
//! uplink are never touched; a restarted agent reconciles what it finds;
//! `--uninstall` removes only carwash's addresses.
mod agent_common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use agent_common::{AgentSetup, carwash_bin};
use carwash_tests::require_root;
use dataplane::agent::host::{self, ADDR_PROTO, HostAddr};
use dataplane::api::{Document, Request};
use netlab::netns::NetNs;

/// Addresses of `ifindex` in `ns`, as the kernel reports them.
fn addrs(ns: &NetNs, ifindex: u32) -> Vec<HostAddr> {
    ns.enter(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(host::addresses(ifindex)).unwrap()
    })
    .unwrap()
}

/// carwash's addresses (marked with its address protocol) on `ifindex`.
fn carwash_addrs(ns: &NetNs, ifindex: u32) -> BTreeSet<String> {
    addrs(ns, ifindex)
        .into_iter()
        .filter(|a| a.proto == ADDR_PROTO)
        .map(|a| format!("{}/{}", a.ip, a.prefix_len))
        .collect()
}

/// The other addresses on `ifindex` but link-local ones.
fn operator_addrs(ns: &NetNs, ifindex: u32) -> BTreeSet<String> {
    addrs(ns, ifindex)
        .into_iter()
        .filter(|a| a.proto != ADDR_PROTO && !matches!(a.ip, IpAddr::V6(v) if v.segments()[0] == 0xfe80))
        .map(|a| format!("{}/{}", a.ip, a.prefix_len))
        .collect()
}

/// Waits until carwash's addresses on `ifindex` are `want` (the agent
/// reconciles them on a thread of its own, shortly after an apply).
fn wait_carwash_addrs(ns: &NetNs, ifindex: u32, want: &BTreeSet<String>) {
    let t0 = Instant::now();
    loop {
        let now = carwash_addrs(ns, ifindex);
        if &now == want {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "carwash's uplink addresses are {now:?}, expected {want:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Whether the peer resolves `ip` on `dev` to `mac`: pings it (the echo
/// itself is dropped by carwash: no service) and reads the neighbour table,
/// a few times over `timeout`.
fn resolves(peer: &NetNs, dev: &str, ip: &str, mac: &str, timeout: Duration) -> bool {
    let t0 = Instant::now();
    loop {
        let _ = peer.ip(&["neigh", "flush", "to", ip, "dev", dev]);
        let _ = peer.exec(&["ping", "-c", "1", "-W", "1", ip]);
        let shown = peer.ip(&["neigh", "show", "to", ip, "dev", dev]).unwrap_or_default();
        if shown.contains(&format!("lladdr {mac}")) {
            return true;
        }
        if t0.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn apply(agent: &agent_common::AgentProc, files: &[&str]) {
    let documents = files
        .iter()
        .map(|f| Document {
            name: f.to_string(),
            content: std::fs::read_to_string(agent_common::repo_policies_dir().join(f)).unwrap(),
        })
        .collect();
    let r = agent.call(&Request::Apply {
        documents,
        tenants: vec![],
        dry_run: false,
    });
    assert!(r.ok, "{r:?}");
}

#[test]
fn the_uplink_answers_for_the_addresses_in_force_and_only_carwash_touches_its_own() {
    require_root();
    let setup = AgentSetup::new(&["acme.toml", "beta.toml"]).unwrap();
    let ns = &setup.ns;
    // The uplink's peer goes to a namespace of its own: the internet side.
    let peer = NetNs::new("cwpeer").unwrap();
    ns.ip(&["link", "set", "upeer", "netns", peer.name()]).unwrap();
    peer.link_up("upeer").unwrap();
    peer.addr("upeer", "203.0.113.1/24").unwrap();
    peer.addr("upeer", "2001:db8:10::1/64").unwrap();
    peer.addr("upeer", "2001:db8:20::1/64").unwrap();
    // The operator's own addresses, one of them beta's VIP.
    ns.addr("uplink", "192.0.2.1/24").unwrap();
    ns.addr("uplink", "203.0.113.20/32").unwrap();

    let agent = setup.start().unwrap();
    let status = agent.status();
    let up = status.interfaces.iter().find(|i| i.role == "uplink").unwrap();
    let (ifindex, mac) = (up.ifindex, up.mac.clone());

    let acme = [
        "203.0.113.10/32",
        "203.0.113.200/32",
        "2001:db8:10::10/128",
        "2001:db8:10::200/128",
    ];
    let beta = ["203.0.113.201/32", "2001:db8:20::20/128"];
    let operators = set(&["192.0.2.1/24", "203.0.113.20/32"]);
    let all: Vec<&str> = acme.iter().chain(beta.iter()).copied().collect();
    // beta's VIP 203.0.113.20 is the operator's.
    wait_carwash_addrs(ns, ifindex, &set(&all));
    assert_eq!(operator_addrs(ns, ifindex), operators);
    for a in addrs(ns, ifindex).iter().filter(|a| a.is_carwash()) {
        assert_eq!(a.prefix_len, if a.ip.is_ipv4() { 32 } else { 128 });
    }

    // The peer resolves the VIPs and egress IPs to the uplink; an address
    // in the same subnet that is nobody's stays unresolved.
    let t = Duration::from_secs(10);
    for ip in [
        "203.0.113.10",
        "203.0.113.200",
        "203.0.113.201",
        "2001:db8:10::10",
        "2001:db8:20::20",
    ] {
        assert!(
            resolves(&peer, "upeer", ip, &mac, t),
            "{ip} not resolved to the uplink {mac}"
        );
    }
    assert!(!resolves(&peer, "upeer", "203.0.113.99", &mac, Duration::ZERO));
    assert!(!resolves(&peer, "upeer", "2001:db8:10::99", &mac, Duration::ZERO));

    // beta leaves: its addresses go, the operator's stay, acme's stay.
    apply(&agent, &["acme.toml"]);
    wait_carwash_addrs(ns, ifindex, &set(&acme));
    assert_eq!(operator_addrs(ns, ifindex), operators);
    assert!(!resolves(&peer, "upeer", "203.0.113.201", &mac, Duration::ZERO));
    assert!(!resolves(&peer, "upeer", "2001:db8:20::20", &mac, Duration::ZERO));
    assert!(
        resolves(&peer, "upeer", "203.0.113.20", &mac, t),
        "the operator's address"
    );
    assert!(resolves(&peer, "upeer", "203.0.113.10", &mac, t));

    // A killed agent leaves them; the next one reconciles drift: one of its
    // addresses removed by hand comes back, a stale one of its own goes.
    agent.kill();
    assert_eq!(carwash_addrs(ns, ifindex), set(&acme));
    ns.ip(&["addr", "del", "203.0.113.10/32", "dev", "uplink"]).unwrap();
    let stale: BTreeSet<IpAddr> = ["203.0.113.200", "2001:db8:10::10", "2001:db8:10::200", "203.0.113.77"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let ch = ns
        .enter(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(host::sync_addresses(ifindex, &stale)).unwrap()
        })
        .unwrap();
    assert_eq!(ch.added, vec!["203.0.113.77".parse::<IpAddr>().unwrap()]);
    let agent = setup.start().unwrap();
    wait_carwash_addrs(ns, ifindex, &set(&acme));
    assert_eq!(operator_addrs(ns, ifindex), operators);

    // A clean stop leaves them too (the programs stay attached); only
    // --uninstall (where the agent ran) removes them, and only them.
    assert!(agent.stop().success());
    assert_eq!(carwash_addrs(ns, ifindex), set(&acme));
    let mut cmd = ns.command(carwash_bin().to_str().unwrap()).unwrap();
    let out = cmd
        .args(["agent", "--uninstall", "--config"])
        .arg(&setup.config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(carwash_addrs(ns, ifindex), BTreeSet::new());
    assert_eq!(operator_addrs(ns, ifindex), operators);
    assert!(!setup.pin_path().exists());
}
