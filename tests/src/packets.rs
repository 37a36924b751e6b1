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
pub fn tcp6_hop_by_hop(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    use etherparse::{IpHeaders, IpNumber, Ipv6Extensions, Ipv6Header, Ipv6RawExtHeader};
    let hbh = Ipv6RawExtHeader::new_raw(IpNumber::TCP, &[1, 4, 0, 0, 0, 0]).expect("6-byte payload");
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

/// What a VXLAN peer expects to receive: `inner_ip` (an IP packet)
/// encapsulated from `src_vtep` to `dst_vtep` with VNI `vni`, outer
/// Ethernet `src_mac` → `dst_mac`, inner Ethernet `inner_src` →
/// `inner_dst`; outer IPv4 with DF and TTL 64, UDP checksum 0.
#[allow(clippy::too_many_arguments)]
pub fn vxlan_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src_vtep: Ipv4Addr,
    dst_vtep: Ipv4Addr,
    udp_sport: u16,
    vni: u32,
    inner_src: [u8; 6],
    inner_dst: [u8; 6],
    inner_ip: &[u8],
) -> Vec<u8> {
    use etherparse::{EtherType, Ethernet2Header, IpNumber, Ipv4Header, UdpHeader};
    let v6 = inner_ip[0] >> 4 == 6;
    let udp_len = 8 + 8 + 14 + inner_ip.len();
    let mut ip =
        Ipv4Header::new(udp_len as u16, 64, IpNumber::UDP, src_vtep.octets(), dst_vtep.octets()).expect("fits");
    ip.dont_fragment = true;
    ip.header_checksum = ip.calc_header_checksum();
    let udp = UdpHeader {
        source_port: udp_sport,
        destination_port: 4789,
        length: udp_len as u16,
        checksum: 0,
    };
    let mut f = Vec::new();
    Ethernet2Header {
        source: src_mac,
        destination: dst_mac,
        ether_type: EtherType::IPV4,
    }
    .write(&mut f)
    .unwrap();
    ip.write(&mut f).unwrap();
    udp.write(&mut f).unwrap();
    f.extend_from_slice(&[0x08, 0, 0, 0]);
    f.extend_from_slice(&vni.to_be_bytes()[1..]);
    f.push(0);
    Ethernet2Header {
        source: inner_src,
        destination: inner_dst,
        ether_type: if v6 { EtherType::IPV6 } else { EtherType::IPV4 },
    }
    .write(&mut f)
    .unwrap();
    f.extend_from_slice(inner_ip);
    f
}

/// The IP packet inside a frame without VLAN tags.
pub fn ip_of(frame: &[u8]) -> &[u8] {
    &frame[14..]
}

/// A TCP SYN announcing `mss`.
pub fn syn_with_mss(src: std::net::IpAddr, dst: std::net::IpAddr, sport: u16, dport: u16, mss: u16) -> Vec<u8> {
    use etherparse::TcpOptionElement::MaximumSegmentSize;
    use std::net::IpAddr;
    let b = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth().ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth().ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    b.tcp(sport, dport, 1000, 64240)
        .syn()
        .options(&[MaximumSegmentSize(mss)])
        .expect("one option fits")
        .bytes(&[])
}

/// A TCP SYN (or, with `ack`, SYN-ACK) announcing `mss` among the options
/// Linux sends: MSS, SACK permitted, timestamps, NOP, window scale.
pub fn syn_linux(src: std::net::IpAddr, dst: std::net::IpAddr, sport: u16, dport: u16, mss: u16, ack: bool) -> Vec<u8> {
    use etherparse::TcpOptionElement::*;
    use std::net::IpAddr;
    let b = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth().ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth().ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    let b = b.tcp(sport, dport, 0x1234_5678, 65160).syn();
    let b = if ack { b.ack(0x0bad_cafe) } else { b };
    b.options(&[
        MaximumSegmentSize(mss),
        SelectiveAcknowledgementPermitted,
        Timestamp(0x0102_0304, if ack { 0x0a0b_0c0d } else { 0 }),
        Noop,
        WindowScale(7),
    ])
    .expect("20 bytes of options fit")
    .bytes(&[])
}

/// An IPv4 TCP segment of `ip_len` bytes (headers included), DF as asked.
pub fn tcp4_sized_df(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, ip_len: usize, df: bool) -> Vec<u8> {
    use etherparse::{IpHeaders, IpNumber, Ipv4Header};
    let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, src.octets(), dst.octets()).unwrap();
    ip.dont_fragment = df;
    eth()
        .ip(IpHeaders::Ipv4(ip, Default::default()))
        .tcp(sport, dport, 1000, 64240)
        .ack(1)
        .bytes(&vec![0x5a; ip_len - 40])
}

/// A TCP segment to `dst` whose IP packet is `ip_len` bytes.
pub fn tcp_sized(src: std::net::IpAddr, dst: std::net::IpAddr, sport: u16, dport: u16, ip_len: usize) -> Vec<u8> {
    use std::net::IpAddr;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => tcp4(s, d, sport, dport, &vec![0x33; ip_len - 40]),
        (IpAddr::V6(s), IpAddr::V6(d)) => tcp6(s, d, sport, dport, &vec![0x33; ip_len - 60]),
        _ => panic!("mixed families"),
    }
}

/// The ICMP fragmentation-needed answer carwash sends for `frame`.
pub fn frag_needed_for(frame: &[u8], mtu: u16) -> Vec<u8> {
    use etherparse::{Icmpv4Type, IpHeaders, IpNumber, Ipv4Header, icmpv4::DestUnreachableHeader};
    let ip = &frame[14..];
    let (src, dst) = (
        <[u8; 4]>::try_from(&ip[12..16]).unwrap(),
        <[u8; 4]>::try_from(&ip[16..20]).unwrap(),
    );
    let mut h = Ipv4Header::new(0, 64, IpNumber::ICMP, dst, src).unwrap();
    h.dont_fragment = false;
    PacketBuilder::ethernet2(HOST_MAC, CLIENT_MAC)
        .ip(IpHeaders::Ipv4(h, Default::default()))
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu },
        ))
        .bytes(&ip[..28])
}

/// The ICMPv6 packet-too-big answer carwash sends for `frame`.
pub fn packet_too_big_for(frame: &[u8], mtu: u32) -> Vec<u8> {
    use etherparse::Icmpv6Type;
    let ip = &frame[14..];
    let (src, dst) = (
        <[u8; 16]>::try_from(&ip[8..24]).unwrap(),
        <[u8; 16]>::try_from(&ip[24..40]).unwrap(),
    );
    PacketBuilder::ethernet2(HOST_MAC, CLIENT_MAC)
        .ipv6(dst, src, 64)
        .icmpv6(Icmpv6Type::PacketTooBig { mtu })
        .bytes(&ip[..48])
}

pub fn icmp4_echo_reply(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> Vec<u8> {
    eth()
        .ipv4(src.octets(), dst.octets(), 64)
        .icmpv4_echo_reply(id, seq)
        .bytes(b"ping")
}

pub fn icmp6_echo_reply(src: Ipv6Addr, dst: Ipv6Addr, id: u16, seq: u16) -> Vec<u8> {
    eth()
        .ipv6(src.octets(), dst.octets(), 64)
        .icmpv6_echo_reply(id, seq)
        .bytes(b"ping")
}

/// An ICMP destination-unreachable / fragmentation-needed from `src` to
/// `dst`, quoting `quote` (an IP packet, or its start).
pub fn icmp4_frag_needed(src: Ipv4Addr, dst: Ipv4Addr, mtu: u16, quote: &[u8]) -> Vec<u8> {
    use etherparse::{Icmpv4Type, icmpv4::DestUnreachableHeader};
    eth()
        .ipv4(src.octets(), dst.octets(), 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu },
        ))
        .bytes(quote)
}

/// An ICMPv6 packet-too-big from `src` to `dst`, quoting `quote`.
pub fn icmp6_packet_too_big(src: Ipv6Addr, dst: Ipv6Addr, mtu: u32, quote: &[u8]) -> Vec<u8> {
    eth()
        .ipv6(src.octets(), dst.octets(), 64)
        .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu })
        .bytes(quote)
}

/// `frame` with its Ethernet addresses replaced.
pub fn with_macs(frame: &[u8], dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f
}

/// `frame` (Ethernet + IPv4 without options) split in two fragments after
/// `at` bytes of its IP payload (a multiple of 8), with their IP headers
/// (length, more-fragments, offset, checksum) as a router would write them.
pub fn fragments4(frame: &[u8], at: usize) -> (Vec<u8>, Vec<u8>) {
    assert!(at.is_multiple_of(8) && frame[14] == 0x45);
    let (eth, ip) = frame.split_at(14);
    let (hdr, payload) = ip.split_at(20);
    let part = |data: &[u8], offset: usize, more: bool| {
        let mut h = hdr.to_vec();
        h[2..4].copy_from_slice(&((20 + data.len()) as u16).to_be_bytes());
        let frag = (offset / 8) as u16 | if more { 0x2000 } else { 0 } | (u16::from_be_bytes([h[6], h[7]]) & 0x4000);
        h[6..8].copy_from_slice(&frag.to_be_bytes());
        h[10..12].copy_from_slice(&[0, 0]);
        let sum = crate::model::checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        [eth, &h, data].concat()
    };
    (part(&payload[..at], 0, true), part(&payload[at..], at, false))
}

/// An ICMP destination-unreachable / host unreachable from `src` to `dst`,
/// quoting `quote`.
pub fn icmp4_unreachable(src: Ipv4Addr, dst: Ipv4Addr, quote: &[u8]) -> Vec<u8> {
    use etherparse::{Icmpv4Type, icmpv4::DestUnreachableHeader};
    eth()
        .ipv4(src.octets(), dst.octets(), 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Host))
        .bytes(quote)
}

/// An IPv4 TCP FIN (with ACK).
pub fn fin4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    eth()
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 2000, 64240)
        .ack(1)
        .fin()
        .bytes(&[])
}

/// An IPv4 TCP RST.
pub fn rst4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    eth()
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 2000, 0)
        .rst()
        .bytes(&[])
}
