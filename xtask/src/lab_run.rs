//! The main job (`cargo xtask run`) and the demo: the agent on the lab
//! topology with the repo's policies.
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use std::net::IpAddr;

use netlab::lab::{
    ALLOWED_CLIENT_V4, ALLOWED_CLIENT_V6, ALLOWED_CLIENT_V6_B, DENIED_CLIENT_V4, DENIED_CLIENT_V6, Lab, LabConfig,
    PARTNER_TCP_PORT, PARTNER_V4, Role, parse_peer,
};

use crate::workspace::{build_release, root};

const LAB: &str = "cwlab";

/// Where the lab agent pins: its own directory, so it never meets a real
/// agent's pins on the same machine.
fn lab_pin_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/carwash-{name}"))
}

struct Running {
    lab: Lab,
    agent: Child,
    carwash: PathBuf,
    pin_path: PathBuf,
    config: PathBuf,
}

impl Running {
    fn carwash(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.carwash);
        c.args(args).arg("--config").arg(&self.config);
        c
    }

    fn stop(mut self) -> Result<()> {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.agent.id() as i32, libc::SIGTERM) };
        let _ = self.agent.wait();
        let _ = std::fs::remove_dir_all(&self.pin_path);
        Lab::down(&self.lab.name)
    }
}

/// Brings lab `name` up and starts the agent in its host namespace.
fn start(name: &str) -> Result<Running> {
    let carwash = build_release()?;
    let lab = Lab::up(&LabConfig {
        name: name.into(),
        policies: root().join("policies"),
        ..LabConfig::default()
    })?;
    let pin_path = lab_pin_path(name);
    let _ = std::fs::remove_dir_all(&pin_path);
    let state = PathBuf::from(format!("/run/carwash-lab/{name}"));
    std::fs::create_dir_all(&state)?;
    let config = state.join("carwash.toml");
    let api = state.join("api.sock");
    // The agent binds its socket once its policy is in force: its
    // appearance is the sign to go on (a stale one would fool that).
    let _ = std::fs::remove_file(&api);
    std::fs::write(&config, lab.host_config_toml(&pin_path, &api, &root().join("policies")))?;
    // nsenter enters only the network namespace: the agent keeps the host's
    // /sys/fs/bpf, so its pins outlive it (`ip netns exec` would give it a
    // private sysfs).
    let agent = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.host))
        .arg(&carwash)
        .args(["agent", "--config"])
        .arg(&config)
        .spawn()
        .context("starting the agent")?;
    let running = Running {
        lab,
        agent,
        carwash,
        pin_path,
        config,
    };
    wait_for(&api, Duration::from_secs(30))?;
    Ok(running)
}

fn wait_for(path: &Path, timeout: Duration) -> Result<()> {
    let t0 = Instant::now();
    while !path.exists() {
        if t0.elapsed() > timeout {
            bail!(
                "{} did not appear within {timeout:?}: did the agent start?",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

extern "C" fn ignore(_: libc::c_int) {}

/// `cargo xtask run`: the agent in the foreground until Ctrl-C.
pub fn main_job() -> Result<()> {
    let mut r = start(LAB)?;
    // A handler (not SIG_IGN, which exec would pass on) keeps xtask alive
    // to tear the lab down after the agent took its Ctrl-C.
    // SAFETY: installing a handler that does nothing.
    unsafe { libc::signal(libc::SIGINT, ignore as *const () as libc::sighandler_t) };
    println!(
        "carwash agent running on lab {LAB} (host namespace {}); Ctrl-C stops it and takes the lab down",
        r.lab.host
    );
    println!(
        "try: cargo run -p dataplane --bin carwash -- stats --pin-path {}",
        r.pin_path.display()
    );
    let status = r.agent.wait()?;
    println!("agent exited: {status}");
    r.stop()
}

/// Runs a command in a lab namespace; the first line of its output when it
/// succeeded with some.
fn drive(lab_ns: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", lab_ns])
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or("").trim().to_string();
    (out.status.success() && !first.is_empty()).then_some(first)
}

/// What the demo expected and saw, line by line.
#[derive(Default)]
struct Report {
    failures: Vec<String>,
}

impl Report {
    /// Prints one exchange: `want` is the answer's expected peer (the
    /// source the far end saw), or `None` where nothing may come back.
    fn check(&mut self, what: &str, got: Option<String>, want: Option<IpAddr>) {
        let ok = match (&got, want) {
            (Some(line), Some(peer)) => parse_peer(line) == Some(peer),
            (None, None) => true,
            _ => false,
        };
        let verdict = if ok { "ok" } else { "UNEXPECTED" };
        match &got {
            Some(line) => println!("  {verdict:<10} reply    {what}: {line}"),
            None => println!("  {verdict:<10} no reply {what}"),
        }
        if !ok {
            self.failures.push(format!(
                "{what}: {}, expected {}",
                got.map_or("no reply".into(), |l| format!("reply {l:?}")),
                want.map_or("no reply".into(), |p| format!("a reply seeing {p}"))
            ));
        }
    }

    fn expect(&mut self, what: String, ok: bool) {
        println!("  {:<10} {what}", if ok { "ok" } else { "UNEXPECTED" });
        if !ok {
            self.failures.push(what);
        }
    }
}

/// A counter of `carwash stats -o json`: `programs.PROG.SECTION.WORD`.
fn stat(stats: &serde_json::Value, prog: &str, section: &str, word: &str) -> u64 {
    stats["programs"][prog][section][word].as_u64().unwrap_or(0)
}

fn stats_json(r: &Running) -> Result<serde_json::Value> {
    let out = r.carwash(&["stats", "-o", "json"]).output()?;
    if !out.status.success() {
        bail!("carwash stats failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `cargo xtask demo`: lab, agent, traffic inbound and outbound, allowed
/// and denied, counters; an error if anything went otherwise than the
/// policies say.
pub fn demo(keep: bool, name: &str) -> Result<()> {
    let r = start(name)?;
    let result = run_demo(&r);
    if keep {
        println!("\nlab {name} and the agent stay up; `cargo xtask lab down --name {name}` removes the lab");
        std::mem::forget(r);
    } else {
        r.stop()?;
    }
    result
}

fn run_demo(r: &Running) -> Result<()> {
    let inet = r.lab.inet.clone();
    let mut report = Report::default();
    let before = stats_json(r)?;
    println!("\n== inbound: every client against every VIP (the policies decide who gets through)");
    let clients = [
        ("allowed client", IpAddr::V4(ALLOWED_CLIENT_V4)),
        ("allowed client", IpAddr::V6(ALLOWED_CLIENT_V6)),
        ("allowed client (2nd v6)", IpAddr::V6(ALLOWED_CLIENT_V6_B)),
        ("denied client", IpAddr::V4(DENIED_CLIENT_V4)),
        ("denied client", IpAddr::V6(DENIED_CLIENT_V6)),
    ];
    let mut denied_in = 0;
    for t in &r.lab.tenants {
        for vip in &t.vips {
            for (who, src) in clients.iter().filter(|(_, c)| c.is_ipv6() == vip.is_ipv6()) {
                let url = match vip {
                    IpAddr::V6(_) => format!("https://[{vip}]/peer"),
                    IpAddr::V4(_) => format!("https://{vip}/peer"),
                };
                let allowed = t
                    .policy
                    .allow
                    .iter()
                    .any(|a| a.cidr.contains(*src) && a.classes.contains(&carwash_policy::Class::Https));
                if !allowed {
                    denied_in += 1;
                }
                let what = format!(
                    "{who} {src} → {} VIP {vip}:443 (policy: {})",
                    t.name,
                    if allowed { "allow" } else { "deny" }
                );
                let s = src.to_string();
                let got = drive(&inet, &["curl", "-sk", "--max-time", "2", "--interface", &s, &url]);
                // The machine answers with the client's own address.
                report.check(&what, got, allowed.then_some(*src));
            }
        }
    }
    println!(
        "\n== outbound: each tenant's first connector to the partner server, inside and outside its egress allowlist"
    );
    let mut denied_out = 0;
    for t in &r.lab.tenants {
        let Some(m) = t.machine(Role::Connector, 0) else {
            continue;
        };
        for dst in [IpAddr::V4(PARTNER_V4), IpAddr::V4(ALLOWED_CLIENT_V4)] {
            let allowed = match &t.policy.egress {
                Some(e) => e.allow.iter().any(|n| n.contains(dst)),
                None => false,
            };
            if !allowed {
                denied_out += 1;
            }
            let what = format!(
                "{} → {dst}:{PARTNER_TCP_PORT} (egress: {})",
                m.label(),
                if allowed { "allow" } else { "deny" }
            );
            let cmd = format!("echo demo | timeout 5 socat -t 2 - TCP4:{dst}:{PARTNER_TCP_PORT},connect-timeout=2");
            let got = drive(&m.netns, &["sh", "-c", &cmd]);
            // The partner sees the tenant's egress IP.
            let egress = t.egress_v4.map(IpAddr::V4);
            report.check(&what, got, if allowed { egress } else { None });
        }
    }
    println!("\n== carwash stats");
    let _ = r.carwash(&["stats"]).status();
    let after = stats_json(r)?;
    let moved = |prog: &str, section: &str, word: &str| {
        stat(&after, prog, section, word).saturating_sub(stat(&before, prog, section, word))
    };
    println!("\n== what the counters say");
    let steered = moved("uplink", "counters", "steered");
    report.expect(format!("uplink steered {steered} packets"), steered > 0);
    let not_allowed = moved("uplink", "dropped", "not_allowed");
    report.expect(
        format!("uplink dropped {not_allowed} packets as not_allowed ({denied_in} denied clients' tries)"),
        denied_in == 0 || not_allowed >= denied_in,
    );
    let snat = moved("fabric", "counters", "snat_new_flow");
    report.expect(format!("fabric translated {snat} new outbound flows"), snat > 0);
    let refused_out = moved("fabric", "dropped", "egress_not_allowed") + moved("fabric", "dropped", "no_egress");
    report.expect(
        format!(
            "fabric dropped {refused_out} outbound packets (egress_not_allowed, no_egress; {denied_out} denied tries)"
        ),
        denied_out == 0 || refused_out >= denied_out,
    );
    if report.failures.is_empty() {
        println!("\ndemo: everything went as the policies say");
        Ok(())
    } else {
        bail!(
            "demo: {} things went otherwise than the policies say:\n  {}",
            report.failures.len(),
            report.failures.join("\n  ")
        )
    }
}
