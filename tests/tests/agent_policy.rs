//! `carwash policy check`: the agent's validation, offline.
mod agent_common;

use agent_common::{TempDir, carwash, repo_policies_dir};

#[test]
fn check_passes_on_the_repository_policies() {
    let dir = repo_policies_dir();
    let out = carwash(&["policy", "check", dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let set = carwash_policy::load_path(&dir).unwrap();
    assert_eq!(
        stdout.trim(),
        format!("ok: 2 tenants, digest {}", set.digest()),
        "{stdout}"
    );
    // One file on its own too, and as one JSON document.
    let out = carwash(&["policy", "check", dir.join("acme.toml").to_str().unwrap(), "-o", "json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["tenants"], 1);
}

#[test]
fn check_fails_with_file_and_line_on_a_broken_file() {
    let tmp = TempDir::new("check");
    for f in ["acme.toml", "beta.toml"] {
        std::fs::copy(repo_policies_dir().join(f), tmp.path().join(f)).unwrap();
    }
    // beta: a CIDR that is not one, on line 16 of the file.
    let beta = std::fs::read_to_string(tmp.path().join("beta.toml")).unwrap();
    let broken = beta.replace("cidr = \"198.51.100.0/25\"", "cidr = \"198.51.100.0/33\"");
    assert_ne!(beta, broken);
    let line = broken.lines().position(|l| l.contains("/33")).unwrap() + 1;
    let file = tmp.path().join("beta.toml");
    std::fs::write(&file, &broken).unwrap();

    let out = carwash(&["policy", "check", tmp.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!("{}:{line}:", file.display());
    assert!(stderr.contains(&want), "expected {want} in:\n{stderr}");
    assert!(stderr.contains("allow[0].cidr"), "{stderr}");
    assert!(out.stdout.is_empty());

    // JSON output carries the same.
    let out = carwash(&["policy", "check", tmp.path().to_str().unwrap(), "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["errors"][0]["line"], line);
    assert_eq!(v["errors"][0]["field"], "allow[0].cidr");
}
