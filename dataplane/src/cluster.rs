//! Several carwash hosts behind ECMP (`[cluster]` in the host config).
//!
//! Inbound traffic needs no shared state: every host builds the same
//! consistent-hash tables from the same policy. Outbound traffic does: a
//! reply must reach the host that translated its flow. Each host therefore
//! owns a disjoint block of every egress IP's port range, so that the port
//! of a reply names the host that allocated it. The blocks are either
//! derived (`index` and `count`: equal shares of `snat.port_range`, the last
//! one taking the remainder) or given (`blocks`, one `LOW-HIGH` per host,
//! the same list on every host).
use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use dataplane_common::types::{Fleet, FleetPeer, MAX_PEERS};
use serde::{Deserialize, Serialize};

pub use crate::maps::fleet::relay_stats;

/// The fewest ports a host's block may have: below this, a host runs out of
/// ports for one destination after a handful of connections.
pub const MIN_BLOCK_PORTS: u32 = 256;

/// The kernel routing table the agent keeps its announcements in, unless
/// `[cluster] route_table` says otherwise.
pub const DEFAULT_ROUTE_TABLE: u32 = 4242;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This host's place in the fleet, from 0.
    pub index: u32,
    /// The number of hosts, when the blocks are derived.
    #[serde(default)]
    pub count: Option<u32>,
    /// Every host's block, `LOW-HIGH` inclusive, by index, when given.
    #[serde(default)]
    pub blocks: Vec<String>,
    /// Every host's own fabric address, by index: where a reply to another
    /// host's port is handed.
    #[serde(default)]
    pub peers: Vec<Ipv4Addr>,
    /// The kernel routing table of the announcements (what the BGP daemon
    /// learns from).
    #[serde(default = "default_route_table")]
    pub route_table: u32,
}

fn default_route_table() -> u32 {
    DEFAULT_ROUTE_TABLE
}

/// The port blocks of a fleet, and which one is this host's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocks {
    pub index: usize,
    /// `(low, high)` inclusive, by host index.
    pub list: Vec<(u16, u16)>,
}

impl Blocks {
    /// This host's block.
    pub fn own(&self) -> (u16, u16) {
        self.list[self.index]
    }

    /// The index of the host whose block holds `port`.
    pub fn owner(&self, port: u16) -> Option<usize> {
        self.list.iter().position(|&(lo, hi)| (lo..=hi).contains(&port))
    }
}

fn parse_block(s: &str) -> Result<(u16, u16)> {
    let (lo, hi) = s
        .split_once('-')
        .with_context(|| format!("cluster.blocks: {s:?}: expected LOW-HIGH"))?;
    let lo: u16 = lo
        .trim()
        .parse()
        .with_context(|| format!("cluster.blocks: {s:?}: bad low port"))?;
    let hi: u16 = hi
        .trim()
        .parse()
        .with_context(|| format!("cluster.blocks: {s:?}: bad high port"))?;
    if lo > hi {
        bail!("cluster.blocks: {s:?}: LOW is above HIGH");
    }
    Ok((lo, hi))
}

impl ClusterConfig {
    /// The blocks within `range` (`snat.port_range`), validated: disjoint,
    /// inside the range, none smaller than [`MIN_BLOCK_PORTS`], this host's
    /// index among them, one peer per block if peers are given.
    pub fn blocks(&self, range: (u16, u16)) -> Result<Blocks> {
        let (lo, hi) = (u32::from(range.0), u32::from(range.1));
        let list: Vec<(u16, u16)> = match (self.count, self.blocks.is_empty()) {
            (Some(_), false) => bail!("cluster: give either count or blocks, not both"),
            (None, true) => bail!("cluster: give count (blocks derived from snat.port_range) or blocks"),
            (Some(0), true) => bail!("cluster.count must be at least 1"),
            (Some(n), true) => {
                let share = (hi - lo + 1) / n;
                if share < MIN_BLOCK_PORTS {
                    bail!(
                        "cluster: snat.port_range {}-{} gives {n} hosts {share} ports each; at least {MIN_BLOCK_PORTS} \
                         are needed (widen the range or use fewer hosts)",
                        range.0,
                        range.1
                    );
                }
                (0..n)
                    .map(|i| {
                        let b_lo = lo + i * share;
                        let b_hi = if i + 1 == n { hi } else { b_lo + share - 1 };
                        (b_lo as u16, b_hi as u16)
                    })
                    .collect()
            }
            (None, false) => self.blocks.iter().map(|b| parse_block(b)).collect::<Result<Vec<_>>>()?,
        };
        for (i, &(b_lo, b_hi)) in list.iter().enumerate() {
            if u32::from(b_lo) < lo || u32::from(b_hi) > hi {
                bail!(
                    "cluster: block {i} ({b_lo}-{b_hi}) lies outside snat.port_range {}-{}",
                    range.0,
                    range.1
                );
            }
            let size = u32::from(b_hi) - u32::from(b_lo) + 1;
            if size < MIN_BLOCK_PORTS {
                bail!("cluster: block {i} ({b_lo}-{b_hi}) has {size} ports; at least {MIN_BLOCK_PORTS} are needed");
            }
            for (j, &(o_lo, o_hi)) in list.iter().enumerate().skip(i + 1) {
                if b_lo <= o_hi && o_lo <= b_hi {
                    bail!("cluster: blocks {i} ({b_lo}-{b_hi}) and {j} ({o_lo}-{o_hi}) overlap");
                }
            }
        }
        let index = self.index as usize;
        if index >= list.len() {
            bail!(
                "cluster.index {} is not below the number of hosts ({})",
                self.index,
                list.len()
            );
        }
        if !self.peers.is_empty() && self.peers.len() != list.len() {
            bail!(
                "cluster.peers names {} hosts, the blocks {}: one fabric address per host, by index",
                self.peers.len(),
                list.len()
            );
        }
        if matches!(self.route_table, 0 | 253..=255) {
            bail!(
                "cluster.route_table {} is one of the kernel's own (unspec, default, main, local)",
                self.route_table
            );
        }
        Ok(Blocks { index, list })
    }
}

impl ClusterConfig {
    /// What the data path needs to pass replies on: every host's fabric
    /// address and block. A fleet without `peers` passes nothing on (each
    /// host then drops the replies of the others' ports).
    pub fn fleet(&self, range: (u16, u16)) -> Result<Fleet> {
        let blocks = self.blocks(range)?;
        let mut f = Fleet::default();
        if self.peers.is_empty() {
            return Ok(f);
        }
        if blocks.list.len() > MAX_PEERS {
            bail!(
                "cluster: {} hosts; the data path knows at most {MAX_PEERS}",
                blocks.list.len()
            );
        }
        f.own_addr = self.peers[blocks.index].octets();
        f.n_peers = blocks.list.len() as u32;
        for (i, (&(lo, hi), addr)) in blocks.list.iter().zip(&self.peers).enumerate() {
            f.peers[i] = FleetPeer {
                addr: addr.octets(),
                port_lo: lo,
                port_hi: hi,
            };
        }
        Ok(f)
    }
}

/// This host's place in the fleet and its announcements, for `carwash
/// status` and the metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub index: u32,
    pub hosts: u32,
    /// This host's source-NAT port block, inclusive.
    pub block: (u16, u16),
    pub route_table: u32,
    /// Routes in `route_table` for the VIPs and egress IPs in force.
    pub announced_routes: usize,
    /// The policy generation they are of (0: nothing announced).
    pub announced_generation: u64,
    /// Replies passed to the host that owns their port.
    #[serde(default)]
    pub handoffs_sent: u64,
    /// Replies another host passed to this one.
    #[serde(default)]
    pub handoffs_received: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HostConfig;

    const BASE: &str = "uplink = \"eth0\"\nvtep = \"10.200.0.1\"\n";

    fn parse(extra: &str) -> Result<HostConfig> {
        HostConfig::parse(&format!("{BASE}{extra}"))
    }

    #[test]
    fn index_and_count_split_the_range_disjointly_and_completely() {
        let mut seen = Vec::new();
        for i in 0..3 {
            let c = parse(&format!("[cluster]\nindex = {i}\ncount = 3\n")).unwrap();
            seen.push(c.snat_ports().unwrap());
        }
        assert_eq!(seen, vec![(20000, 33332), (33333, 46665), (46666, 59999)]);
        let c = parse("[cluster]\nindex = 1\ncount = 3\n").unwrap();
        let b = c.cluster.as_ref().unwrap().blocks(c.snat.ports().unwrap()).unwrap();
        assert_eq!(b.owner(20000), Some(0));
        assert_eq!(b.owner(33333), Some(1));
        assert_eq!(b.owner(59999), Some(2));
        assert_eq!(b.owner(19999), None);
        assert_eq!(c.cluster.unwrap().route_table, DEFAULT_ROUTE_TABLE);
    }

    #[test]
    fn a_host_of_its_own_keeps_the_whole_range() {
        assert_eq!(parse("").unwrap().snat_ports().unwrap(), (20000, 59999));
    }

    #[test]
    fn explicit_blocks_are_taken_as_given() {
        let c = parse("[cluster]\nindex = 1\nblocks = [\"20000-29999\", \"40000-49999\"]\n").unwrap();
        assert_eq!(c.snat_ports().unwrap(), (40000, 49999));
    }

    #[test]
    fn bad_clusters_are_refused_with_the_reason() {
        let cases = [
            (
                "[cluster]\nindex = 0\nblocks = [\"20000-30000\", \"30000-39999\"]\n",
                "overlap",
            ),
            (
                "[cluster]\nindex = 0\nblocks = [\"20000-20100\", \"30000-39999\"]\n",
                "101 ports",
            ),
            (
                "[cluster]\nindex = 0\nblocks = [\"10000-20100\"]\n",
                "outside snat.port_range",
            ),
            ("[cluster]\nindex = 3\ncount = 3\n", "not below"),
            ("[cluster]\nindex = 0\ncount = 0\n", "at least 1"),
            ("[cluster]\nindex = 0\n", "give count"),
            (
                "[cluster]\nindex = 0\ncount = 2\nblocks = [\"20000-29999\"]\n",
                "not both",
            ),
            (
                "[snat]\nport_range = \"20000-20999\"\n[cluster]\nindex = 0\ncount = 8\n",
                "125 ports each",
            ),
            (
                "[cluster]\nindex = 0\ncount = 2\npeers = [\"10.0.0.1\"]\n",
                "one fabric address per host",
            ),
            ("[cluster]\nindex = 0\ncount = 2\nroute_table = 254\n", "kernel's own"),
            ("[cluster]\nindex = 0\nblocks = [\"30000-2\"]\n", "LOW is above HIGH"),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err();
            assert!(format!("{e:#}").contains(want), "{text}: {e:#}");
        }
    }
}
