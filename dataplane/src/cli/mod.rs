//! Command-line definitions; one module per command.
mod agent;
mod completions;
mod fleet;
mod health;
mod machine;
mod man;
mod monitor;
pub mod output;
mod pins;
mod policy;
mod snat_list;
mod stats;
mod status;
mod tenant_list;
mod tenant_show;
mod trace;

use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};

pub use output::Format;
pub use pins::PinArgs;

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
    /// Policy files: validate offline, or hand a set to the running agent.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// Programs, attachments, interfaces, policy generation and digest.
    Status(status::StatusArgs),
    /// What the maps say about tenants.
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// The SNAT / connection-tracking entries.
    #[command(subcommand)]
    Snat(SnatCmd),
    /// Counters per program and per tenant and class: steered, dropped by
    /// reason, bytes; with --watch, rates per second.
    Stats(stats::StatsArgs),
    /// Run the dataplane's program on a packet and print what it does.
    ///
    /// Builds the packet from the flags, runs the program on it with
    /// BPF_PROG_TEST_RUN against the live policy maps, and prints the
    /// tenant, class, allow entry, backend, action, drop reason and the
    /// output frame's headers. No live counter or table moves.
    Trace(Box<trace::TraceArgs>),
    /// Machine health, drains and the active core, per tenant.
    Health(health::Args),
    /// Maintenance: drain or undrain a tenant's machine, through the agent.
    #[command(subcommand)]
    Machine(machine::MachineCmd),
    /// Manual failover: make a tenant's core active, through the agent.
    #[command(subcommand)]
    Core(machine::CoreCmd),
    /// Follow the event stream live (drops with reasons, translations,
    /// policy, health), or read it from the flow log with --since/--from.
    Monitor(Box<monitor::Args>),
    /// The fleet's state in etcd.
    #[command(subcommand)]
    Fleet(fleet::FleetCmd),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::Args),
    /// Print the manual page (roff), or write one page per command with --dir.
    Man(man::Args),
}

#[derive(Subcommand)]
enum TenantCmd {
    /// Every tenant: name, id, VNI, lane, VIPs, ready, active core, backends up.
    List(tenant_list::Args),
    /// One tenant: services, allow prefixes, machines and Maglev shares, counters.
    Show(tenant_show::Args),
}

#[derive(Subcommand)]
enum SnatCmd {
    /// The SNAT / connection-tracking entries, optionally of one tenant.
    List(snat_list::Args),
}

/// Lets a closed stdout end the process quietly, as `carwash tenant list
/// -o json | head` expects of a Unix tool (Rust ignores SIGPIPE, and
/// `println!` then panics). Only for the commands that print: the agent
/// must survive clients that hang up on its socket.
fn die_on_sigpipe() {
    // SAFETY: restores the default disposition of one signal; no handler runs.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    if !matches!(cli.cmd, Cmd::Agent(_)) {
        die_on_sigpipe();
    }
    match cli.cmd {
        Cmd::Agent(a) => agent::run(a),
        Cmd::Stats(a) => stats::run(a),
        Cmd::Policy(c) => policy::run(c),
        Cmd::Status(a) => status::run(a),
        Cmd::Tenant(TenantCmd::List(a)) => tenant_list::run(a),
        Cmd::Tenant(TenantCmd::Show(a)) => tenant_show::run(a),
        Cmd::Snat(SnatCmd::List(a)) => snat_list::run(a),
        Cmd::Trace(a) => trace::run(*a),
        Cmd::Health(a) => health::run(a),
        Cmd::Machine(c) => machine::run_machine(c),
        Cmd::Core(c) => machine::run_core(c),
        Cmd::Monitor(a) => monitor::run(*a),
        Cmd::Fleet(c) => fleet::run(c),
        Cmd::Completions(a) => completions::run(a, Cli::command()),
        Cmd::Man(a) => man::run(a, Cli::command()),
    }
}
