//! Every kind of bad policy is refused as a whole, with file and line, by
//! the agent (from `policy_dir` and over the API), and the maps stay byte
//! for byte what they were.
mod agent_common;

use std::time::{Duration, Instant};

use agent_common::{AgentSetup, diff_maps, dump_maps, repo_policies_dir};
use carwash_tests::require_root;
use dataplane::api::{Document, Request};

/// A valid third tenant, `name`, whose text the cases break.
fn gamma(name: &str) -> String {
    format!(
        r#"name = "{name}"
vni = 1003
lane = "single"
vips = ["203.0.113.30"]
vpc_cidrs = ["10.103.0.0/16"]
connectors = [{{ vtep = "10.200.3.10", mac = "02:00:0a:c8:03:0a" }}]
cores = [{{ vtep = "10.200.3.20", mac = "02:00:0a:c8:03:14" }}]

[egress]
snat_ipv4 = "203.0.113.230"
"#
    )
}

/// (what, file extension, document for a tenant name, a field an error must name)
type Case = (&'static str, &'static str, Box<dyn Fn(&str) -> String>, &'static str);

fn cases() -> Vec<Case> {
    vec![
        (
            "TOML syntax",
            "toml",
            Box::new(|n| gamma(n).replace("lane = \"single\"", "lane = \"single")),
            "lane",
        ),
        (
            "unknown field",
            "toml",
            Box::new(|n| gamma(n).replace("lane = \"single\"", "lane = \"single\"\ncolour = \"red\"")),
            "colour",
        ),
        (
            "bad CIDR",
            "toml",
            Box::new(|n| gamma(n).replace("10.103.0.0/16", "10.103.0.0/33")),
            "vpc_cidrs[0]",
        ),
        (
            "VNI out of range",
            "toml",
            Box::new(|n| gamma(n).replace("vni = 1003", "vni = 16777216")),
            "vni",
        ),
        (
            "VIP claimed twice",
            "toml",
            Box::new(|n| gamma(n).replace("203.0.113.30", "203.0.113.10")),
            "vips[0]",
        ),
        (
            "VNI claimed twice",
            "toml",
            Box::new(|n| gamma(n).replace("vni = 1003", "vni = 1001")),
            "vni",
        ),
        (
            "VTEP claimed twice",
            "toml",
            Box::new(|n| gamma(n).replace("10.200.3.10", "10.200.1.10")),
            "connectors[0].vtep",
        ),
        (
            "egress IP claimed twice",
            "toml",
            Box::new(|n| gamma(n).replace("203.0.113.230", "203.0.113.200")),
            "egress.snat_ipv4",
        ),
        (
            "wrong machine count for the lane",
            "toml",
            Box::new(|n| gamma(n).replace("lane = \"single\"", "lane = \"double\"")),
            "connectors",
        ),
        (
            "JSON with a VNI of the wrong type",
            "json",
            Box::new(|n| {
                format!(
                    "{{\n  \"name\": \"{n}\",\n  \"vni\": \"1003\",\n  \"lane\": \"single\",\n  \"vips\": [\"203.0.113.30\"],\n  \"vpc_cidrs\": [\"10.103.0.0/16\"],\n  \"connectors\": [{{\"vtep\": \"10.200.3.10\", \"mac\": \"02:00:0a:c8:03:0a\"}}],\n  \"cores\": [{{\"vtep\": \"10.200.3.20\", \"mac\": \"02:00:0a:c8:03:14\"}}]\n}}\n"
                )
            }),
            "vni",
        ),
    ]
}

#[test]
fn bad_policies_are_refused_and_the_maps_stay_unchanged() {
    require_root();
    let setup = AgentSetup::new(&["acme.toml", "beta.toml"]).unwrap();
    let agent = setup.start().unwrap();
    let s0 = agent.status();
    assert_eq!(s0.tenants.len(), 2, "{s0:?}");
    assert!(s0.last_error.is_none(), "{s0:?}");
    let before = dump_maps(setup.pin_path()).unwrap();
    // Two tenants, in both policy generations (equal between applies).
    let generations = dataplane_common::types::GENERATIONS as usize;
    assert!(before["TENANTS"].len() == 2 * generations && !before["ALLOW_V4"].is_empty());

    let good: Vec<Document> = ["acme.toml", "beta.toml"]
        .iter()
        .map(|f| Document {
            name: f.to_string(),
            content: std::fs::read_to_string(repo_policies_dir().join(f)).unwrap(),
        })
        .collect();

    for (i, (what, ext, doc, field)) in cases().into_iter().enumerate() {
        let name = format!("gamma{i}");
        let file = setup.policy_dir.join(format!("{name}.{ext}"));
        let text = doc(&name);

        // 1. Dropped into policy_dir.
        std::fs::write(&file, &text).unwrap();
        let t0 = Instant::now();
        let err = loop {
            let s = agent.status();
            if let Some(e) = s
                .last_error
                .filter(|e| e.errors.iter().any(|x| x.file == file.display().to_string()))
            {
                break e;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{what}: not refused in time: {:?}",
                agent.status()
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(err.source, "policy_dir");
        for e in &err.errors {
            assert!(e.line > 0, "{what}: error without a line: {e}");
        }
        assert!(
            err.errors.iter().any(|e| e.field == field),
            "{what}: no error names field {field}: {:#?}",
            err.errors
        );
        let after = dump_maps(setup.pin_path()).unwrap();
        assert!(
            after == before,
            "{what}: maps changed: {:?}",
            diff_maps(&before, &after)
        );
        let s = agent.status();
        assert_eq!((s.generation, &s.digest), (s0.generation, &s0.digest), "{what}");

        // The set in force stays; removing the file brings back a valid
        // directory, which is the set in force: nothing is written.
        std::fs::remove_file(&file).unwrap();
        let r = agent.call(&Request::Reload);
        assert!(r.ok, "{what}: {r:?}");
        assert!(r.applied.as_ref().is_some_and(|a| a.is_noop()), "{what}: {r:?}");
        let after = dump_maps(setup.pin_path()).unwrap();
        assert!(
            after == before,
            "{what}: maps changed: {:?}",
            diff_maps(&before, &after)
        );

        // 2. Handed over the API.
        let mut docs = good.clone();
        docs.push(Document {
            name: format!("{name}.{ext}"),
            content: text.clone(),
        });
        let r = agent.call(&Request::Apply {
            documents: docs,
            tenants: vec![],
            dry_run: false,
        });
        assert!(!r.ok, "{what}: accepted over the API: {r:?}");
        assert!(!r.errors.is_empty(), "{what}: {r:?}");
        for e in &r.errors {
            assert!(e.line > 0 && e.file.ends_with(&format!(".{ext}")), "{what}: {e}");
        }
        assert!(r.errors.iter().any(|e| e.field == field), "{what}: {:#?}", r.errors);
        eprintln!("{what}: refused: {}", r.errors[0]);
        let after = dump_maps(setup.pin_path()).unwrap();
        assert!(
            after == before,
            "{what}: maps changed: {:?}",
            diff_maps(&before, &after)
        );
        // A refused push leaves policy_dir alone.
        let mut files: Vec<String> = std::fs::read_dir(&setup.policy_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["acme.toml", "beta.toml"], "{what}");
    }
    let s = agent.status();
    assert_eq!((s.generation, &s.digest), (s0.generation, &s0.digest));
}
