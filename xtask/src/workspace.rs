//! Where the workspace is and how its cargo is run: shared by every task.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c.env("PATH", path_with_tools());
    c
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Builds `carwash` in release mode and returns its path.
pub fn build_release() -> Result<PathBuf> {
    run(cargo().args(["build", "--release", "-p", "dataplane", "--bin", "carwash"]))?;
    Ok(root().join("target/release/carwash"))
}

/// PATH with cargo's bin directory (where bpf-linker lands) in front.
pub fn path_with_tools() -> String {
    let mut parts = vec![cargo_bin().display().to_string()];
    if let Ok(p) = std::env::var("PATH") {
        parts.push(p);
    }
    parts.join(":")
}

pub fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}
