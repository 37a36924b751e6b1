//! Command-line definitions; one module per command.
mod agent;
pub mod output;
mod policy;
mod stats;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use dataplane::config::{DEFAULT_CONFIG, default_pin_path};

pub use output::Format;

#[derive(Parser)]
#[command(
    name = "carwash",
    version,
    about = "carwash: eBPF tenant-isolation dataplane for the edge hosts of a multi-tenant cloud"
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load, attach and pin the programs and maps, apply the policies, serve the API.
    Agent(agent::AgentArgs),
    /// Counters: passed, steered, dropped by reason, bytes.
    Stats(stats::StatsArgs),
    /// Policy files: validate offline, or hand a set to the running agent.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// Programs, attachments, interfaces, policy generation and digest.
    Status(status::StatusArgs),
}

/// Where read commands find the pinned maps.
#[derive(clap::Args, Debug, Clone)]
pub struct PinArgs {
    /// The agent's pin path (default: `pin_path` of the host configuration, else /sys/fs/bpf/carwash).
    #[arg(long)]
    pub pin_path: Option<PathBuf>,
    /// Host configuration to take `pin_path` from.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
}

impl PinArgs {
    pub fn resolve(&self) -> Result<PathBuf> {
        if let Some(p) = &self.pin_path {
            return Ok(p.clone());
        }
        if self.config.exists() {
            return Ok(dataplane::config::HostConfig::load(&self.config)?.pin_path);
        }
        Ok(default_pin_path())
    }
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Agent(a) => agent::run(a),
        Cmd::Stats(a) => stats::run(a),
        Cmd::Policy(c) => policy::run(c),
        Cmd::Status(a) => status::run(a),
    }
}
