//! The operator's read commands (`status`, `tenant list`, `tenant show`,
//! `stats`, `snat list`) run as the real `carwash` binary against the pins
//! of a loaded dataplane with the repository's policies and known traffic:
//! tables and JSON documents say what the maps hold, counters count what
//! was sent, and everything still answers once the dataplane is gone.
mod agent_common;

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;

use agent_common::carwash_bin;
use carwash_tests::cli::{Pinned, carwash_at, json, stdout};
use carwash_tests::fabric::{HOST_VTEP, ROUTER_MAC, repo_policies};
use carwash_tests::fixture::{XDP_DROP, XDP_PASS, XDP_REDIRECT};
use carwash_tests::inbound_cases::{ACME4, ACME6, ALLOWED4, ALLOWED6, BETA4, DENIED4};
use carwash_tests::packets::{ip_of, tcp4, tcp6, vxlan_frame};
use carwash_tests::require_root;
use dataplane_common::drop::STEERED_BYTES;
use dataplane_common::{
    LAYOUT_VERSION,
    types::{CLASS_HTTPS, Meta},
};
use netlab::netns::PinDir;
use serde_json::Value;

/// What `traffic` sends, and so what the counters must say.
struct Sent {
    /// The steered bytes of acme's https class as the live map holds them
    /// (at least the three frames' bytes; whether the programs count a
    /// frame before or after encapsulating it is theirs to say, the CLI
    /// must report what they counted).
    acme_https_bytes: u64,
}

/// Known traffic: through the uplink, 3 https to acme (steered), 2 from a
/// denied source (not_allowed), 1 to a port without a service
/// (no_service), 1 jms to beta from a source allowed only https
/// (not_allowed), 1 to an address that is no VIP (passed), 1 jms v6 to acme
/// (steered); through the fabric, a reply from acme's first connector
/// (decapsulated) and a frame claiming acme's VNI from beta's VTEP
/// (vtep_not_of_tenant).
fn traffic(p: &Pinned) -> Sent {
    let https: Vec<Vec<u8>> = (0..3)
        .map(|i| tcp4(ALLOWED4, ACME4, 41000 + i, 443, b"GET / HTTP/1.1"))
        .collect();
    let mut frames = https.clone();
    frames.extend([
        tcp4(DENIED4, ACME4, 41000, 443, b"x"),
        tcp4(DENIED4, ACME4, 41001, 443, b"x"),
        tcp4(ALLOWED4, ACME4, 41000, 80, b"x"),
        tcp4(ALLOWED4, BETA4, 41000, 61616, b"x"),
        tcp4(ALLOWED4, Ipv4Addr::new(203, 0, 113, 99), 41000, 443, b"x"),
        tcp6(ALLOWED6, ACME6, 41000, 61616, b"jms"),
    ]);
    let verdicts = p.uplink(&frames).unwrap();
    assert_eq!(
        verdicts,
        [
            XDP_REDIRECT,
            XDP_REDIRECT,
            XDP_REDIRECT,
            XDP_DROP,
            XDP_DROP,
            XDP_DROP,
            XDP_DROP,
            XDP_PASS,
            XDP_REDIRECT
        ]
    );
    let acme = &p.tenants[0];
    let reply = tcp4(ACME4, ALLOWED4, 443, 41000, b"HTTP/1.1 200 OK");
    let tunnel = |from: Ipv4Addr, mac: [u8; 6]| {
        vxlan_frame(
            mac,
            ROUTER_MAC,
            from,
            HOST_VTEP,
            50000,
            acme.vni,
            mac,
            ROUTER_MAC,
            ip_of(&reply),
        )
    };
    let c0 = &acme.connectors[0];
    let beta_conn = &p.tenants[1].connectors[0];
    let verdicts = p
        .fabric(&[tunnel(c0.vtep, c0.mac.0), tunnel(beta_conn.vtep, beta_conn.mac.0)])
        .unwrap();
    assert_eq!(verdicts, [XDP_REDIRECT, XDP_DROP]);
    Sent {
        acme_https_bytes: {
            let counted = p.dp().tenant_stats(1).unwrap()[CLASS_HTTPS as usize][STEERED_BYTES];
            let sent: u64 = https.iter().map(|f| f.len() as u64).sum();
            assert!(counted >= sent, "{counted} bytes counted for {sent} sent");
            counted
        },
    }
}

fn setup() -> (Pinned, Sent) {
    require_root();
    let p = Pinned::new(repo_policies().tenants).unwrap();
    let sent = traffic(&p);
    (p, sent)
}

fn run_json(p: &Pinned, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    json(&p.carwash(&carwash_bin(), &a)).unwrap()
}

fn run_text(p: &Pinned, args: &[&str]) -> String {
    stdout(&p.carwash(&carwash_bin(), args)).unwrap()
}

/// The table row that starts with `first` (cells split on runs of spaces).
fn row<'a>(text: &'a str, first: &str) -> Vec<&'a str> {
    text.lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
        })
        .find(|cells| cells.first() == Some(&first))
        .unwrap_or_else(|| panic!("no row {first:?} in\n{text}"))
}

fn check_tenant_list(p: &Pinned) {
    let doc = run_json(p, &["tenant", "list"]);
    assert_eq!(doc["pin_path"], p.pin_path().display().to_string());
    let t = doc["tenants"].as_array().unwrap();
    assert_eq!(t.len(), 2, "{doc:#}");
    let acme = &t[0];
    for field in [
        "name",
        "id",
        "vni",
        "lane",
        "vips",
        "egress_ips",
        "ready",
        "active_core",
        "connectors",
        "connectors_up",
        "cores",
        "cores_up",
    ] {
        assert!(acme.get(field).is_some(), "tenant list entry has no {field}: {acme:#}");
    }
    assert_eq!(acme["name"], "acme");
    assert_eq!(acme["id"], 1);
    assert_eq!(acme["vni"], 1001);
    assert_eq!(acme["lane"], "double");
    assert_eq!(acme["vips"], serde_json::json!(["203.0.113.10", "2001:db8:10::10"]));
    assert_eq!(
        acme["egress_ips"],
        serde_json::json!(["203.0.113.200", "2001:db8:10::200"])
    );
    assert_eq!(acme["ready"], true);
    assert_eq!(
        acme["active_core"],
        serde_json::json!({"index": 0, "vtep": "10.200.1.20"})
    );
    assert_eq!(
        (acme["connectors_up"].as_u64(), acme["cores_up"].as_u64()),
        (Some(2), Some(2))
    );
    let beta = &t[1];
    assert_eq!(
        (beta["name"].as_str(), beta["vni"].as_u64()),
        (Some("beta"), Some(1002))
    );
    assert_eq!(beta["lane"], "single");
    assert_eq!(beta["connectors"], 1);

    let text = run_text(p, &["tenant", "list"]);
    let head = row(&text, "NAME");
    assert_eq!(
        head,
        [
            "NAME",
            "ID",
            "VNI",
            "LANE",
            "VIPS",
            "READY",
            "ACTIVE CORE",
            "BACKENDS UP"
        ]
    );
    assert_eq!(
        row(&text, "acme"),
        [
            "acme",
            "1",
            "1001",
            "double",
            "203.0.113.10, 2001:db8:10::10",
            "yes",
            "0 (10.200.1.20)",
            "connectors 2/2, cores 2/2"
        ]
    );
    assert_eq!(row(&text, "beta")[..4], ["beta", "2", "1002", "single"]);
}

fn check_tenant_show(p: &Pinned, sent: &Sent) {
    let s = run_json(p, &["tenant", "show", "acme"]);
    for field in [
        "name",
        "id",
        "vni",
        "lane",
        "ready",
        "allow_slot",
        "addresses",
        "services",
        "allow",
        "connectors",
        "cores",
        "stats",
    ] {
        assert!(s.get(field).is_some(), "tenant show has no {field}: {s:#}");
    }
    // 2 VIPs × (443, 61616, 61617), all TCP.
    let services = s["services"].as_array().unwrap();
    assert_eq!(services.len(), 6, "{s:#}");
    assert!(
        services.contains(&serde_json::json!({"vip": "203.0.113.10", "proto": "tcp", "port": 443, "class": "https"}))
    );
    assert!(
        services
            .contains(&serde_json::json!({"vip": "2001:db8:10::10", "proto": "tcp", "port": 61617, "class": "jms"}))
    );
    assert_eq!(
        s["allow"],
        serde_json::json!({
            "ipv4": [{"prefix": "198.51.100.0/24", "classes": ["https", "jms"]}],
            "ipv6": [{"prefix": "2001:db8:beef::/48", "classes": ["https", "jms"]}],
        })
    );
    let conns = s["connectors"].as_array().unwrap();
    assert_eq!(conns.len(), 2);
    assert_eq!(conns[0]["vtep"], "10.200.1.10");
    assert_eq!(conns[0]["mac"], "02:00:0a:c8:01:0a");
    assert_eq!(conns[0]["up"], true);
    let buckets: u64 = conns.iter().map(|c| c["maglev_buckets"].as_u64().unwrap()).sum();
    assert_eq!(buckets, 251, "every Maglev bucket names a connector");
    for c in conns {
        let share = c["maglev_share"].as_f64().unwrap();
        assert!((0.45..0.55).contains(&share), "{c:#}");
    }
    let cores = s["cores"].as_array().unwrap();
    assert_eq!(
        (cores[0]["active"].as_bool(), cores[1]["active"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(cores[1]["vtep"], "10.200.1.21");
    let https = &s["stats"]["https"];
    assert_eq!(https["steered_packets"], 3);
    assert_eq!(https["steered_bytes"], sent.acme_https_bytes);
    assert_eq!(https["dropped_packets"], 2);
    assert_eq!(https["dropped"], serde_json::json!({"not_allowed": 2}));
    assert_eq!(s["stats"]["jms"]["steered_packets"], 1);
    // No class: the port without a service, and the fabric's frames.
    let none = &s["stats"]["none"];
    assert_eq!(none["steered_packets"], 1);
    assert_eq!(
        none["dropped"],
        serde_json::json!({"no_service": 1, "vtep_not_of_tenant": 1})
    );

    // beta: https only from the lower half of the partner network.
    let b = run_json(p, &["tenant", "show", "beta"]);
    assert_eq!(
        b["allow"]["ipv4"],
        serde_json::json!([{"prefix": "198.51.100.0/25", "classes": ["https"]}])
    );
    assert_eq!(b["stats"]["jms"]["dropped"], serde_json::json!({"not_allowed": 1}));

    let text = run_text(p, &["tenant", "show", "acme"]);
    assert_eq!(row(&text, "tenant"), ["tenant", "acme (id 1)"]);
    assert_eq!(row(&text, "198.51.100.0/24"), ["198.51.100.0/24", "https,jms"]);
    let c0 = row(&text, "connector 0");
    assert_eq!(c0[..4], ["connector 0", "10.200.1.10", "02:00:0a:c8:01:0a", "yes"]);
    assert!(
        c0[4].starts_with("https: ") && c0[4].contains("/251 Maglev buckets"),
        "{c0:?}"
    );
    assert_eq!(row(&text, "core 1")[4], "jms: standby");
    let https_row = row(&text, "acme");
    assert_eq!(https_row[1..5], ["https", "3", &sent.acme_https_bytes.to_string(), "2"]);
    assert_eq!(https_row[6], "not_allowed=2");
}

fn check_stats(p: &Pinned, sent: &Sent) {
    let s = run_json(p, &["stats"]);
    for field in ["pin_path", "at", "programs", "tenants", "rates"] {
        assert!(s.get(field).is_some(), "stats has no {field}: {s:#}");
    }
    assert_eq!(s["rates"], Value::Null);
    let up = &s["programs"]["uplink"];
    let c = |k: &str| up["counters"][k].as_u64().unwrap();
    assert_eq!(
        (
            c("packets"),
            c("steered"),
            c("action_redirect"),
            c("action_drop"),
            c("action_pass")
        ),
        (9, 4, 4, 4, 1)
    );
    assert_eq!((c("ipv4"), c("ipv6"), c("tcp")), (8, 1, 9));
    assert_eq!(up["dropped"]["not_allowed"], 3);
    assert_eq!(up["dropped"]["no_service"], 1);
    assert_eq!(up["dropped"]["too_big"], 0, "every reason is listed");
    let fab = &s["programs"]["fabric"];
    assert_eq!(fab["counters"]["packets"], 2);
    assert_eq!(fab["counters"]["decapsulated"], 1);
    assert_eq!(fab["dropped"]["vtep_not_of_tenant"], 1);
    let tenants = s["tenants"].as_array().unwrap();
    assert_eq!(tenants.len(), 2);
    assert_eq!(tenants[0]["name"], "acme");
    assert_eq!(tenants[0]["classes"]["https"]["steered_bytes"], sent.acme_https_bytes);
    assert_eq!(tenants[1]["classes"]["jms"]["dropped_packets"], 1);

    let text = run_text(p, &["stats"]);
    assert_eq!(row(&text, "COUNTER"), ["COUNTER", "UPLINK", "FABRIC"]);
    assert_eq!(row(&text, "packets"), ["packets", "9", "2"]);
    assert_eq!(row(&text, "dropped not_allowed"), ["dropped not_allowed", "3", "0"]);
    assert_eq!(
        row(&text, "dropped vtep_not_of_tenant"),
        ["dropped vtep_not_of_tenant", "0", "1"]
    );
    assert!(
        !text.contains("dropped too_big"),
        "reasons that never counted are left out:\n{text}"
    );

    // One tenant: its classes only.
    let b = run_json(p, &["stats", "--tenant", "beta"]);
    assert!(b.get("programs").is_none(), "{b:#}");
    assert_eq!(b["tenants"].as_array().unwrap().len(), 1);
    assert_eq!(b["tenants"][0]["classes"]["jms"]["dropped"]["not_allowed"], 1);
    let text = run_text(p, &["stats", "--tenant", "beta"]);
    assert!(!text.contains("COUNTER"), "{text}");
    assert_eq!(row(&text, "beta")[1], "https");

    // Watching: one JSON document per line; rates from the second on.
    let out = stdout(&p.carwash(
        &carwash_bin(),
        &["stats", "--watch", "0.2", "--count", "3", "-o", "json"],
    ))
    .unwrap();
    let docs: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(docs.len(), 3, "{out}");
    assert_eq!(docs[0]["rates"], Value::Null);
    for d in &docs[1..] {
        let r = &d["rates"];
        let secs = r["interval_secs"].as_f64().unwrap();
        assert!((0.15..2.0).contains(&secs), "{r:#}");
        assert_eq!(
            r["programs"]["uplink"]["counters"]["packets"], 0.0,
            "nothing moved: {r:#}"
        );
        assert_eq!(r["tenants"][0]["classes"]["https"]["steered_packets"], 0.0);
    }
    let text = run_text(p, &["stats", "--watch", "0.2", "--count", "2"]);
    let second = &text[text.rfind("carwash stats, every 0.2s").unwrap()..];
    assert!(second.contains("rates per second over the last"), "{text}");
    assert_eq!(
        row(second, "COUNTER"),
        ["COUNTER", "UPLINK", "UPLINK/S", "FABRIC", "FABRIC/S"]
    );
    assert_eq!(row(second, "packets"), ["packets", "9", "0.0", "2", "0.0"]);
}

fn check_status_and_snat(p: &Pinned) {
    let s = run_json(p, &["status", "--socket", "/nonexistent/carwash.sock"]);
    let pins = &s["pins"];
    assert_eq!(pins["layout_version"], LAYOUT_VERSION);
    assert_eq!(pins["generation"], 1);
    assert_eq!(pins["digest"].as_str().unwrap().len(), 64);
    assert_eq!(pins["vtep"], "10.200.0.1");
    assert_eq!(pins["host_ready"], true);
    let names: Vec<&str> = pins["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme", "beta"]);
    assert_eq!(s["agent"], Value::Null);
    assert!(s["agent_error"].as_str().unwrap().contains("is it running?"), "{s:#}");
    let text = run_text(p, &["status", "--socket", "/nonexistent/carwash.sock"]);
    assert_eq!(row(&text, "policy generation"), ["policy generation", "1"]);
    assert!(row(&text, "agent")[1].starts_with("not answering"), "{text}");

    // No outbound traffic went through these pins: a table, empty.
    let snat = run_json(p, &["snat", "list"]);
    assert_eq!(snat["available"], true, "{snat:#}");
    assert_eq!(snat["entries"], serde_json::json!([]));
    let snat = run_json(p, &["snat", "list", "--tenant", "acme"]);
    assert_eq!(snat["tenant"], "acme");
    let text = run_text(p, &["snat", "list"]);
    assert_eq!(text.trim(), "no SNAT entries", "{text}");
}

/// `stats --watch` while traffic flows: the rates move. Prints the table
/// it saw (`cargo test -- --nocapture` shows it).
fn check_watch_sees_traffic(p: &Pinned) {
    let watch = |format: &str| {
        std::process::Command::new(carwash_bin())
            .args([
                "stats",
                "--tenant",
                "acme",
                "--watch",
                "0.5",
                "--count",
                "3",
                "-o",
                format,
                "--pin-path",
            ])
            .arg(p.pin_path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (json_child, table_child) = (watch("json"), watch("table"));
    let frames: Vec<Vec<u8>> = (0..20)
        .map(|i| tcp4(ALLOWED4, ACME4, 42000 + i, 443, b"GET / HTTP/1.1"))
        .collect();
    let t0 = std::time::Instant::now();
    while t0.elapsed() < std::time::Duration::from_millis(1300) {
        p.uplink(&frames).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = stdout(&json_child.wait_with_output().unwrap()).unwrap();
    let docs: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(docs.len(), 3, "{out}");
    let rate = |d: &Value| {
        d["rates"]["tenants"][0]["classes"]["https"]["steered_packets"]
            .as_f64()
            .unwrap()
    };
    assert!(rate(&docs[1]) > 100.0 && rate(&docs[2]) > 100.0, "{out}");
    let table = stdout(&table_child.wait_with_output().unwrap()).unwrap();
    let last = &table[table.rfind("carwash stats, every").unwrap()..];
    let https = row(last, "acme");
    let per_sec: f64 = https[7].parse().unwrap();
    assert!(per_sec > 100.0, "{table}");
    println!("carwash stats --tenant acme --watch 0.5, while traffic flows:\n{table}");
}

#[test]
fn read_commands_show_the_maps_and_the_traffic() {
    let (p, sent) = setup();
    check_tenant_list(&p);
    check_tenant_show(&p, &sent);
    check_stats(&p, &sent);
    check_status_and_snat(&p);
    check_watch_sees_traffic(&p);
}

#[test]
fn read_commands_answer_from_the_pins_alone() {
    let (mut p, sent) = setup();
    let before: Vec<Value> = [
        &["tenant", "list"][..],
        &["tenant", "show", "acme"],
        &["stats", "--tenant", "acme"],
    ]
    .iter()
    .map(|a| run_json(&p, a))
    .collect();
    // No process holds the programs or maps any more: only the pins.
    drop(p.dp.take());
    check_tenant_list(&p);
    check_tenant_show(&p, &sent);
    check_stats(&p, &sent);
    check_status_and_snat(&p);
    let after: Vec<Value> = [
        &["tenant", "list"][..],
        &["tenant", "show", "acme"],
        &["stats", "--tenant", "acme"],
    ]
    .iter()
    .map(|a| run_json(&p, a))
    .collect();
    let strip = |mut v: Value| {
        v.as_object_mut().map(|o| o.remove("at"));
        v
    };
    for (b, a) in before.into_iter().zip(after) {
        assert_eq!(strip(b), strip(a));
    }
}

fn failure(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected a failure: {out:?}");
    assert!(out.stdout.is_empty(), "nothing on stdout for a failure: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn errors_say_what_is_wrong_and_what_to_do() {
    require_root();
    let bin = carwash_bin();
    // Nothing pinned.
    let empty = PinDir::new().unwrap();
    for args in [&["tenant", "list"][..], &["stats"], &["status"], &["snat", "list"]] {
        let e = failure(&carwash_at(&bin, empty.path(), args));
        assert!(
            e.contains(&format!("nothing is pinned under {}", empty.path().display())) && e.contains("carwash agent"),
            "{args:?}: {e}"
        );
    }
    let e = failure(&carwash_at(
        &bin,
        std::path::Path::new("/tmp/no-such-carwash"),
        &["tenant", "list"],
    ));
    assert!(e.contains("is not on a mounted bpffs"), "{e}");

    let (mut p, _) = setup();
    // Not root.
    let out = std::process::Command::new(&bin)
        .args(["tenant", "list", "--pin-path"])
        .arg(p.pin_path())
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let e = failure(&out);
    assert!(e.contains("needs root") && e.contains("sudo"), "{e}");

    // An unknown tenant names the ones there are.
    let e = failure(&p.carwash(&bin, &["tenant", "show", "gamma"]));
    assert!(
        e.contains("no tenant \"gamma\"") && e.contains("tenants: acme, beta"),
        "{e}"
    );
    let e = failure(&p.carwash(&bin, &["snat", "list", "--tenant", "gamma"]));
    assert!(e.contains("no tenant \"gamma\""), "{e}");

    // Pins of another layout.
    let mut dp = p.dp.take().unwrap();
    let meta = dp.meta().unwrap();
    dp.set_meta(&Meta {
        layout_version: LAYOUT_VERSION + 1,
        ..meta
    })
    .unwrap();
    for args in [
        &["tenant", "list"][..],
        &["status"],
        &[
            "trace",
            "--src",
            "198.51.100.10",
            "--dst",
            "203.0.113.10",
            "--dport",
            "443",
        ],
    ] {
        let e = failure(&p.carwash(&bin, args));
        let want = format!(
            "pinned maps under {} have layout version {}, this carwash has {LAYOUT_VERSION}",
            p.pin_path().display(),
            LAYOUT_VERSION + 1
        );
        assert!(e.contains(&want), "{args:?}: {e}");
    }
}

#[test]
fn snat_list_shows_tracked_flows() {
    require_root();
    let p = Pinned::new(repo_policies().tenants).unwrap();
    let acme = &p.tenants[0];
    let m = &acme.cores[1];
    let vm = Ipv4Addr::new(10, 101, 0, 7);
    let partner = Ipv4Addr::new(198, 18, 0, 10);
    let out = |sport: u16, payload: &[u8]| {
        vxlan_frame(
            [2, 1, 10, 200, 1, 21],
            [0x02, 0xfa, 0xb0, 0, 0, 0x01],
            m.vtep,
            HOST_VTEP,
            50000,
            acme.vni,
            m.mac.0,
            ROUTER_MAC,
            ip_of(&tcp4(vm, partner, sport, 443, payload)),
        )
    };
    assert_eq!(
        p.fabric(&[out(41000, b"a"), out(41001, b"b"), out(41000, b"c")])
            .unwrap(),
        [XDP_REDIRECT; 3]
    );
    let list = run_json(&p, &["snat", "list"]);
    assert_eq!(list["available"], true);
    let entries = list["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{list:#}");
    let e = &entries[0];
    assert_eq!(e["tenant"], "acme");
    assert_eq!(e["proto"], "tcp");
    assert_eq!(e["inside"], "10.101.0.7:41000");
    assert!(e["egress"].as_str().unwrap().starts_with("203.0.113.200:"), "{e:#}");
    assert_eq!(e["remote"], "198.18.0.10:443");
    assert_eq!(e["machine"], "core[1]");
    assert_eq!(e["state"], "established");
    assert_eq!(e["directions"], "both");
    assert!(e["expires_in_s"].as_u64().unwrap() > 7000, "{e:#}");
    // The egress ports differ: each flow its own translated tuple.
    assert_ne!(entries[0]["egress"], entries[1]["egress"]);
    assert_eq!(
        run_json(&p, &["snat", "list", "--tenant", "beta"])["entries"],
        serde_json::json!([])
    );
    let text = run_text(&p, &["snat", "list"]);
    assert_eq!(
        row(&text, "TENANT")[..5],
        ["TENANT", "PROTO", "INSIDE", "EGRESS", "REMOTE"]
    );
    assert_eq!(row(&text, "acme")[2], "10.101.0.7:41000", "{text}");
}
