//! `carwash machine drain|undrain` and `carwash core activate`: maintenance
//! and manual failover, carried out by the running agent.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use dataplane::api::{self, Request};
use dataplane::config::{DEFAULT_CONFIG, HostConfig};

use super::{Format, output};

#[derive(clap::Args, Debug)]
pub struct Target {
    /// The tenant's name.
    pub tenant: String,
    /// The machine: connector/0, connector/1, core/0, core/1.
    pub machine: String,
    /// The agent's API socket (default: `api_socket` of the host configuration).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Host configuration to take `api_socket` from.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Seconds to wait for the agent's answer.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Format,
}

#[derive(Subcommand)]
pub enum MachineCmd {
    /// Take a machine out of service: it gets no new flows; a drained
    /// active core hands over to the standby.
    Drain(Target),
    /// Put a drained machine back into service.
    Undrain(Target),
}

#[derive(clap::Args, Debug)]
pub struct ActivateArgs {
    #[command(flatten)]
    pub target: Target,
    /// Activate the core even if it is down or drained.
    #[arg(long)]
    pub force: bool,
}

#[derive(Subcommand)]
pub enum CoreCmd {
    /// Make a core the active one (the other becomes standby).
    Activate(ActivateArgs),
}

pub fn run_machine(c: MachineCmd) -> Result<ExitCode> {
    match c {
        MachineCmd::Drain(t) => send(
            &t,
            Request::Drain {
                tenant: t.tenant.clone(),
                machine: t.machine.clone(),
            },
        ),
        MachineCmd::Undrain(t) => send(
            &t,
            Request::Undrain {
                tenant: t.tenant.clone(),
                machine: t.machine.clone(),
            },
        ),
    }
}

pub fn run_core(c: CoreCmd) -> Result<ExitCode> {
    let CoreCmd::Activate(a) = c;
    let req = Request::Activate {
        tenant: a.target.tenant.clone(),
        machine: a.target.machine.clone(),
        force: a.force,
    };
    send(&a.target, req)
}

fn send(t: &Target, req: Request) -> Result<ExitCode> {
    let sock = match &t.socket {
        Some(s) => s.clone(),
        None if t.config.exists() => HostConfig::load(&t.config)?.api_socket,
        None => HostConfig::parse("uplink = \"-\"\nvtep = \"0.0.0.0\"\n")?.api_socket,
    };
    let resp = api::call(&sock, &req, Duration::from_secs(t.timeout))?;
    if t.output == Format::Json {
        output::print_json(&resp)?;
    } else if resp.ok {
        println!("ok");
    } else {
        eprintln!("refused: {}", resp.error.as_deref().unwrap_or("(no reason given)"));
    }
    Ok(if resp.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
