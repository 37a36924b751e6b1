//! What an operator installs: the Debian package (`cargo xtask deb`)
//! installed into a scratch root with dpkg and taken through upgrade,
//! remove and purge; its systemd unit (verified, hardened, with exactly the
//! capabilities the agent needs); the alert rules (promtool); the
//! dashboard and the alerts naming only metrics a live agent serves; the
//! commented host configuration stating the real defaults.
mod agent_common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use agent_common::{AgentSetup, TempDir, carwash_bin};
use dataplane::api::{self, Request};
use dataplane::config::HostConfig;

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dataplane/packaging")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The values of `key=` lines of the unit, in order.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
        .collect()
}

#[test]
fn alert_rules_pass_promtool_and_their_tests() {
    let dir = packaging().join("prometheus");
    let out = run(Command::new("promtool")
        .args(["check", "rules", "carwash-alerts.yml"])
        .current_dir(&dir));
    assert!(text(&out).contains("SUCCESS"), "{}", text(&out));
    let out = run(Command::new("promtool")
        .args(["test", "rules", "carwash-alerts.test.yml"])
        .current_dir(&dir));
    assert!(text(&out).contains("SUCCESS"), "{}", text(&out));

    // Every alert has its test.
    let rules = std::fs::read_to_string(dir.join("carwash-alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("carwash-alerts.test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 6, "{alerts:?}");
    for a in alerts {
        assert!(
            tests.contains(&format!("alertname: {a}\n        exp_alerts:\n          - exp_labels")),
            "alert {a} has no test in which it fires"
        );
    }
}

#[test]
fn commented_host_config_states_the_defaults() {
    let shipped = std::fs::read_to_string(packaging().join("carwash.toml")).unwrap();
    // As shipped, nothing is set: the unit's ExecCondition keeps the agent
    // from starting, and the agent itself would say what is missing.
    let err = format!("{:#}", HostConfig::parse(&shipped).unwrap_err());
    assert!(err.contains("uplink"), "{err}");

    let uncommented: Vec<&str> = shipped
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter(|l| l.starts_with('[') || l.split_once(" = ").is_some_and(|(k, _)| !k.contains(' ')))
        .collect();
    let mut all = HostConfig::parse(&uncommented.join("\n")).expect("every example line parses");
    // `[etcd]` is an example as a whole (there is no etcd by default); its
    // tunables are the defaults.
    let etcd = all.etcd.take().expect("the [etcd] example");
    let defaults = dataplane::etcd::EtcdConfig::new(etcd.endpoints.clone(), "/carwash");
    assert_eq!(
        (
            etcd.prefix.as_str(),
            etcd.timeout_ms,
            etcd.lease_ttl_secs,
            etcd.max_backoff_ms
        ),
        (
            defaults.prefix.as_str(),
            defaults.timeout_ms,
            defaults.lease_ttl_secs,
            defaults.max_backoff_ms
        )
    );
    // The host-specific examples, and nothing else, differ from the defaults.
    let examples: Vec<&str> = uncommented
        .iter()
        .copied()
        .filter(|l| {
            ["uplink ", "fabric ", "vtep ", "router_mac ", "group "]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .collect();
    assert_eq!(examples.len(), 5, "{uncommented:?}");
    // `group` is the one example inside a section.
    let defaults = HostConfig::parse(&examples.join("\n").replace("group =", "[api]\ngroup =")).unwrap();
    assert_eq!(all, defaults, "the commented values are the defaults");
}

/// Starts the agent in a fresh namespace with only `caps` in its bounding
/// set (as root, that is exactly its capabilities); whether it came up and
/// applied its policy, and its log.
fn agent_with_caps(caps: &[String]) -> (bool, String) {
    let setup = AgentSetup::new(&["acme.toml"]).unwrap();
    let log = setup.dir.path().join("agent.log");
    let set = std::iter::once("-all".to_string())
        .chain(
            caps.iter()
                .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase())),
        )
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = setup.ns.command("setpriv").unwrap();
    cmd.arg(format!("--bounding-set={set}"))
        .arg("--inh-caps=-all")
        .arg(carwash_bin())
        .args(["agent", "--config"])
        .arg(&setup.config)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap());
    let mut child = cmd.spawn().expect("setpriv");
    let t0 = Instant::now();
    let up = loop {
        if let Ok(r) = api::call(&setup.socket, &Request::Status, Duration::from_secs(5))
            && let Some(s) = r.status
        {
            break s.generation == 1 && !s.attachments.is_empty();
        }
        if child.try_wait().unwrap().is_some() || t0.elapsed() > Duration::from_secs(60) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    (up, std::fs::read_to_string(&log).unwrap_or_default())
}

#[test]
fn unit_capabilities_are_exactly_what_the_agent_needs() {
    let unit = std::fs::read_to_string(packaging().join("carwash.service")).unwrap();
    let caps: Vec<String> = unit_values(&unit, "CapabilityBoundingSet")
        .concat()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert!(!caps.is_empty());
    let (up, log) = agent_with_caps(&caps);
    assert!(up, "the agent runs with {caps:?}:\n{log}");
    for drop in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != drop).cloned().collect();
        let (up, log) = agent_with_caps(&fewer);
        assert!(
            !up,
            "the agent ran without {drop}: the unit grants more than it needs\n{log}"
        );
        assert!(
            log.contains("Operation not permitted") || log.contains("Permission denied"),
            "without {drop} the agent says what was refused:\n{log}"
        );
    }
}

/// Metric names in a PromQL expression: `carwash_*`, and `up`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("carwash_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let preceded = rest[..i]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !preceded {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

fn json_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => json_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| json_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn dashboard_and_alerts_name_only_metrics_the_agent_serves() {
    let setup = AgentSetup::new(&["acme.toml", "beta.toml"]).unwrap();
    let port = setup
        .ns
        .enter(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .unwrap();
    let mut cfg = std::fs::read_to_string(&setup.config).unwrap();
    cfg.push_str(&format!("metrics = \"127.0.0.1:{port}\"\n"));
    std::fs::write(&setup.config, cfg).unwrap();
    let agent = setup.start().unwrap();
    let body = setup
        .ns
        .enter(|| {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .unwrap();
    drop(agent);
    // Families (HELP/TYPE lines, also those without a series yet) and
    // series names.
    let mut served = BTreeSet::new();
    for l in body.lines() {
        let name = match l.strip_prefix("# TYPE ").or_else(|| l.strip_prefix("# HELP ")) {
            Some(rest) => rest.split_whitespace().next(),
            None if !l.starts_with('#') => l.split(['{', ' ']).next(),
            None => None,
        };
        if let Some(n) = name.filter(|n| n.starts_with("carwash_")) {
            served.insert(n.to_string());
            served.insert(format!("{n}_total"));
        }
    }
    for must in [
        "carwash_conntrack_entries",
        "carwash_conntrack_capacity",
        "carwash_snat_ports_in_use",
        "carwash_snat_port_range_ports",
    ] {
        assert!(served.contains(must), "{must} is served:\n{body}");
    }

    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(packaging().join("grafana/carwash.json")).unwrap()).unwrap();
    let mut exprs = Vec::new();
    json_exprs(&dashboard, &mut exprs);
    let panels = dashboard["panels"].as_array().unwrap();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert!(
            p["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "panel {} has a query",
            p["title"]
        );
    }
    let rules = std::fs::read_to_string(packaging().join("prometheus/carwash-alerts.yml")).unwrap();
    let mut named = BTreeSet::new();
    for (what, text) in exprs
        .iter()
        .map(|e| ("dashboard", e.as_str()))
        .chain([("alerts", rules.as_str())])
    {
        for n in metric_names(text) {
            assert!(
                served.contains(&n),
                "the {what} name {n}, which the agent does not serve"
            );
            named.insert(n);
        }
    }
    // The dashboard covers traffic, drops, source NAT, the table and policy.
    for n in [
        "carwash_tenant_steered_packets_total",
        "carwash_tenant_dropped_packets_total",
        "carwash_snat_ports_in_use",
        "carwash_conntrack_entries",
        "carwash_policy_generation",
        "carwash_policy_last_error_timestamp_seconds",
    ] {
        assert!(named.contains(n), "nothing shows {n}");
    }
}

/// An empty dpkg database for `dpkg --root`.
fn scratch_root() -> TempDir {
    let root = TempDir::new("debroot");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"] {
        std::fs::create_dir_all(root.path().join(d)).unwrap();
    }
    std::fs::write(root.path().join("var/lib/dpkg/status"), "").unwrap();
    root
}

/// dpkg on the scratch root. The maintainer scripts run outside a chroot
/// (the root has no shell) with `DPKG_ROOT` set, which they honour; the
/// package's dependencies are not in the scratch database.
fn dpkg(root: &Path, args: &[&str], deb: Option<&Path>) -> Output {
    let mut cmd = Command::new("dpkg");
    cmd.arg(format!("--root={}", root.display()))
        .args([
            "--force-script-chrootless",
            "--force-depends",
            "--force-confold",
            "--log=/dev/null",
        ])
        .args(args);
    if let Some(d) = deb {
        cmd.arg(d);
    }
    run(&mut cmd)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn deb_installs_upgrades_removes_and_purges_in_a_scratch_root() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let out = run(Command::new(&cargo)
        .args(["run", "-q", "-p", "xtask", "--manifest-path"])
        .arg(&manifest)
        .arg("deb")
        .stderr(Stdio::inherit()));
    let deb = PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().last().unwrap().trim());
    assert!(deb.exists(), "{}", deb.display());

    let lintian = Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .arg(&deb)
        .output()
        .unwrap();
    let tags: Vec<String> = text(&lintian)
        .lines()
        .filter(|l| l.starts_with(['E', 'W']) && l.contains(": carwash"))
        .map(str::to_string)
        .collect();
    assert!(tags.is_empty(), "lintian: {tags:#?}");

    let root = scratch_root();
    let r = root.path();
    dpkg(r, &["-i"], Some(&deb));

    // Every file, with its mode.
    let expected: [(&str, u32); 14] = [
        ("usr/sbin/carwash", 0o755),
        ("usr/lib/systemd/system/carwash.service", 0o644),
        ("etc/carwash/carwash.toml", 0o644),
        ("etc/carwash/policies", 0o750),
        ("usr/share/bash-completion/completions/carwash", 0o644),
        ("usr/share/zsh/vendor-completions/_carwash", 0o644),
        ("usr/share/fish/vendor_completions.d/carwash.fish", 0o644),
        ("usr/share/man/man1/carwash.1.gz", 0o644),
        ("usr/share/man/man1/carwash-agent.1.gz", 0o644),
        ("usr/share/carwash/grafana/carwash.json", 0o644),
        ("usr/share/carwash/prometheus/carwash-alerts.yml", 0o644),
        ("usr/share/doc/carwash/copyright", 0o644),
        ("usr/share/doc/carwash/README.md", 0o644),
        ("usr/share/lintian/overrides/carwash", 0o644),
    ];
    // A manual page for every command.
    let help = run(Command::new(r.join("usr/sbin/carwash")).arg("--help"));
    let pages: Vec<String> = std::fs::read_dir(r.join("usr/share/man/man1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for cmd in ["agent", "policy", "status", "tenant", "snat", "stats", "trace"] {
        assert!(text(&help).contains(cmd), "{cmd} in --help");
        assert!(
            pages.contains(&format!("carwash-{cmd}.1.gz")),
            "manual page of {cmd}: {pages:?}"
        );
    }
    for (p, m) in &expected {
        assert_eq!(mode(&r.join(p)), *m, "mode of /{p}");
    }
    // The binary shipped is the one that runs.
    let version = run(Command::new(r.join("usr/sbin/carwash")).arg("--version"));
    assert!(text(&version).contains(env!("CARGO_PKG_VERSION")), "{}", text(&version));
    let completion = std::fs::read_to_string(r.join("usr/share/bash-completion/completions/carwash")).unwrap();
    assert!(
        completion.contains("carwash") && completion.contains("tenant"),
        "a real bash completion"
    );

    // The host configuration is a conffile.
    let status = std::fs::read_to_string(r.join("var/lib/dpkg/status")).unwrap();
    assert!(status.contains("Conffiles:\n /etc/carwash/carwash.toml "), "{status}");
    // Enabled, but it does not start on a host without configuration: the
    // unit's ExecCondition is false for the shipped file, true once the
    // uplink is set.
    let wants = r.join("etc/systemd/system/multi-user.target.wants/carwash.service");
    // A link to the unit's path on the installed host (not in this root).
    assert!(wants.symlink_metadata().is_ok(), "enabled at boot");
    let unit = std::fs::read_to_string(r.join("usr/lib/systemd/system/carwash.service")).unwrap();
    let condition = unit_values(&unit, "ExecCondition").concat();
    let condition_on = |root: &Path| {
        let script = condition
            .trim_start_matches("/bin/sh -c '")
            .trim_end_matches('\'')
            .replace("/etc/carwash", &root.join("etc/carwash").display().to_string());
        Command::new("sh").args(["-c", &script]).status().unwrap().success()
    };
    assert!(!condition_on(r), "no agent on a host that has no configuration");

    // systemd-analyze verify on the installed unit (its commands found in
    // the scratch root).
    let dir = TempDir::new("unit");
    let unit_copy = dir.path().join("carwash.service");
    std::fs::write(
        &unit_copy,
        unit.replace("/usr/sbin/carwash", &r.join("usr/sbin/carwash").display().to_string()),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_copy)
        .output()
        .unwrap();
    assert!(
        verify.status.success() && text(&verify).trim().is_empty(),
        "{}",
        text(&verify)
    );
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit_copy)
        .output()
        .unwrap();
    let score: f64 = text(&security)
        .lines()
        .find_map(|l| l.split("exposure level for carwash.service: ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{}", text(&security)));
    assert!(score <= 3.0, "exposure {score} (docs/packaging.md says 2.6)");

    // Upgrade: the operator's configuration stays, the unit is restarted
    // (not stopped first), which the agent makes hitless by adopting its pins.
    // An agent ran on this host and stopped: its programs stay attached.
    let setup = AgentSetup::new(&["acme.toml"]).unwrap();
    let stopped = setup.start().unwrap().stop();
    assert!(stopped.success(), "{stopped}");
    assert!(setup.pin_path().join("links").read_dir().unwrap().next().is_some());
    let configured = format!(
        "uplink = \"eth0\"\nvtep = \"10.200.0.1\"\npin_path = \"{}\"\n",
        setup.pin_path().display()
    );
    std::fs::write(r.join("etc/carwash/carwash.toml"), &configured).unwrap();
    assert!(condition_on(r), "a configured host starts the agent");
    dpkg(r, &["-i"], Some(&deb));
    assert_eq!(
        std::fs::read_to_string(r.join("etc/carwash/carwash.toml")).unwrap(),
        configured
    );
    let ctl = r.join("var/lib/dpkg/info");
    let postinst = std::fs::read_to_string(ctl.join("carwash.postinst")).unwrap();
    assert!(postinst.contains("_dh_action=restart"), "{postinst}");
    let prerm = std::fs::read_to_string(ctl.join("carwash.prerm")).unwrap();
    assert!(
        prerm.contains("[ \"$1\" = remove ]; then\n\tdeb-systemd-invoke stop"),
        "stopped on removal only, not on upgrade: {prerm}"
    );

    // Remove: the binary goes, the configuration stays; a copy of the
    // binary waits for a purge.
    dpkg(r, &["-r", "carwash"], None);
    assert!(!r.join("usr/sbin/carwash").exists());
    assert!(r.join("etc/carwash/carwash.toml").exists(), "remove keeps the conffile");
    assert!(r.join("var/lib/carwash/uninstall/carwash").exists());

    // Still forwarding after the removal; the purge runs `carwash agent
    // --uninstall` on the configured pin path, which detaches the programs.
    assert!(setup.pin_path().join("links").exists());
    dpkg(r, &["-P", "carwash"], None);
    assert!(!r.join("etc/carwash/carwash.toml").exists());
    assert!(!r.join("var/lib/carwash").exists());
    assert!(!setup.pin_path().exists(), "--uninstall removed the pins");
    assert!(wants.symlink_metadata().is_err(), "no longer enabled");
}
