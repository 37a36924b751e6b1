//! Shared by the `cli_*` tests: a dataplane loaded with its maps pinned,
//! inside a fixture namespace (so the programs can route), policies
//! installed through `dataplane::tables` as the agent would, `META`
//! written as the agent writes it; and the `carwash` binary run against
//! those pins.
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use carwash_policy::{PolicySet, Tenant};
use dataplane::Dataplane;
use dataplane_common::{LAYOUT_VERSION, programs, types::Meta};
use netlab::netns::PinDir;

use crate::fabric::{FabricNs, loaded_at};

/// A loaded, pinned dataplane. Dropping `dp` leaves only the pins.
pub struct Pinned {
    pub dp: Option<Dataplane>,
    pub fab: FabricNs,
    pub pins: PinDir,
    pub tenants: Vec<Tenant>,
}

impl Pinned {
    /// `tenants` installed with ids 1, 2, ... and `META` at generation 1
    /// with the set's digest.
    pub fn new(tenants: Vec<Tenant>) -> Result<Pinned> {
        let fab = FabricNs::new(&tenants)?;
        let pins = PinDir::new()?;
        let mut dp = loaded_at(&fab, &tenants, Some(pins.path()))?;
        let digest = PolicySet {
            tenants: tenants.clone(),
        }
        .digest();
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&digest[2 * i..2 * i + 2], 16)?;
        }
        dp.set_meta(&Meta {
            layout_version: LAYOUT_VERSION,
            _pad: 0,
            generation: 1,
            applied_at: SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
            digest: bytes,
        })?;
        Ok(Pinned {
            dp: Some(dp),
            fab,
            pins,
            tenants,
        })
    }

    pub fn pin_path(&self) -> &Path {
        self.pins.path()
    }

    pub fn dp(&self) -> &Dataplane {
        self.dp.as_ref().expect("the dataplane is still loaded")
    }

    /// Runs each frame through program `prog` inside the fixture namespace;
    /// the verdicts.
    pub fn run(&self, prog: &str, frames: &[Vec<u8>]) -> Result<Vec<u32>> {
        let dp = self.dp();
        self.fab.ns.enter(|| {
            frames
                .iter()
                .map(|f| Ok(dp.run(prog, f)?.0))
                .collect::<Result<Vec<_>>>()
        })?
    }

    pub fn uplink(&self, frames: &[Vec<u8>]) -> Result<Vec<u32>> {
        self.run(programs::UPLINK, frames)
    }

    pub fn fabric(&self, frames: &[Vec<u8>]) -> Result<Vec<u32>> {
        self.run(programs::FABRIC, frames)
    }

    /// `carwash ARGS --pin-path PINS`.
    pub fn carwash(&self, bin: &Path, args: &[&str]) -> Output {
        carwash_at(bin, self.pin_path(), args)
    }
}

/// `carwash ARGS --pin-path PIN`, in this process's namespace.
pub fn carwash_at(bin: &Path, pin: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .arg("--pin-path")
        .arg(pin)
        .stdin(Stdio::null())
        .output()
        .expect("running carwash")
}

/// Stdout of a successful run; the error names the command and its stderr.
pub fn stdout(out: &Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "carwash failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout.clone())?)
}

/// Stdout of a successful run, parsed as one JSON document.
pub fn json(out: &Output) -> Result<serde_json::Value> {
    let text = stdout(out)?;
    serde_json::from_str(&text).with_context(|| format!("not one JSON document:\n{text}"))
}
