//! Test packets, built with etherparse so that headers, lengths and
//! checksums are right unless a test breaks them on purpose.
use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{PacketBuilder, PacketBuilderStep};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// The builder steps that end in a transport header: serialize with `payload`.
pub trait Bytes {
    fn bytes(self, payload: &[u8]) -> Vec<u8>;
}

macro_rules! bytes_impl {
    ($($t:ty),*) => {$(
        impl Bytes for PacketBuilderStep<$t> {
            fn bytes(self, payload: &[u8]) -> Vec<u8> {
                let mut v = Vec::with_capacity(self.size(payload.len()));
                self.write(&mut v, payload).expect("etherparse writes a valid packet");
                v
            }
        }
    )*};
}
bytes_impl!(
    etherparse::TcpHeader,
    etherparse::UdpHeader,
    etherparse::Icmpv4Header,
    etherparse::Icmpv6Header
);

fn eth() -> PacketBuilderStep<etherparse::Ethernet2Header> {
    PacketBuilder::ethernet2(CLIENT_MAC, HOST_MAC)
}

pub fn tcp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    eth()
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1000, 64240)
        .ack(1)
        .psh()
        .bytes(payload)
}

pub fn syn4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    eth()
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1000, 64240)
        .syn()
        .bytes(&[])
}

pub fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    eth()
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(sport, dport)
        .bytes(payload)
}

pub fn icmp4_echo(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> Vec<u8> {
    eth()
        .ipv4(src.octets(), dst.octets(), 64)
        .icmpv4_echo_request(id, seq)
        .bytes(b"ping")
}

pub fn tcp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    eth()
        .ipv6(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1000, 64240)
        .ack(1)
        .psh()
        .bytes(payload)
}

pub fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    eth()
        .ipv6(src.octets(), dst.octets(), 64)
        .udp(sport, dport)
        .bytes(payload)
}

pub fn icmp6_echo(src: Ipv6Addr, dst: Ipv6Addr, id: u16, seq: u16) -> Vec<u8> {
    eth()
        .ipv6(src.octets(), dst.octets(), 64)
        .icmpv6_echo_request(id, seq)
        .bytes(b"ping")
}

/// IPv6 TCP behind a hop-by-hop options header (a PadN option filling it).
pub fn tcp6_hop_by_hop(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    use etherparse::{IpHeaders, IpNumber, Ipv6Extensions, Ipv6Header, Ipv6RawExtHeader};
    let hbh =
        Ipv6RawExtHeader::new_raw(IpNumber::TCP, &[1, 4, 0, 0, 0, 0]).expect("6-byte payload");
    let header = Ipv6Header {
        hop_limit: 64,
        source: src.octets(),
        destination: dst.octets(),
        ..Default::default()
    };
    let exts = Ipv6Extensions {
        hop_by_hop_options: Some(hbh),
        ..Default::default()
    };
    eth()
        .ip(IpHeaders::Ipv6(header, exts))
        .tcp(sport, dport, 1000, 64240)
        .ack(1)
        .bytes(payload)
}

/// IPv4 TCP with one or two 802.1Q tags.
pub fn tcp4_vlan(tags: &[u16], src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    use etherparse::VlanId;
    let id = |v: u16| VlanId::try_new(v).expect("12-bit VLAN id");
    let b = match tags {
        [one] => eth().single_vlan(id(*one)),
        [outer, inner] => eth().double_vlan(id(*outer), id(*inner)),
        _ => panic!("one or two tags"),
    };
    b.ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1, 1024)
        .ack(1)
        .bytes(b"vlan")
}

/// An ARP request: a frame that is not IP.
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    // htype Ethernet, ptype IPv4, hlen 6, plen 4, op request
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}
