//! The host's maps: its settings for the programs (`CONFIG`: the VTEP, the
//! fabric and uplink interfaces, the source NAT ports, carwash's clock),
//! written by the agent and read through the pins; where the health probes
//! come from (`PROBE_HOST`) and where their answers go (`PROBE_REPLIES`); and the next hops the programs' FIB lookups
//! could not resolve (`UNRESOLVED`), which the agent takes to ask the
//! kernel for their neighbours.
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result, anyhow};
use aya::maps::{Array, HashMap, Map, MapData};
use dataplane_common::{
    LAYOUT_VERSION, maps,
    types::{FAMILY_V6, HostConfig, ProbeHost},
};

use crate::Dataplane;
use crate::maps::conntrack::ip;
use crate::maps::pins::Pins;

/// Host settings for the programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostParams {
    pub vtep: Ipv4Addr,
    pub router_mac: [u8; 6],
    pub fabric_ifindex: u32,
    pub fabric_mtu: u16,
    pub uplink_ifindex: u32,
    /// The source NAT port range, inclusive.
    pub snat_ports: (u16, u16),
}

/// The default source NAT port range (`[snat] port_range`).
pub const DEFAULT_SNAT_PORTS: (u16, u16) = (20000, 59999);

impl Dataplane {
    /// Writes the host settings; until then VIP traffic is dropped (`no_config`).
    pub fn set_host(&mut self, p: &HostParams) -> Result<()> {
        let ns_per_tick = self.kernel_tick_ns().context("measuring the kernel's tick")?;
        let mut cfg: Array<_, HostConfig> = Array::try_from(self.map_mut(maps::CONFIG)?)?;
        cfg.set(
            0,
            HostConfig {
                layout_version: LAYOUT_VERSION,
                vtep: p.vtep.octets(),
                router_mac: p.router_mac,
                fabric_mtu: p.fabric_mtu,
                fabric_ifindex: p.fabric_ifindex,
                uplink_ifindex: p.uplink_ifindex,
                ready: 1,
                snat_port_lo: p.snat_ports.0,
                snat_port_hi: p.snat_ports.1,
                ns_per_tick,
            },
            0,
        )?;
        Ok(())
    }

    /// The host settings as the programs read them.
    pub fn host_settings(&self) -> Result<HostConfig> {
        let cfg: Array<_, HostConfig> = Array::try_from(self.map_ref(maps::CONFIG)?)?;
        Ok(cfg.get(&0, 0)?)
    }

    /// Sets the tick length of carwash's clock (`HostConfig::ns_per_tick`,
    /// which [`Dataplane::set_host`] measures). The programs read the clock
    /// as `ticks × ns_per_tick`, so a nanosecond more per tick moves it
    /// [`Dataplane::kernel_ticks`] nanoseconds ahead at once: how tests let
    /// lifetimes pass for the data path without waiting for them.
    pub fn set_ns_per_tick(&mut self, ns: u32) -> Result<()> {
        let mut c = self.host_settings()?;
        c.ns_per_tick = ns;
        let mut cfg: Array<_, HostConfig> = Array::try_from(self.map_mut(maps::CONFIG)?)?;
        cfg.set(0, c, 0)?;
        Ok(())
    }
}

/// Takes the next hops the programs' FIB lookups found unresolved
/// (`UNRESOLVED`): interface and neighbour address, each once.
impl Dataplane {
    pub fn take_unresolved(&mut self) -> Result<Vec<(u32, IpAddr)>> {
        use dataplane_common::types::NextHopKey;
        let map = self
            .ebpf
            .map_mut(maps::UNRESOLVED)
            .ok_or_else(|| anyhow!("no map {} in the eBPF object", maps::UNRESOLVED))?;
        let mut m: HashMap<&mut MapData, NextHopKey, u64> = HashMap::try_from(map)?;
        let keys: Vec<NextHopKey> = m.keys().filter_map(|k| k.ok()).collect();
        let mut out = Vec::new();
        for k in keys {
            let _ = m.remove(&k);
            out.push((k.ifindex, ip(&k.addr, if k.family != 0 { FAMILY_V6 } else { 4 })));
        }
        Ok(out)
    }
}

impl Dataplane {
    /// Tells the fabric program the probes' source address and the MAC to
    /// hand their replies to the stack with.
    pub fn set_probe_host(&mut self, host: &ProbeHost) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(maps::PROBE_HOST)
            .ok_or_else(|| anyhow!("no map {}", maps::PROBE_HOST))?;
        let mut a: Array<&mut MapData, ProbeHost> = Array::try_from(map)?;
        a.set(0, host, 0)?;
        Ok(())
    }

    /// The counts of the resets the fabric's programs wrote and sent
    /// (`maps::PROBE_RESETS`), taken out of the object: the checker
    /// compares them.
    pub fn take_probe_resets(&mut self) -> Result<aya::maps::PerCpuArray<MapData, u64>> {
        let map = self
            .ebpf
            .take_map(maps::PROBE_RESETS)
            .ok_or_else(|| anyhow!("no map {} in the eBPF object (taken already?)", maps::PROBE_RESETS))?;
        Ok(aya::maps::PerCpuArray::try_from(map)?)
    }

    /// The ring buffer of the answers to the half-open probes, taken out
    /// of the object: the checker owns it.
    pub fn take_probe_replies(&mut self) -> Result<aya::maps::RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(maps::PROBE_REPLIES)
            .ok_or_else(|| anyhow!("no map {} in the eBPF object (taken already?)", maps::PROBE_REPLIES))?;
        Ok(aya::maps::RingBuf::try_from(map)?)
    }
}

impl Pins {
    /// The host settings the agent wrote (`ready` 0 before it did).
    pub fn host(&self) -> Result<HostConfig> {
        Array::<_, HostConfig>::try_from(Map::Array(self.map(maps::CONFIG)?))?
            .get(&0, 0)
            .context("reading CONFIG")
    }
}
