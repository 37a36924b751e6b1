//! MSS clamping on every path a machine's SYN or SYN-ACK takes, through
//! BPF_PROG_TEST_RUN: replies from a VIP (path 2: the SYN-ACK that tells
//! an uploading client how large a segment to send through the tunnel, and
//! a SYN a machine opens from its VIP) and outbound source NAT (path 3),
//! IPv4 and IPv6, with the options Linux sends. Path 1 (the client's SYN)
//! is in `inbound.rs`. Expected frames are built by etherparse with full
//! checksums, and every output's TCP checksum is recomputed as well, so an
//! incremental update that went wrong cannot pass.
use std::net::IpAddr;

use carwash_tests::fabric::{FABRIC_MTU, FabricNs, loaded};
use carwash_tests::fixture::{Case, Output, XDP_REDIRECT, check_all};
use carwash_tests::inbound_cases::{ACME4, ACME6, ALLOWED4, ALLOWED6, tenants};
use carwash_tests::outbound::*;
use carwash_tests::packets::syn_linux;
use carwash_tests::require_root;
use dataplane_common::{Counter, programs};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};

/// What the fabric carries once encapsulated (1500 - 50 of VXLAN), less
/// the IP and TCP headers.
const MSS4: u16 = FABRIC_MTU - 50 - 20 - 20;
const MSS6: u16 = FABRIC_MTU - 50 - 40 - 20;

fn case(name: &'static str, packet: Vec<u8>, output: Vec<u8>, counters: &[(Counter, u64)]) -> Case {
    let mut c = vec![(Counter::Ipv4, 1), (Counter::Udp, 1)];
    c.extend_from_slice(counters);
    Case {
        name,
        packet,
        action: XDP_REDIRECT,
        output: Output::Exact(output),
        counters: c,
        drops: vec![],
    }
}

/// Path 2 counts a decapsulated reply; path 3 a new translation as well.
const REPLY: &[(Counter, u64)] = &[(Counter::Decapsulated, 1)];
const NEW_FLOW: &[(Counter, u64)] = &[
    (Counter::SnatNewFlow, 1),
    (Counter::SnatOut, 1),
    (Counter::Decapsulated, 1),
];

/// The MSS option and whether the TCP checksum is right, recomputed over
/// the whole segment.
fn mss_and_checksum(frame: &[u8]) -> (Option<u16>, bool) {
    let p = SlicedPacket::from_ethernet(frame).expect("an Ethernet frame");
    let Some(TransportSlice::Tcp(tcp)) = p.transport else {
        panic!("not TCP: {frame:02x?}");
    };
    let mss = tcp.options_iterator().find_map(|o| match o {
        Ok(etherparse::TcpOptionElement::MaximumSegmentSize(m)) => Some(m),
        _ => None,
    });
    let want = match p.net {
        Some(NetSlice::Ipv4(ip)) => tcp.calc_checksum_ipv4(ip.header().source(), ip.header().destination()),
        Some(NetSlice::Ipv6(ip)) => tcp.calc_checksum_ipv6(ip.header().source(), ip.header().destination()),
        _ => panic!("not IP"),
    }
    .expect("fits");
    (mss, want == tcp.checksum())
}

#[test]
fn syn_and_syn_ack_from_machines_are_clamped() {
    require_root();
    let ts = tenants();
    let acme = &ts[0];
    let fab = FabricNs::new(&ts).unwrap();
    let dp = loaded(&fab, &ts).unwrap();
    let (core, c0) = (&acme.cores[0], &acme.connectors[0]);
    let (vip4, vip6, client4, client6) = (v4(ACME4), v6(ACME6), v4(ALLOWED4), v6(ALLOWED6));
    let syn_ack = |src: IpAddr, dst: IpAddr, mss: u16| syn_linux(src, dst, 61616, 40000, mss, true);

    // Path 2: replies from a VIP leave decapsulated, clamped.
    let p_out4 = first_port(v4(ACME_VM4), v4(PARTNER4), 40010, 443, 6, ports());
    let p_out6 = first_port(v6(ACME_VM6), v6(PARTNER6), 40011, 443, 6, ports());
    let cases = vec![
        case(
            "syn-ack v4 from a vip, mss clamped",
            from_machine(acme, core, &syn_ack(vip4, client4, 1460)),
            to_internet(&syn_ack(vip4, client4, MSS4)),
            REPLY,
        ),
        case(
            "syn-ack v6 from a vip, mss clamped",
            from_machine(acme, core, &syn_ack(vip6, client6, 1440)),
            to_internet(&syn_ack(vip6, client6, MSS6)),
            REPLY,
        ),
        case(
            "syn-ack v4 from a connector, a jumbo mss clamped",
            from_machine(acme, c0, &syn_linux(vip4, client4, 443, 40001, 8960, true)),
            to_internet(&syn_linux(vip4, client4, 443, 40001, MSS4, true)),
            REPLY,
        ),
        case(
            "syn-ack v4 with a small mss untouched",
            from_machine(acme, core, &syn_ack(vip4, client4, 1200)),
            to_internet(&syn_ack(vip4, client4, 1200)),
            REPLY,
        ),
        case(
            "syn-ack v6 exactly at the limit untouched",
            from_machine(acme, core, &syn_ack(vip6, client6, MSS6)),
            to_internet(&syn_ack(vip6, client6, MSS6)),
            REPLY,
        ),
        case(
            "syn v4 a machine opens from its vip, clamped",
            from_machine(acme, core, &syn_linux(vip4, client4, 50000, 8443, 1460, false)),
            to_internet(&syn_linux(vip4, client4, 50000, 8443, MSS4, false)),
            REPLY,
        ),
        // Path 3: outbound source NAT, both families.
        case(
            "syn v4 out, linux options, clamped",
            from_machine(
                acme,
                c0,
                &syn_linux(v4(ACME_VM4), v4(PARTNER4), 40010, 443, 1460, false),
            ),
            to_internet(&syn_linux(v4(ACME_EGRESS4), v4(PARTNER4), p_out4, 443, MSS4, false)),
            NEW_FLOW,
        ),
        case(
            "syn v6 out, clamped",
            from_machine(
                acme,
                c0,
                &syn_linux(v6(ACME_VM6), v6(PARTNER6), 40011, 443, 1440, false),
            ),
            to_internet(&syn_linux(v6(ACME_EGRESS6), v6(PARTNER6), p_out6, 443, MSS6, false)),
            NEW_FLOW,
        ),
    ];
    fab.ns
        .enter(|| check_all(&dp, programs::FABRIC, &cases))
        .unwrap()
        .unwrap();

    // The same packets once more, checked on their own terms: the MSS
    // announced and a checksum that verifies.
    for c in &cases {
        let (_, out) = fab.ns.enter(|| dp.run(programs::FABRIC, &c.packet)).unwrap().unwrap();
        let (mss, ok) = mss_and_checksum(&out);
        let v6 = out[12..14] == [0x86, 0xdd];
        let limit = if v6 { MSS6 } else { MSS4 };
        assert!(ok, "{}: the TCP checksum does not verify", c.name);
        assert!(mss.is_some_and(|m| m <= limit), "{}: mss {mss:?} above {limit}", c.name);
    }
}
