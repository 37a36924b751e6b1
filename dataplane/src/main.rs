//! The `carwash` binary: the agent and the operator's commands, in
//! noun-verb style. Read commands work from the pinned maps, so they answer
//! while the agent is down.
mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("carwash: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
