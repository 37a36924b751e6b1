//! Path 1 (inbound) through BPF_PROG_TEST_RUN: services, allowlists per
//! class, backend choice, the exact VXLAN frame, MSS clamping and the
//! too-big answers, for IPv4 and IPv6 VIPs.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use carwash_policy::Tenant;
use carwash_tests::fabric::{FABRIC_MAC, FabricNs, HOST_VTEP, ROUTER_MAC, loaded, repo_policies, vtep_mac};
use carwash_tests::fixture::{Case, Output, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, check_all};
use carwash_tests::packets::*;
use carwash_tests::require_root;
use dataplane_common::hash::{flow_hash, vxlan_source_port};
use dataplane_common::{Counter, DropReason, programs};

const ALLOWED4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const ALLOWED4_HIGH: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 200);
const DENIED4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 66);
const ALLOWED6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbeef, 0, 0, 0, 0, 0x10);
const ACME4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const ACME6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x10, 0, 0, 0, 0, 0x10);
const BETA4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
const GAMMA4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 30);

/// A third tenant with overlapping allow prefixes: the /24 may use https,
/// its upper /25 also jms.
const GAMMA: &str = r#"
name = "gamma"
vni = 1003
lane = "single"
vips = ["203.0.113.30"]
vpc_cidrs = ["10.103.0.0/16"]
connectors = [{ vtep = "10.200.3.10", mac = "02:00:0a:c8:03:0a" }]
cores = [{ vtep = "10.200.3.20", mac = "02:00:0a:c8:03:14" }]
[[allow]]
cidr = "198.51.100.0/24"
classes = ["https"]
[[allow]]
cidr = "198.51.100.128/25"
classes = ["jms"]
"#;

fn tenants() -> Vec<Tenant> {
    let mut t = repo_policies().tenants;
    t.push(Tenant::from_toml(GAMMA).unwrap());
    t
}

fn v4(a: Ipv4Addr) -> [u8; 16] {
    let mut o = [0u8; 16];
    o[..4].copy_from_slice(&a.octets());
    o
}

fn addr16(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => v4(a),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The frame carwash must emit for `frame` (TCP, no VLAN) steered to
/// `backend` of `tenant`.
fn steered(
    frame: &[u8],
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    tenant: &Tenant,
    backend: &carwash_policy::Backend,
) -> Vec<u8> {
    let h = flow_hash(&addr16(src), &addr16(dst), sport, dport, 6);
    vxlan_frame(
        FABRIC_MAC,
        vtep_mac(backend.vtep),
        HOST_VTEP,
        backend.vtep,
        vxlan_source_port(h),
        tenant.vni,
        ROUTER_MAC,
        backend.mac.0,
        ip_of(frame),
    )
}

/// Which connector the Maglev table of `tenant` gives this flow.
fn connector_for(dp: &dataplane::Dataplane, id: u32, src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> usize {
    let info = dp.tenant_info(id).unwrap().unwrap();
    let h = flow_hash(&addr16(src), &addr16(dst), sport, dport, 6);
    info.maglev[(h % dataplane_common::types::MAGLEV_SIZE as u32) as usize] as usize
}

fn steer_case(name: &'static str, packet: Vec<u8>, expect: Vec<u8>, v6: bool) -> Case {
    Case {
        name,
        packet,
        action: XDP_REDIRECT,
        output: Output::Exact(expect),
        counters: vec![
            (if v6 { Counter::Ipv6 } else { Counter::Ipv4 }, 1),
            (Counter::Tcp, 1),
            (Counter::Steered, 1),
        ],
        drops: vec![],
    }
}

fn drop_case(name: &'static str, packet: Vec<u8>, why: DropReason, v6: bool) -> Case {
    Case {
        name,
        packet,
        action: XDP_DROP,
        output: Output::Unchanged,
        counters: vec![(if v6 { Counter::Ipv6 } else { Counter::Ipv4 }, 1), (Counter::Tcp, 1)],
        drops: vec![(why, 1)],
    }
}

#[test]
fn inbound_fixtures() {
    require_root();
    let ts = tenants();
    let (acme, beta) = (&ts[0], &ts[1]);
    let fab = FabricNs::new(&ts).unwrap();
    let mut dp = loaded(&fab, &ts).unwrap();
    let (c4, a4, c6, a6) = (
        IpAddr::V4(ALLOWED4),
        IpAddr::V4(ACME4),
        IpAddr::V6(ALLOWED6),
        IpAddr::V6(ACME6),
    );

    let https4 = tcp4(ALLOWED4, ACME4, 40000, 443, b"GET / HTTP/1.1");
    let https6 = tcp6(ALLOWED6, ACME6, 40001, 443, b"GET / HTTP/1.1");
    let jms4 = tcp4(ALLOWED4, ACME4, 40002, 61616, b"jms");
    let jms6 = tcp6(ALLOWED6, ACME6, 40003, 61617, b"jms");
    let conn4 = &acme.connectors[connector_for(&dp, 1, c4, a4, 40000, 443)];
    let conn6 = &acme.connectors[connector_for(&dp, 1, c6, a6, 40001, 443)];

    // The SYN's MSS: 1500 fabric MTU - 50 encapsulation - 20 IP - 20 TCP.
    let syn = syn_with_mss(c4, a4, 40004, 443, 1460);
    let syn_clamped = syn_with_mss(c4, a4, 40004, 443, 1410);
    let syn_conn = &acme.connectors[connector_for(&dp, 1, c4, a4, 40004, 443)];
    let syn6 = syn_with_mss(c6, a6, 40005, 443, 1440);
    let syn6_clamped = syn_with_mss(c6, a6, 40005, 443, 1390);
    let syn6_conn = &acme.connectors[connector_for(&dp, 1, c6, a6, 40005, 443)];
    let small_syn = syn_with_mss(c4, a4, 40006, 443, 1200);
    let small_conn = &acme.connectors[connector_for(&dp, 1, c4, a4, 40006, 443)];

    // 1451 bytes of IP do not fit (1500 - 50 = 1450 usable).
    let big4 = tcp_sized(c4, a4, 40007, 443, 1451);
    let big4_nodf = tcp4_sized_df(ALLOWED4, ACME4, 40008, 443, 1451, false);
    let big6 = tcp_sized(c6, a6, 40009, 443, 1451);
    let fits4 = tcp_sized(c4, a4, 40010, 443, 1450);
    let fits_conn = &acme.connectors[connector_for(&dp, 1, c4, a4, 40010, 443)];

    let mut cases = vec![
        steer_case(
            "https v4 to a connector",
            https4.clone(),
            steered(&https4, c4, a4, 40000, 443, acme, conn4),
            false,
        ),
        steer_case(
            "https v6 to a connector",
            https6.clone(),
            steered(&https6, c6, a6, 40001, 443, acme, conn6),
            true,
        ),
        steer_case(
            "jms v4 to the active core",
            jms4.clone(),
            steered(&jms4, c4, a4, 40002, 61616, acme, &acme.cores[0]),
            false,
        ),
        steer_case(
            "jms v6 to the active core",
            jms6.clone(),
            steered(&jms6, c6, a6, 40003, 61617, acme, &acme.cores[0]),
            true,
        ),
        steer_case(
            "SYN MSS clamped to the fabric",
            syn.clone(),
            steered(&syn_clamped, c4, a4, 40004, 443, acme, syn_conn),
            false,
        ),
        steer_case(
            "SYN v6 MSS clamped",
            syn6.clone(),
            steered(&syn6_clamped, c6, a6, 40005, 443, acme, syn6_conn),
            true,
        ),
        steer_case(
            "SYN with a small MSS untouched",
            small_syn.clone(),
            steered(&small_syn, c4, a4, 40006, 443, acme, small_conn),
            false,
        ),
        steer_case(
            "largest packet that fits",
            fits4.clone(),
            steered(&fits4, c4, a4, 40010, 443, acme, fits_conn),
            false,
        ),
        drop_case(
            "unknown port on a VIP",
            tcp4(ALLOWED4, ACME4, 40000, 80, b"x"),
            DropReason::NoService,
            false,
        ),
        drop_case(
            "unknown port on a v6 VIP",
            tcp6(ALLOWED6, ACME6, 40000, 80, b"x"),
            DropReason::NoService,
            true,
        ),
        drop_case(
            "source in no allowlist",
            tcp4(DENIED4, ACME4, 40000, 443, b"x"),
            DropReason::NotAllowed,
            false,
        ),
        drop_case(
            "v6 source in no allowlist",
            tcp6("2001:db8:dead::66".parse().unwrap(), ACME6, 40000, 443, b"x"),
            DropReason::NotAllowed,
            true,
        ),
        drop_case(
            "allowed for https, not jms",
            tcp4(ALLOWED4, BETA4, 40000, 61616, b"x"),
            DropReason::NotAllowed,
            false,
        ),
        drop_case(
            "beta's https allow covers only the lower half",
            tcp4(ALLOWED4_HIGH, BETA4, 40000, 443, b"x"),
            DropReason::NotAllowed,
            false,
        ),
        drop_case(
            "overlap: jms from the lower /25",
            tcp4(ALLOWED4, GAMMA4, 40000, 61616, b"x"),
            DropReason::NotAllowed,
            false,
        ),
        Case {
            name: "ipv4 too big with DF: fragmentation needed",
            packet: big4.clone(),
            action: XDP_TX,
            output: Output::Exact(frag_needed_for(&big4, 1450)),
            counters: vec![(Counter::Ipv4, 1), (Counter::Tcp, 1)],
            drops: vec![(DropReason::TooBigIcmpSent, 1)],
        },
        Case {
            name: "ipv4 too big without DF: dropped",
            packet: big4_nodf,
            action: XDP_DROP,
            output: Output::Unchanged,
            counters: vec![(Counter::Ipv4, 1), (Counter::Tcp, 1)],
            drops: vec![(DropReason::TooBig, 1)],
        },
        Case {
            name: "ipv6 too big: packet too big",
            packet: big6.clone(),
            action: XDP_TX,
            output: Output::Exact(packet_too_big_for(&big6, 1450)),
            counters: vec![(Counter::Ipv6, 1), (Counter::Tcp, 1)],
            drops: vec![(DropReason::TooBigIcmpSent, 1)],
        },
        Case {
            name: "not a VIP: passes untouched",
            packet: tcp4(ALLOWED4, Ipv4Addr::new(203, 0, 113, 99), 40000, 443, b"x"),
            action: XDP_PASS,
            output: Output::Unchanged,
            counters: vec![(Counter::Ipv4, 1), (Counter::Tcp, 1)],
            drops: vec![],
        },
        Case {
            name: "not a VIP v6: passes untouched",
            packet: tcp6(ALLOWED6, "2001:db8:10::99".parse().unwrap(), 40000, 443, b"x"),
            action: XDP_PASS,
            output: Output::Unchanged,
            counters: vec![(Counter::Ipv6, 1), (Counter::Tcp, 1)],
            drops: vec![],
        },
    ];
    let overlap_ok = tcp4(ALLOWED4_HIGH, GAMMA4, 40000, 61616, b"x");
    let gamma = &ts[2];
    cases.push(steer_case(
        "overlap: jms from the upper /25",
        overlap_ok.clone(),
        steered(
            &overlap_ok,
            IpAddr::V4(ALLOWED4_HIGH),
            IpAddr::V4(GAMMA4),
            40000,
            61616,
            gamma,
            &gamma.cores[0],
        ),
        false,
    ));
    fab.ns
        .enter(|| check_all(&dp, programs::UPLINK, &cases))
        .unwrap()
        .unwrap();

    // Switching to the standby core is one update; jms follows it.
    dp.set_active_core(1, 1).unwrap();
    let after = vec![
        steer_case(
            "jms v4 after the switch",
            jms4.clone(),
            steered(&jms4, c4, a4, 40002, 61616, acme, &acme.cores[1]),
            false,
        ),
        steer_case(
            "jms v6 after the switch",
            jms6.clone(),
            steered(&jms6, c6, a6, 40003, 61617, acme, &acme.cores[1]),
            true,
        ),
    ];
    fab.ns
        .enter(|| check_all(&dp, programs::UPLINK, &after))
        .unwrap()
        .unwrap();

    // Per-tenant counters saw the same: beta dropped two (not allowed), and
    // its jms class is the one that was refused.
    let beta_stats = dp.tenant_stats(2).unwrap();
    let na = DropReason::NotAllowed.slot();
    assert_eq!(beta_stats[dataplane_common::types::CLASS_JMS as usize][na], 1);
    assert_eq!(beta_stats[dataplane_common::types::CLASS_HTTPS as usize][na], 1);
    let acme_stats = dp.tenant_stats(1).unwrap();
    let https = &acme_stats[dataplane_common::types::CLASS_HTTPS as usize];
    assert_eq!(https[dataplane_common::drop::STEERED_PACKETS], 6);
    let _ = beta;
}
