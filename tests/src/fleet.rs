//! Two hosts of a fleet as the fixture tests and benchmarks see them: two
//! loads of the programs in one fixture namespace, with disjoint
//! source-NAT port blocks and each other's own fabric addresses; a flow one
//! host translated, and the frames of its reply on the way through the
//! other.
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Result, ensure};
use carwash_policy::MacAddr;
use dataplane::Dataplane;
use dataplane::cluster::ClusterConfig;
use dataplane_common::hash::{flow_hash, vxlan_source_port};
use dataplane_common::programs;
use dataplane_common::types::RELAY_VNI;

use crate::fabric::{FABRIC_MAC, FabricNs, ROUTER_MAC, vtep_mac};
use crate::fixture::XDP_REDIRECT;
use crate::inbound_cases::{addr16, tenants};
use crate::outbound::{ACME_EGRESS4, ACME_VM4, PARTNER4, from_machine, ports};
use crate::packets::{ip_of, udp4, vxlan_frame};

pub const HOST_A: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 101);
pub const HOST_B: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 102);
pub const STRANGER: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 103);

/// Host `index` (0: A, 1: B) of a fleet of two with derived blocks.
pub fn cluster(index: u32) -> ClusterConfig {
    ClusterConfig {
        index,
        count: Some(2),
        blocks: Vec::new(),
        peers: vec![HOST_A, HOST_B],
        route_table: 4242,
    }
}

/// The fixture namespace `fab` made to reach both hosts' (and a
/// stranger's) fabric addresses.
pub fn reach_hosts(fab: &FabricNs) -> Result<()> {
    for h in [HOST_A, HOST_B, STRANGER] {
        fab.ns.neigh("fabric", &h.to_string(), MacAddr(vtep_mac(h)))?;
    }
    Ok(())
}

/// One host of the fleet: the fixture tenants, this host's block.
pub fn host(fab: &FabricNs, index: u32) -> Result<Dataplane> {
    let c = cluster(index);
    let range = ports();
    let mut params = fab.host_params();
    params.snat_ports = c.blocks(range)?.own();
    let mut dp = Dataplane::load(None)?;
    dp.set_host(&params)?;
    dp.set_fleet(&c.fleet(range)?)?;
    for (i, t) in tenants().iter().enumerate() {
        dp.install_tenant(i as u32 + 1, t)?;
    }
    Ok(dp)
}

/// A flow of acme's first connector that `b` translates (run inside the
/// fixture namespace): the port it got.
pub fn open_flow(b: &Dataplane) -> Result<u16> {
    let ts = tenants();
    let acme = &ts[0];
    let out = from_machine(acme, &acme.connectors[0], &udp4(ACME_VM4, PARTNER4, 40000, 53, b"q"));
    let (action, sent) = b.run(programs::FABRIC, &out)?;
    ensure!(action == XDP_REDIRECT, "outbound verdict {action}");
    Ok(u16::from_be_bytes([sent[14 + 20], sent[14 + 21]]))
}

/// The reply to the flow of [`open_flow`] as it arrives from the internet.
pub fn reply(port: u16) -> Vec<u8> {
    udp4(PARTNER4, ACME_EGRESS4, 53, port, b"answer")
}

/// The reply's flow hash (the tunnel source port of what carries it).
pub fn reply_hash(port: u16) -> u32 {
    flow_hash(
        &addr16(IpAddr::V4(PARTNER4)),
        &addr16(IpAddr::V4(ACME_EGRESS4)),
        53,
        port,
        17,
    )
}

/// What host A sends host B for a reply `frame`: the IP packet whole, in
/// VXLAN from A's own fabric address to B's.
pub fn relayed(frame: &[u8], hash: u32) -> Vec<u8> {
    vxlan_frame(
        FABRIC_MAC,
        vtep_mac(HOST_B),
        HOST_A,
        HOST_B,
        vxlan_source_port(hash),
        RELAY_VNI,
        ROUTER_MAC,
        [0; 6],
        ip_of(frame),
    )
}
