//! `carwash trace` against the pins of a loaded dataplane: every inbound
//! fixture case (`carwash_tests::inbound_cases`, the list `inbound.rs`
//! checks frame by frame) gets the verdict its fixture expects (action,
//! drop reason, tenant, backend), the fabric side answers for replies and
//! for a VNI claimed from the wrong VTEP, and no trace moves a live counter
//! or changes a live map.
mod agent_common;

use agent_common::{carwash_bin, dump_maps};
use aya::maps::{Array, HashMap, Map, MapData};
use carwash_tests::cli::{Pinned, json, stdout};
use carwash_tests::inbound_cases::{
    ACME4, ALLOWED4, Expect, InboundCase, Machine, after_core_switch, inbound_cases, tenants,
};
use carwash_tests::require_root;
use dataplane::maps::counters::pinned_counters;
use dataplane_common::maps;
use dataplane_common::types::{BackendHop, NextHopEntry, NextHopKey, SIDE_FABRIC, SIDE_UPLINK, TenantStats};
use serde_json::Value;

/// What the data path writes besides the global counters: the per-tenant
/// counters and the next-hop caches, as the live maps hold them.
#[derive(Debug, PartialEq)]
struct DataPath {
    tenant_stats: Vec<TenantStats>,
    next_hops: Vec<(NextHopKey, NextHopEntry)>,
    backend_hops: Vec<(u32, BackendHop)>,
}

fn data_path(p: &Pinned) -> DataPath {
    let open = |name: &str| MapData::from_pin(p.pin_path().join("maps").join(name)).unwrap();
    let nh: HashMap<_, NextHopKey, NextHopEntry> = HashMap::try_from(Map::LruHashMap(open(maps::NEXT_HOPS))).unwrap();
    let mut next_hops: Vec<_> = nh.iter().map(|kv| kv.unwrap()).collect();
    next_hops.sort_by_key(|(k, _)| (k.ifindex, k.addr));
    let bh: Array<_, BackendHop> = Array::try_from(Map::Array(open(maps::BACKEND_HOPS))).unwrap();
    let backend_hops = bh
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u32, v.unwrap()))
        .filter(|(_, v)| *v != BackendHop::default())
        .collect();
    DataPath {
        tenant_stats: (1..=3).map(|id| p.dp().tenant_stats(id).unwrap()).collect(),
        next_hops,
        backend_hops,
    }
}

fn trace(p: &Pinned, args: &[String]) -> Value {
    let mut a: Vec<&str> = vec!["trace", "--netns", p.fab.ns.name(), "-o", "json"];
    a.extend(args.iter().map(String::as_str));
    json(&p.carwash(&carwash_bin(), &a)).unwrap()
}

/// The trace of `c` against its fixture's verdict; the mismatches.
fn check(p: &Pinned, c: &InboundCase) -> Vec<String> {
    let t = trace(p, &c.trace_args());
    let mut errors = Vec::new();
    let mut want = |what: &str, got: &Value, expect: Value| {
        if *got != expect {
            errors.push(format!("{}: {what} is {got}, the fixture expects {expect}", c.name));
        }
    };
    match c.expect {
        Expect::Steer { tenant, to } => {
            want("action", &t["action"], "XDP_REDIRECT".into());
            want("drop reason", &t["drop_reason"], Value::Null);
            want("tenant", &t["tenant"]["name"], tenant.into());
            let ts = &p.tenants;
            let id = ts.iter().position(|x| x.name == tenant).unwrap() as u32 + 1;
            let info = p.dp().tenant_info(id).unwrap().unwrap();
            let i = c.machine_index(&info);
            let (role, machine) = match to {
                Machine::Connector => ("connector", &ts[id as usize - 1].connectors[i]),
                Machine::Core(_) => ("core", &ts[id as usize - 1].cores[i]),
            };
            want("backend role", &t["backend"]["role"], role.into());
            want("backend index", &t["backend"]["index"], i.into());
            want("backend vtep", &t["backend"]["vtep"], machine.vtep.to_string().into());
            want("backend mac", &t["backend"]["mac"], machine.mac.to_string().into());
            want("backend source", &t["backend"]["source"], "output".into());
            let vni = t["output"]
                .as_array()
                .and_then(|h| h.iter().find(|l| l["layer"] == "vxlan"))
                .map(|l| l["vni"].clone())
                .unwrap_or(Value::Null);
            want("output VNI", &vni, ts[id as usize - 1].vni.into());
        }
        Expect::Drop(why) => {
            want("action", &t["action"], "XDP_DROP".into());
            want("drop reason", &t["drop_reason"], why.name().into());
            want("output", &t["output"], Value::Null);
        }
        Expect::TooBig { mtu } => {
            want("action", &t["action"], "XDP_TX".into());
            want("drop reason", &t["drop_reason"], "too_big_icmp_sent".into());
            let icmp = t["output"]
                .as_array()
                .and_then(|h| h.iter().find(|l| l["layer"] == "icmp"))
                .map(|l| l["mtu"].clone())
                .unwrap_or(Value::Null);
            want("ICMP MTU", &icmp, mtu.into());
        }
        Expect::Pass => {
            want("action", &t["action"], "XDP_PASS".into());
            want("drop reason", &t["drop_reason"], Value::Null);
            want("tenant", &t["tenant"], Value::Null);
        }
    }
    errors
}

#[test]
fn trace_gives_every_inbound_fixture_its_verdict() {
    require_root();
    let mut p = Pinned::new(tenants()).unwrap();
    // Some live traffic first, so that "no counter moved" means something.
    p.uplink(&inbound_cases().iter().map(InboundCase::packet).collect::<Vec<_>>())
        .unwrap();
    let maps_before = dump_maps(p.pin_path()).unwrap();
    let counters_before = [SIDE_UPLINK, SIDE_FABRIC].map(|s| pinned_counters(p.pin_path(), s).unwrap());
    let data_path_before = data_path(&p);
    assert!(
        !data_path_before.backend_hops.is_empty(),
        "the live traffic filled the next-hop cache"
    );

    let mut errors: Vec<String> = inbound_cases().iter().flat_map(|c| check(&p, c)).collect();
    p.dp.as_mut().unwrap().set_active_core(1, 1).unwrap();
    let maps_switched = dump_maps(p.pin_path()).unwrap();
    errors.extend(after_core_switch().iter().flat_map(|c| check(&p, c)));
    assert!(errors.is_empty(), "{}", errors.join("\n"));

    // Nothing live moved: not the counters, not the per-tenant counters,
    // not the next-hop caches, not a policy map (the core switch above is
    // the only change).
    let counters_after = [SIDE_UPLINK, SIDE_FABRIC].map(|s| pinned_counters(p.pin_path(), s).unwrap());
    assert_eq!(counters_before, counters_after, "a trace moved the live counters");
    assert_eq!(data_path_before, data_path(&p), "a trace wrote the live data-path maps");
    let maps_after = dump_maps(p.pin_path()).unwrap();
    assert_eq!(
        agent_common::diff_maps(&maps_switched, &maps_after),
        Vec::<String>::new(),
        "a trace changed the live maps"
    );
    // Three tenants, in both policy generations; the `GENERATION` word
    // counts the write (the uplink's denial cache forgets what it knew).
    let records = 3 * dataplane_common::types::GENERATIONS;
    assert_eq!(
        agent_common::diff_maps(&maps_before, &maps_switched),
        vec![
            "GENERATION (1 entries before, 1 after)".to_string(),
            format!("TENANTS ({records} entries before, {records} after)")
        ]
    );
}

#[test]
fn trace_prints_the_path_of_a_packet() {
    require_root();
    let p = Pinned::new(tenants()).unwrap();
    let bin = carwash_bin();
    let ns = p.fab.ns.name();

    // A SYN to acme's https port: the table names every step.
    let text = stdout(&p.carwash(
        &bin,
        &[
            "trace",
            "--netns",
            ns,
            "--src",
            "198.51.100.10",
            "--dst",
            "203.0.113.10",
            "--dport",
            "443",
            "--syn",
        ],
    ))
    .unwrap();
    for want in [
        "tenant       acme (id 1)",
        "class        https",
        "allow entry  198.51.100.0/24 (https, jms)",
        "action       XDP_REDIRECT",
        "drop reason  -",
        "VXLAN vni 1001",
        "TCP 40000 → 443 [syn], mss 1410, 0 bytes of data",
        "(the packet was sent there)",
        &format!("run in netns {ns} as arriving on uplink"),
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }

    // A reply from acme's VIP, tunnelled by the machine the forward flow
    // went to: decapsulated towards the internet.
    let t = json(&p.carwash(
        &bin,
        &[
            "trace",
            "--netns",
            ns,
            "--from",
            "fabric",
            "--src",
            "203.0.113.10",
            "--sport",
            "443",
            "--dst",
            "198.51.100.10",
            "--dport",
            "40000",
            "-o",
            "json",
        ],
    ))
    .unwrap();
    assert_eq!(t["action"], "XDP_REDIRECT", "{t:#}");
    assert_eq!(t["tenant"]["name"], "acme");
    assert_eq!(t["backend"]["source"], "input");
    assert_eq!(t["input"][3], serde_json::json!({"layer": "vxlan", "vni": 1001}));
    let out = t["output"].as_array().unwrap();
    assert_eq!(out.len(), 3, "outer headers gone: {t:#}");
    assert_eq!(out[1]["src"], ACME4.to_string());
    assert_eq!(out[1]["dst"], ALLOWED4.to_string());

    // acme's VNI from one of beta's machines: the isolation check drops it.
    let t = json(&p.carwash(
        &bin,
        &[
            "trace",
            "--netns",
            ns,
            "--from",
            "fabric",
            "--vtep",
            "10.200.2.10",
            "--src",
            "203.0.113.10",
            "--sport",
            "443",
            "--dst",
            "198.51.100.10",
            "--dport",
            "40000",
            "-o",
            "json",
        ],
    ))
    .unwrap();
    assert_eq!(t["action"], "XDP_DROP");
    assert_eq!(t["drop_reason"], "vtep_not_of_tenant");
    assert_eq!(t["backend"], Value::Null);
    assert!(
        t["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("is no machine of the tenant")),
        "{t:#}"
    );

    // Outside the fixture namespace the FIB knows no VTEP: the trace says
    // so, and where to run instead.
    let t = json(&p.carwash(
        &bin,
        &[
            "trace",
            "--src",
            "198.51.100.10",
            "--dst",
            "203.0.113.10",
            "--dport",
            "61616",
            "-o",
            "json",
        ],
    ))
    .unwrap();
    assert_eq!(t["drop_reason"], "no_route", "{t:#}");
    assert_eq!(t["backend"]["role"], "core");
    assert_eq!(t["backend"]["source"], "maps");
    assert!(
        t["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("--netns")),
        "{t:#}"
    );

    // Flags that do not make a packet are refused before anything runs.
    let out = p.carwash(
        &bin,
        &[
            "trace",
            "--src",
            "198.51.100.10",
            "--dst",
            "2001:db8:10::10",
            "--dport",
            "443",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("different address families"));
    let out = p.carwash(&bin, &["trace", "--src", "198.51.100.10", "--dst", "203.0.113.10"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dport is required for tcp packets"));
}

#[test]
fn trace_follows_outbound_traffic_through_source_nat() {
    require_root();
    let p = Pinned::new(tenants()).unwrap();
    let bin = carwash_bin();
    let ns = p.fab.ns.name();
    let outbound = |src: &str, dst: &str| {
        json(&p.carwash(
            &bin,
            &[
                "trace",
                "--netns",
                ns,
                "--from",
                "fabric",
                "--vni",
                "1001",
                "--vtep",
                "10.200.1.10",
                "--src",
                src,
                "--dst",
                dst,
                "--dport",
                "53",
                "--proto",
                "udp",
                "-o",
                "json",
            ],
        ))
        .unwrap()
    };
    // A machine of acme to a partner: translated to acme's egress IP, out
    // of the uplink, decapsulated.
    let before = dump_maps(p.pin_path()).unwrap();
    let t = outbound("10.101.0.5", "198.18.0.10");
    assert_eq!(t["action"], "XDP_REDIRECT", "{t:#}");
    assert_eq!(t["tenant"]["name"], "acme");
    let out = t["output"].as_array().unwrap();
    assert_eq!(out.len(), 3, "outer headers gone: {t:#}");
    assert_eq!(out[1]["src"], "203.0.113.200", "{t:#}");
    assert_eq!(out[1]["dst"], "198.18.0.10");
    // The trace tracked its flow in a table of its own.
    let after = dump_maps(p.pin_path()).unwrap();
    assert_eq!(
        before.get("CONNTRACK"),
        after.get("CONNTRACK"),
        "the live table is untouched"
    );

    // From outside acme's VPC: refused, with the reason.
    let t = outbound("10.99.0.5", "198.18.0.10");
    assert_eq!(t["action"], "XDP_DROP", "{t:#}");
    assert_eq!(t["drop_reason"], "inner_source_not_allowed", "{t:#}");
}
