//! Outbound source NAT as the tests and benchmarks see it: the fixture
//! tenants' addresses (`inbound_cases::tenants`: acme, beta, gamma), the
//! VXLAN frame a tenant machine sends this host, what leaves the uplink
//! once translated, and what carwash sends a machine.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use carwash_policy::{Backend, Tenant};
use dataplane::tables::DEFAULT_SNAT_PORTS;
use dataplane_common::hash::{flow_hash, vxlan_source_port};

use crate::fabric::{FABRIC_MAC, HOST_VTEP, INTERNET_ROUTER_MAC, ROUTER_MAC, UPLINK_MAC, vtep_mac};
use crate::inbound_cases::addr16;
use crate::packets::{ip_of, vxlan_frame, with_macs};

/// Acme's machines' addresses, and the tenants' egress IPs.
pub const ACME_VM4: Ipv4Addr = Ipv4Addr::new(10, 101, 0, 5);
pub const ACME_VM6: Ipv6Addr = Ipv6Addr::new(0xfd10, 0x101, 0, 0, 0, 0, 0, 5);
pub const ACME_EGRESS4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 200);
pub const ACME_EGRESS6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x10, 0, 0, 0, 0, 0x200);
pub const BETA_EGRESS4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 201);
/// Inside beta's egress allowlist (198.18.0.0/15) and acme's (everything).
pub const PARTNER4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
pub const PARTNER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xfeed, 0, 0, 0, 0, 10);
/// A router on the way to the partner.
pub const ROUTER4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xfeed, 0, 0, 0, 0, 1);

/// The VXLAN frame a tenant machine sends to this host with `inner` (a
/// frame whose Ethernet header is replaced by the machine's).
pub fn from_machine(t: &Tenant, m: &Backend, inner: &[u8]) -> Vec<u8> {
    vxlan_frame(
        vtep_mac(m.vtep),
        FABRIC_MAC,
        m.vtep,
        HOST_VTEP,
        54321,
        t.vni,
        m.mac.0,
        ROUTER_MAC,
        ip_of(inner),
    )
}

/// The same from a VTEP and VNI of the test's choosing (spoofing).
pub fn from_vtep(vtep: Ipv4Addr, vni: u32, inner: &[u8]) -> Vec<u8> {
    vxlan_frame(
        vtep_mac(vtep),
        FABRIC_MAC,
        vtep,
        HOST_VTEP,
        54321,
        vni,
        [2, 0, 0, 0, 0, 9],
        ROUTER_MAC,
        ip_of(inner),
    )
}

/// What leaves the uplink for the internet: `frame`'s IP packet from the
/// uplink to the internet router.
pub fn to_internet(frame: &[u8]) -> Vec<u8> {
    with_macs(frame, INTERNET_ROUTER_MAC, UPLINK_MAC)
}

/// What carwash sends a machine: `frame`'s IP packet, encapsulated to it,
/// the tunnel's source port from `hash`.
pub fn to_machine(t: &Tenant, m: &Backend, hash: u32, frame: &[u8]) -> Vec<u8> {
    vxlan_frame(
        FABRIC_MAC,
        vtep_mac(m.vtep),
        HOST_VTEP,
        m.vtep,
        vxlan_source_port(hash),
        t.vni,
        ROUTER_MAC,
        m.mac.0,
        ip_of(frame),
    )
}

/// The port the data path picks for a new flow when it is free: the
/// flow's hash into the range.
pub fn first_port(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8, range: (u16, u16)) -> u16 {
    let n = (range.1 - range.0) as u32 + 1;
    range.0 + (flow_hash(&addr16(src), &addr16(dst), sport, dport, proto) % n) as u16
}

/// The host's default SNAT port range.
pub fn ports() -> (u16, u16) {
    DEFAULT_SNAT_PORTS
}

/// An IPv4 address as an `IpAddr`.
pub fn v4(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

/// An IPv6 address as an `IpAddr`.
pub fn v6(a: Ipv6Addr) -> IpAddr {
    IpAddr::V6(a)
}
