//! The main job (`cargo xtask run`) and the demo: the agent on the lab
//! topology with the repo's policies.
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use std::net::IpAddr;

use netlab::lab::{
    ALLOWED_CLIENT_V4, ALLOWED_CLIENT_V6, ALLOWED_CLIENT_V6_B, DENIED_CLIENT_V4, DENIED_CLIENT_V6, Lab, LabConfig,
};

use crate::{build_release, root};

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

/// Brings the lab up and starts the agent in its host namespace.
fn start() -> Result<Running> {
    let carwash = build_release()?;
    let lab = Lab::up(&LabConfig {
        name: LAB.into(),
        policies: root().join("policies"),
        ..LabConfig::default()
    })?;
    let pin_path = lab_pin_path(LAB);
    let _ = std::fs::remove_dir_all(&pin_path);
    let state = PathBuf::from(format!("/run/carwash-lab/{LAB}"));
    std::fs::create_dir_all(&state)?;
    let config = state.join("carwash.toml");
    let api = state.join("api.sock");
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
    wait_for(&running.pin_path.join("maps/COUNTERS"), Duration::from_secs(20))?;
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
    let mut r = start()?;
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

/// Runs a command in a lab namespace and says what came of it.
fn drive(lab_ns: &str, what: &str, args: &[&str]) {
    let out = Command::new("ip").args(["netns", "exec", lab_ns]).args(args).output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let first = text.lines().next().unwrap_or("");
            println!("  reply    {what}: {first}");
        }
        Ok(o) => println!("  no reply {what}: {}", o.status),
        Err(e) => println!("  error    {what}: {e}"),
    }
}

/// `cargo xtask demo`: lab, agent, traffic, counters.
pub fn demo(keep: bool) -> Result<()> {
    let r = start()?;
    let inet = r.lab.inet.clone();
    println!("\n== traffic from the internet namespace");
    drive(
        &inet,
        "ping the carwash host's uplink",
        &["ping", "-c", "3", "-i", "0.2", "-W", "1", "100.64.0.1"],
    );
    // Every client against every VIP: the policies decide who gets through.
    let clients = [
        ("allowed client", IpAddr::V4(ALLOWED_CLIENT_V4)),
        ("allowed client", IpAddr::V6(ALLOWED_CLIENT_V6)),
        ("allowed client (2nd v6)", IpAddr::V6(ALLOWED_CLIENT_V6_B)),
        ("denied client", IpAddr::V4(DENIED_CLIENT_V4)),
        ("denied client", IpAddr::V6(DENIED_CLIENT_V6)),
    ];
    for t in &r.lab.tenants {
        for vip in &t.vips {
            for (who, src) in clients.iter().filter(|(_, c)| c.is_ipv6() == vip.is_ipv6()) {
                let url = match vip {
                    IpAddr::V6(_) => format!("https://[{vip}]/peer"),
                    IpAddr::V4(_) => format!("https://{vip}/peer"),
                };
                let allowed = t.policy.allow.iter().any(|a| a.cidr.contains(*src));
                let what = format!(
                    "{who} {src} → {} VIP {vip}:443 (policy: {})",
                    t.name,
                    if allowed { "allow" } else { "deny" }
                );
                let src = src.to_string();
                drive(
                    &inet,
                    &what,
                    &["curl", "-sk", "--max-time", "2", "--interface", &src, &url],
                );
            }
        }
    }
    println!("\n== carwash stats");
    let _ = r.carwash(&["stats"]).status();
    if keep {
        println!("\nlab {LAB} and the agent stay up; `cargo xtask lab down` removes the lab");
        std::mem::forget(r);
        return Ok(());
    }
    r.stop()
}
