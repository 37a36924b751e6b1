//! `carwash agent`: see `dataplane::agent`. Flags override the host
//! configuration file; without the file (at its default place), the flags
//! alone must name `uplink` and `vtep`.
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use aya::programs::XdpMode;
use carwash_policy::MacAddr;
use dataplane::config::{DEFAULT_CONFIG, HostConfig};
use tracing::info;

#[derive(clap::Args)]
pub struct AgentArgs {
    /// Host configuration file.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Overrides `uplink`.
    #[arg(long)]
    uplink: Option<String>,
    /// Overrides `fabric`.
    #[arg(long)]
    fabric: Option<String>,
    /// Overrides `vtep`.
    #[arg(long)]
    vtep: Option<Ipv4Addr>,
    /// Overrides `router_mac`.
    #[arg(long)]
    router_mac: Option<MacAddr>,
    /// Overrides `pin_path`.
    #[arg(long)]
    pin_path: Option<PathBuf>,
    /// Overrides `policy_dir`.
    #[arg(long)]
    policy_dir: Option<PathBuf>,
    /// Overrides `api_socket`.
    #[arg(long)]
    api_socket: Option<PathBuf>,
    /// Overrides `metrics`.
    #[arg(long)]
    metrics: Option<String>,
    /// Overrides `ebpf_log`: the programs' own log, into the agent's.
    #[arg(long, value_enum)]
    ebpf_log: Option<dataplane::loader::EbpfLog>,
    /// Attach in generic (skb) mode, for interfaces whose driver lacks native XDP.
    #[arg(long)]
    skb_mode: bool,
    /// Detach the programs and remove everything pinned under `pin_path`
    /// (all maps and their state), then exit. Refused while an agent runs.
    #[arg(long)]
    uninstall: bool,
}

/// The host configuration: the file (if there is one, or if it was named
/// explicitly), then the flags on top, then validated as a whole.
fn config(args: &AgentArgs) -> Result<HostConfig> {
    let mut table = if args.config.exists() || args.config.as_os_str() != DEFAULT_CONFIG {
        let text = std::fs::read_to_string(&args.config)
            .with_context(|| format!("reading host configuration {}", args.config.display()))?;
        toml::from_str::<toml::Table>(&text).with_context(|| format!("host configuration {}", args.config.display()))?
    } else {
        toml::Table::new()
    };
    let mut set = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            table.insert(k.to_string(), toml::Value::String(v));
        }
    };
    set("uplink", args.uplink.clone());
    set("fabric", args.fabric.clone());
    set("vtep", args.vtep.map(|v| v.to_string()));
    set("router_mac", args.router_mac.map(|m| m.to_string()));
    set("pin_path", args.pin_path.as_ref().map(|p| p.display().to_string()));
    set("policy_dir", args.policy_dir.as_ref().map(|p| p.display().to_string()));
    set("api_socket", args.api_socket.as_ref().map(|p| p.display().to_string()));
    set("metrics", args.metrics.clone());
    set(
        "ebpf_log",
        args.ebpf_log
            .and_then(|l| toml::Value::try_from(l).ok())
            .and_then(|v| v.as_str().map(str::to_string)),
    );
    HostConfig::parse(&toml::to_string(&table)?).with_context(|| {
        format!(
            "host configuration {} with the command-line flags",
            args.config.display()
        )
    })
}

/// `RUST_LOG` (default `info`); the programs' records (`ebpf_log`, target
/// `dataplane_ebpf`) pass whatever it says unless it names that target:
/// `ebpf_log` already chose their level where they are made.
fn log_filter() -> tracing_subscriber::EnvFilter {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let spec = if spec.contains("dataplane_ebpf") {
        spec
    } else {
        format!("{spec},dataplane_ebpf=trace")
    };
    tracing_subscriber::EnvFilter::try_new(&spec).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

pub fn run(args: AgentArgs) -> Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if args.uninstall {
        let cfg = match config(&args) {
            Ok(cfg) => cfg,
            // Uninstalling needs only the pin path.
            Err(_) if args.pin_path.is_some() => HostConfig::parse(&format!(
                "uplink = \"-\"\nvtep = \"0.0.0.0\"\npin_path = {}\n",
                toml::Value::String(args.pin_path.as_ref().expect("checked").display().to_string())
            ))?,
            Err(e) => return Err(e),
        };
        let removed = dataplane::agent::uninstall(&cfg)?;
        info!(
            pin_path = %cfg.pin_path.display(),
            removed = removed.len(),
            "uninstalled: programs detached, pins removed"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = config(&args)?;
    let mode = if args.skb_mode { XdpMode::Skb } else { XdpMode::Default };
    dataplane::agent::run(cfg, mode)
}
