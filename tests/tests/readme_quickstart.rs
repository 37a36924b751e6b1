//! The README's "A first tenant in five minutes", run as written: its host
//! configuration (with the test's interface names and paths), its tenant,
//! and its commands (`systemctl restart carwash` being what the unit's
//! `ExecStart=` runs) against a real agent in a namespace.
mod agent_common;

use std::path::Path;

use agent_common::{AgentSetup, carwash_bin};

/// The code block after `<!-- quickstart: NAME -->` in the README.
fn block(readme: &str, name: &str) -> String {
    let marker = format!("<!-- quickstart: {name} -->");
    let rest = &readme[readme
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker} in the README"))..];
    let start = rest.find("```").expect("a code block after the marker");
    let body = &rest[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").expect("the block's end")].to_string()
}

fn carwash(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(carwash_bin()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn the_readme_first_tenant_works_as_written() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let setup = AgentSetup::new(&[]).unwrap();
    let policies = setup.policy_dir.display().to_string();
    let config = setup.config.display().to_string();

    // Step 1: the host configuration, on this namespace's interfaces.
    let host = block(&readme, "host-config")
        .replace("\"eth0\"", "\"uplink\"")
        .replace("\"eth1\"", "\"fabric\"");
    assert!(host.contains("vtep = \"10.200.0.1\""), "{host}");
    std::fs::write(
        &setup.config,
        format!(
            "{host}policy_dir = \"{policies}\"\npin_path = \"{}\"\napi_socket = \"{}\"\n",
            setup.pin_path().display(),
            setup.socket.display()
        ),
    )
    .unwrap();
    // Step 2: the tenant.
    std::fs::write(setup.policy_dir.join("acme.toml"), block(&readme, "tenant")).unwrap();

    // Step 3: the commands.
    let mut agent = None;
    let mut outputs = Vec::new();
    for line in block(&readme, "commands").lines().filter(|l| !l.trim().is_empty()) {
        let line = line.replace("/etc/carwash/policies", &policies);
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["systemctl", "restart", "carwash"] => agent = Some(setup.start().unwrap()),
            ["carwash", "policy", "check", dir] => {
                let (ok, out) = carwash(&["policy", "check", dir]);
                assert!(ok, "{line}: {out}");
                outputs.push(out);
            }
            ["carwash", rest @ ..] => {
                let mut args = rest.to_vec();
                args.extend(["--config", &config]);
                let (ok, out) = carwash(&args);
                assert!(ok, "{line}: {out}");
                outputs.push(out);
            }
            _ => panic!("a README command this test does not know how to run: {line}"),
        }
    }
    let agent = agent.expect("the README starts the agent");
    let status = agent.status();
    assert_eq!(status.generation, 1, "{status:?}");
    assert_eq!(status.tenants.len(), 1, "{status:?}");
    assert_eq!(status.tenants[0].name, "acme");
    // What the README says the commands show.
    let all = outputs.join("\n");
    for word in [
        "uplink",
        "fabric",
        "acme",
        "203.0.113.10",
        "10.200.1.10",
        "203.0.113.200",
    ] {
        assert!(all.contains(word), "the README's commands show {word}:\n{all}");
    }
}
