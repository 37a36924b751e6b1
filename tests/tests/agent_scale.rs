//! The agent with many tenants, one file each (the synthetic tenants of
//! `carwash_tests::synthetic`, ten allow prefixes each).
//!
//! `incremental_reloads_give_the_answers_of_a_full_check` (1,000 tenants,
//! runs by default): the agent re-reads only the files inotify names and
//! checks them against indexes of the rest; these edits would go wrong if
//! that were not the same as a full check: a VIP taken from a file that did
//! not change, a file deleted (its claims freed), a file renamed, a port
//! changed (no new tries) and an allowlist changed (new tries swapped in).
//!
//! `ten_thousand_tenants_from_files` (ignored; in release:
//! `cargo test --release -p carwash-tests --test agent_scale -- --ignored --nocapture`)
//! prints the figures `cargo xtask bench -- agent` reports, more briefly.
mod agent_common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use agent_common::{AgentProc, AgentSetup, percentile};
use aya::maps::{HashMap, Map, MapData};
use carwash_policy::Tenant;
use carwash_tests::{require_root, synthetic};
use dataplane::api::AgentStatus;
use dataplane::tables::addr_key;
use dataplane_common::maps;
use dataplane_common::types::{AddrKey, AddrValue, ServiceKey, ServiceValue, TenantInfo};

fn rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn write_all(setup: &AgentSetup, n: u32) {
    for i in 1..=n {
        write(setup, &synthetic::tenant(i));
    }
}

fn file(setup: &AgentSetup, name: &str) -> std::path::PathBuf {
    setup.policy_dir.join(format!("{name}.json"))
}

fn write(setup: &AgentSetup, t: &Tenant) {
    std::fs::write(file(setup, &t.name), serde_json::to_string_pretty(t).unwrap()).unwrap();
}

/// The pinned maps the test reads.
struct Maps {
    addrs: HashMap<MapData, AddrKey, AddrValue>,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    tenants: HashMap<MapData, u32, TenantInfo>,
    generation: aya::maps::Array<MapData, u32>,
}

impl Maps {
    fn open(setup: &AgentSetup) -> Maps {
        let pin = |name: &str| Map::HashMap(MapData::from_pin(setup.pin_path().join("maps").join(name)).unwrap());
        Maps {
            addrs: HashMap::try_from(pin(maps::ADDRS)).unwrap(),
            services: HashMap::try_from(pin(maps::SERVICES)).unwrap(),
            tenants: HashMap::try_from(pin(maps::TENANTS)).unwrap(),
            generation: aya::maps::Array::try_from(Map::Array(
                MapData::from_pin(setup.pin_path().join("maps").join(maps::GENERATION)).unwrap(),
            ))
            .unwrap(),
        }
    }

    /// The policy generation in force: what packets read.
    fn generation(&self) -> u32 {
        self.generation.get(&0, 0).unwrap() & 1
    }

    fn owner(&self, ip: IpAddr) -> Option<u32> {
        let k = dataplane_common::types::addr_key_gen(addr_key(ip), self.generation());
        self.addrs.get(&k, 0).ok().map(|v| v.tenant)
    }

    fn service(&self, ip: IpAddr, port: u16) -> Option<u32> {
        let a = addr_key(ip);
        let key = ServiceKey {
            addr: a.addr,
            port_be: port.to_be_bytes(),
            proto: 6,
            family: a.family,
        };
        let key = dataplane_common::types::service_key_gen(key, self.generation());
        self.services.get(&key, 0).ok().map(|v| v.tenant)
    }

    fn slot(&self, id: u32) -> u32 {
        let key = dataplane_common::types::tenant_key(id, self.generation());
        self.tenants.get(&key, 0).unwrap().allow_slot
    }
}

fn id_of(s: &AgentStatus, name: &str) -> Option<u32> {
    s.tenants.iter().find(|t| t.name == name).map(|t| t.id)
}

/// Polls the agent's status until `done` says so.
fn until(agent: &AgentProc, what: &str, mut done: impl FnMut(&AgentStatus) -> bool) -> AgentStatus {
    let t0 = Instant::now();
    loop {
        let s = agent.status();
        if done(&s) {
            return s;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{what}: {s:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn incremental_reloads_give_the_answers_of_a_full_check() {
    require_root();
    const N: u32 = 1_000;
    let setup = AgentSetup::new(&[]).unwrap();
    write_all(&setup, N);
    let agent = setup.start().unwrap();
    let s = agent.status();
    assert_eq!(s.tenants.len(), N as usize, "{:?}", s.last_error);
    let m = Maps::open(&setup);
    let v4 = |i: u32| IpAddr::V4(synthetic::vip4(i));
    let (t10, t500) = (id_of(&s, "t10").unwrap(), id_of(&s, "t500").unwrap());

    // t500 claims t10's VIP; t10.json does not change. Refused with the
    // errors of a full check (file, line, field, naming t10's file), and
    // the set in force stays: both VIPs where they were.
    let mut t = synthetic::tenant(500);
    t.vips[0] = v4(10);
    write(&setup, &t);
    let s = until(&agent, "the duplicate VIP refused", |s| s.last_error.is_some());
    let errors = &s.last_error.as_ref().unwrap().errors;
    let full = carwash_policy::load_path(&setup.policy_dir).unwrap_err();
    let got: Vec<_> = errors
        .iter()
        .map(|e| (e.file.clone(), e.line, e.column, e.field.clone(), e.message.clone()))
        .collect();
    let want: Vec<_> = full
        .0
        .iter()
        .map(|e| {
            (
                e.file.display().to_string(),
                e.line,
                e.column,
                e.field.clone(),
                e.message.clone(),
            )
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].file.ends_with("t500.json") && errors[0].line > 0,
        "{errors:?}"
    );
    assert_eq!(errors[0].field, "vips[0]");
    assert!(errors[0].message.contains("t10.json:"), "{errors:?}");
    assert_eq!((m.owner(v4(10)), m.owner(v4(500))), (Some(t10), Some(t500)));
    let generation = s.generation;

    // Deleting t10.json frees its claims: t500.json, unchanged since it
    // was refused, is now valid against the rest and applied with it.
    std::fs::remove_file(file(&setup, "t10")).unwrap();
    let s = until(&agent, "t10 removed, t500 applied", |s| {
        id_of(s, "t10").is_none() && m.owner(v4(10)) == Some(t500) && m.owner(v4(500)).is_none()
    });
    assert!(s.generation > generation);

    // A rename: t20.json becomes t20b.json (the name inside with it).
    let mut t20b = synthetic::tenant(20);
    t20b.name = "t20b".into();
    std::fs::remove_file(file(&setup, "t20")).unwrap();
    write(&setup, &t20b);
    let s = until(&agent, "t20 renamed", |s| {
        id_of(s, "t20").is_none() && id_of(s, "t20b").is_some()
    });
    assert_eq!(m.owner(v4(20)), id_of(&s, "t20b"));

    // A port changes: the tenant keeps its tries. Its allowlist changes:
    // new tries, swapped into its other slot.
    let t30 = id_of(&s, "t30").unwrap();
    let slot = m.slot(t30);
    let mut t = synthetic::tenant(30);
    t.https_ports = vec![8443];
    write(&setup, &t);
    until(&agent, "t30's port", |_| {
        m.service(v4(30), 8443) == Some(t30) && m.service(v4(30), 443).is_none()
    });
    assert_eq!(m.slot(t30), slot, "a port change swapped the allowlist");
    t.allow.pop();
    write(&setup, &t);
    until(&agent, "t30's allowlist", |_| m.slot(t30) != slot);

    // Everything the agent holds is what a full check of the directory
    // gives, down to the digest.
    let s = until(&agent, "the last change applied", |s| s.tenants.len() == N as usize - 1);
    let full = carwash_policy::load_path(&setup.policy_dir).unwrap();
    assert_eq!(s.digest, full.digest());
    let mut names: Vec<String> = s.tenants.iter().map(|t| t.name.clone()).collect();
    names.sort();
    assert_eq!(names, full.tenants.iter().map(|t| t.name.clone()).collect::<Vec<_>>());
    // And a reload of everything changes nothing.
    agent.signal(libc::SIGHUP);
    let s2 = until(&agent, "SIGHUP reload", |x| x.attempts > s.attempts);
    assert_eq!((s2.generation, &s2.digest), (s.generation, &s.digest));
}

#[test]
#[ignore = "scale measurement: run explicitly, preferably with --release"]
fn ten_thousand_tenants_from_files() {
    require_root();
    const N: u32 = 10_000;
    let setup = AgentSetup::new(&[]).unwrap();
    write_all(&setup, N);
    agent_common::carwash_bin(); // built before the clock starts
    let t0 = Instant::now();
    let agent = setup.start().unwrap();
    let started = t0.elapsed();
    let s = agent.status();
    assert_eq!(s.tenants.len(), N as usize, "{:?}", s.last_error);
    let apply = Duration::from_micros(s.last_apply.as_ref().unwrap().micros);
    println!("{N} tenants × 10 prefixes from files: agent up in {started:?}, map writes {apply:?} (target ≤ 2 s)");
    println!(
        "agent resident memory at {N} tenants: {} MiB",
        rss_kib(agent.child.id()) / 1024
    );

    // One tenant's file changes (a port): time until the maps say so.
    let m = Maps::open(&setup);
    let i = N / 2;
    let mut lat = Vec::new();
    for round in 0..40u16 {
        let mut t = synthetic::tenant(i);
        let port = 1000 + round;
        t.https_ports = vec![port];
        let t0 = Instant::now();
        write(&setup, &t);
        while m.service(IpAddr::V4(synthetic::vip4(i)), port).is_none() {
            assert!(t0.elapsed() < Duration::from_secs(30), "change not applied");
            std::thread::sleep(Duration::from_micros(200));
        }
        lat.push(t0.elapsed());
        std::thread::sleep(Duration::from_millis(30));
    }
    lat.sort();
    println!(
        "one tenant's file changed at {N} tenants ({} runs): p50 {:?}, p99 {:?}, max {:?} (target p99 ≤ 50 ms)",
        lat.len(),
        percentile(&lat, 50),
        percentile(&lat, 99),
        lat.last().unwrap()
    );
    println!(
        "agent resident memory after the changes: {} MiB (target ≤ 64 MiB)",
        rss_kib(agent.child.id()) / 1024
    );
    assert!(agent.status().last_error.is_none());
}
