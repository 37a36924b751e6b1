//! `carwash completions SHELL`: the shell completion script, generated from
//! the command-line definitions, on stdout.
use std::process::ExitCode;

use anyhow::Result;
use clap_complete::Shell;

#[derive(clap::Args)]
pub struct Args {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

pub fn run(args: Args, cli: clap::Command) -> Result<ExitCode> {
    let mut cmd = cli;
    clap_complete::generate(args.shell, &mut cmd, "carwash", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}
