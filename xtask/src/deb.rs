//! `cargo xtask deb`: the Debian package, built by cargo-deb from the
//! `[package.metadata.deb]` of `dataplane/Cargo.toml`. The completions and
//! manual pages come from the release binary itself (`carwash completions`,
//! `carwash man --dir`), so they always match its commands.
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::workspace::{build_release, cargo, root};

/// Builds the package; returns its path.
pub fn build() -> Result<PathBuf> {
    let bin = build_release()?;
    let assets = root().join("target/release/deb-assets");
    let _ = std::fs::remove_dir_all(&assets);
    let completions = assets.join("completions");
    std::fs::create_dir_all(&completions)?;
    for (shell, file) in [("bash", "carwash.bash"), ("zsh", "_carwash"), ("fish", "carwash.fish")] {
        let out = Command::new(&bin)
            .args(["completions", shell])
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("carwash completions {shell}"))?;
        if !out.status.success() || out.stdout.is_empty() {
            bail!("carwash completions {shell} failed: {}", out.status);
        }
        std::fs::write(completions.join(file), out.stdout)?;
    }
    let man = assets.join("man");
    crate::workspace::run(Command::new(&bin).args(["man", "--dir"]).arg(&man))?;
    // Debian ships manual pages compressed, without a timestamp.
    for page in std::fs::read_dir(&man)? {
        crate::workspace::run(Command::new("gzip").args(["-9", "-n"]).arg(page?.path()))?;
    }

    let out = cargo()
        .args(["deb", "-p", "dataplane", "--no-build"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo deb (installed by `cargo xtask setup`)")?;
    if !out.status.success() {
        bail!("cargo deb failed: {}", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .context("cargo deb printed no package path")?;
    Ok(PathBuf::from(deb))
}
