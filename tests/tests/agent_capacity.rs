//! The maps' limits (`check_capacity`) against a running agent: a set with
//! too many tenants, VIPs and egress addresses, services or prefixes of one
//! tenant is refused before anything is written (every pinned map byte for
//! byte the same afterwards, the generation unmoved), with an error naming
//! the limit and the figure, the file and the field; `carwash policy check`
//! says the same with the line.
mod agent_common;

use std::time::Duration;

use agent_common::*;
use carwash_tests::require_root;
use dataplane::api::{ApiError, Request};
use dataplane_common::types::{MAX_ADDRS, MAX_ALLOW_PREFIXES, MAX_SERVICES, MAX_TENANTS};
use serde_json::{Value, json};

/// Tenant `i` (0-based, below 65,536) with `vips` IPv6 VIPs, `ports` https
/// and as many jms ports, and `prefixes` IPv4 allow entries.
fn tenant(i: usize, vips: usize, ports: usize, prefixes: usize) -> Value {
    let (hi, lo) = (i / 256, i % 256);
    json!({
        "name": format!("t{i}"),
        "vni": i + 10,
        "lane": "single",
        "vips": (0..vips).map(|j| format!("2001:db8:{i:x}::{:x}", j + 1)).collect::<Vec<_>>(),
        "https_ports": (0..ports).map(|p| 1000 + p).collect::<Vec<_>>(),
        "jms_ports": (0..ports).map(|p| 2000 + p).collect::<Vec<_>>(),
        "vpc_cidrs": ["10.0.0.0/16"],
        "connectors": [{ "vtep": format!("10.{hi}.{lo}.1"), "mac": format!("02:00:00:{hi:02x}:{lo:02x}:01") }],
        "cores": [{ "vtep": format!("10.{hi}.{lo}.2"), "mac": format!("02:00:00:{hi:02x}:{lo:02x}:02") }],
        "allow": (0..prefixes.max(1))
            .map(|k| json!({ "cidr": format!("100.{}.{}.{}/32", k / 65536, (k / 256) % 256, k % 256) }))
            .collect::<Vec<_>>(),
    })
}

/// Applies `tenants` through the API and expects it refused with exactly
/// one error, which it returns, with nothing written.
fn refused(agent: &AgentProc, setup: &AgentSetup, tenants: Vec<Value>) -> ApiError {
    let before = dump_maps(setup.pin_path()).unwrap();
    let generation = agent.status().generation;
    let resp = dataplane::api::call(
        &setup.socket,
        &Request::Apply {
            documents: vec![],
            tenants,
            dry_run: false,
        },
        Duration::from_secs(300),
    )
    .unwrap();
    assert!(!resp.ok, "{resp:?}");
    assert_eq!(resp.errors.len(), 1, "{:#?}", resp.errors);
    let after = dump_maps(setup.pin_path()).unwrap();
    assert!(
        before == after,
        "a refused set changed maps: {:?}",
        diff_maps(&before, &after)
    );
    assert_eq!(agent.status().generation, generation);
    resp.errors[0].clone()
}

#[test]
fn sets_beyond_the_maps_limits_are_refused_before_anything_is_written() {
    require_root();
    let setup = AgentSetup::new(&["acme.toml", "beta.toml"]).unwrap();
    let agent = setup.start().unwrap();
    let dir = setup.policy_dir.display().to_string();

    // Tenants: one more than the maps hold.
    let n = MAX_TENANTS as usize;
    let e = refused(&agent, &setup, (0..n).map(|i| tenant(i, 1, 1, 1)).collect());
    assert_eq!((e.file.as_str(), e.field.as_str()), (dir.as_str(), "name"), "{e:?}");
    assert_eq!(
        e.message,
        format!("the policy set: {n} tenants: the maps hold at most {}", MAX_TENANTS - 1)
    );

    // VIPs and egress addresses: 66 tenants of 1,000 VIPs.
    let e = refused(&agent, &setup, (0..66).map(|i| tenant(i, 1000, 1, 1)).collect());
    assert_eq!((e.file.as_str(), e.field.as_str()), (dir.as_str(), "vips"), "{e:?}");
    assert_eq!(
        e.message,
        format!("the policy set: 66000 VIPs and egress addresses in all: the maps hold at most {MAX_ADDRS}")
    );

    // Services: 9 tenants of 1,000 VIPs on 30 ports.
    let e = refused(&agent, &setup, (0..9).map(|i| tenant(i, 1000, 15, 1)).collect());
    assert_eq!(
        (e.file.as_str(), e.field.as_str()),
        (dir.as_str(), "https_ports"),
        "{e:?}"
    );
    assert!(e.message.starts_with("the policy set: 270000 services"), "{e:?}");
    assert!(
        e.message.ends_with(&format!("the maps hold at most {MAX_SERVICES}")),
        "{e:?}"
    );

    // Prefixes of one tenant: the error is in its document, at `allow`.
    let big = MAX_ALLOW_PREFIXES as usize + 1;
    let e = refused(&agent, &setup, vec![tenant(0, 1, 1, 1), tenant(1, 1, 1, big)]);
    assert_eq!((e.file.as_str(), e.field.as_str()), ("t1.json", "allow"), "{e:?}");
    assert!(e.line > 0, "{e:?}");
    // vpc_cidrs count too: one IPv4 prefix more.
    assert_eq!(
        e.message,
        format!(
            "allow, vpc_cidrs and egress allow: {} IPv4 prefixes, at most {MAX_ALLOW_PREFIXES}",
            big + 1
        )
    );
    let names: Vec<String> = agent.status().tenants.into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["acme", "beta"]);

    // `carwash policy check` on files: the file, the line of `allow`, the field.
    let files = TempDir::new("capacity");
    let toml_text = {
        let v = tenant(1, 1, 1, big);
        let mut t = String::new();
        for key in [
            "name",
            "vni",
            "lane",
            "vips",
            "https_ports",
            "jms_ports",
            "vpc_cidrs",
            "connectors",
            "cores",
        ] {
            t.push_str(&format!("{key} = {}\n", toml_value(&v[key])));
        }
        for a in v["allow"].as_array().unwrap() {
            t.push_str(&format!("[[allow]]\ncidr = {}\n", a["cidr"]));
        }
        t
    };
    std::fs::write(files.path().join("t1.toml"), &toml_text).unwrap();
    let out = carwash(&["policy", "check", files.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = toml_text.lines().position(|l| l == "[[allow]]").unwrap() + 1;
    let file = files.path().join("t1.toml");
    assert!(
        err.contains(&format!("{}:{line}:", file.display())) && err.contains("allow"),
        "{err}"
    );
}

/// A JSON value as a TOML value (strings, numbers, arrays, inline tables).
fn toml_value(v: &Value) -> String {
    match v {
        Value::Array(a) => format!("[{}]", a.iter().map(toml_value).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{ {} }}",
            o.iter()
                .map(|(k, v)| format!("{k} = {}", toml_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}
