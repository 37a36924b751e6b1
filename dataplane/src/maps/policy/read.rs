//! The read side of the policy maps, through the pins: tenants (`TENANTS`,
//! `TENANT_NAMES`), their addresses (`ADDRS`), services (`SERVICES`), VNIs
//! (`VNIS`) and allowlists (`ALLOW_V4`, `ALLOW_V6`), in the generation in
//! force, turned into what an operator reads: tenant names, addresses,
//! classes and prefixes.
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result, bail};
use aya::maps::{ArrayOfMaps, HashMap, LpmTrie, Map, MapData, lpm_trie::Key};
use carwash_policy::MacAddr;
use dataplane_common::{
    maps,
    types::{
        ADDR_EGRESS, ADDR_VIP, AddrKey, AddrValue, Allow4, Allow6, AllowMask, BackendEntry, CLASS_HTTPS, CLASS_JMS,
        CLASS_NONE, FAMILY_V4, FAMILY_V6, MAGLEV_SIZE, ServiceKey, ServiceValue, TENANT_READY, TenantInfo, TenantName,
    },
};
use ipnetwork::IpNetwork;
use serde::Serialize;

use crate::maps::pins::{Pins, not_found_is_none};

impl Pins {
    /// Every tenant the maps know, by id: those with a record and those
    /// with only a name (a record being installed or removed).
    pub fn tenants(&self) -> Result<Vec<TenantRecord>> {
        let mut out: BTreeMap<u32, TenantRecord> = BTreeMap::new();
        let names: HashMap<_, u32, TenantName> = HashMap::try_from(Map::HashMap(self.map(maps::TENANT_NAMES)?))?;
        for kv in names.iter() {
            let (id, n) = kv.context("reading TENANT_NAMES")?;
            out.entry(id).or_insert_with(|| TenantRecord::new(id)).name = Some(n.as_str().to_string());
        }
        let infos: HashMap<_, u32, TenantInfo> = HashMap::try_from(Map::HashMap(self.map(maps::TENANTS)?))?;
        for kv in infos.iter() {
            let (k, info) = kv.context("reading TENANTS")?;
            let (g, id) = super::generations::split_tenant(k);
            if g != self.generation() {
                continue;
            }
            out.entry(id).or_insert_with(|| TenantRecord::new(id)).info = Some(info);
        }
        Ok(out.into_values().collect())
    }

    /// The tenant called `name`; an error lists the names there are.
    pub fn tenant(&self, name: &str) -> Result<TenantRecord> {
        let all = self.tenants()?;
        if let Some(t) = all.iter().find(|t| t.name.as_deref() == Some(name)) {
            return Ok(t.clone());
        }
        let known: Vec<String> = all.iter().map(TenantRecord::display_name).collect();
        bail!(
            "no tenant {name:?} in the pinned maps under {}; tenants: {}",
            self.dir().display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )
    }

    /// `ADDRS`: VIPs and egress IPs with their tenant, sorted by tenant and address.
    pub fn addresses(&self) -> Result<Vec<AddrEntry>> {
        let m: HashMap<_, AddrKey, AddrValue> = HashMap::try_from(Map::HashMap(self.map(maps::ADDRS)?))?;
        let mut out = Vec::new();
        for kv in m.iter() {
            let (k, v) = kv.context("reading ADDRS")?;
            let (g, k) = super::generations::split_addr(k);
            if g != self.generation() {
                continue;
            }
            out.push(AddrEntry {
                ip: addr_of(&k.addr, k.family),
                kind: addr_kind(v.kind),
                tenant: v.tenant,
            });
        }
        out.sort_by_key(|a| (a.tenant, a.ip.is_ipv6(), a.ip));
        Ok(out)
    }

    /// The owner of `ip` in `ADDRS`, if any.
    pub fn address(&self, ip: IpAddr) -> Result<Option<AddrValue>> {
        let m: HashMap<_, AddrKey, AddrValue> = HashMap::try_from(Map::HashMap(self.map(maps::ADDRS)?))?;
        not_found_is_none(m.get(
            &dataplane_common::types::addr_key_gen(super::tenants::addr_key(ip), self.generation()),
            0,
        ))
    }

    /// `SERVICES`, sorted by tenant, VIP, protocol and port.
    pub fn services(&self) -> Result<Vec<ServiceEntry>> {
        let m: HashMap<_, ServiceKey, ServiceValue> = HashMap::try_from(Map::HashMap(self.map(maps::SERVICES)?))?;
        let mut out = Vec::new();
        for kv in m.iter() {
            let (k, v) = kv.context("reading SERVICES")?;
            let (g, k) = super::generations::split_service(k);
            if g != self.generation() {
                continue;
            }
            out.push(ServiceEntry {
                vip: addr_of(&k.addr, k.family),
                proto: k.proto,
                port: u16::from_be_bytes(k.port_be),
                tenant: v.tenant,
                class: v.class,
            });
        }
        out.sort_by_key(|s| (s.tenant, s.vip.is_ipv6(), s.vip, s.proto, s.port));
        Ok(out)
    }

    /// The service (VIP, protocol, port), if any.
    pub fn service(&self, vip: IpAddr, proto: u8, port: u16) -> Result<Option<ServiceValue>> {
        let m: HashMap<_, ServiceKey, ServiceValue> = HashMap::try_from(Map::HashMap(self.map(maps::SERVICES)?))?;
        let a = super::tenants::addr_key(vip);
        let key = ServiceKey {
            addr: a.addr,
            port_be: port.to_be_bytes(),
            proto,
            family: a.family,
        };
        not_found_is_none(m.get(&dataplane_common::types::service_key_gen(key, self.generation()), 0))
    }

    /// `VNIS`: VNI → tenant id.
    pub fn vnis(&self) -> Result<BTreeMap<u32, u32>> {
        let m: HashMap<_, u32, u32> = HashMap::try_from(Map::HashMap(self.map(maps::VNIS)?))?;
        let mut out = BTreeMap::new();
        for kv in m.iter() {
            let (k, id) = kv.context("reading VNIS")?;
            let (g, vni) = super::generations::split_vni(k);
            if g == self.generation() {
                out.insert(vni, id);
            }
        }
        Ok(out)
    }

    /// The allow prefixes of allow slot `slot` (what `TenantInfo::allow_slot`
    /// names), IPv4 and IPv6, each with its class mask as stored: already
    /// merged with the masks of every shorter prefix covering it. An empty
    /// slot gives no prefixes.
    pub fn allow(&self, slot: u32) -> Result<AllowList> {
        Ok(AllowList {
            slot,
            v4: self.allow_family::<Allow4>(maps::ALLOW_V4, slot, |d| IpAddr::V4(Ipv4Addr::from(d)))?,
            v6: self.allow_family::<Allow6>(maps::ALLOW_V6, slot, |d| IpAddr::V6(Ipv6Addr::from(d)))?,
        })
    }

    fn allow_family<K: aya::Pod>(&self, name: &str, slot: u32, ip: impl Fn(K) -> IpAddr) -> Result<Vec<AllowEntry>> {
        let outer: ArrayOfMaps<MapData, MapData> = ArrayOfMaps::try_from(Map::ArrayOfMaps(self.map(name)?))?;
        let inner = match outer.get(&slot, 0) {
            Ok(inner) => inner,
            Err(aya::maps::MapError::KeyNotFound) => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading slot {slot} of {name}")),
        };
        let trie: LpmTrie<MapData, K, AllowMask> = LpmTrie::try_from(Map::LpmTrie(inner))?;
        let mut out = Vec::new();
        for kv in trie.iter() {
            let (k, mask): (Key<K>, AllowMask) = kv.with_context(|| format!("reading slot {slot} of {name}"))?;
            let prefix = IpNetwork::new(ip(k.data()), k.prefix_len() as u8)
                .with_context(|| format!("slot {slot} of {name}: bad prefix length {}", k.prefix_len()))?;
            out.push(AllowEntry { prefix, mask });
        }
        out.sort_by_key(|e| (e.prefix.network(), e.prefix.prefix()));
        Ok(out)
    }
}

/// A tenant as the maps know it.
#[derive(Debug, Clone)]
pub struct TenantRecord {
    pub id: u32,
    /// From `TENANT_NAMES`.
    pub name: Option<String>,
    /// From `TENANTS`.
    pub info: Option<TenantInfo>,
}

impl TenantRecord {
    fn new(id: u32) -> TenantRecord {
        TenantRecord {
            id,
            name: None,
            info: None,
        }
    }

    /// The name, or `#ID` for a record without one.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| format!("#{}", self.id))
    }

    pub fn ready(&self) -> bool {
        self.info.is_some_and(|i| i.flags & TENANT_READY != 0)
    }
}

/// `single` or `double`, from the number of machines.
pub fn lane(info: &TenantInfo) -> &'static str {
    if info.n_connectors > 1 || info.n_cores > 1 {
        "double"
    } else {
        "single"
    }
}

/// A machine of a tenant, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Machine {
    pub index: usize,
    pub vtep: Ipv4Addr,
    pub mac: String,
    pub up: bool,
}

pub fn machine(index: usize, b: &BackendEntry) -> Machine {
    Machine {
        index,
        vtep: Ipv4Addr::from(b.vtep),
        mac: MacAddr(b.mac).to_string(),
        up: b.up != 0,
    }
}

pub fn connectors(info: &TenantInfo) -> Vec<Machine> {
    let n = (info.n_connectors as usize).min(info.connectors.len());
    info.connectors[..n]
        .iter()
        .enumerate()
        .map(|(i, b)| machine(i, b))
        .collect()
}

pub fn cores(info: &TenantInfo) -> Vec<Machine> {
    let n = (info.n_cores as usize).min(info.cores.len());
    info.cores[..n].iter().enumerate().map(|(i, b)| machine(i, b)).collect()
}

/// Maglev buckets per connector (of `MAGLEV_SIZE`).
pub fn maglev_buckets(info: &TenantInfo) -> Vec<usize> {
    let mut n = vec![0usize; info.connectors.len()];
    for &c in &info.maglev[..MAGLEV_SIZE] {
        if let Some(x) = n.get_mut(c as usize) {
            *x += 1;
        }
    }
    n.truncate((info.n_connectors as usize).min(info.connectors.len()));
    n
}

/// An entry of `ADDRS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddrEntry {
    pub ip: IpAddr,
    /// `vip`, `egress`.
    pub kind: &'static str,
    pub tenant: u32,
}

fn addr_kind(k: u8) -> &'static str {
    match k {
        ADDR_VIP => "vip",
        ADDR_EGRESS => "egress",
        _ => "unknown",
    }
}

/// An address as the maps key it (IPv4 in the first four bytes).
pub fn addr_of(addr: &[u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_V6 {
        IpAddr::V6(Ipv6Addr::from(*addr))
    } else {
        debug_assert_eq!(family, FAMILY_V4);
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    }
}

/// An entry of `SERVICES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub vip: IpAddr,
    pub proto: u8,
    pub port: u16,
    pub tenant: u32,
    pub class: u8,
}

/// `tcp`, `udp`, `icmp`, `icmpv6`, or the number.
pub fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

/// The word for a port class (`CLASS_*`). `none` counts traffic the
/// programs could not give a class: to a VIP port without a service, and
/// tunnel traffic from the VPC.
pub fn class_name(c: u8) -> &'static str {
    match c {
        CLASS_HTTPS => "https",
        CLASS_JMS => "jms",
        CLASS_NONE => "none",
        _ => "unknown",
    }
}

/// The classes an allow mask lets through.
pub fn mask_classes(mask: AllowMask) -> Vec<&'static str> {
    [CLASS_HTTPS, CLASS_JMS]
        .into_iter()
        .filter(|c| mask & (1 << c) != 0)
        .map(class_name)
        .collect()
}

/// An allow prefix and the classes it lets through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    pub prefix: IpNetwork,
    pub mask: AllowMask,
}

/// A tenant's allowlists: one allow slot of `ALLOW_V4` and `ALLOW_V6`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList {
    pub slot: u32,
    pub v4: Vec<AllowEntry>,
    pub v6: Vec<AllowEntry>,
}

impl AllowList {
    /// The entry the trie answers for `ip` with: the longest prefix that
    /// contains it.
    pub fn longest_match(&self, ip: IpAddr) -> Option<&AllowEntry> {
        let family = if ip.is_ipv6() { &self.v6 } else { &self.v4 };
        family
            .iter()
            .filter(|e| e.prefix.contains(ip))
            .max_by_key(|e| e.prefix.prefix())
    }
}

/// Tenant ids any policy map refers to (for sizing a private copy of the
/// per-tenant counters).
pub fn max_tenant_id(pins: &Pins) -> Result<u32> {
    let mut ids: BTreeSet<u32> = pins.tenants()?.iter().map(|t| t.id).collect();
    ids.extend(pins.addresses()?.iter().map(|a| a.tenant));
    ids.extend(pins.services()?.iter().map(|s| s.tenant));
    ids.extend(pins.vnis()?.values().copied());
    Ok(ids.into_iter().max().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(p: &str, mask: AllowMask) -> AllowEntry {
        AllowEntry {
            prefix: p.parse().unwrap(),
            mask,
        }
    }

    #[test]
    fn the_longest_prefix_answers() {
        let l = AllowList {
            slot: 2,
            v4: vec![entry("198.51.100.0/24", 1), entry("198.51.100.128/25", 3)],
            v6: vec![entry("2001:db8:beef::/48", 3)],
        };
        let hit = |ip: &str| l.longest_match(ip.parse().unwrap()).map(|e| e.prefix.to_string());
        assert_eq!(hit("198.51.100.10").as_deref(), Some("198.51.100.0/24"));
        assert_eq!(hit("198.51.100.200").as_deref(), Some("198.51.100.128/25"));
        assert_eq!(hit("192.0.2.1"), None);
        assert_eq!(hit("2001:db8:beef::10").as_deref(), Some("2001:db8:beef::/48"));
        assert_eq!(hit("2001:db8:dead::10"), None);
    }

    #[test]
    fn masks_and_classes_read_as_words() {
        assert_eq!(mask_classes(3), vec!["https", "jms"]);
        assert_eq!(mask_classes(1 << CLASS_JMS), vec!["jms"]);
        assert!(mask_classes(0).is_empty());
        assert_eq!(class_name(CLASS_NONE), "none");
        assert_eq!(proto_name(6), "tcp");
    }

    #[test]
    fn v4_addresses_sit_in_the_first_four_bytes() {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[203, 0, 113, 10]);
        assert_eq!(addr_of(&a, FAMILY_V4), "203.0.113.10".parse::<IpAddr>().unwrap());
    }
}
