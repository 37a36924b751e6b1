//! `carwash agent`: loads the programs, pins the maps under `pin_path`,
//! attaches the uplink program, and runs until SIGTERM/SIGINT.
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use aya::programs::XdpMode;
use dataplane::Dataplane;
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
    /// Overrides `pin_path`.
    #[arg(long)]
    pin_path: Option<PathBuf>,
    /// Overrides `policy_dir`.
    #[arg(long)]
    policy_dir: Option<PathBuf>,
    /// Attach in generic (skb) mode, for interfaces whose driver lacks native XDP.
    #[arg(long)]
    skb_mode: bool,
}

fn config(args: &AgentArgs) -> Result<HostConfig> {
    let mut cfg = HostConfig::load(&args.config)?;
    if let Some(v) = &args.uplink {
        cfg.uplink = v.clone();
    }
    if let Some(v) = &args.fabric {
        cfg.fabric = Some(v.clone());
    }
    if let Some(v) = args.vtep {
        cfg.vtep = v;
    }
    if let Some(v) = &args.pin_path {
        cfg.pin_path = v.clone();
    }
    if let Some(v) = &args.policy_dir {
        cfg.policy_dir = v.clone();
    }
    Ok(cfg)
}

pub fn run(args: AgentArgs) -> Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cfg = config(&args)?;
    dataplane::pin::ensure_bpffs(&cfg.pin_path)?;
    let mut dp = Dataplane::load(Some(&cfg.pin_path))?;
    let mode = if args.skb_mode { XdpMode::Skb } else { XdpMode::Default };
    dp.attach_uplink(&cfg.uplink, mode)?;
    info!(uplink = %cfg.uplink, pin_path = %cfg.pin_path.display(), "carwash agent running");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: stopping"),
            _ = int.recv() => info!("SIGINT: stopping"),
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
