//! What the pins under `pin_path` say, read without an agent: the policy
//! generation, host settings, tenants, programs and links. `carwash status`
//! shows it next to what a running agent reports.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap, Map, MapData};
use dataplane_common::{
    maps,
    types::{HostConfig, Meta, TenantName},
};
use serde::Serialize;

use super::apply::hex;
use crate::api::TenantId;
use crate::loader::{link_pin, map_pin};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PinnedLinkStatus {
    pub name: String,
    pub pin: PathBuf,
    pub link_id: u32,
    pub prog_id: u32,
    /// 0 when the interface is gone (the link is defunct).
    pub ifindex: u32,
    pub ifname: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PinnedProgram {
    pub name: String,
    pub pin: PathBuf,
    pub prog_id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PinnedStatus {
    pub pin_path: PathBuf,
    pub layout_version: u32,
    pub generation: u64,
    /// Empty before the first apply, and while an apply is under way.
    pub digest: String,
    pub applied_at: u64,
    pub vtep: String,
    pub router_mac: String,
    pub fabric_mtu: u16,
    pub uplink_ifindex: u32,
    pub fabric_ifindex: u32,
    pub host_ready: bool,
    /// By id.
    pub tenants: Vec<TenantId>,
    pub programs: Vec<PinnedProgram>,
    pub links: Vec<PinnedLinkStatus>,
    /// The link that counts refused redirects (`links/redirect_err`), when
    /// pinned: its id and program id.
    pub redirect_watch: Option<(u32, u32)>,
    /// Frames the kernel refused to deliver after a redirect, by target
    /// interface.
    pub redirect_failures: Vec<crate::maps::counters::RedirectFailure>,
}

fn open(pin: &Path, name: &str) -> Result<MapData> {
    let p = map_pin(pin, name);
    MapData::from_pin(&p).with_context(|| format!("opening pinned map {} (is the agent installed there?)", p.display()))
}

pub use super::sys::ifname;

pub fn pinned_status(pin: &Path) -> Result<PinnedStatus> {
    let meta: Meta = Array::<_, Meta>::try_from(Map::Array(open(pin, maps::META)?))?.get(&0, 0)?;
    let host: HostConfig = Array::<_, HostConfig>::try_from(Map::Array(open(pin, maps::CONFIG)?))?.get(&0, 0)?;
    let names: HashMap<_, u32, TenantName> = HashMap::try_from(Map::HashMap(open(pin, maps::TENANT_NAMES)?))?;
    let mut tenants = Vec::new();
    for kv in names.iter() {
        let (id, n) = kv?;
        tenants.push(TenantId {
            name: n.as_str().to_string(),
            id,
        });
    }
    tenants.sort_by_key(|t| t.id);
    let mut links = Vec::new();
    for name in ["uplink", "fabric"] {
        let p = link_pin(pin, name);
        if let Ok(info) = super::sys::pinned_link_info(&p) {
            links.push(PinnedLinkStatus {
                name: name.to_string(),
                pin: p,
                link_id: info.id,
                prog_id: info.prog_id,
                ifindex: info.ifindex,
                ifname: ifname(info.ifindex),
            });
        }
    }
    let mut programs = Vec::new();
    if let Ok(rd) = std::fs::read_dir(pin.join("progs")) {
        for e in rd.flatten() {
            let p = e.path();
            if let Ok(info) = aya::programs::ProgramInfo::from_pin(&p) {
                programs.push(PinnedProgram {
                    name: e.file_name().to_string_lossy().into_owned(),
                    pin: p,
                    prog_id: info.id(),
                });
            }
        }
    }
    programs.sort_by(|a, b| a.name.cmp(&b.name));
    let redirect_watch = super::sys::pinned_link_info(&link_pin(pin, crate::loader::REDIRECT_LINK))
        .ok()
        .map(|i| (i.id, i.prog_id));
    let redirect_failures = crate::maps::pins::Pins::open(pin)?.redirect_failures()?;
    let m = host.router_mac;
    Ok(PinnedStatus {
        pin_path: pin.to_path_buf(),
        layout_version: meta.layout_version,
        generation: meta.generation,
        digest: if meta.digest == [0; 32] {
            String::new()
        } else {
            hex(&meta.digest)
        },
        applied_at: meta.applied_at,
        vtep: std::net::Ipv4Addr::from(host.vtep).to_string(),
        router_mac: carwash_policy::MacAddr(m).to_string(),
        fabric_mtu: host.fabric_mtu,
        uplink_ifindex: host.uplink_ifindex,
        fabric_ifindex: host.fabric_ifindex,
        host_ready: host.ready == 1,
        tenants,
        programs,
        links,
        redirect_watch,
        redirect_failures,
    })
}
