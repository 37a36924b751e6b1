//! A host in a fleet (`[cluster]`): the real agent announces the VIPs and
//! egress IPs in force as host routes in its own kernel table (marked with
//! carwash's route protocol) once its programs are attached, withdraws them
//! on a clean stop and on `--uninstall`, and leaves them when killed; the
//! data path allocates source-NAT ports from this host's block only; and
//! the consistent-hash tables are byte-identical whatever the order the
//! policies came in and across restarts.
mod agent_common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use agent_common::{AgentSetup, carwash};
use carwash_tests::require_root;
use dataplane::agent::announce::ROUTE_PROTO;
use dataplane::agent::host::{self, ADDR_PROTO};
use dataplane::api::{Document, Request};
use dataplane::pinned::Pins;
use netlab::netns::NetNs;

const TABLE: u32 = 4242;
const CLUSTER: &str = "[cluster]\nindex = 1\ncount = 3\nroute_table = 4242\n";

/// carwash's routes in `TABLE` of `ns`, as `ip route` shows them.
fn announced(ns: &NetNs) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for family in ["-4", "-6"] {
        let text = ns
            .ip(&[
                family,
                "route",
                "show",
                "table",
                &TABLE.to_string(),
                "proto",
                &ROUTE_PROTO.to_string(),
            ])
            .unwrap_or_default();
        for line in text.lines() {
            if let Some(dst) = line.split_whitespace().next() {
                out.insert(dst.split('/').next().unwrap_or(dst).to_string());
            }
        }
    }
    out
}

/// The VIPs and egress IPs the agent put on the uplink: the set in force.
fn in_force(ns: &NetNs) -> BTreeSet<String> {
    ns.enter(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let ifindex = host::interfaces(&["uplink"]).await.unwrap()[0].ifindex;
            host::addresses(ifindex).await.unwrap()
        })
    })
    .unwrap()
    .into_iter()
    .filter(|a| a.proto == ADDR_PROTO)
    .map(|a| a.ip.to_string())
    .collect()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn announcements_follow_the_agent_and_the_block_is_in_force() {
    require_root();
    let setup = AgentSetup::new(&["acme.toml", "beta.toml"]).unwrap();
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text.push_str(CLUSTER);
    std::fs::write(&setup.config, &text).unwrap();
    // A route of the operator's in the same table is never touched. (The
    // uplink keeps an address of its own: the kernel flushes a device's
    // routes when its last IPv4 address goes.)
    setup.ns.addr("uplink", "192.0.2.254/24").unwrap();
    setup
        .ns
        .ip(&[
            "route",
            "add",
            "192.0.2.1/32",
            "dev",
            "uplink",
            "table",
            &TABLE.to_string(),
        ])
        .unwrap();

    let agent = setup.start().unwrap();
    wait_for("the uplink addresses", || !in_force(&setup.ns).is_empty());
    let want = in_force(&setup.ns);
    assert!(
        want.contains("203.0.113.10") && want.contains("203.0.113.200"),
        "{want:?}"
    );
    wait_for("the announcements", || announced(&setup.ns) == want);
    let s = agent.status();
    let c = s.cluster.expect("a cluster status");
    assert_eq!((c.index, c.hosts, c.block), (1, 3, (33333, 46665)));
    assert_eq!((c.announced_routes, c.announced_generation), (want.len(), s.generation));
    // The data path allocates from this host's block only.
    let host_cfg = Pins::open(setup.pin_path()).unwrap().host().unwrap();
    assert_eq!((host_cfg.snat_port_lo, host_cfg.snat_port_hi), (33333, 46665));

    // A tenant leaving takes its routes along.
    std::fs::remove_file(setup.policy_dir.join("beta.toml")).unwrap();
    wait_for("beta's routes withdrawn", || {
        let now = in_force(&setup.ns);
        now.len() < want.len() && announced(&setup.ns) == now
    });
    std::fs::copy(
        agent_common::repo_policies_dir().join("beta.toml"),
        setup.policy_dir.join("beta.toml"),
    )
    .unwrap();
    wait_for("beta's routes back", || announced(&setup.ns) == want);

    // A clean stop withdraws every route before the agent is gone.
    let status = agent.stop();
    assert!(status.success(), "{status}");
    assert_eq!(announced(&setup.ns), BTreeSet::new());

    // A killed agent leaves them: the programs go on forwarding.
    let agent = setup.start().unwrap();
    wait_for("the announcements again", || announced(&setup.ns) == want);
    agent.kill();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(announced(&setup.ns), want);

    // The next agent adopts them as they are; --uninstall withdraws them.
    let agent = setup.start().unwrap();
    wait_for("the status", || {
        agent.status().cluster.is_some_and(|c| c.announced_routes == want.len())
    });
    assert_eq!(announced(&setup.ns), want);
    agent.kill();
    let out = setup
        .ns
        .enter(|| carwash(&["agent", "--uninstall", "--config", setup.config.to_str().unwrap()]))
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(announced(&setup.ns), BTreeSet::new());
    let operators = setup.ns.ip(&["route", "show", "table", &TABLE.to_string()]).unwrap();
    assert!(operators.contains("192.0.2.1"), "{operators:?}");
}

/// Each tenant's consistent-hash table and the machines its buckets name,
/// by tenant name, and the tenant of each service, from the pins.
/// A tenant's Maglev table, its machines and its services.
type Tables = (Vec<u8>, Vec<String>, Vec<String>);

fn tables(pins: &std::path::Path) -> BTreeMap<String, Tables> {
    let pins = Pins::open(pins).unwrap();
    let mut out = BTreeMap::new();
    let services = pins.services().unwrap();
    for t in pins.tenants().unwrap() {
        let (Some(name), Some(info)) = (t.name.clone(), t.info) else {
            continue;
        };
        let machines = dataplane::pinned::connectors(&info)
            .iter()
            .map(|m| format!("{m:?}"))
            .collect();
        let mut svcs: Vec<String> = services
            .iter()
            .filter(|s| s.tenant == t.id)
            .map(|s| format!("{} {} {} {}", s.vip, s.proto, s.port, s.class))
            .collect();
        svcs.sort();
        out.insert(name, (info.maglev.to_vec(), machines, svcs));
    }
    out
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
        tenants: Vec::new(),
        dry_run: false,
    });
    assert!(r.ok, "{r:?}");
}

#[test]
fn every_host_builds_the_same_consistent_hash_tables() {
    require_root();
    // Host A takes both tenants at once; host B one at a time, the other
    // way round, so that their tenant ids differ.
    let a = AgentSetup::new(&["acme.toml", "beta.toml"]).unwrap();
    let b = AgentSetup::new(&[]).unwrap();
    let agent_a = a.start().unwrap();
    let agent_b = b.start().unwrap();
    apply(&agent_b, &["beta.toml"]);
    apply(&agent_b, &["acme.toml", "beta.toml"]);
    let ids = |p: &std::path::Path| -> BTreeMap<String, u32> {
        Pins::open(p)
            .unwrap()
            .tenants()
            .unwrap()
            .into_iter()
            .filter_map(|t| Some((t.name?, t.id)))
            .collect()
    };
    assert_ne!(
        ids(a.pin_path()),
        ids(b.pin_path()),
        "the apply orders should give other ids"
    );
    let ta = tables(a.pin_path());
    assert_eq!(ta.len(), 2, "{ta:?}");
    assert!(ta.values().all(|(_, _, s)| !s.is_empty()));
    // acme's two connectors share its buckets.
    assert!(
        ta["acme"].0.contains(&0) && ta["acme"].0.contains(&1),
        "{:?}",
        ta["acme"]
    );
    assert_eq!(ta, tables(b.pin_path()));

    // Across a restart (adopting the pins) and a fresh start.
    agent_b.kill();
    let agent_b = b.start().unwrap();
    assert_eq!(ta, tables(b.pin_path()));
    drop(agent_b);
    drop(agent_a);
    let out =
        a.ns.enter(|| carwash(&["agent", "--uninstall", "--config", a.config.to_str().unwrap()]))
            .unwrap();
    assert!(out.status.success(), "{out:?}");
    let _agent_a = a.start().unwrap();
    assert_eq!(ta, tables(a.pin_path()));
}
