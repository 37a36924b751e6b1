//! Where read commands find the pinned maps: the arguments every one of
//! them takes.
use std::path::PathBuf;

use anyhow::Result;
use dataplane::config::{DEFAULT_CONFIG, default_pin_path};
use dataplane::maps::pins::Pins;

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

    /// The pinned maps, checked (see [`Pins::open`]).
    pub fn open(&self) -> Result<Pins> {
        Pins::open(&self.resolve()?)
    }
}
