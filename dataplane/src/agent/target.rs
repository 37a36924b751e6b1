//! What the checker probes for one machine ([`Target`]): shared by the
//! checker (`agent::checker`) and its half-open prober
//! (`agent::syn_probe`), which import it from here.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use dataplane_common::types::probe_mark;

use crate::health::Machine;
use crate::health::store::slot;

/// What to probe for one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tenant: u32,
    pub machine: Machine,
    /// The VIP and port clients use.
    pub addr: SocketAddrV4,
    pub tls: bool,
    pub timeout: Duration,
    pub interval_ms: u64,
    /// The tunnel to the machine: the tenant's VNI, the machine's VTEP and
    /// inner MAC (the half-open probes write their packets whole).
    pub vni: u32,
    pub vtep: Ipv4Addr,
    pub mac: [u8; 6],
}

impl Target {
    pub fn mark(&self) -> u32 {
        probe_mark(self.tenant, slot(self.machine) as u32)
    }
}
