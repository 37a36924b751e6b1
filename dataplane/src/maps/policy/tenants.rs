//! Writing tenants into the policy maps: the one place that turns policy
//! into map entries. The agent and the tests both go through here; nothing
//! else writes a tenant's map bytes.
//!
//! Order matters (fail closed): a tenant's VIPs are claimed, pointing at a
//! tenant record that is not ready, before anything else, so its traffic is
//! dropped rather than handed to the host stack; the record is marked ready
//! last, when its allowlists and services are in place.
use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{HashMap, IterableMap, LpmTrie, MapData, lpm_trie::Key};
use carwash_policy::{Class, Lane, Tenant};
use dataplane_common::{
    hash::addr_filter_bit,
    maps,
    types::{
        ADDR_EGRESS, ADDR_VIP, AddrKey, AddrValue, Allow4, Allow6, AllowMask, BackendEntry, CLASS_HTTPS, CLASS_JMS,
        FAMILY_V4, FAMILY_V6, MASK_EGRESS, MASK_VPC, MAX_ALLOW_PREFIXES, MAX_TENANTS, ServiceKey, ServiceValue,
        TENANT_EGRESS_V4, TENANT_EGRESS_V6, TENANT_READY, TenantInfo, TenantName, tenant_key,
    },
};
use ipnetwork::IpNetwork;

use std::os::fd::{AsFd, AsRawFd};

use crate::Dataplane;
use crate::batch;
use crate::maglev;

/// Tenants installed per batch of allowlist swaps (each batch waits for an
/// RCU grace period): as many as the open-file limit allows, since each
/// holds two new tries (file descriptors) until the batch is swapped in.
fn install_chunk() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid struct.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    };
    // Half the descriptors left after those the process already needs.
    (soft.saturating_sub(256) / 4).clamp(64, 8192) as usize
}
/// `BPF_F_NO_PREALLOC`: LPM tries require it.
const NO_PREALLOC: u32 = 1;
const IPPROTO_TCP: u8 = 6;

type Trie4 = LpmTrie<MapData, Allow4, AllowMask>;
type Trie6 = LpmTrie<MapData, Allow6, AllowMask>;

fn raw_fd(m: &MapData) -> u32 {
    m.fd().as_fd().as_raw_fd() as u32
}

fn class_bit(c: Class) -> AllowMask {
    match c {
        Class::Https => 1 << CLASS_HTTPS,
        Class::Jms => 1 << CLASS_JMS,
    }
}

pub fn addr_key(ip: IpAddr) -> AddrKey {
    let mut k = AddrKey::default();
    match ip {
        IpAddr::V4(v4) => {
            k.addr[..4].copy_from_slice(&v4.octets());
            k.family = FAMILY_V4;
        }
        IpAddr::V6(v6) => {
            k.addr = v6.octets();
            k.family = FAMILY_V6;
        }
    }
    k
}

/// The services of a tenant: every VIP × every port of each class, TCP.
pub fn services(t: &Tenant) -> Vec<(ServiceKey, u8)> {
    let mut out = Vec::new();
    for vip in &t.vips {
        let a = addr_key(*vip);
        for (ports, class) in [(&t.https_ports, CLASS_HTTPS), (&t.jms_ports, CLASS_JMS)] {
            for p in ports {
                out.push((
                    ServiceKey {
                        addr: a.addr,
                        port_be: p.to_be_bytes(),
                        proto: IPPROTO_TCP,
                        family: a.family,
                    },
                    class,
                ));
            }
        }
    }
    out
}

/// The prefixes of a tenant's trie for one family with their masks: allow
/// entries (the classes a source may use), `vpc_cidrs` (`MASK_VPC`) and
/// the egress allowlist (`MASK_EGRESS`). Each prefix's mask is merged with
/// the masks of every shorter prefix that covers it: the trie answers with
/// the longest match only, which must then speak for all matches.
pub fn allow_masks(t: &Tenant, v6: bool) -> Vec<(IpNetwork, AllowMask)> {
    let mut own: BTreeMap<IpNetwork, AllowMask> = BTreeMap::new();
    let canonical = |n: &IpNetwork| IpNetwork::new(n.network(), n.prefix()).expect("prefix from a valid network");
    for a in t.allow.iter().filter(|a| a.cidr.is_ipv6() == v6) {
        *own.entry(canonical(&a.cidr)).or_default() |= a.classes.iter().map(|c| class_bit(*c)).fold(0, |x, y| x | y);
    }
    for n in t.vpc_cidrs.iter().filter(|n| n.is_ipv6() == v6) {
        *own.entry(canonical(n)).or_default() |= MASK_VPC;
    }
    for n in t
        .egress
        .iter()
        .flat_map(|e| e.allow.iter())
        .filter(|n| n.is_ipv6() == v6)
    {
        *own.entry(canonical(n)).or_default() |= MASK_EGRESS;
    }
    own.keys()
        .map(|net| {
            let mask = own
                .iter()
                .filter(|(other, _)| other.prefix() <= net.prefix() && other.contains(net.network()))
                .fold(0, |m, (_, bits)| m | bits);
            (*net, mask)
        })
        .collect()
}

fn backend(b: &carwash_policy::Backend, up: bool) -> BackendEntry {
    BackendEntry {
        vtep: b.vtep.octets(),
        mac: b.mac.0,
        up: up as u8,
        _pad: 0,
    }
}

/// Which machines take traffic, and which core is active. Policy puts every
/// machine up and the first core active; the library can change both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub connectors_up: [bool; 2],
    pub active_core: u8,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            connectors_up: [true, true],
            active_core: 0,
        }
    }
}

/// The fast-path record of a tenant.
pub fn tenant_info(t: &Tenant, allow_slot: u32, health: &Health, ready: bool) -> TenantInfo {
    let mut info = TenantInfo {
        vni: t.vni,
        flags: if ready { TENANT_READY } else { 0 },
        allow_slot,
        active_core: health.active_core,
        n_connectors: t.connectors.len() as u8,
        n_cores: t.cores.len() as u8,
        ..Default::default()
    };
    for (i, c) in t.connectors.iter().take(2).enumerate() {
        info.connectors[i] = backend(c, health.connectors_up[i]);
    }
    for (i, c) in t.cores.iter().take(2).enumerate() {
        info.cores[i] = backend(c, true);
    }
    if let Some(e) = &t.egress {
        info.flags |= TENANT_EGRESS_V4;
        info.snat_v4[..4].copy_from_slice(&e.snat_ipv4.octets());
        if let Some(v6) = e.snat_ipv6 {
            info.flags |= TENANT_EGRESS_V6;
            info.snat_v6 = v6.octets();
        }
    }
    let ids: Vec<maglev::Identity> = t.connectors.iter().map(|c| (c.vtep.octets(), c.mac.0)).collect();
    let up: Vec<bool> = (0..ids.len())
        .map(|i| health.connectors_up.get(i).copied().unwrap_or(false))
        .collect();
    info.maglev = maglev::build(&ids, &up);
    if t.lane == Lane::Single {
        info.active_core = 0;
    }
    info
}

impl Dataplane {
    /// Builds a tenant's allowlists as fresh tries, to be swapped in whole.
    fn build_allow(t: &Tenant) -> Result<(Trie4, Trie6)> {
        let mut v4: LpmTrie<MapData, Allow4, AllowMask> = LpmTrie::create(MAX_ALLOW_PREFIXES, NO_PREALLOC)?;
        let mut v6: LpmTrie<MapData, Allow6, AllowMask> = LpmTrie::create(MAX_ALLOW_PREFIXES, NO_PREALLOC)?;
        for (net, mask) in allow_masks(t, false) {
            let IpAddr::V4(a) = net.network() else {
                unreachable!("filtered by family")
            };
            v4.insert(&Key::new(net.prefix() as u32, a.octets()), mask, 0)
                .with_context(|| format!("tenant {}: allow {net}", t.name))?;
        }
        for (net, mask) in allow_masks(t, true) {
            let IpAddr::V6(a) = net.network() else {
                unreachable!("filtered by family")
            };
            v6.insert(&Key::new(net.prefix() as u32, a.octets()), mask, 0)
                .with_context(|| format!("tenant {}: allow {net}", t.name))?;
        }
        Ok((v4, v6))
    }

    /// Builds the allowlists of many tenants, on every core.
    fn build_allow_all(tenants: &[&Tenant]) -> Result<Vec<(Trie4, Trie6)>> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        if threads < 2 || tenants.len() < 64 {
            return tenants.iter().map(|t| Self::build_allow(t)).collect();
        }
        let per = tenants.len().div_ceil(threads);
        std::thread::scope(|s| {
            let parts: Vec<_> = tenants
                .chunks(per)
                .map(|part| s.spawn(move || part.iter().map(|t| Self::build_allow(t)).collect::<Result<Vec<_>>>()))
                .collect();
            let mut out = Vec::with_capacity(tenants.len());
            for p in parts {
                out.extend(
                    p.join()
                        .map_err(|_| anyhow!("building allowlists: a thread panicked"))??,
                );
            }
            Ok(out)
        })
    }

    /// Points allow slots at new tries: one batch per family, so one RCU
    /// wait however many tenants change, and both families at once, so
    /// that their waits overlap.
    fn swap_allow(&mut self, slots: &[u32], tries: &[(Trie4, Trie6)]) -> Result<()> {
        if slots.is_empty() {
            return Ok(());
        }
        let fds4: Vec<u32> = tries.iter().map(|(v4, _)| raw_fd(v4.map())).collect();
        let fds6: Vec<u32> = tries.iter().map(|(_, v6)| raw_fd(v6.map())).collect();
        let outer = |name| match self.map_ref(name)? {
            aya::maps::Map::ArrayOfMaps(d) => Ok(d.fd().as_fd()),
            _ => Err(anyhow!("map {name} is not an array of maps")),
        };
        let (o4, o6) = (outer(maps::ALLOW_V4)?, outer(maps::ALLOW_V6)?);
        let (r4, r6) = std::thread::scope(|s| {
            let v6 = s.spawn(|| batch::set_inner_maps(o6, slots, &fds6));
            (batch::set_inner_maps(o4, slots, &fds4), v6.join())
        });
        r4.with_context(|| format!("updating {}", maps::ALLOW_V4))?;
        r6.map_err(|_| anyhow!("updating {}: the thread panicked", maps::ALLOW_V6))?
            .with_context(|| format!("updating {}", maps::ALLOW_V6))?;
        // A slot in use may have changed under a tenant record.
        self.bump_epoch()
    }

    /// The tenant record as the maps hold it (in the generation in force;
    /// inside a policy transaction, in the one being written).
    pub fn tenant_info(&self, id: u32) -> Result<Option<TenantInfo>> {
        let m: HashMap<&MapData, u32, TenantInfo> = HashMap::try_from(self.map_ref(maps::TENANTS)?)?;
        match m.get(&tenant_key(id, self.read_generation()), 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Installs or replaces tenant `id` (1..MAX_TENANTS) from its policy,
    /// with every machine up and the first core active.
    pub fn install_tenant(&mut self, id: u32, t: &Tenant) -> Result<()> {
        self.install_tenant_with(id, t, &Health::default())
    }

    pub fn install_tenant_with(&mut self, id: u32, t: &Tenant, health: &Health) -> Result<()> {
        self.install_tenants(&[(id, t, health.clone())])
    }

    /// Installs or replaces several tenants. Each tenant is switched to its
    /// new state as a whole; the expensive part (swapping allowlist tries)
    /// is done for all of them at once.
    pub fn install_tenants(&mut self, tenants: &[(u32, &Tenant, Health)]) -> Result<()> {
        self.install_tenants_reusing(tenants, &|_| false)
    }

    /// Like [`Dataplane::install_tenants`], but a ready tenant for whose id
    /// `same_allow` says its allowlists do not change keeps the tries it
    /// has: no new tries, no swap, no RCU wait for it.
    pub fn install_tenants_reusing(
        &mut self,
        tenants: &[(u32, &Tenant, Health)],
        same_allow: &dyn Fn(u32) -> bool,
    ) -> Result<()> {
        // Every new trie holds a file descriptor until it is swapped in.
        for chunk in tenants.chunks(install_chunk()) {
            self.install_chunk(chunk, same_allow)?;
        }
        Ok(())
    }

    fn install_chunk(&mut self, tenants: &[(u32, &Tenant, Health)], same_allow: &dyn Fn(u32) -> bool) -> Result<()> {
        let mut slots = Vec::with_capacity(tenants.len());
        let mut versions = Vec::with_capacity(tenants.len());
        let mut new = Vec::with_capacity(tenants.len());
        let (mut swap_slots, mut swap_tenants) = (Vec::new(), Vec::new());
        for (id, t, _) in tenants {
            let (id, t) = (*id, *t);
            if id == 0 || id >= MAX_TENANTS {
                bail!("tenant id {id} out of range 1..{MAX_TENANTS}");
            }
            let current = self.tenant_info(id)?;
            // The new allowlists go into the slot the tenant does not use
            // now, unless they are the ones it has.
            let slot = match current {
                Some(c)
                    if c.flags & TENANT_READY != 0
                        && (c.allow_slot == 2 * id || c.allow_slot == 2 * id + 1)
                        && same_allow(id) =>
                {
                    c.allow_slot
                }
                Some(c) if c.allow_slot == 2 * id => 2 * id + 1,
                _ => 2 * id,
            };
            slots.push(slot);
            new.push(current.is_none());
            if current.is_none_or(|c| c.allow_slot != slot) {
                swap_slots.push(slot);
                swap_tenants.push(t);
                // New tries: tracked flows are checked against them again.
                versions.push(self.next_policy_version()?);
            } else {
                versions.push(current.map_or(0, |c| c.version));
            }
        }
        // Addresses claimed (fail closed) while the new tries are built on
        // other threads.
        let mut claim_all = || -> Result<()> {
            let mut bits = Vec::new();
            for (((id, t, health), slot), new) in tenants.iter().zip(&slots).zip(&new) {
                self.claim(*id, t, health, *slot, *new, &mut bits)?;
            }
            self.filter_set(&bits)
        };
        let tries = if swap_tenants.len() < 64 {
            claim_all()?;
            Self::build_allow_all(&swap_tenants)?
        } else {
            std::thread::scope(|s| {
                let built = s.spawn(|| Self::build_allow_all(&swap_tenants));
                let claimed = claim_all();
                let tries = built
                    .join()
                    .map_err(|_| anyhow!("building allowlists: a thread panicked"))?;
                claimed.and(tries)
            })?
        };
        self.swap_allow(&swap_slots, &tries)?;
        drop(tries);
        for (((id, t, health), slot), version) in tenants.iter().zip(&slots).zip(&versions) {
            for (key, class) in services(t) {
                let v = ServiceValue {
                    tenant: *id,
                    class,
                    _pad: [0; 3],
                };
                self.put_service(key, v)
                    .with_context(|| format!("tenant {}: service", t.name))?;
            }
            let mut info = tenant_info(t, *slot, health, true);
            info.version = *version;
            self.put_tenant(*id, info)?;
        }
        Ok(())
    }

    /// A tenant's record (not ready, if it has none), name, VNI and
    /// addresses; the addresses' filter bits are collected into `bits`.
    fn claim(&mut self, id: u32, t: &Tenant, health: &Health, slot: u32, new: bool, bits: &mut Vec<u32>) -> Result<()> {
        if new {
            self.put_tenant(id, tenant_info(t, slot, health, false))?;
        }
        let name = TenantName::new(&t.name).ok_or_else(|| anyhow!("tenant name {:?} longer than 32 bytes", t.name))?;
        let mut names: HashMap<_, u32, TenantName> = HashMap::try_from(self.map_mut(maps::TENANT_NAMES)?)?;
        names.insert(id, name, 0)?;
        self.put_vni(t.vni, id)
            .with_context(|| format!("tenant {}: vni {}", t.name, t.vni))?;
        let vips = t.vips.iter().map(|ip| (*ip, ADDR_VIP));
        let egress = t.egress.iter().flat_map(|e| {
            std::iter::once(IpAddr::V4(e.snat_ipv4))
                .chain(e.snat_ipv6.map(IpAddr::V6))
                .map(|ip| (ip, ADDR_EGRESS))
        });
        for (ip, kind) in vips.chain(egress) {
            let v = AddrValue {
                tenant: id,
                kind,
                _pad: [0; 3],
            };
            let key = addr_key(ip);
            self.put_addr(key, v)
                .with_context(|| format!("tenant {}: address {ip}", t.name))?;
            bits.push(addr_filter_bit(&key.addr));
        }
        Ok(())
    }

    /// Sets filter bits (after the addresses are in ADDRS: a set bit only
    /// sends packets on to the exact lookup).
    fn filter_set(&mut self, bits: &[u32]) -> Result<()> {
        let mut words: BTreeMap<u32, u64> = BTreeMap::new();
        for &bit in bits {
            *words.entry(bit >> 6).or_default() |= 1 << (bit & 63);
        }
        for (w, set) in words {
            let word = self.filter_word(w)?;
            if word | set != word {
                self.set_filter_word(w, word | set)?;
            }
        }
        Ok(())
    }

    /// Recomputes the filter words holding `bits` from the addresses
    /// still in ADDRS (other addresses may share a word, or even a bit).
    fn filter_rebuild(&mut self, bits: &[u32]) -> Result<()> {
        let words: std::collections::BTreeSet<u32> = bits.iter().map(|b| b >> 6).collect();
        let mut fresh: BTreeMap<u32, u64> = words.iter().map(|&w| (w, 0)).collect();
        for key in self.addr_keys()? {
            let bit = addr_filter_bit(&key.addr);
            if let Some(w) = fresh.get_mut(&(bit >> 6)) {
                *w |= 1 << (bit & 63);
            }
        }
        for (w, v) in fresh {
            if self.filter_word(w)? != v {
                self.set_filter_word(w, v)?;
            }
        }
        Ok(())
    }

    /// The first step of installing a new tenant, alone: its record (not
    /// ready), name, VNI and addresses, as [`Dataplane::install_tenants`]
    /// claims them before anything else. Until the rest is in place the
    /// tenant passes nothing; a test holds a tenant there to see it.
    pub fn claim_tenant(&mut self, id: u32, t: &Tenant) -> Result<()> {
        if id == 0 || id >= MAX_TENANTS {
            bail!("tenant id {id} out of range 1..{MAX_TENANTS}");
        }
        let new = self.tenant_info(id)?.is_none();
        let mut bits = Vec::new();
        self.claim(id, t, &Health::default(), 2 * id, new, &mut bits)?;
        self.filter_set(&bits)
    }

    /// Marks tenant `id` ready or not: a tenant that is not ready passes
    /// nothing (`tenant_not_ready`) whatever else of it is in the maps, as
    /// between the last of its entries and the record that marks it ready.
    pub fn set_tenant_ready(&mut self, id: u32, ready: bool) -> Result<()> {
        let mut info = self.tenant_info(id)?.ok_or_else(|| anyhow!("no tenant {id}"))?;
        if ready {
            info.flags |= TENANT_READY;
        } else {
            info.flags &= !TENANT_READY;
        }
        self.put_tenant(id, info)
    }

    /// Rewrites which connectors of tenant `id` take new flows (their up bits
    /// and the Maglev table built from them) and which core is active, in
    /// one update of the tenant record.
    pub fn rewrite_health(&mut self, id: u32, t: &Tenant, health: &Health) -> Result<()> {
        let mut info = self.tenant_info(id)?.ok_or_else(|| anyhow!("no tenant {id}"))?;
        let fresh = tenant_info(t, info.allow_slot, health, true);
        info.connectors = fresh.connectors;
        info.maglev = fresh.maglev;
        info.active_core = fresh.active_core;
        self.put_tenant(id, info)
    }

    /// Makes core `index` of tenant `id` the active one: one map update.
    pub fn set_active_core(&mut self, id: u32, index: u8) -> Result<()> {
        let mut info = self.tenant_info(id)?.ok_or_else(|| anyhow!("no tenant {id}"))?;
        if index >= info.n_cores {
            bail!("tenant {id} has {} cores; no core {index}", info.n_cores);
        }
        info.active_core = index;
        self.put_tenant(id, info)?;
        Ok(())
    }

    /// Removes tenant `id`: its addresses first, so its traffic is none of
    /// carwash's business at once, then the rest.
    pub fn remove_tenant(&mut self, id: u32, t: &Tenant) -> Result<()> {
        let mut removed = Vec::new();
        let ips: Vec<IpAddr> = t
            .vips
            .iter()
            .copied()
            .chain(
                t.egress
                    .iter()
                    .flat_map(|e| std::iter::once(IpAddr::V4(e.snat_ipv4)).chain(e.snat_ipv6.map(IpAddr::V6))),
            )
            .collect();
        for ip in ips {
            if self.get_addr(addr_key(ip))?.is_some_and(|v| v.tenant == id) {
                self.del_addr(addr_key(ip))?;
                removed.push(addr_filter_bit(&addr_key(ip).addr));
            }
        }
        self.filter_rebuild(&removed)?;
        for (key, _) in services(t) {
            self.del_service(key)?;
        }
        if self.get_vni(t.vni)? == Some(id) {
            self.del_vni(t.vni)?;
        }
        self.del_tenant(id)?;
        let mut names: HashMap<_, u32, TenantName> = HashMap::try_from(self.map_mut(maps::TENANT_NAMES)?)?;
        let _ = names.remove(&id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(extra: &str) -> Tenant {
        Tenant::from_toml(&format!(
            r#"name = "t"
vni = 7
lane = "single"
vips = ["203.0.113.7", "2001:db8::7"]
https_ports = [443, 8443]
jms_ports = [61616]
vpc_cidrs = ["10.0.0.0/16"]
connectors = [{{ vtep = "10.200.9.10", mac = "02:00:00:00:00:0a" }}]
cores = [{{ vtep = "10.200.9.20", mac = "02:00:00:00:00:14" }}]
{extra}"#
        ))
        .unwrap()
    }

    #[test]
    fn services_cover_every_vip_and_port() {
        let s = services(&tenant(""));
        assert_eq!(s.len(), 2 * 3);
        assert_eq!(s.iter().filter(|(_, c)| *c == CLASS_JMS).count(), 2);
    }

    #[test]
    fn overlapping_prefixes_inherit_the_classes_of_wider_ones() {
        let t = tenant(
            "[[allow]]\ncidr = \"198.51.100.0/24\"\nclasses = [\"https\"]\n[[allow]]\ncidr = \"198.51.100.128/25\"\nclasses = [\"jms\"]\n[[allow]]\ncidr = \"2001:db8:beef::/48\"\n",
        );
        let v4 = allow_masks(&t, false);
        let wide = v4.iter().find(|(n, _)| n.prefix() == 24).unwrap().1;
        let narrow = v4.iter().find(|(n, _)| n.prefix() == 25).unwrap().1;
        assert_eq!(wide, 1 << CLASS_HTTPS);
        assert_eq!(narrow, (1 << CLASS_HTTPS) | (1 << CLASS_JMS));
        assert_eq!(allow_masks(&t, true), vec![("2001:db8:beef::/48".parse().unwrap(), 3)]);
    }
}
