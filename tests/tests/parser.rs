//! The uplink parser's verdicts and counters, through BPF_PROG_TEST_RUN.
//! At this stage every frame passes untouched; what differs is what is
//! counted, and that nothing is read out of bounds.
use std::net::{Ipv4Addr, Ipv6Addr};

use carwash_tests::fixture::{Case, Output, XDP_PASS, check_all};
use carwash_tests::packets::*;
use carwash_tests::require_root;
use dataplane::Dataplane;
use dataplane_common::{Counter, programs};

const C4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const C6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbeef, 0, 0, 0, 0, 0x10);
const V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x10, 0, 0, 0, 0, 0x10);

fn pass(name: &'static str, packet: Vec<u8>, counters: &[Counter]) -> Case {
    Case {
        name,
        packet,
        action: XDP_PASS,
        output: Output::Unchanged,
        counters: counters.iter().map(|&c| (c, 1)).collect(),
        drops: vec![],
    }
}

/// Sets the IPv4 header's IHL nibble and fixes nothing else.
fn with_ihl(mut p: Vec<u8>, ihl: u8) -> Vec<u8> {
    p[14] = 0x40 | ihl;
    p
}

fn cases() -> Vec<Case> {
    use Counter::*;
    let tcp4_pkt = tcp4(C4, V4, 40000, 443, b"hello");
    let mut ipv4_with_options = tcp4_pkt.clone();
    // Grow the header by one option word (NOP NOP NOP EOL); the program
    // skips options and still finds TCP behind them.
    ipv4_with_options.splice(34..34, [1u8, 1, 1, 0]);
    ipv4_with_options[14] = 0x46;
    let tot = u16::from_be_bytes([ipv4_with_options[16], ipv4_with_options[17]]) + 4;
    ipv4_with_options[16..18].copy_from_slice(&tot.to_be_bytes());
    let mut v4_in_v6_ethertype = tcp4_pkt.clone();
    v4_in_v6_ethertype[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    let mut later_fragment = udp4(C4, V4, 5000, 53, &[0u8; 32]);
    later_fragment[20..22].copy_from_slice(&0x0010u16.to_be_bytes()); // offset 16*8
    let mut three_tags = tcp4_vlan(&[10, 20], C4, V4, 1, 2);
    three_tags.splice(12..12, [0x81u8, 0x00, 0x00, 0x1e]);
    let mut tcp_doff_4 = tcp4_pkt.clone();
    tcp_doff_4[46] = 0x40;
    vec![
        pass("ipv4 tcp", tcp4_pkt.clone(), &[Ipv4, Tcp]),
        pass("ipv4 udp", udp4(C4, V4, 5353, 53, b"query"), &[Ipv4, Udp]),
        pass("ipv4 icmp echo", icmp4_echo(C4, V4, 7, 1), &[Ipv4, Icmp]),
        pass("ipv4 tcp with options", ipv4_with_options, &[Ipv4, Tcp]),
        pass("ipv6 tcp", tcp6(C6, V6, 40000, 443, b"hello"), &[Ipv6, Tcp]),
        pass("ipv6 udp", udp6(C6, V6, 40000, 53, b"hello"), &[Ipv6, Udp]),
        pass("ipv6 icmpv6 echo", icmp6_echo(C6, V6, 9, 2), &[Ipv6, Icmpv6]),
        pass(
            "ipv6 tcp behind hop-by-hop",
            tcp6_hop_by_hop(C6, V6, 40000, 443, b"x"),
            &[Ipv6, Tcp],
        ),
        pass(
            "one vlan tag",
            tcp4_vlan(&[100], C4, V4, 40000, 443),
            &[Vlan, Ipv4, Tcp],
        ),
        pass(
            "two vlan tags",
            tcp4_vlan(&[100, 200], C4, V4, 40000, 443),
            &[Vlan, Ipv4, Tcp],
        ),
        pass("three vlan tags", three_tags, &[MalformedVlanDepth]),
        pass("ipv4 later fragment", later_fragment, &[Ipv4, Fragment]),
        pass(
            "truncated ipv4 header",
            tcp4_pkt[..14 + 12].to_vec(),
            &[MalformedTruncated],
        ),
        pass(
            "truncated tcp header",
            tcp4_pkt[..14 + 20 + 10].to_vec(),
            &[MalformedTruncated],
        ),
        pass("ipv4 ihl 4", with_ihl(tcp4_pkt.clone(), 4), &[MalformedIpHeader]),
        pass("ipv4 ihl 0", with_ihl(tcp4_pkt.clone(), 0), &[MalformedIpHeader]),
        pass(
            "ipv4 ihl 15 beyond the frame",
            with_ihl(tcp4_pkt[..40].to_vec(), 15),
            &[MalformedIpHeader],
        ),
        pass(
            "ipv4 packet under an ipv6 ethertype",
            v4_in_v6_ethertype,
            &[MalformedIpHeader],
        ),
        pass("tcp data offset 4", tcp_doff_4, &[MalformedTcpHeader]),
        pass("arp", arp_request(C4, V4), &[NonIp]),
    ]
}

#[test]
fn parser_verdicts_and_counters() {
    require_root();
    let dp = Dataplane::load(None).expect("load the eBPF object");
    check_all(&dp, programs::UPLINK, &cases()).unwrap();
}

/// The kernel refuses XDP frames shorter than an Ethernet header (in
/// BPF_PROG_TEST_RUN as on the wire), so a zero-length or 10-byte frame never
/// reaches the program: the kernel saying so, and no counter moving, is what
/// is checked. The program's own bounds checks on a frame that ends inside a
/// header are covered by the truncated cases above.
#[test]
fn frames_shorter_than_ethernet_never_reach_the_program() {
    require_root();
    let dp = Dataplane::load(None).expect("load the eBPF object");
    let before = dp.counters(dataplane_common::types::SIDE_UPLINK).unwrap();
    assert!(dp.run(programs::UPLINK, &[]).is_err());
    assert!(dp.run(programs::UPLINK, &[0xff; 10]).is_err());
    assert_eq!(dp.counters(dataplane_common::types::SIDE_UPLINK).unwrap(), before);
}
