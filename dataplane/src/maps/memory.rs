//! What the maps cost in kernel memory, as the kernel accounts it
//! (`memlock` in a map fd's fdinfo), read through the pins. The per-tenant
//! allowlist tries are counted into their outer map's line.
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{ArrayOfMaps, Map, MapData};
use dataplane_common::{maps, types::MAX_ALLOW_SLOTS};

use crate::loader::{ALL_MAPS, map_pin};

fn memlock(data: &MapData) -> Result<u64> {
    let fd = data.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).context("reading fdinfo")?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no memlock in fdinfo")
}

/// Bytes per map, in `ALL_MAPS` order.
pub fn map_memory(pin_dir: &Path) -> Result<Vec<(&'static str, u64)>> {
    let mut out = Vec::new();
    for &name in ALL_MAPS {
        let path = map_pin(pin_dir, name);
        let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        let mut bytes = memlock(&data)?;
        if name == maps::ALLOW_V4 || name == maps::ALLOW_V6 {
            let outer: ArrayOfMaps<MapData, MapData> = ArrayOfMaps::try_from(Map::ArrayOfMaps(data))?;
            for slot in 0..MAX_ALLOW_SLOTS {
                if let Ok(inner) = outer.get(&slot, 0) {
                    bytes += memlock(&inner)?;
                }
            }
        }
        out.push((name, bytes));
    }
    Ok(out)
}
