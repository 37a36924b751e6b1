//! Fail closed and fragments, through BPF_PROG_TEST_RUN: a tenant held
//! half-installed passes nothing on any path (its VIPs, its egress IP, its
//! tunnel), while a tenant beside it works; programs loaded before any host
//! settings drop traffic to known addresses as `no_config`, and before any
//! policy pass everything to the host stack (no address is carwash's
//! yet); a later fragment to a VIP and a fragmented reply to an egress IP
//! are dropped as `fragment`.
use std::net::Ipv4Addr;

use carwash_tests::fabric::{FabricNs, loaded};
use carwash_tests::fixture::{XDP_DROP, XDP_PASS, XDP_REDIRECT, action_name};
use carwash_tests::inbound_cases::{ACME4, ACME6, ALLOWED4, ALLOWED6, BETA4, tenants};
use carwash_tests::outbound::*;
use carwash_tests::packets::*;
use carwash_tests::require_root;
use dataplane::Dataplane;
use dataplane_common::types::{SIDE_FABRIC, SIDE_UPLINK};
use dataplane_common::{Counter, DropReason, programs};

/// Runs `packet` through `prog` and returns the verdict and the one drop
/// reason that moved (if any); more than one is a failure.
fn verdict(dp: &Dataplane, prog: &str, packet: &[u8]) -> (u32, Option<DropReason>) {
    let side = if prog == programs::FABRIC {
        SIDE_FABRIC
    } else {
        SIDE_UPLINK
    };
    let before = dp.counters(side).unwrap();
    let (action, _) = dp.run(prog, packet).unwrap();
    let delta = dp.counters(side).unwrap().since(&before);
    let moved: Vec<DropReason> = DropReason::ALL
        .iter()
        .copied()
        .filter(|r| delta.dropped(*r) > 0)
        .collect();
    assert!(moved.len() <= 1, "{moved:?}");
    (action, moved.first().copied())
}

/// A case: name, program, packet, verdict and drop reason.
type Expected = (&'static str, &'static str, Vec<u8>, u32, Option<DropReason>);

/// Checks every case and reports all mismatches together.
fn expect(dp: &Dataplane, cases: &[Expected]) {
    let mut bad = Vec::new();
    for (name, prog, packet, action, why) in cases {
        let got = verdict(dp, prog, packet);
        if got != (*action, *why) {
            bad.push(format!(
                "{name}: got {} {:?}, want {} {:?}",
                action_name(got.0),
                got.1,
                action_name(*action),
                why
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

const UP: &str = programs::UPLINK;
const FAB: &str = programs::FABRIC;

#[test]
fn a_tenant_half_installed_passes_nothing_on_any_path() {
    require_root();
    let ts = tenants();
    let (acme, beta) = (&ts[0], &ts[1]);
    let fab = FabricNs::new(&ts).unwrap();
    // Beta is installed; acme only has its addresses, VNI and a record that
    // is not ready (the first step of an install), gamma nothing.
    let mut dp = Dataplane::load(None).unwrap();
    dp.set_host(&fab.host_params()).unwrap();
    dp.install_tenant(2, beta).unwrap();
    dp.claim_tenant(1, acme).unwrap();
    let c0 = &acme.connectors[0];
    let reply = tcp4(ACME4, ALLOWED4, 443, 40000, b"reply");
    let icmp_err = icmp4_frag_needed(ROUTER4, ACME4, 1400, &ip_of(&reply)[..28]);
    let claimed = vec![
        // Path 1: no service of acme's is in place yet.
        (
            "https to a claimed VIP",
            UP,
            tcp4(ALLOWED4, ACME4, 40000, 443, b"x"),
            XDP_DROP,
            Some(DropReason::NoService),
        ),
        (
            "https to a claimed v6 VIP",
            UP,
            tcp6(ALLOWED6, ACME6, 40000, 443, b"x"),
            XDP_DROP,
            Some(DropReason::NoService),
        ),
        // Path 5: the error follows a flow that has no service yet.
        (
            "icmp error to a claimed VIP",
            UP,
            icmp_err.clone(),
            XDP_DROP,
            Some(DropReason::NoService),
        ),
        // Path 4: nothing is tracked for a tenant not yet in place.
        (
            "reply to a claimed egress IP",
            UP,
            tcp4(PARTNER4, ACME_EGRESS4, 443, 20000, b"r"),
            XDP_DROP,
            Some(DropReason::NoConntrack),
        ),
        // Paths 2 and 3: the VNI is known, the tenant not ready.
        (
            "reply from a VIP through the tunnel",
            FAB,
            from_machine(acme, c0, &reply),
            XDP_DROP,
            Some(DropReason::NotReady),
        ),
        (
            "outbound through the tunnel",
            FAB,
            from_machine(acme, c0, &udp4(ACME_VM4, PARTNER4, 40000, 53, b"q")),
            XDP_DROP,
            Some(DropReason::NotReady),
        ),
        // Beside it, beta works.
        (
            "https to beta",
            UP,
            tcp4(ALLOWED4, BETA4, 40000, 443, b"x"),
            XDP_REDIRECT,
            None,
        ),
    ];
    fab.ns.enter(|| expect(&dp, &claimed)).unwrap();

    // Acme in place: a flow out, so that its egress IP has something to
    // answer; then its record not ready again, everything else in place
    // (as between an install's last entry and its ready mark).
    dp.install_tenant(1, acme).unwrap();
    let out = from_machine(acme, c0, &tcp4(ACME_VM4, PARTNER4, 40001, 443, b"out"));
    let p = first_port(v4(ACME_VM4), v4(PARTNER4), 40001, 443, 6, ports());
    let back = tcp4(PARTNER4, ACME_EGRESS4, 443, p, b"back");
    let sent = tcp4(ACME_EGRESS4, PARTNER4, p, 443, b"out");
    let egress_err = icmp4_frag_needed(ROUTER4, ACME_EGRESS4, 1280, ip_of(&sent));
    let ready = vec![
        (
            "https to acme",
            UP,
            tcp4(ALLOWED4, ACME4, 40000, 443, b"x"),
            XDP_REDIRECT,
            None,
        ),
        ("outbound", FAB, out.clone(), XDP_REDIRECT, None),
        ("reply to the egress IP", UP, back.clone(), XDP_REDIRECT, None),
        ("icmp error to a VIP", UP, icmp_err.clone(), XDP_REDIRECT, None),
    ];
    fab.ns.enter(|| expect(&dp, &ready)).unwrap();

    dp.set_tenant_ready(1, false).unwrap();
    let not_ready = vec![
        (
            "https to the VIP",
            UP,
            tcp4(ALLOWED4, ACME4, 40000, 443, b"x"),
            XDP_DROP,
            Some(DropReason::NotReady),
        ),
        (
            "jms to the v6 VIP",
            UP,
            tcp6(ALLOWED6, ACME6, 40000, 61616, b"x"),
            XDP_DROP,
            Some(DropReason::NotReady),
        ),
        (
            "icmp error to the VIP",
            UP,
            icmp_err,
            XDP_DROP,
            Some(DropReason::NotReady),
        ),
        (
            "reply from the VIP through the tunnel",
            FAB,
            from_machine(acme, c0, &reply),
            XDP_DROP,
            Some(DropReason::NotReady),
        ),
        (
            "outbound, a tracked flow",
            FAB,
            out,
            XDP_DROP,
            Some(DropReason::NotReady),
        ),
        (
            "reply to the egress IP, a tracked flow",
            UP,
            back,
            XDP_DROP,
            Some(DropReason::NotReady),
        ),
        (
            "icmp error to the egress IP, a tracked flow",
            UP,
            egress_err,
            XDP_DROP,
            Some(DropReason::NotReady),
        ),
        (
            "https to beta",
            UP,
            tcp4(ALLOWED4, BETA4, 40000, 443, b"x"),
            XDP_REDIRECT,
            None,
        ),
    ];
    fab.ns.enter(|| expect(&dp, &not_ready)).unwrap();
}

#[test]
fn before_host_settings_and_before_any_policy() {
    require_root();
    let ts = tenants();
    let acme = &ts[0];
    let fab = FabricNs::new(&ts).unwrap();
    let mut dp = Dataplane::load(None).unwrap();
    let c0 = &acme.connectors[0];
    let tunnel = from_machine(acme, c0, &udp4(ACME_VM4, PARTNER4, 40000, 53, b"q"));
    // Nothing yet: no address is carwash's, the host stack has it all.
    let nothing = vec![
        (
            "https to a VIP-to-be",
            UP,
            tcp4(ALLOWED4, ACME4, 40000, 443, b"x"),
            XDP_PASS,
            None,
        ),
        (
            "to an egress IP-to-be",
            UP,
            tcp4(PARTNER4, ACME_EGRESS4, 443, 20000, b"r"),
            XDP_PASS,
            None,
        ),
        ("tunnel traffic", FAB, tunnel.clone(), XDP_PASS, None),
    ];
    fab.ns.enter(|| expect(&dp, &nothing)).unwrap();
    // Policy in place, host settings not yet: its addresses pass nothing.
    dp.install_tenant(1, acme).unwrap();
    let no_host = vec![
        (
            "https to the VIP",
            UP,
            tcp4(ALLOWED4, ACME4, 40000, 443, b"x"),
            XDP_DROP,
            Some(DropReason::NoConfig),
        ),
        (
            "jms to the v6 VIP",
            UP,
            tcp6(ALLOWED6, ACME6, 40000, 61616, b"x"),
            XDP_DROP,
            Some(DropReason::NoConfig),
        ),
        (
            "to the egress IP",
            UP,
            tcp4(PARTNER4, ACME_EGRESS4, 443, 20000, b"r"),
            XDP_DROP,
            Some(DropReason::NoConfig),
        ),
        // Without its VTEP carwash cannot tell tunnel traffic to it.
        ("tunnel traffic", FAB, tunnel.clone(), XDP_PASS, None),
        (
            "not carwash's",
            UP,
            tcp4(ALLOWED4, Ipv4Addr::new(192, 0, 2, 99), 1, 2, b"x"),
            XDP_PASS,
            None,
        ),
    ];
    fab.ns.enter(|| expect(&dp, &no_host)).unwrap();
    dp.set_host(&fab.host_params()).unwrap();
    let ready = vec![
        (
            "https to the VIP",
            UP,
            tcp4(ALLOWED4, ACME4, 40000, 443, b"x"),
            XDP_REDIRECT,
            None,
        ),
        ("tunnel traffic", FAB, tunnel, XDP_REDIRECT, None),
    ];
    fab.ns.enter(|| expect(&dp, &ready)).unwrap();
}

#[test]
fn fragments_without_ports_are_dropped() {
    require_root();
    let ts = tenants();
    let acme = &ts[0];
    let fab = FabricNs::new(&ts).unwrap();
    let dp = loaded(&fab, &ts).unwrap();
    // Inbound: the first fragment has the ports and is steered; the later
    // one has none to steer by.
    let big = tcp4(ALLOWED4, ACME4, 40000, 443, &[0x61; 600]);
    let (first, later) = fragments4(&big, 304);
    // Outbound replies: a tracked flow, then its reply in two fragments.
    let out = from_machine(acme, &acme.connectors[0], &udp4(ACME_VM4, PARTNER4, 40000, 53, b"q"));
    let p = first_port(v4(ACME_VM4), v4(PARTNER4), 40000, 53, 17, ports());
    let reply = udp4(PARTNER4, ACME_EGRESS4, 53, p, &[0x62; 600]);
    let (r_first, r_later) = fragments4(&reply, 304);
    let cases = vec![
        ("first fragment to a VIP", UP, first, XDP_REDIRECT, None),
        (
            "later fragment to a VIP",
            UP,
            later,
            XDP_DROP,
            Some(DropReason::Fragment),
        ),
        ("a flow out", FAB, out, XDP_REDIRECT, None),
        ("first fragment of its reply", UP, r_first, XDP_REDIRECT, None),
        (
            "later fragment of its reply",
            UP,
            r_later.clone(),
            XDP_DROP,
            Some(DropReason::Fragment),
        ),
    ];
    fab.ns.enter(|| expect(&dp, &cases)).unwrap();
    // Counted as fragments, too.
    let before = dp.counters(SIDE_UPLINK).unwrap();
    fab.ns.enter(|| dp.run(UP, &r_later).unwrap()).unwrap();
    assert_eq!(
        dp.counters(SIDE_UPLINK).unwrap().since(&before).get(Counter::Fragment),
        1
    );
}
