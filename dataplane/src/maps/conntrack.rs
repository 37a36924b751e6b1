//! The connection-tracking table of source NAT, from userspace: reading
//! it as flows (an outbound key and its reply key make one flow),
//! reclaiming what the data path already treats as dead, and listing the
//! least recently used flows for a full table to give up.
//!
//! The programs expire entries by carwash's clock (the kernel's tick
//! counter times the tick length: [`now_ns`]) and never reuse a port whose reply entry is still
//! there, expired or not; the agent reclaims expired flows (both
//! directions at once, as soon as either has expired), entries whose twin
//! is gone, and the flows of tenants that no longer exist.
use std::collections::{BTreeMap, HashMap as StdHashMap, HashSet};
use std::net::IpAddr;

use anyhow::{Result, anyhow, bail};
use aya::maps::{Array, HashMap, Map, MapData};
use dataplane_common::types::{
    CT_ESTABLISHED, CT_EVICT_MAX, CT_FIN, CT_REPLY, CT_RST, CT_SYN, CtKey, CtValue, EvictCandidate, EvictCursor,
    FAMILY_V6, ct_last_use,
};

use serde::Serialize;

use crate::Dataplane;
use crate::loader::map_pin;
use crate::maps::pins::Pins;
use crate::maps::policy::read::proto_name;
use dataplane_common::maps;

pub use crate::clock::{clock_ticks, now_ns, tick_ns};

/// An address of a key or value as an `IpAddr`.
pub fn ip(addr: &[u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_V6 {
        IpAddr::from(*addr)
    } else {
        IpAddr::from([addr[0], addr[1], addr[2], addr[3]])
    }
}

/// One tracked flow: both directions when both are there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// The outbound key (tenant, VPC machine → remote) and its value (the
    /// egress IP and port).
    pub out: Option<(CtKey, CtValue)>,
    /// The reply key (remote → egress IP and port) and its value (the VPC
    /// machine's address and port, the machine it came from).
    pub reply: Option<(CtKey, CtValue)>,
}

impl Flow {
    pub fn tenant(&self) -> u32 {
        self.out
            .map(|(k, _)| k.tenant)
            .or(self.reply.map(|(_, v)| v.tenant))
            .unwrap_or(0)
    }

    /// The earliest expiry of its directions: the flow dies with the first.
    pub fn expires_ns(&self) -> u64 {
        [self.out, self.reply]
            .iter()
            .flatten()
            .map(|(_, v)| v.expires_ns)
            .min()
            .unwrap_or(0)
    }

    /// The TCP state as the two directions saw it, in words.
    pub fn state(&self, proto: u8) -> &'static str {
        if proto != 6 {
            return if self.reply.is_some_and(|(_, v)| v.state & CT_REPLY != 0) {
                "replied"
            } else {
                "unreplied"
            };
        }
        let s = [self.out, self.reply]
            .iter()
            .flatten()
            .fold(0u8, |s, (_, v)| s | v.state);
        if s & CT_RST != 0 {
            "reset"
        } else if s & CT_FIN != 0 {
            "closing"
        } else if s & CT_ESTABLISHED != 0 {
            "established"
        } else if s & CT_SYN != 0 {
            "syn_sent"
        } else {
            "new"
        }
    }
}

/// The reply key of an outbound entry.
pub fn reply_key_of(k: &CtKey, v: &CtValue) -> CtKey {
    let icmp = k.proto != 6 && k.proto != 17;
    CtKey {
        tenant: 0,
        src: k.dst,
        dst: v.addr,
        sport_be: if icmp { [0, 0] } else { k.dport_be },
        dport_be: v.port_be,
        proto: k.proto,
        family: k.family,
        _pad: [0; 2],
    }
}

/// Reads every entry of `map` and pairs the directions into flows.
pub fn flows_of(map: &Map) -> Result<Vec<Flow>> {
    if !matches!(map, Map::LruHashMap(_) | Map::HashMap(_)) {
        bail!("map {} is not a hash map", maps::CONNTRACK);
    }
    let m: HashMap<&MapData, CtKey, CtValue> = HashMap::try_from(map)?;
    let mut outs = Vec::new();
    let mut replies = StdHashMap::new();
    for e in m.iter() {
        // An entry evicted or deleted between the key walk and its lookup
        // is simply gone.
        let Ok((k, v)) = e else { continue };
        if k.tenant == 0 {
            replies.insert(k, v);
        } else {
            outs.push((k, v));
        }
    }
    let mut flows = Vec::with_capacity(outs.len());
    for (k, v) in outs {
        let rk = reply_key_of(&k, &v);
        let reply = match replies.get(&rk) {
            // Only the reply entry that points back at this flow belongs
            // to it.
            Some(rv) if rv.tenant == k.tenant && rv.addr == k.src && rv.port_be == k.sport_be => {
                replies.remove(&rk).map(|rv| (rk, rv))
            }
            _ => None,
        };
        flows.push(Flow {
            out: Some((k, v)),
            reply,
        });
    }
    flows.extend(replies.into_iter().map(|(k, v)| Flow {
        out: None,
        reply: Some((k, v)),
    }));
    Ok(flows)
}

/// What a reclaim pass removed, and the eviction candidates it listed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reclaimed {
    /// Flows past their expiry.
    pub expired: usize,
    /// Directions without their twin.
    pub orphans: usize,
    /// Flows of tenants not in force.
    pub gone_tenants: usize,
    /// Flows listed for a full table to give up (`CT_EVICT`).
    pub candidates: usize,
    /// What the table holds after the pass.
    pub fill: Fill,
}

/// How full the tracking table is, and the source-NAT ports in use per
/// egress IP: the figures behind the table-full and port-exhaustion alerts.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fill {
    /// Entries (two per flow with both directions).
    pub entries: usize,
    /// Egress IP → distinct translated (protocol, port) pairs in use.
    pub snat_ports: BTreeMap<IpAddr, usize>,
}

impl Fill {
    fn of<'a>(flows: impl Iterator<Item = &'a Flow>) -> Fill {
        let mut fill = Fill::default();
        let mut ports: BTreeMap<IpAddr, HashSet<(u8, [u8; 2])>> = BTreeMap::new();
        for f in flows {
            fill.entries += usize::from(f.out.is_some()) + usize::from(f.reply.is_some());
            if let Some((k, v)) = f.out {
                ports
                    .entry(ip(&v.addr, k.family))
                    .or_default()
                    .insert((k.proto, v.port_be));
            }
        }
        fill.snat_ports = ports.into_iter().map(|(ip, p)| (ip, p.len())).collect();
        fill
    }
}

impl Reclaimed {
    pub fn total(&self) -> usize {
        self.expired + self.orphans + self.gone_tenants
    }
}

impl Dataplane {
    /// The capacity of the connection-tracking table as loaded.
    pub fn conntrack_capacity(&self) -> Result<u32> {
        let map = self
            .ebpf
            .map(maps::CONNTRACK)
            .ok_or_else(|| anyhow!("no map {}", maps::CONNTRACK))?;
        let fd = match map {
            aya::maps::Map::HashMap(d) => d,
            _ => bail!("map {} is not a hash map", maps::CONNTRACK),
        };
        Ok(fd.info()?.max_entries())
    }

    fn conntrack_map(&self) -> Result<&Map> {
        self.ebpf
            .map(maps::CONNTRACK)
            .ok_or_else(|| anyhow!("no map {} in the eBPF object", maps::CONNTRACK))
    }

    /// The tracked flows.
    pub fn conntrack_flows(&self) -> Result<Vec<Flow>> {
        flows_of(self.conntrack_map()?)
    }

    fn conntrack_mut(&mut self) -> Result<HashMap<&mut MapData, CtKey, CtValue>> {
        let map = self
            .ebpf
            .map_mut(maps::CONNTRACK)
            .ok_or_else(|| anyhow!("no map {} in the eBPF object", maps::CONNTRACK))?;
        Ok(HashMap::try_from(map)?)
    }

    /// Writes tracking entries as they are (for tests and benchmarks that
    /// need a table in a given state).
    pub fn conntrack_insert(&mut self, entries: &[(CtKey, CtValue)]) -> Result<()> {
        let mut m = self.conntrack_mut()?;
        for (k, v) in entries {
            m.insert(k, v, 0)?;
        }
        Ok(())
    }

    /// Removes one tracking entry; `false` if it was not there.
    pub fn conntrack_remove(&mut self, key: &CtKey) -> Result<bool> {
        match self.conntrack_mut()?.remove(key) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes expired flows, orphaned directions older than `orphan_grace_ns`
    /// (a new flow's two entries are written one after the other), and
    /// flows of tenants for which `live` says no; then lists the flows
    /// left as eviction candidates ([`Dataplane::list_evict_candidates`]).
    pub fn reclaim_conntrack(&mut self, now: u64, live: impl Fn(u32) -> bool) -> Result<Reclaimed> {
        let flows = self.conntrack_flows()?;
        let mut m = self.conntrack_mut()?;
        let mut done = Reclaimed::default();
        let mut kept = Vec::with_capacity(flows.len());
        let mut lone = Vec::new();
        for f in flows {
            let why = if !live(f.tenant()) {
                &mut done.gone_tenants
            } else if f.expires_ns() <= now {
                &mut done.expired
            } else if f.out.is_none() || f.reply.is_none() {
                // Only once its own lifetime says so would a lone
                // direction be reclaimed by expiry; an outbound entry
                // without its reply can never carry traffic again.
                let single = f.out.or(f.reply).map(|(_, v)| v);
                match single {
                    Some(v) if now.saturating_sub(v.touched_ns) > ORPHAN_GRACE_NS => &mut done.orphans,
                    _ => {
                        lone.push(f);
                        continue;
                    }
                }
            } else {
                kept.push(f);
                continue;
            };
            *why += 1;
            for (k, _) in [f.out, f.reply].into_iter().flatten() {
                // Already gone (evicted, or the data path replaced it).
                let _ = m.remove(&k);
            }
        }
        done.candidates = self.list_evict_candidates(&kept)?;
        done.fill = Fill::of(kept.iter().chain(&lone));
        Ok(done)
    }

    /// Lists the least recently used of `flows` (those with both
    /// directions), oldest first, up to `CT_EVICT_MAX`, as the flows a
    /// full table gives up: written to the half of `CT_EVICT` the data path
    /// is not using, then switched to in one write of the cursor. A flow's
    /// last use is the later of its two directions' ([`ct_last_use`]).
    pub fn list_evict_candidates(&mut self, flows: &[Flow]) -> Result<usize> {
        let mut c: Vec<(u64, EvictCandidate)> = flows
            .iter()
            .filter_map(|f| {
                let ((ok, ov), (rk, rv)) = (f.out?, f.reply?);
                let last_use = ct_last_use(ok.proto, &ov).max(ct_last_use(rk.proto, &rv));
                let cand = EvictCandidate {
                    out: ok,
                    reply: rk,
                    out_expires_ns: ov.expires_ns,
                    reply_expires_ns: rv.expires_ns,
                };
                Some((last_use, cand))
            })
            .collect();
        let max = CT_EVICT_MAX as usize;
        if c.len() > max {
            c.select_nth_unstable_by_key(max, |(t, _)| *t);
            c.truncate(max);
        }
        c.sort_by_key(|(t, _)| *t);
        let cur = {
            let cursor: Array<&mut MapData, EvictCursor> = Array::try_from(self.map_mut(maps::CT_EVICT_CURSOR)?)?;
            cursor.get(&0, 0)?
        };
        if c.is_empty() && cur.next >= cur.end {
            // Nothing listed, nothing to list: the maps stay as they are.
            return Ok(0);
        }
        let base = if cur.base == 0 { CT_EVICT_MAX } else { 0 };
        let mut list: Array<&mut MapData, EvictCandidate> = Array::try_from(self.map_mut(maps::CT_EVICT)?)?;
        for (i, (_, cand)) in c.iter().enumerate() {
            list.set(base + i as u32, cand, 0)?;
        }
        let mut cursor: Array<&mut MapData, EvictCursor> = Array::try_from(self.map_mut(maps::CT_EVICT_CURSOR)?)?;
        cursor.set(
            0,
            EvictCursor {
                next: base,
                end: base + c.len() as u32,
                base,
                _pad: 0,
            },
            0,
        )?;
        Ok(c.len())
    }
}

impl Pins {
    /// The SNAT / connection-tracking table, as flows.
    pub fn snat(&self) -> Result<SnatTable> {
        if !map_pin(self.dir(), maps::CONNTRACK).exists() {
            return Ok(SnatTable::Absent {
                reason: format!(
                    "no {} map is pinned under {}: the dataplane there was loaded without source NAT",
                    maps::CONNTRACK,
                    self.dir().display()
                ),
            });
        }
        let flows = flows_of(&Map::HashMap(self.map(maps::CONNTRACK)?))?;
        let names: BTreeMap<u32, String> = self.tenants()?.into_iter().map(|t| (t.id, t.display_name())).collect();
        let now = now_ns();
        let mut entries: Vec<SnatEntry> = flows.iter().map(|f| SnatEntry::of(f, &names, now)).collect();
        entries.sort_by(|a, b| (&a.tenant, &a.inside, &a.remote).cmp(&(&b.tenant, &b.inside, &b.remote)));
        Ok(SnatTable::Entries(entries))
    }
}

/// What `carwash snat list` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnatTable {
    /// There is no table to read; `reason` says why, for the operator.
    Absent { reason: String },
    /// The tracked connections.
    Entries(Vec<SnatEntry>),
}

/// One tracked outbound connection, in the terms of path 3 (outbound):
/// a VPC machine's flow, source-NATed to the tenant's egress IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnatEntry {
    pub tenant: String,
    pub proto: String,
    /// The machine's address and port (ICMP: echo identifier) inside the VPC.
    pub inside: String,
    /// The egress IP and the port allocated for the flow.
    pub egress: String,
    /// The external party.
    pub remote: String,
    /// The machine the flow came from (and replies go to), as a backend
    /// slot: `connector[0]`, `core[1]`, ...
    pub machine: String,
    /// TCP: `syn_sent`, `established`, `closing`, `reset`; others:
    /// `replied` or `unreplied`.
    pub state: String,
    /// Seconds until the flow expires unless more packets come (0: expired,
    /// awaiting reclaim).
    pub expires_in_s: u64,
    /// `both`, or which direction alone is left (the other was evicted;
    /// the next packet writes it back).
    pub directions: String,
}

fn endpoint(addr: &[u8; 16], family: u8, port_be: [u8; 2]) -> String {
    match ip(addr, family) {
        std::net::IpAddr::V4(a) => format!("{a}:{}", u16::from_be_bytes(port_be)),
        std::net::IpAddr::V6(a) => format!("[{a}]:{}", u16::from_be_bytes(port_be)),
    }
}

impl SnatEntry {
    fn of(f: &Flow, names: &BTreeMap<u32, String>, now: u64) -> SnatEntry {
        let tenant = f.tenant();
        let name = names.get(&tenant).cloned().unwrap_or_else(|| format!("#{tenant}"));
        let (inside, egress, remote, proto, origin) = match (f.out, f.reply) {
            (Some((k, v)), r) => (
                endpoint(&k.src, k.family, k.sport_be),
                endpoint(&v.addr, k.family, v.port_be),
                endpoint(&k.dst, k.family, r.map(|(rk, _)| rk.sport_be).unwrap_or(k.dport_be)),
                k.proto,
                r.map(|(_, rv)| rv.origin).unwrap_or(v.origin),
            ),
            (None, Some((k, v))) => (
                endpoint(&v.addr, k.family, v.port_be),
                endpoint(&k.dst, k.family, k.dport_be),
                endpoint(&k.src, k.family, k.sport_be),
                k.proto,
                v.origin,
            ),
            (None, None) => (String::new(), String::new(), String::new(), 0, 0),
        };
        let machine = match origin {
            0 | 1 => format!("connector[{origin}]"),
            _ => format!("core[{}]", origin & 1),
        };
        SnatEntry {
            tenant: name,
            proto: proto_name(proto),
            inside,
            egress,
            remote,
            machine,
            state: f.state(proto).to_string(),
            expires_in_s: f.expires_ns().saturating_sub(now) / 1_000_000_000,
            directions: match (f.out.is_some(), f.reply.is_some()) {
                (true, true) => "both",
                (true, false) => "outbound",
                _ => "reply",
            }
            .to_string(),
        }
    }
}

/// How long a direction may wait for its twin before it is an orphan: a
/// new flow writes its two entries one after the other, and a reply entry
/// claims its port before the outbound entry exists.
pub const ORPHAN_GRACE_NS: u64 = 2_000_000_000;

#[cfg(test)]
mod clock_tests {
    use super::tick_ns;

    /// `times(2)` as the kernel computes it from its tick counter, for a
    /// tick of `tick` ns (`USER_HZ` = 100).
    fn user_ticks(ticks: u64, tick: u64) -> u64 {
        ticks * tick / 10_000_000
    }

    #[test]
    fn the_tick_of_every_common_hz_is_recognised() {
        // The counter starts 300 s before wrapping 32 bits.
        for (hz, tick) in [
            (100, 10_000_000u64),
            (250, 4_000_000),
            (300, 3_333_333),
            (1000, 1_000_000),
        ] {
            for uptime_s in [1u64, 600, 86_400 * 400] {
                let ticks = (1u64 << 32) - 300 * hz + uptime_s * hz;
                let t = user_ticks(ticks, tick);
                assert_eq!(
                    tick_ns(ticks, t, t).unwrap() as u64,
                    tick,
                    "HZ {hz}, uptime {uptime_s} s"
                );
                assert_eq!(tick_ns(ticks, t - 1, t + 1).unwrap() as u64, tick);
            }
        }
    }

    #[test]
    fn readings_that_fit_no_hz_are_refused() {
        let ticks = 5_000_000_000u64;
        assert!(tick_ns(ticks, ticks / 7, ticks / 7).is_err());
        assert!(tick_ns(0, 1, 1).is_err());
        assert!(tick_ns(ticks, 5, 4).is_err());
    }
}
