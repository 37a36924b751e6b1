//! The agent at 10,000 tenants × 10 allow prefixes (the synthetic tenants of
//! `carwash_tests::synthetic`), from files: time to apply the whole set,
//! time from one tenant's file change to the maps, resident memory.
//! Ignored by default (it takes a while in a debug build); run with
//! `cargo test --release -p carwash-tests --test agent_scale -- --ignored --nocapture`.
mod agent_common;

use std::time::{Duration, Instant};

use agent_common::{AgentSetup, percentile};
use aya::maps::{HashMap, Map, MapData};
use carwash_tests::{require_root, synthetic};
use dataplane::tables::addr_key;
use dataplane_common::maps;
use dataplane_common::types::{ServiceKey, ServiceValue};

const TENANTS: u32 = 10_000;

fn rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "scale measurement: run explicitly, preferably with --release"]
fn ten_thousand_tenants_from_files() {
    require_root();
    let setup = AgentSetup::new(&[]).unwrap();
    for i in 1..=TENANTS {
        let t = synthetic::tenant(i);
        std::fs::write(
            setup.policy_dir.join(format!("{}.json", t.name)),
            serde_json::to_string_pretty(&t).unwrap(),
        )
        .unwrap();
    }
    agent_common::carwash_bin(); // built before the clock starts
    let t0 = Instant::now();
    let agent = setup.start().unwrap();
    let started = t0.elapsed();
    let s = agent.status();
    assert_eq!(s.tenants.len(), TENANTS as usize, "{:?}", s.last_error);
    let apply = Duration::from_micros(s.last_apply.as_ref().unwrap().micros);
    println!(
        "{TENANTS} tenants × 10 prefixes from files: agent up in {started:?} (reading + validating + applying), map writes {apply:?}"
    );
    println!(
        "agent resident memory at {TENANTS} tenants: {} MiB",
        rss_kib(agent.child.id()) / 1024
    );

    // One tenant's file changes (a port): time until the maps say so.
    let svcs: HashMap<MapData, ServiceKey, ServiceValue> = HashMap::try_from(Map::HashMap(
        MapData::from_pin(setup.pin_path().join("maps").join(maps::SERVICES)).unwrap(),
    ))
    .unwrap();
    let i = TENANTS / 2;
    let vip = addr_key(std::net::IpAddr::V4(synthetic::vip4(i)));
    let key = |port: u16| ServiceKey {
        addr: vip.addr,
        port_be: port.to_be_bytes(),
        proto: 6,
        family: vip.family,
    };
    let mut lat = Vec::new();
    for round in 0..40u16 {
        let mut t = synthetic::tenant(i);
        let port = 1000 + round;
        t.https_ports = vec![port];
        let file = setup.policy_dir.join(format!("{}.json", t.name));
        let t0 = Instant::now();
        std::fs::write(&file, serde_json::to_string_pretty(&t).unwrap()).unwrap();
        while svcs.get(&key(port), 0).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(30), "change not applied");
            std::thread::sleep(Duration::from_micros(200));
        }
        lat.push(t0.elapsed());
        std::thread::sleep(Duration::from_millis(30));
    }
    lat.sort();
    println!(
        "one tenant's file changed at {TENANTS} tenants ({} runs): p50 {:?}, p99 {:?}, max {:?}",
        lat.len(),
        percentile(&lat, 50),
        percentile(&lat, 99),
        lat.last().unwrap()
    );
    println!(
        "agent resident memory after the changes: {} MiB",
        rss_kib(agent.child.id()) / 1024
    );
    assert!(agent.status().last_error.is_none());
}
