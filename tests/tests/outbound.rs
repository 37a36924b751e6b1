//! Paths 2-5 through BPF_PROG_TEST_RUN: VXLAN from the tenants' machines
//! (the VNI/VTEP isolation check, replies from VIPs, source NAT of
//! outbound flows), replies to egress IPs back to the machine that opened
//! the flow, ICMP errors about translated flows, port exhaustion and the
//! full table. Every expected frame is built by etherparse from scratch,
//! so the programs' incremental checksum updates are checked against full
//! recomputation.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use carwash_policy::Tenant;
use carwash_tests::fabric::{FabricNs, loaded};
use carwash_tests::fixture::{Case, Output, XDP_DROP, XDP_PASS, XDP_REDIRECT, check_all};
use carwash_tests::inbound_cases::{addr16, tenants};
use carwash_tests::outbound::*;
use carwash_tests::packets::*;
use carwash_tests::require_root;
use dataplane::Dataplane;
use dataplane_common::hash::flow_hash;
use dataplane_common::types::SIDE_FABRIC;
use dataplane_common::{Counter, DropReason, programs};

/// A fabric-side case: the outer headers count as IPv4/UDP.
fn fabric_case(name: &'static str, packet: Vec<u8>, action: u32, output: Output, counters: &[(Counter, u64)]) -> Case {
    let mut c = vec![(Counter::Ipv4, 1), (Counter::Udp, 1)];
    c.extend_from_slice(counters);
    Case {
        name,
        packet,
        action,
        output,
        counters: c,
        drops: vec![],
    }
}

fn fabric_drop(name: &'static str, packet: Vec<u8>, why: DropReason) -> Case {
    let mut c = fabric_case(name, packet, XDP_DROP, Output::Unchanged, &[]);
    c.drops = vec![(why, 1)];
    c
}

const NEW: &[(Counter, u64)] = &[
    (Counter::SnatNewFlow, 1),
    (Counter::SnatOut, 1),
    (Counter::Decapsulated, 1),
];
const TRACKED: &[(Counter, u64)] = &[(Counter::SnatOut, 1), (Counter::Decapsulated, 1)];

/// An uplink-side case: a reply (or error) to an egress IP.
#[test]
fn isolation_and_source_checks() {
    require_root();
    let ts = tenants();
    let (acme, beta, gamma) = (&ts[0], &ts[1], &ts[2]);
    let fab = FabricNs::new(&ts).unwrap();
    let dp = loaded(&fab, &ts).unwrap();
    let inner = udp4(ACME_VM4, PARTNER4, 40000, 53, b"q");
    let cases = vec![
        // Beta's machine claims acme's VNI.
        fabric_drop(
            "vni of another tenant's vtep",
            from_vtep(beta.connectors[0].vtep, acme.vni, &inner),
            DropReason::VtepNotOfTenant,
        ),
        fabric_drop(
            "unknown vtep",
            from_vtep(Ipv4Addr::new(10, 200, 9, 9), acme.vni, &inner),
            DropReason::VtepNotOfTenant,
        ),
        fabric_drop(
            "unknown vni",
            from_vtep(acme.connectors[0].vtep, 4242, &inner),
            DropReason::UnknownVni,
        ),
        // Neither a VIP of acme nor inside its vpc_cidrs.
        fabric_drop(
            "inner source outside the vpc",
            from_machine(
                acme,
                &acme.connectors[0],
                &udp4(Ipv4Addr::new(10, 99, 0, 1), PARTNER4, 1, 53, b""),
            ),
            DropReason::InnerSourceNotAllowed,
        ),
        // Beta's VIP is not acme's to send from.
        fabric_drop(
            "another tenant's vip as source",
            from_machine(
                acme,
                &acme.connectors[0],
                &tcp4(Ipv4Addr::new(203, 0, 113, 20), PARTNER4, 443, 5555, b"x"),
            ),
            DropReason::InnerSourceNotAllowed,
        ),
        // Beta may reach 198.18.0.0/15 only.
        fabric_drop(
            "destination outside the egress allowlist",
            from_machine(
                beta,
                &beta.connectors[0],
                &udp4(ACME_VM4, Ipv4Addr::new(8, 8, 8, 8), 40000, 53, b"q"),
            ),
            DropReason::EgressNotAllowed,
        ),
        // Beta has no IPv6 egress IP.
        fabric_drop(
            "no ipv6 egress ip",
            from_machine(beta, &beta.cores[0], &udp6(ACME_VM6, PARTNER6, 40000, 53, b"q")),
            DropReason::NoEgress,
        ),
        // Gamma has no [egress] at all.
        fabric_drop(
            "tenant without egress",
            from_machine(
                gamma,
                &gamma.connectors[0],
                &udp4(Ipv4Addr::new(10, 103, 0, 5), PARTNER4, 40000, 53, b"q"),
            ),
            DropReason::NoEgress,
        ),
        fabric_drop(
            "not tcp, udp or echo",
            from_machine(acme, &acme.connectors[0], &icmp4_echo_reply(ACME_VM4, PARTNER4, 7, 1)),
            DropReason::SnatProtocol,
        ),
    ];
    fab.ns
        .enter(|| check_all(&dp, programs::FABRIC, &cases))
        .unwrap()
        .unwrap();
    assert!(
        dp.conntrack_flows().unwrap().is_empty(),
        "refused packets track nothing"
    );

    // To an egress IP without a tracked flow: dropped, never passed on.
    let stray = vec![
        Case::dropped(
            "stray udp to an egress ip",
            udp4(PARTNER4, ACME_EGRESS4, 53, 30000, b"a"),
            Counter::Udp,
            DropReason::NoConntrack,
        ),
        Case::dropped(
            "stray syn to an egress ip",
            syn6(PARTNER6, ACME_EGRESS6, 443, 30000),
            Counter::Tcp,
            DropReason::NoConntrack,
        ),
        Case::dropped(
            "stray echo request to an egress ip",
            icmp4_echo(PARTNER4, BETA_EGRESS4, 1, 1),
            Counter::Icmp,
            DropReason::NoConntrack,
        ),
    ];
    fab.ns
        .enter(|| check_all(&dp, programs::UPLINK, &stray))
        .unwrap()
        .unwrap();
}

fn syn6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Vec<u8> {
    syn_with_mss(v6(src), v6(dst), sport, dport, 1200)
}

#[test]
fn translation_both_ways() {
    require_root();
    let ts = tenants();
    let (acme, beta) = (&ts[0], &ts[1]);
    let fab = FabricNs::new(&ts).unwrap();
    let dp = loaded(&fab, &ts).unwrap();
    let (c0, core) = (&acme.connectors[0], &acme.cores[0]);

    // UDP v4 from acme: the egress IP and a port from the range.
    let p_udp = first_port(v4(ACME_VM4), v4(PARTNER4), 40000, 53, 17, ports());
    // TCP v4 SYN announcing 1460: clamped to what the fabric carries back.
    let p_syn = first_port(v4(ACME_VM4), v4(PARTNER4), 40001, 443, 6, ports());
    // ICMP echo: the identifier is translated like a port.
    let p_echo = first_port(v4(ACME_VM4), v4(PARTNER4), 0x1234, 8 << 8, 1, ports());
    // IPv6 TCP and UDP to the IPv6 egress IP.
    let p_tcp6 = first_port(v6(ACME_VM6), v6(PARTNER6), 40002, 443, 6, ports());
    let p_echo6 = first_port(v6(ACME_VM6), v6(PARTNER6), 0x77, 128 << 8, 58, ports());
    // Beta uses the same private address and port as acme: its own flow,
    // its own egress IP.
    let p_beta = first_port(v4(ACME_VM4), v4(PARTNER4), 40000, 53, 17, ports());

    let out = vec![
        fabric_case(
            "udp v4 out",
            from_machine(acme, c0, &udp4(ACME_VM4, PARTNER4, 40000, 53, b"query")),
            XDP_REDIRECT,
            Output::Exact(to_internet(&udp4(ACME_EGRESS4, PARTNER4, p_udp, 53, b"query"))),
            NEW,
        ),
        fabric_case(
            "udp v4 out, same flow again",
            from_machine(acme, c0, &udp4(ACME_VM4, PARTNER4, 40000, 53, b"again")),
            XDP_REDIRECT,
            Output::Exact(to_internet(&udp4(ACME_EGRESS4, PARTNER4, p_udp, 53, b"again"))),
            TRACKED,
        ),
        fabric_case(
            "tcp v4 syn out, mss clamped",
            from_machine(acme, core, &syn_with_mss(v4(ACME_VM4), v4(PARTNER4), 40001, 443, 1460)),
            XDP_REDIRECT,
            Output::Exact(to_internet(&syn_with_mss(
                v4(ACME_EGRESS4),
                v4(PARTNER4),
                p_syn,
                443,
                1410,
            ))),
            NEW,
        ),
        fabric_case(
            "tcp v4 data out",
            from_machine(acme, core, &tcp4(ACME_VM4, PARTNER4, 40001, 443, b"hello")),
            XDP_REDIRECT,
            Output::Exact(to_internet(&tcp4(ACME_EGRESS4, PARTNER4, p_syn, 443, b"hello"))),
            TRACKED,
        ),
        fabric_case(
            "icmp echo out",
            from_machine(acme, c0, &icmp4_echo(ACME_VM4, PARTNER4, 0x1234, 1)),
            XDP_REDIRECT,
            Output::Exact(to_internet(&icmp4_echo(ACME_EGRESS4, PARTNER4, p_echo, 1))),
            NEW,
        ),
        fabric_case(
            "tcp v6 out",
            from_machine(acme, c0, &tcp6(ACME_VM6, PARTNER6, 40002, 443, b"six")),
            XDP_REDIRECT,
            Output::Exact(to_internet(&tcp6(ACME_EGRESS6, PARTNER6, p_tcp6, 443, b"six"))),
            NEW,
        ),
        fabric_case(
            "icmpv6 echo out",
            from_machine(acme, c0, &icmp6_echo(ACME_VM6, PARTNER6, 0x77, 3)),
            XDP_REDIRECT,
            Output::Exact(to_internet(&icmp6_echo(ACME_EGRESS6, PARTNER6, p_echo6, 3))),
            NEW,
        ),
        fabric_case(
            "beta, same private address and port",
            from_machine(beta, &beta.connectors[0], &udp4(ACME_VM4, PARTNER4, 40000, 53, b"beta")),
            XDP_REDIRECT,
            Output::Exact(to_internet(&udp4(BETA_EGRESS4, PARTNER4, p_beta, 53, b"beta"))),
            NEW,
        ),
    ];
    fab.ns
        .enter(|| check_all(&dp, programs::FABRIC, &out))
        .unwrap()
        .unwrap();

    // Replies find the machine that opened each flow.
    let h = |src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8| {
        flow_hash(&addr16(src), &addr16(dst), sport, dport, proto)
    };
    let back = vec![
        Case::redirected(
            "udp v4 reply",
            udp4(PARTNER4, ACME_EGRESS4, 53, p_udp, b"answer"),
            Counter::Udp,
            to_machine(
                acme,
                c0,
                h(v4(PARTNER4), v4(ACME_EGRESS4), 53, p_udp, 17),
                &udp4(PARTNER4, ACME_VM4, 53, 40000, b"answer"),
            ),
            Counter::SnatReply,
        ),
        Case::redirected(
            "tcp v4 reply to the core",
            tcp4(PARTNER4, ACME_EGRESS4, 443, p_syn, b"welcome"),
            Counter::Tcp,
            to_machine(
                acme,
                core,
                h(v4(PARTNER4), v4(ACME_EGRESS4), 443, p_syn, 6),
                &tcp4(PARTNER4, ACME_VM4, 443, 40001, b"welcome"),
            ),
            Counter::SnatReply,
        ),
        Case::redirected(
            "icmp echo reply",
            icmp4_echo_reply(PARTNER4, ACME_EGRESS4, p_echo, 1),
            Counter::Icmp,
            to_machine(
                acme,
                c0,
                h(v4(PARTNER4), v4(ACME_EGRESS4), p_echo, 0, 1),
                &icmp4_echo_reply(PARTNER4, ACME_VM4, 0x1234, 1),
            ),
            Counter::SnatReply,
        ),
        Case::redirected(
            "tcp v6 reply",
            tcp6(PARTNER6, ACME_EGRESS6, 443, p_tcp6, b"xis"),
            Counter::Tcp,
            to_machine(
                acme,
                c0,
                h(v6(PARTNER6), v6(ACME_EGRESS6), 443, p_tcp6, 6),
                &tcp6(PARTNER6, ACME_VM6, 443, 40002, b"xis"),
            ),
            Counter::SnatReply,
        ),
        Case::redirected(
            "icmpv6 echo reply",
            icmp6_echo_reply(PARTNER6, ACME_EGRESS6, p_echo6, 3),
            Counter::Icmpv6,
            to_machine(
                acme,
                c0,
                h(v6(PARTNER6), v6(ACME_EGRESS6), p_echo6, 129 << 8, 58),
                &icmp6_echo_reply(PARTNER6, ACME_VM6, 0x77, 3),
            ),
            Counter::SnatReply,
        ),
        Case::redirected(
            "beta's reply goes to beta",
            udp4(PARTNER4, BETA_EGRESS4, 53, p_beta, b"for beta"),
            Counter::Udp,
            to_machine(
                beta,
                &beta.connectors[0],
                h(v4(PARTNER4), v4(BETA_EGRESS4), 53, p_beta, 17),
                &udp4(PARTNER4, ACME_VM4, 53, 40000, b"for beta"),
            ),
            Counter::SnatReply,
        ),
        // The right port from the wrong remote port is no reply.
        Case::dropped(
            "reply from another remote port",
            udp4(PARTNER4, ACME_EGRESS4, 54, p_udp, b"x"),
            Counter::Udp,
            DropReason::NoConntrack,
        ),
        // Acme's port at beta's egress IP is no reply either.
        Case::dropped(
            "acme's port at beta's egress ip",
            tcp4(PARTNER4, BETA_EGRESS4, 443, p_syn, b"x"),
            Counter::Tcp,
            DropReason::NoConntrack,
        ),
    ];
    fab.ns
        .enter(|| check_all(&dp, programs::UPLINK, &back))
        .unwrap()
        .unwrap();

    // ICMP errors about translated flows: the router's error quotes the
    // packet as it left (egress IP and port); the machine gets it with its
    // own address and port, every checksum right.
    let sent_tcp = tcp4(ACME_EGRESS4, PARTNER4, p_syn, 443, b"hello");
    let orig_tcp = tcp4(ACME_VM4, PARTNER4, 40001, 443, b"hello");
    let sent_tcp6 = tcp6(ACME_EGRESS6, PARTNER6, p_tcp6, 443, b"six");
    let orig_tcp6 = tcp6(ACME_VM6, PARTNER6, 40002, 443, b"six");
    let sent_echo = icmp4_echo(ACME_EGRESS4, PARTNER4, p_echo, 1);
    let orig_echo = icmp4_echo(ACME_VM4, PARTNER4, 0x1234, 1);
    let errors = vec![
        Case::redirected(
            "frag needed about a tcp flow (whole quote)",
            icmp4_frag_needed(ROUTER4, ACME_EGRESS4, 1280, ip_of(&sent_tcp)),
            Counter::Icmp,
            to_machine(
                acme,
                core,
                h(v4(ROUTER4), v4(ACME_EGRESS4), 0, 3 << 8 | 4, 1),
                &icmp4_frag_needed(ROUTER4, ACME_VM4, 1280, ip_of(&orig_tcp)),
            ),
            Counter::SnatIcmpError,
        ),
        Case::redirected(
            "frag needed about a tcp flow (28-byte quote)",
            icmp4_frag_needed(ROUTER4, ACME_EGRESS4, 1280, &ip_of(&sent_tcp)[..28]),
            Counter::Icmp,
            to_machine(
                acme,
                core,
                h(v4(ROUTER4), v4(ACME_EGRESS4), 0, 3 << 8 | 4, 1),
                &icmp4_frag_needed(ROUTER4, ACME_VM4, 1280, &ip_of(&orig_tcp)[..28]),
            ),
            Counter::SnatIcmpError,
        ),
        Case::redirected(
            "frag needed about an echo",
            icmp4_frag_needed(ROUTER4, ACME_EGRESS4, 1280, ip_of(&sent_echo)),
            Counter::Icmp,
            to_machine(
                acme,
                c0,
                h(v4(ROUTER4), v4(ACME_EGRESS4), 0, 3 << 8 | 4, 1),
                &icmp4_frag_needed(ROUTER4, ACME_VM4, 1280, ip_of(&orig_echo)),
            ),
            Counter::SnatIcmpError,
        ),
        Case::redirected(
            "packet too big about a tcp v6 flow",
            icmp6_packet_too_big(ROUTER6, ACME_EGRESS6, 1280, ip_of(&sent_tcp6)),
            Counter::Icmpv6,
            to_machine(
                acme,
                c0,
                h(v6(ROUTER6), v6(ACME_EGRESS6), 0, 2 << 8, 58),
                &icmp6_packet_too_big(ROUTER6, ACME_VM6, 1280, ip_of(&orig_tcp6)),
            ),
            Counter::SnatIcmpError,
        ),
        Case::dropped(
            "error about a flow never tracked",
            icmp4_frag_needed(
                ROUTER4,
                ACME_EGRESS4,
                1280,
                ip_of(&tcp4(ACME_EGRESS4, PARTNER4, 1, 443, b"?")),
            ),
            Counter::Icmp,
            DropReason::NoConntrack,
        ),
    ];
    fab.ns
        .enter(|| check_all(&dp, programs::UPLINK, &errors))
        .unwrap()
        .unwrap();

    // The table: one flow per translated tuple, both directions.
    let flows = dp.conntrack_flows().unwrap();
    assert_eq!(flows.len(), 6, "{flows:#?}");
    assert!(flows.iter().all(|f| f.out.is_some() && f.reply.is_some()), "{flows:#?}");
}

#[test]
fn port_exhaustion_is_a_counted_drop() {
    require_root();
    let ts = tenants();
    let acme = &ts[0];
    let fab = FabricNs::new(&ts).unwrap();
    let mut dp = loaded(&fab, &ts).unwrap();
    let mut host = fab.host_params();
    host.snat_ports = (31000, 31002);
    dp.set_host(&host).unwrap();
    let m = &acme.connectors[0];
    let frame = |sport: u16| from_machine(acme, m, &udp4(ACME_VM4, PARTNER4, sport, 53, b"q"));
    let mut used = Vec::new();
    fab.ns
        .enter(|| {
            for sport in 1..=3u16 {
                let (action, out) = dp.run(programs::FABRIC, &frame(sport)).unwrap();
                assert_eq!(action, XDP_REDIRECT, "flow {sport} of 3 ports");
                used.push(u16::from_be_bytes([out[34], out[35]]));
            }
            let before = dp.counters(dataplane_common::types::SIDE_FABRIC).unwrap();
            let (action, _) = dp.run(programs::FABRIC, &frame(4)).unwrap();
            assert_eq!(action, XDP_DROP, "a fourth flow has no port left");
            let d = dp
                .counters(dataplane_common::types::SIDE_FABRIC)
                .unwrap()
                .since(&before);
            assert_eq!(d.dropped(DropReason::PortsExhausted), 1);
            // The tracked flows keep their ports.
            let (action, out) = dp.run(programs::FABRIC, &frame(2)).unwrap();
            assert_eq!(action, XDP_REDIRECT);
            assert_eq!(u16::from_be_bytes([out[34], out[35]]), used[1]);
            // Another destination has its own tuples.
            let other = from_machine(acme, m, &udp4(ACME_VM4, Ipv4Addr::new(198, 18, 0, 11), 4, 53, b"q"));
            assert_eq!(dp.run(programs::FABRIC, &other).unwrap().0, XDP_REDIRECT);
        })
        .unwrap();
    used.sort();
    assert_eq!(used, vec![31000, 31001, 31002], "every port once, none twice");
}

#[test]
fn a_full_table_evicts_the_least_recently_used_flows() {
    require_root();
    let ts = tenants();
    let acme = &ts[0];
    let fab = FabricNs::new(&ts).unwrap();
    // 512 entries: 256 flows.
    let mut dp = Dataplane::load_with(None, 512).unwrap();
    dp.set_host(&fab.host_params()).unwrap();
    for (i, t) in ts.iter().enumerate() {
        dp.install_tenant(i as u32 + 1, t).unwrap();
    }
    let m = &acme.connectors[0];
    let frame = |sport: u16| from_machine(acme, m, &udp4(ACME_VM4, PARTNER4, sport, 53, b"q"));
    let run = |dp: &Dataplane, sport: u16| -> u32 { dp.run(programs::FABRIC, &frame(sport)).unwrap().0 };
    let out_sports = |dp: &Dataplane| -> Vec<u16> {
        let mut v: Vec<u16> = dp
            .conntrack_flows()
            .unwrap()
            .iter()
            // A flow counts while both its directions are there.
            .filter(|f| f.reply.is_some())
            .filter_map(|f| f.out.map(|(k, _)| u16::from_be_bytes(k.sport_be)))
            .collect();
        v.sort();
        v
    };
    // carwash's clock moves in kernel ticks (at most 10 ms).
    let tick = || std::thread::sleep(std::time::Duration::from_millis(30));
    let now = dataplane::conntrack::now_ns;
    let fabric = |dp: &Dataplane| dp.counters(SIDE_FABRIC).unwrap();
    let before = fabric(&dp);
    fab.ns
        .enter(|| {
            // A full table: flows 1-100 (to be kept busy), 101-200, then
            // later 201-256.
            for sport in 1..=200 {
                assert_eq!(run(&dp, sport), XDP_REDIRECT);
            }
            tick();
            for sport in 201..=256 {
                assert_eq!(run(&dp, sport), XDP_REDIRECT);
            }
            tick();
            for sport in 1..=100 {
                assert_eq!(run(&dp, sport), XDP_REDIRECT);
            }
        })
        .unwrap();
    assert_eq!(out_sports(&dp).len(), 256);
    // Nothing listed to give up yet: a new flow is refused, counted, and
    // the tracked flows carry on.
    fab.ns
        .enter(|| {
            assert_eq!(run(&dp, 1000), XDP_DROP, "no candidate: refused");
            assert_eq!(run(&dp, 7), XDP_REDIRECT, "a tracked flow carries on");
        })
        .unwrap();
    let d = fabric(&dp).since(&before);
    assert_eq!(d.dropped(DropReason::ConntrackFull), 1);
    assert_eq!(d.get(Counter::CtEvicted), 0);

    // The agent's pass lists all 256 flows, least recently used first.
    let r = dp.reclaim_conntrack(now(), |t| t == 1).unwrap();
    assert_eq!((r.total(), r.candidates), (0, 256), "{r:?}");
    tick();
    let before = fabric(&dp);
    fab.ns
        .enter(|| {
            // Flow 150 is used again after the listing: it is not idle.
            assert_eq!(run(&dp, 150), XDP_REDIRECT);
            // 100 new flows need room the table does not have.
            for sport in 1001..=1100 {
                assert_eq!(run(&dp, sport), XDP_REDIRECT, "a full table makes room");
            }
        })
        .unwrap();
    let d = fabric(&dp).since(&before);
    assert_eq!(d.get(Counter::CtEvicted), 100);
    assert_eq!(d.dropped(DropReason::ConntrackFull), 0);
    let kept = out_sports(&dp);
    let count = |r: std::ops::RangeInclusive<u16>| kept.iter().filter(|s| r.contains(s)).count();
    println!(
        "busy kept {}/100, oldest idle kept {}/100, newer idle kept {}/56, new kept {}/100",
        count(1..=100),
        count(101..=200),
        count(201..=256),
        count(1001..=1100)
    );
    assert_eq!(kept.len(), 256, "one flow out for each flow in");
    assert_eq!(count(1001..=1100), 100, "the new flows are all there");
    assert_eq!(count(1..=100), 100, "busy flows stay");
    // The room came from the oldest idle flows, in order: all of 101-200
    // but 150 (used since it was listed), then one of 201-256.
    assert_eq!(count(101..=200), 1);
    assert!(kept.contains(&150));
    assert_eq!(count(201..=256), 55);
}

#[test]
fn reclaim_removes_what_the_data_path_treats_as_dead() {
    require_root();
    let ts = tenants();
    let (acme, beta) = (&ts[0], &ts[1]);
    let fab = FabricNs::new(&ts).unwrap();
    let mut dp = Dataplane::load_with(None, 64).unwrap();
    dp.set_host(&fab.host_params()).unwrap();
    for (i, t) in ts.iter().enumerate() {
        dp.install_tenant(i as u32 + 1, t).unwrap();
    }
    let m = &acme.connectors[0];
    fab.ns
        .enter(|| {
            for sport in 1..=4u16 {
                let f = from_machine(acme, m, &udp4(ACME_VM4, PARTNER4, sport, 53, b"q"));
                assert_eq!(dp.run(programs::FABRIC, &f).unwrap().0, XDP_REDIRECT);
            }
            let f = from_machine(beta, &beta.connectors[0], &udp4(ACME_VM4, PARTNER4, 9, 53, b"q"));
            assert_eq!(dp.run(programs::FABRIC, &f).unwrap().0, XDP_REDIRECT);
        })
        .unwrap();
    let flows = dp.conntrack_flows().unwrap();
    assert_eq!(flows.len(), 5);
    let by_sport = |sport: u16| {
        *flows
            .iter()
            .find(|f| {
                f.out
                    .is_some_and(|(k, _)| k.tenant == 1 && u16::from_be_bytes(k.sport_be) == sport)
            })
            .unwrap()
    };
    // Flow 1: its reply direction expired (the whole flow is dead).
    let (rk, mut rv) = by_sport(1).reply.unwrap();
    rv.expires_ns = 1;
    dp.conntrack_insert(&[(rk, rv)]).unwrap();
    // Flow 2: its reply direction went missing long ago (an orphan).
    let (ok, mut ov) = by_sport(2).out.unwrap();
    assert!(dp.conntrack_remove(&by_sport(2).reply.unwrap().0).unwrap());
    ov.touched_ns = 0;
    dp.conntrack_insert(&[(ok, ov)]).unwrap();
    // Flow 3: its reply direction went missing just now (not yet an
    // orphan: the next packet writes it back).
    assert!(dp.conntrack_remove(&by_sport(3).reply.unwrap().0).unwrap());

    // Beta (tenant 2) is no longer in force.
    let now = dataplane::conntrack::now_ns();
    let r = dp.reclaim_conntrack(now, |t| t == 1).unwrap();
    assert_eq!((r.expired, r.orphans, r.gone_tenants), (1, 1, 1), "{r:?}");
    let left = dp.conntrack_flows().unwrap();
    let mut sports: Vec<u16> = left
        .iter()
        .filter_map(|f| f.out.map(|(k, _)| u16::from_be_bytes(k.sport_be)))
        .collect();
    sports.sort();
    assert_eq!(sports, vec![3, 4], "{left:#?}");

    // Flow 3's next packet restores its reply direction, same port, once
    // it is due to bring that direction up to date (a second after it
    // last did: here, a second and a half).
    let (ok, mut ov) = by_sport(3).out.unwrap();
    let port3 = u16::from_be_bytes(ov.port_be);
    ov.touched_ns = now - 1_500_000_000;
    dp.conntrack_insert(&[(ok, ov)]).unwrap();
    fab.ns
        .enter(|| {
            let f = from_machine(acme, m, &udp4(ACME_VM4, PARTNER4, 3, 53, b"q"));
            let (action, out) = dp.run(programs::FABRIC, &f).unwrap();
            assert_eq!(action, XDP_REDIRECT);
            assert_eq!(u16::from_be_bytes([out[34], out[35]]), port3);
        })
        .unwrap();
    let flow3 = dp
        .conntrack_flows()
        .unwrap()
        .into_iter()
        .find(|f| f.out.is_some_and(|(k, _)| u16::from_be_bytes(k.sport_be) == 3))
        .unwrap();
    assert!(flow3.reply.is_some(), "the reply direction is back");
    // Nothing more to reclaim.
    assert_eq!(dp.reclaim_conntrack(now, |t| t == 1).unwrap().total(), 0);
}

#[test]
fn an_apply_that_changes_only_the_egress_side_takes_effect() {
    require_root();
    use dataplane::agent::apply::Engine;
    let ts = tenants();
    let fab = FabricNs::new(&ts).unwrap();
    let mut dp = Dataplane::load(None).unwrap();
    dp.set_host(&fab.host_params()).unwrap();
    let mut engine = Engine::adopt(&dp, None).unwrap();
    let set = |beta: &Tenant| carwash_policy::PolicySet {
        tenants: vec![ts[0].clone(), beta.clone()],
    };
    engine.apply(&mut dp, &set(&ts[1])).unwrap();
    let beta_id = engine.ids().into_iter().find(|(n, _)| n == "beta").unwrap().1;
    assert!(beta_id > 0);
    let beta = &ts[1];
    let far = Ipv4Addr::new(192, 0, 2, 99);
    let frame = |src: Ipv4Addr| from_machine(beta, &beta.connectors[0], &udp4(src, far, 40000, 53, b"q"));
    let run = |dp: &Dataplane, src: Ipv4Addr| {
        fab.ns
            .enter(|| dp.run(programs::FABRIC, &frame(src)).unwrap().0)
            .unwrap()
    };
    assert_eq!(run(&dp, ACME_VM4), XDP_DROP, "outside beta's egress allowlist");

    // Only the egress allowlist changes: the new tries must be swapped in.
    let mut wider = beta.clone();
    wider.egress.as_mut().unwrap().allow = vec!["0.0.0.0/0".parse().unwrap()];
    engine.apply(&mut dp, &set(&wider)).unwrap();
    assert_eq!(
        run(&dp, ACME_VM4),
        XDP_REDIRECT,
        "the wider egress allowlist is in force"
    );

    // Only the vpc_cidrs change: the old private space may no longer send.
    let mut moved = wider.clone();
    moved.vpc_cidrs = vec!["10.250.0.0/16".parse().unwrap()];
    engine.apply(&mut dp, &set(&moved)).unwrap();
    // (ACME_VM4's flow is tracked and established: the fast path skips the
    // tries only while they are the ones the flow was checked against.)
    assert_eq!(run(&dp, ACME_VM4), XDP_DROP, "10.101.0.0/16 is no longer beta's");
    let moved_vm = Ipv4Addr::new(10, 250, 0, 1);
    assert_eq!(run(&dp, moved_vm), XDP_REDIRECT);
    assert_eq!(run(&dp, moved_vm), XDP_REDIRECT, "tracked now");

    // The egress allowlist narrows again: the tracked flow is cut.
    let mut narrow = beta.clone();
    narrow.vpc_cidrs = moved.vpc_cidrs.clone();
    engine.apply(&mut dp, &set(&narrow)).unwrap();
    assert_eq!(run(&dp, moved_vm), XDP_DROP, "{far} is no longer allowed");
}

#[test]
fn one_interface_for_uplink_and_fabric_runs_both_paths() {
    require_root();
    let ts = tenants();
    let acme = &ts[0];
    let fab = FabricNs::new(&ts).unwrap();
    let mut dp = loaded(&fab, &ts).unwrap();
    let vxlan = from_machine(acme, &acme.connectors[0], &udp4(ACME_VM4, PARTNER4, 40000, 53, b"q"));
    let port = first_port(v4(ACME_VM4), v4(PARTNER4), 40000, 53, 17, ports());
    let translated = to_internet(&udp4(ACME_EGRESS4, PARTNER4, port, 53, b"q"));
    fab.ns
        .enter(|| {
            // Separate interfaces: tunnel traffic on the uplink is none of
            // carwash's business (the VTEP is no VIP).
            let (action, out) = dp.run(programs::UPLINK, &vxlan).unwrap();
            assert_eq!((action, &out), (XDP_PASS, &vxlan));
        })
        .unwrap();
    let mut host = fab.host_params();
    host.fabric_ifindex = host.uplink_ifindex;
    dp.set_host(&host).unwrap();
    fab.ns
        .enter(|| {
            let before = dp.counters(dataplane_common::types::SIDE_FABRIC).unwrap();
            let (action, out) = dp.run(programs::UPLINK, &vxlan).unwrap();
            assert_eq!(action, XDP_REDIRECT);
            assert_eq!(out, translated);
            let d = dp
                .counters(dataplane_common::types::SIDE_FABRIC)
                .unwrap()
                .since(&before);
            assert_eq!(d.get(Counter::SnatOut), 1, "the fabric program handled it");
            // Inbound traffic still takes the uplink path.
            let syn = syn_with_mss(
                v4(carwash_tests::inbound_cases::ALLOWED4),
                v4(Ipv4Addr::new(203, 0, 113, 10)),
                5000,
                443,
                1200,
            );
            assert_eq!(dp.run(programs::UPLINK, &syn).unwrap().0, XDP_REDIRECT);
        })
        .unwrap();
}

#[test]
fn the_fragments_of_an_outbound_datagram_are_translated() {
    require_root();
    let ts = tenants();
    let acme = &ts[0];
    let fab = FabricNs::new(&ts).unwrap();
    let dp = loaded(&fab, &ts).unwrap();
    let payload: Vec<u8> = (0..100u8).collect();
    let port = first_port(v4(ACME_VM4), v4(PARTNER4), 40100, 53, 17, ports());
    // The machine's datagram, split after the UDP header and 16 bytes; the
    // translated datagram split the same way is what must leave.
    let (first, rest) = fragments4(&udp4(ACME_VM4, PARTNER4, 40100, 53, &payload), 24);
    let (want_first, want_rest) = fragments4(&udp4(ACME_EGRESS4, PARTNER4, port, 53, &payload), 24);
    let m = &acme.connectors[0];
    // (The protocol counters count the outer packet: UDP to the VTEP.)
    let rest_case = fabric_case(
        "a later fragment: its source address",
        from_machine(acme, m, &rest),
        XDP_REDIRECT,
        Output::Exact(to_internet(&want_rest)),
        TRACKED,
    );
    let cases = vec![
        fabric_case(
            "the first fragment: address and port, the checksum of the whole datagram",
            from_machine(acme, m, &first),
            XDP_REDIRECT,
            Output::Exact(to_internet(&want_first)),
            NEW,
        ),
        rest_case,
    ];
    fab.ns
        .enter(|| check_all(&dp, programs::FABRIC, &cases))
        .unwrap()
        .unwrap();
}
