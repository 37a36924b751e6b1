//! Policy map operations the agent needs beyond installing and removing
//! whole tenants ([`super::tenants`]): tenant names, scans of what the maps
//! hold, and removals that touch only the entries a tenant still owns, so
//! that a key another tenant claimed in the same apply survives.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use anyhow::{Context, Result, anyhow, bail};
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{HashMap, IterableMap, LpmTrie, MapData};
use carwash_policy::Tenant;
use dataplane_common::{
    maps,
    types::{
        AddrKey, AddrValue, Allow4, Allow6, AllowMask, MAX_ALLOW_PREFIXES, ServiceKey, ServiceValue, TenantInfo,
        TenantName,
    },
};

use super::tenants::{Health, addr_key, services};
use crate::Dataplane;

/// `BPF_F_NO_PREALLOC`, as the allowlist tries are made.
const NO_PREALLOC: u32 = 1;

fn map_ref<'a>(dp: &'a Dataplane, name: &str) -> Result<&'a aya::maps::Map> {
    dp.ebpf
        .map(name)
        .ok_or_else(|| anyhow!("no map {name} in the eBPF object"))
}

fn map_mut<'a>(dp: &'a mut Dataplane, name: &str) -> Result<&'a mut aya::maps::Map> {
    dp.ebpf
        .map_mut(name)
        .ok_or_else(|| anyhow!("no map {name} in the eBPF object"))
}

/// The map keys a tenant owns: what its policy puts into `ADDRS`,
/// `SERVICES` and `VNIS`, or what a scan of those maps found for its id.
/// Sorted, without duplicates (a few keys per tenant: vectors cost a
/// fraction of the memory of sets, for 10,000 tenants).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantEntries {
    pub addrs: Vec<AddrKey>,
    pub services: Vec<ServiceKey>,
    pub vnis: Vec<u32>,
}

fn normal<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort_unstable();
    v.dedup();
    v.shrink_to_fit();
    v
}

fn minus<T: Ord + Copy>(a: &[T], b: &[T]) -> Vec<T> {
    a.iter().filter(|x| b.binary_search(x).is_err()).copied().collect()
}

impl TenantEntries {
    /// The keys `install_tenant` writes for `t`.
    pub fn of(t: &Tenant) -> TenantEntries {
        let egress = t
            .egress
            .iter()
            .flat_map(|e| std::iter::once(IpAddr::V4(e.snat_ipv4)).chain(e.snat_ipv6.map(IpAddr::V6)));
        TenantEntries {
            addrs: normal(t.vips.iter().copied().chain(egress).map(addr_key).collect()),
            services: normal(services(t).into_iter().map(|(k, _)| k).collect()),
            vnis: vec![t.vni],
        }
    }

    /// Keys in `self` that `other` does not have.
    pub fn minus(&self, other: &TenantEntries) -> TenantEntries {
        TenantEntries {
            addrs: minus(&self.addrs, &other.addrs),
            services: minus(&self.services, &other.services),
            vnis: minus(&self.vnis, &other.vnis),
        }
    }

    pub fn union(&mut self, other: &TenantEntries) {
        self.addrs = normal([&self.addrs[..], &other.addrs].concat());
        self.services = normal([&self.services[..], &other.services].concat());
        self.vnis = normal([&self.vnis[..], &other.vnis].concat());
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty() && self.services.is_empty() && self.vnis.is_empty()
    }

    /// Sorts and deduplicates keys gathered in any order.
    fn normalize(&mut self) {
        self.addrs = normal(std::mem::take(&mut self.addrs));
        self.services = normal(std::mem::take(&mut self.services));
        self.vnis = normal(std::mem::take(&mut self.vnis));
    }
}

impl Dataplane {
    /// `TENANT_NAMES`: tenant id → name.
    pub fn tenant_names(&self) -> Result<BTreeMap<u32, String>> {
        let m: HashMap<&MapData, u32, TenantName> = HashMap::try_from(map_ref(self, maps::TENANT_NAMES)?)?;
        let mut out = BTreeMap::new();
        for kv in m.iter() {
            let (id, name) = kv?;
            out.insert(id, name.as_str().to_string());
        }
        Ok(out)
    }

    pub fn set_tenant_name(&mut self, id: u32, name: &str) -> Result<()> {
        let value = TenantName::new(name).ok_or_else(|| anyhow!("tenant name {name:?} is longer than 32 bytes"))?;
        let mut m: HashMap<_, u32, TenantName> = HashMap::try_from(map_mut(self, maps::TENANT_NAMES)?)?;
        m.insert(id, value, 0)?;
        Ok(())
    }

    /// The ids `TENANTS` has a record for (in the generation reads see).
    pub fn tenant_ids(&self) -> Result<BTreeSet<u32>> {
        let m: HashMap<&MapData, u32, TenantInfo> = HashMap::try_from(map_ref(self, maps::TENANTS)?)?;
        let g = self.read_generation();
        let mut out = BTreeSet::new();
        for k in m.keys() {
            let (kg, id) = super::generations::split_tenant(k?);
            if kg == g {
                out.insert(id);
            }
        }
        Ok(out)
    }

    /// Every key of `ADDRS`, `SERVICES` and `VNIS`, grouped by the tenant id
    /// it points to: what the maps hold, whoever wrote it.
    pub fn scan_entries(&self) -> Result<BTreeMap<u32, TenantEntries>> {
        use super::generations::{split_addr, split_service, split_vni};
        let g = self.read_generation();
        let mut out: BTreeMap<u32, TenantEntries> = BTreeMap::new();
        let addrs: HashMap<&MapData, AddrKey, AddrValue> = HashMap::try_from(map_ref(self, maps::ADDRS)?)?;
        for kv in addrs.iter() {
            let (k, v) = kv?;
            let (kg, k) = split_addr(k);
            if kg == g {
                out.entry(v.tenant).or_default().addrs.push(k);
            }
        }
        let svcs: HashMap<&MapData, ServiceKey, ServiceValue> = HashMap::try_from(map_ref(self, maps::SERVICES)?)?;
        for kv in svcs.iter() {
            let (k, v) = kv?;
            let (kg, k) = split_service(k);
            if kg == g {
                out.entry(v.tenant).or_default().services.push(k);
            }
        }
        let vnis: HashMap<&MapData, u32, u32> = HashMap::try_from(map_ref(self, maps::VNIS)?)?;
        for kv in vnis.iter() {
            let (k, id) = kv?;
            let (kg, vni) = split_vni(k);
            if kg == g {
                out.entry(id).or_default().vnis.push(vni);
            }
        }
        for e in out.values_mut() {
            e.normalize();
        }
        Ok(out)
    }

    /// Deletes the entries of `e` that still point to tenant `id` (another
    /// tenant may have claimed one in the meantime; its entry stays).
    /// Addresses go first, so the tenant's traffic stops being carwash's
    /// business before its services and VNI go.
    pub fn remove_owned_entries(&mut self, id: u32, e: &TenantEntries) -> Result<()> {
        for k in &e.addrs {
            if self.get_addr(*k)?.is_some_and(|v| v.tenant == id) {
                self.del_addr(*k)?;
            }
        }
        for k in &e.services {
            if self.get_service(*k)?.is_some_and(|v| v.tenant == id) {
                self.del_service(*k)?;
            }
        }
        for vni in &e.vnis {
            if self.get_vni(*vni)? == Some(id) {
                self.del_vni(*vni)?;
            }
        }
        Ok(())
    }

    /// Removes tenant `id`'s record and name (after its entries are gone:
    /// [`Dataplane::remove_owned_entries`]). Its allow slots are left alone:
    /// a packet that read the record just before may still look them up;
    /// [`Dataplane::clear_allow_slots`] empties them later.
    pub fn remove_tenant_record(&mut self, id: u32) -> Result<()> {
        self.del_tenant(id)?;
        let mut names: HashMap<_, u32, TenantName> = HashMap::try_from(map_mut(self, maps::TENANT_NAMES)?)?;
        let _ = names.remove(&id);
        Ok(())
    }

    /// Points both allow slots of each of `ids` in `ALLOW_V4`/`ALLOW_V6` at
    /// one shared empty trie, freeing the tries they held: one batch update
    /// (one RCU grace period) per family. Only for ids no tenant record
    /// points to.
    pub fn clear_allow_slots(&mut self, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let slots: Vec<u32> = ids.iter().flat_map(|id| [2 * id, 2 * id + 1]).collect();
        let e4: LpmTrie<MapData, Allow4, AllowMask> = LpmTrie::create(MAX_ALLOW_PREFIXES, NO_PREALLOC)?;
        let e6: LpmTrie<MapData, Allow6, AllowMask> = LpmTrie::create(MAX_ALLOW_PREFIXES, NO_PREALLOC)?;
        for (name, empty) in [(maps::ALLOW_V4, e4.map()), (maps::ALLOW_V6, e6.map())] {
            let fd = empty.fd().as_fd().as_raw_fd() as u32;
            let fds = vec![fd; slots.len()];
            let aya::maps::Map::ArrayOfMaps(outer) = map_mut(self, name)? else {
                bail!("map {name} is not an array of maps");
            };
            crate::batch::set_inner_maps(outer.fd().as_fd(), &slots, &fds)
                .with_context(|| format!("emptying {} slots of {name}", slots.len()))?;
        }
        Ok(())
    }
}

/// The health to re-install a tenant with: what its record says now, for
/// the machines the new policy keeps at the same place (a connector marked
/// down stays down, the standby core that was made active stays active);
/// defaults for the rest.
pub fn carried_health(current: Option<&TenantInfo>, t: &Tenant) -> Health {
    let mut h = Health::default();
    let Some(info) = current else {
        return h;
    };
    let same = |e: &dataplane_common::types::BackendEntry, b: &carwash_policy::Backend| {
        e.vtep == b.vtep.octets() && e.mac == b.mac.0
    };
    for (i, c) in t.connectors.iter().take(2).enumerate() {
        if i < info.n_connectors as usize && same(&info.connectors[i], c) {
            h.connectors_up[i] = info.connectors[i].up != 0;
        }
    }
    let active = info.active_core as usize;
    if active < info.n_cores as usize
        && let Some(j) = t.cores.iter().take(2).position(|c| same(&info.cores[active], c))
    {
        h.active_core = j as u8;
    }
    h
}
