//! The packet `carwash trace` runs the program on, built with etherparse
//! from the flags: as it arrives on the uplink from the internet, or as a
//! VPC machine's tunnel sends it to the fabric.
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Result, bail};
use dataplane_common::types::VXLAN_PORT;
use etherparse::{IpHeaders, IpNumber, Ipv4Header, PacketBuilder, PacketBuilderStep, TcpOptionElement};
use serde::Serialize;

/// The transport protocol of the traced packet.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
    /// An echo request (ICMPv6 for IPv6 addresses); the ports are not used.
    Icmp,
}

impl Proto {
    /// The IP protocol number of a packet between addresses of this family.
    pub fn number(self, v6: bool) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Icmp if v6 => 58,
            Proto::Icmp => 1,
        }
    }
}

/// The flow and shape of the inner (IP) packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: Proto,
    /// A TCP SYN (else an ACK, with PSH when it carries data).
    pub syn: bool,
    /// The MSS option of a SYN.
    pub mss: Option<u16>,
    /// Length of the IP packet, headers included; the payload fills it up.
    pub len: Option<usize>,
    /// IPv4 "don't fragment" (what TCP stacks set for path MTU discovery).
    pub df: bool,
}

/// MAC addresses of the uplink frame: the traced program does not look at
/// them, so they are fixed stand-ins (locally administered).
pub const CLIENT_SIDE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const UPLINK_SIDE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// What a SYN announces by default: an Ethernet host's MSS (1500 − IP − TCP).
pub fn default_mss(v6: bool) -> u16 {
    if v6 { 1440 } else { 1460 }
}

fn serialize<T>(step: PacketBuilderStep<T>, flow: &Flow, headers: usize, write: WriteFn<T>) -> Result<Vec<u8>>
where
    PacketBuilderStep<T>: Sized,
{
    let payload = match flow.len {
        Some(len) if len < headers => bail!("--len {len} is shorter than the packet's headers ({headers} bytes)"),
        Some(len) if len > 65535 => bail!("--len {len} is longer than an IP packet can be (65535 bytes)"),
        Some(len) => vec![0x5a; len - headers],
        None => Vec::new(),
    };
    let mut out = Vec::new();
    write(step, &mut out, &payload)?;
    Ok(out)
}

type WriteFn<T> = fn(PacketBuilderStep<T>, &mut Vec<u8>, &[u8]) -> Result<()>;

/// The flow as an Ethernet frame from `src_mac` to `dst_mac`.
pub fn frame(flow: &Flow, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Result<Vec<u8>> {
    let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
    let (ip, ip_len) = match (flow.src, flow.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = Ipv4Header::new(0, 64, IpNumber::TCP, s.octets(), d.octets())?;
            h.dont_fragment = flow.df;
            (eth.ip(IpHeaders::Ipv4(h, Default::default())), 20)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => (eth.ipv6(s.octets(), d.octets(), 64), 40),
        (s, d) => bail!("--src {s} and --dst {d} are of different address families"),
    };
    let v6 = flow.src.is_ipv6();
    match flow.proto {
        Proto::Tcp => {
            let tcp = ip.tcp(flow.sport, flow.dport, 1000, 64240);
            let (tcp, opts) = if flow.syn {
                let mss = flow.mss.unwrap_or(default_mss(v6));
                (tcp.syn().options(&[TcpOptionElement::MaximumSegmentSize(mss)])?, 4)
            } else {
                let tcp = tcp.ack(1);
                let carries_data = flow.len.is_some_and(|l| l > ip_len + 20);
                (if carries_data { tcp.psh() } else { tcp }, 0)
            };
            serialize(tcp, flow, ip_len + 20 + opts, |s, out, p| Ok(s.write(out, p)?))
        }
        Proto::Udp => serialize(ip.udp(flow.sport, flow.dport), flow, ip_len + 8, |s, out, p| {
            Ok(s.write(out, p)?)
        }),
        Proto::Icmp if v6 => serialize(ip.icmpv6_echo_request(flow.sport, 1), flow, ip_len + 8, |s, out, p| {
            Ok(s.write(out, p)?)
        }),
        Proto::Icmp => serialize(ip.icmpv4_echo_request(flow.sport, 1), flow, ip_len + 8, |s, out, p| {
            Ok(s.write(out, p)?)
        }),
    }
}

/// The outer headers of a frame a VPC machine's VXLAN device sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    /// The machine's VTEP and MAC.
    pub vtep: Ipv4Addr,
    pub mac: [u8; 6],
    /// The carwash host's VTEP and the router MAC the machine sends to.
    pub host_vtep: Ipv4Addr,
    pub router_mac: [u8; 6],
    pub vni: u32,
    /// Outer UDP source port.
    pub sport: u16,
}

/// `flow` as the machine's tunnel carries it: VXLAN over IPv4 (DF, TTL 64,
/// UDP checksum 0, as Linux sends it) to the host's VTEP, around an inner
/// frame from the machine's MAC to the router MAC.
pub fn vxlan(flow: &Flow, t: &Tunnel) -> Result<Vec<u8>> {
    let inner = frame(flow, t.mac, t.router_mac)?;
    if t.vni > 0x00ff_ffff {
        bail!("VNI {} does not fit 24 bits", t.vni);
    }
    let mut vx = Vec::with_capacity(8 + inner.len());
    vx.extend_from_slice(&[0x08, 0, 0, 0]);
    vx.extend_from_slice(&t.vni.to_be_bytes()[1..]);
    vx.push(0);
    vx.extend_from_slice(&inner);
    let mut ip = Ipv4Header::new(0, 64, IpNumber::UDP, t.vtep.octets(), t.host_vtep.octets())?;
    ip.dont_fragment = true;
    let step = PacketBuilder::ethernet2(t.mac, t.router_mac)
        .ip(IpHeaders::Ipv4(ip, Default::default()))
        .udp(t.sport, VXLAN_PORT);
    let mut out = Vec::with_capacity(step.size(vx.len()));
    step.write(&mut out, &vx)?;
    // Linux VXLAN devices send IPv4 UDP without a checksum; so does carwash.
    let udp_csum = 14 + 20 + 6;
    out[udp_csum..udp_csum + 2].copy_from_slice(&[0, 0]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetHeaders, PacketHeaders, TransportHeader};

    fn flow(src: &str, dst: &str) -> Flow {
        Flow {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport: 40000,
            dport: 443,
            proto: Proto::Tcp,
            syn: false,
            mss: None,
            len: None,
            df: true,
        }
    }

    #[test]
    fn len_is_the_ip_packet_length() {
        let f = Flow {
            len: Some(1451),
            ..flow("198.51.100.10", "203.0.113.10")
        };
        let b = frame(&f, CLIENT_SIDE_MAC, UPLINK_SIDE_MAC).unwrap();
        assert_eq!(b.len(), 14 + 1451);
        let h = PacketHeaders::from_ethernet_slice(&b).unwrap();
        let Some(NetHeaders::Ipv4(ip, _)) = h.net else { panic!() };
        assert_eq!(ip.total_len, 1451);
        assert!(ip.dont_fragment);
        let Some(TransportHeader::Tcp(tcp)) = h.transport else {
            panic!()
        };
        assert!(tcp.psh && tcp.ack && !tcp.syn);
    }

    #[test]
    fn a_syn_announces_an_mss() {
        let f = Flow {
            syn: true,
            ..flow("2001:db8:beef::10", "2001:db8:10::10")
        };
        let b = frame(&f, CLIENT_SIDE_MAC, UPLINK_SIDE_MAC).unwrap();
        let h = PacketHeaders::from_ethernet_slice(&b).unwrap();
        let Some(TransportHeader::Tcp(tcp)) = h.transport else {
            panic!()
        };
        assert!(tcp.syn);
        let mss: Vec<_> = tcp.options_iterator().filter_map(|o| o.ok()).collect();
        assert_eq!(mss, vec![TcpOptionElement::MaximumSegmentSize(1440)]);
    }

    #[test]
    fn too_short_and_mixed_families_are_refused() {
        let f = Flow {
            len: Some(30),
            ..flow("198.51.100.10", "203.0.113.10")
        };
        let e = frame(&f, CLIENT_SIDE_MAC, UPLINK_SIDE_MAC).unwrap_err();
        assert!(
            e.to_string().contains("shorter than the packet's headers (40 bytes)"),
            "{e}"
        );
        let e = frame(&flow("198.51.100.10", "2001:db8::1"), CLIENT_SIDE_MAC, UPLINK_SIDE_MAC).unwrap_err();
        assert!(e.to_string().contains("different address families"), "{e}");
    }

    #[test]
    fn the_tunnel_wraps_the_inner_frame() {
        let f = flow("203.0.113.10", "198.51.100.10");
        let t = Tunnel {
            vtep: "10.200.1.10".parse().unwrap(),
            mac: [2, 0, 10, 200, 1, 10],
            host_vtep: "10.200.0.1".parse().unwrap(),
            router_mac: [2, 0, 10, 200, 0, 1],
            vni: 1001,
            sport: 50000,
        };
        let b = vxlan(&f, &t).unwrap();
        let h = PacketHeaders::from_ethernet_slice(&b).unwrap();
        let Some(TransportHeader::Udp(udp)) = h.transport else {
            panic!()
        };
        assert_eq!((udp.destination_port, udp.checksum), (4789, 0));
        assert_eq!(&b[42..50], &[0x08, 0, 0, 0, 0, 0x03, 0xe9, 0]);
        assert_eq!(&b[50..], frame(&f, t.mac, t.router_mac).unwrap().as_slice());
    }
}
