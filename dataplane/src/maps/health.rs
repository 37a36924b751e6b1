//! The machines' health records (`HEALTH`, one `TenantHealth` per tenant):
//! what the checker last decided about each machine, written by the agent
//! and read back by it after a restart, by the CLI and by the metrics.
use std::collections::BTreeMap;

use anyhow::Result;
use aya::maps::{HashMap, MapData};
use dataplane_common::maps;
use dataplane_common::types::TenantHealth;

use crate::Dataplane;
use crate::maps::pins::Pins;

/// Every tenant's `HEALTH` record, read from the pins.
pub fn read_pinned(pins: &Pins) -> Result<BTreeMap<u32, TenantHealth>> {
    let m = HashMap::<_, u32, TenantHealth>::try_from(aya::maps::Map::HashMap(pins.map(maps::HEALTH)?))?;
    let mut out = BTreeMap::new();
    for kv in m.iter() {
        let (id, h) = kv?;
        out.insert(id, h);
    }
    Ok(out)
}

impl Dataplane {
    /// The health record of tenant `id`, if the agent wrote one.
    pub fn tenant_health(&self, id: u32) -> Result<Option<TenantHealth>> {
        let m: HashMap<&MapData, u32, TenantHealth> = HashMap::try_from(self.map_ref(maps::HEALTH)?)?;
        match m.get(&id, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces the health record of tenant `id` (one map update).
    pub fn set_tenant_health(&mut self, id: u32, h: &TenantHealth) -> Result<()> {
        let mut m: HashMap<&mut MapData, u32, TenantHealth> = HashMap::try_from(self.map_mut(maps::HEALTH)?)?;
        m.insert(id, h, 0)?;
        Ok(())
    }

    /// Forgets tenant `id`'s health (a tenant the policy no longer has).
    pub fn remove_tenant_health(&mut self, id: u32) -> Result<()> {
        let mut m: HashMap<&mut MapData, u32, TenantHealth> = HashMap::try_from(self.map_mut(maps::HEALTH)?)?;
        match m.remove(&id) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
