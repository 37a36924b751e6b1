//! The counters the programs keep, from the loaded object or from the
//! pins: the global counters and drops by reason (`COUNTERS`), each
//! tenant's by class (`TENANT_STATS`), and the redirects the kernel refused
//! (`REDIRECT_ERRORS`). The programs write them; userspace only reads them,
//! and zeroes a tenant's when its id is given to a new tenant.
use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use aya::maps::{Map, MapData, PerCpuArray, PerCpuHashMap};
use dataplane_common::{
    Counter, CounterBlock, DropReason,
    drop::{DROPPED_BYTES, STEERED_BYTES, STEERED_PACKETS, TENANT_STAT_SLOTS},
    maps,
    types::{CLASSES, RedirectErrors, TenantStats},
};
use serde::Serialize;

use crate::Dataplane;
use crate::loader::map_pin;
use crate::maps::pins::Pins;
use crate::maps::policy::read::class_name;

/// The global counters and drops by reason, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub counters: BTreeMap<Counter, u64>,
    pub drops: BTreeMap<DropReason, u64>,
}

impl Counters {
    pub fn get(&self, c: Counter) -> u64 {
        self.counters.get(&c).copied().unwrap_or(0)
    }

    pub fn dropped(&self, r: DropReason) -> u64 {
        self.drops.get(&r).copied().unwrap_or(0)
    }

    pub fn read<T: std::borrow::Borrow<MapData>>(map: &PerCpuArray<T, CounterBlock>, side: u32) -> Result<Counters> {
        let per_cpu = map.get(&side, 0).context("reading the counters")?;
        let sum = |slot: usize| per_cpu.iter().map(|block| block[slot]).sum();
        Ok(Counters {
            counters: Counter::ALL.iter().map(|&c| (c, sum(c.index() as usize))).collect(),
            drops: DropReason::ALL
                .iter()
                .map(|&r| (r, sum(Counter::COUNT as usize + r.index() as usize)))
                .collect(),
        })
    }

    /// What changed from `before` to `self`.
    pub fn since(&self, before: &Counters) -> Counters {
        Counters {
            counters: Counter::ALL
                .iter()
                .map(|&c| (c, self.get(c).saturating_sub(before.get(c))))
                .collect(),
            drops: DropReason::ALL
                .iter()
                .map(|&r| (r, self.dropped(r).saturating_sub(before.dropped(r))))
                .collect(),
        }
    }
}

impl Dataplane {
    /// The counters of program `side` (`SIDE_UPLINK`, `SIDE_FABRIC`),
    /// summed over CPUs.
    pub fn counters(&self, side: u32) -> Result<Counters> {
        let map = self
            .ebpf
            .map(maps::COUNTERS)
            .ok_or_else(|| anyhow!("no map {}", maps::COUNTERS))?;
        Counters::read(&PerCpuArray::<_, CounterBlock>::try_from(map)?, side)
    }

    /// The redirects the kernel refused, by target ifindex, summed over
    /// CPUs.
    pub fn redirect_errors(&self) -> Result<BTreeMap<u32, RedirectErrors>> {
        let map = self
            .ebpf
            .map(maps::REDIRECT_ERRORS)
            .ok_or_else(|| anyhow!("no map {}", maps::REDIRECT_ERRORS))?;
        sum_redirect_errors(&aya::maps::PerCpuHashMap::<_, u32, RedirectErrors>::try_from(map)?)
    }

    /// Per-tenant counters summed over CPUs: `[class][slot]`.
    pub fn tenant_stats(&self, id: u32) -> Result<TenantStats> {
        let m: PerCpuArray<&MapData, TenantStats> = PerCpuArray::try_from(self.map_ref(maps::TENANT_STATS)?)?;
        let per_cpu = m.get(&id, 0)?;
        let mut out = [[0u64; TENANT_STAT_SLOTS]; CLASSES];
        for block in per_cpu.iter() {
            for (c, row) in block.iter().enumerate() {
                for (s, v) in row.iter().enumerate() {
                    out[c][s] += v;
                }
            }
        }
        Ok(out)
    }

    /// Zeroes the per-tenant counters of id `id` (for an id given to a new
    /// tenant).
    pub fn clear_tenant_stats(&mut self, id: u32) -> Result<()> {
        let n = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
        let mut m: PerCpuArray<&mut MapData, TenantStats> = PerCpuArray::try_from(self.map_mut(maps::TENANT_STATS)?)?;
        let zero = [[0u64; TENANT_STAT_SLOTS]; CLASSES];
        m.set(id, aya::maps::PerCpuValues::try_from(vec![zero; n])?, 0)?;
        Ok(())
    }
}

/// The counters of program `side`, read from the pinned map, with or
/// without an agent.
pub fn pinned_counters(pin_dir: &Path, side: u32) -> Result<Counters> {
    let path = map_pin(pin_dir, maps::COUNTERS);
    let data = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
    let map = aya::maps::Map::PerCpuArray(data);
    Counters::read(&PerCpuArray::<_, CounterBlock>::try_from(map)?, side)
}

/// `REDIRECT_ERRORS` summed over CPUs: frames added up, the last errno of
/// any CPU that has one.
pub fn sum_redirect_errors<T: std::borrow::Borrow<MapData>>(
    map: &aya::maps::PerCpuHashMap<T, u32, RedirectErrors>,
) -> Result<BTreeMap<u32, RedirectErrors>> {
    let mut out = BTreeMap::new();
    for kv in map.iter() {
        let (ifindex, per_cpu) = kv.context("reading REDIRECT_ERRORS")?;
        let mut sum = RedirectErrors::default();
        for e in per_cpu.iter() {
            sum.frames += e.frames;
            if e.last_errno != 0 {
                sum.last_errno = e.last_errno;
            }
        }
        out.insert(ifindex, sum);
    }
    Ok(out)
}

impl Pins {
    /// Tenant `id`'s counters, summed over CPUs: `[class][slot]`.
    pub fn tenant_stats(&self, id: u32) -> Result<TenantStats> {
        let m: PerCpuArray<_, TenantStats> = PerCpuArray::try_from(Map::PerCpuArray(self.map(maps::TENANT_STATS)?))?;
        Ok(sum_tenant_stats(&m, id)?)
    }

    /// The counters of each tenant of `ids`, in that order, through one
    /// descriptor of `TENANT_STATS` (for many tenants at once).
    pub fn tenant_stats_of(&self, ids: &[u32]) -> Result<Vec<TenantStats>> {
        let m: PerCpuArray<_, TenantStats> = PerCpuArray::try_from(Map::PerCpuArray(self.map(maps::TENANT_STATS)?))?;
        ids.iter()
            .map(|&id| sum_tenant_stats(&m, id).with_context(|| format!("reading TENANT_STATS[{id}]")))
            .collect()
    }

    /// The global counters of program `side` (`SIDE_UPLINK`, `SIDE_FABRIC`).
    pub fn counters(&self, side: u32) -> Result<Counters> {
        let m = PerCpuArray::<_, CounterBlock>::try_from(Map::PerCpuArray(self.map(maps::COUNTERS)?))?;
        Counters::read(&m, side)
    }

    /// The redirects the kernel refused, by target ifindex (none when the
    /// pins were made before they were counted).
    pub fn redirect_errors(&self) -> Result<BTreeMap<u32, RedirectErrors>> {
        if !self.has(maps::REDIRECT_ERRORS) {
            return Ok(BTreeMap::new());
        }
        let m =
            PerCpuHashMap::<_, u32, RedirectErrors>::try_from(Map::PerCpuHashMap(self.map(maps::REDIRECT_ERRORS)?))?;
        sum_redirect_errors(&m)
    }

    /// [`Pins::redirect_errors`] as an operator reads them: which of the
    /// host's interfaces, its name in the calling thread's namespace, the
    /// kernel's reason.
    pub fn redirect_failures(&self) -> Result<Vec<RedirectFailure>> {
        let host = self.host()?;
        Ok(self
            .redirect_errors()?
            .into_iter()
            .map(|(ifindex, e)| RedirectFailure {
                ifindex,
                role: if ifindex == 0 {
                    None
                } else if ifindex == host.uplink_ifindex {
                    Some("uplink")
                } else if ifindex == host.fabric_ifindex {
                    Some("fabric")
                } else {
                    None
                },
                interface: crate::agent::sys::ifname(ifindex),
                frames: e.frames,
                last_error: errno_text(e.last_errno),
            })
            .collect())
    }
}

/// Frames the kernel refused to deliver into one interface after a
/// program redirected them there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RedirectFailure {
    /// 0: a target that is not an interface index (a device map).
    pub ifindex: u32,
    /// `uplink` or `fabric` when it is one of the host's interfaces.
    pub role: Option<&'static str>,
    /// Its name in the reader's network namespace.
    pub interface: Option<String>,
    pub frames: u64,
    /// The kernel's reason for the last one.
    pub last_error: String,
}

impl RedirectFailure {
    /// `fabric (eth1, ifindex 3)`, with what is known.
    pub fn label(&self) -> String {
        let name = self.interface.as_deref().unwrap_or("?");
        match self.role {
            Some(r) => format!("{r} ({name}, ifindex {})", self.ifindex),
            None => format!("{name} (ifindex {})", self.ifindex),
        }
    }
}

/// An errno as its symbol and text: `EOPNOTSUPP: Operation not supported`.
pub fn errno_text(errno: u32) -> String {
    let sym = match errno as i32 {
        0 => return String::new(),
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENETDOWN => "ENETDOWN",
        libc::EINVAL => "EINVAL",
        libc::ENXIO => "ENXIO",
        libc::ENOSPC => "ENOSPC",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::ENODEV => "ENODEV",
        _ => "",
    };
    let text = io::Error::from_raw_os_error(errno as i32).to_string();
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    if sym.is_empty() { text } else { format!("{sym}: {text}") }
}

/// Sums a tenant's per-CPU counters (live map or a private copy).
pub fn sum_tenant_stats<T: std::borrow::Borrow<MapData>>(
    m: &PerCpuArray<T, TenantStats>,
    id: u32,
) -> Result<TenantStats, aya::maps::MapError> {
    let mut out = [[0u64; TENANT_STAT_SLOTS]; CLASSES];
    for block in m.get(&id, 0)?.iter() {
        for (c, row) in block.iter().enumerate() {
            for (s, v) in row.iter().enumerate() {
                out[c][s] += v;
            }
        }
    }
    Ok(out)
}

/// One class's counters of a tenant, decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClassStats {
    pub steered_packets: u64,
    pub steered_bytes: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
    /// Drop reason word → packets; only reasons that counted.
    pub dropped: BTreeMap<&'static str, u64>,
}

/// A tenant's counters by class word (`https`, `jms`, `none`).
pub fn class_stats(s: &TenantStats) -> BTreeMap<&'static str, ClassStats> {
    (0..CLASSES as u8)
        .map(|c| {
            let row = &s[c as usize];
            let dropped: BTreeMap<&'static str, u64> = DropReason::ALL
                .iter()
                .filter(|r| row[r.slot()] != 0)
                .map(|r| (r.name(), row[r.slot()]))
                .collect();
            (
                class_name(c),
                ClassStats {
                    steered_packets: row[STEERED_PACKETS],
                    steered_bytes: row[STEERED_BYTES],
                    dropped_packets: dropped.values().sum(),
                    dropped_bytes: row[DROPPED_BYTES],
                    dropped,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane_common::types::CLASS_HTTPS;

    #[test]
    fn class_stats_name_the_reasons_that_counted() {
        let mut s = [[0u64; TENANT_STAT_SLOTS]; CLASSES];
        s[CLASS_HTTPS as usize][STEERED_PACKETS] = 3;
        s[CLASS_HTTPS as usize][DropReason::NotAllowed.slot()] = 2;
        s[CLASS_HTTPS as usize][DROPPED_BYTES] = 120;
        let c = class_stats(&s);
        assert_eq!(c["https"].steered_packets, 3);
        assert_eq!(c["https"].dropped_packets, 2);
        assert_eq!(c["https"].dropped.get("not_allowed"), Some(&2));
        assert_eq!(c["jms"], ClassStats::default());
    }
}
