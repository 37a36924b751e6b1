//! `carwash man`: the manual page, generated from the command-line
//! definitions: carwash(1) on stdout, or with `--dir` one page per command
//! (carwash.1, carwash-tenant-list.1, ...) written into a directory.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Write carwash.1 and a page per subcommand into DIR instead.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn run(args: Args, cli: clap::Command) -> Result<ExitCode> {
    let cmd = cli;
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("writing manual pages into {}", dir.display()))?;
        }
        None => clap_mangen::Man::new(cmd)
            .render(&mut std::io::stdout())
            .context("writing the manual page")?,
    }
    Ok(ExitCode::SUCCESS)
}
