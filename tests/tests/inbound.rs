//! Path 1 (inbound) through BPF_PROG_TEST_RUN: services, allowlists per
//! class, backend choice, the exact VXLAN frame, MSS clamping and the
//! too-big answers, for IPv4 and IPv6 VIPs. The cases are the shared list
//! of `carwash_tests::inbound_cases` (which `carwash trace` is checked
//! against too); here each becomes a fixture with its exact output frame
//! and counters.
use std::net::IpAddr;

use carwash_policy::Tenant;
use carwash_tests::fabric::{FABRIC_MAC, FabricNs, HOST_VTEP, ROUTER_MAC, loaded, vtep_mac};
use carwash_tests::fixture::{Case, Output, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, check_all};
use carwash_tests::inbound_cases::{
    Expect, InboundCase, Machine, Shape, addr16, after_core_switch, inbound_cases, tenants,
};
use carwash_tests::packets::*;
use carwash_tests::require_root;
use dataplane::Dataplane;
use dataplane_common::hash::{flow_hash, vxlan_source_port};
use dataplane_common::{Counter, programs};

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

/// The fixture of a shared case: its exact output frame and counters.
fn fixture(dp: &Dataplane, ts: &[Tenant], c: &InboundCase) -> Case {
    let packet = c.packet();
    let ipv = if c.src.is_ipv6() { Counter::Ipv6 } else { Counter::Ipv4 };
    let mut counters = vec![(ipv, 1), (Counter::Tcp, 1)];
    let (action, output, drops) = match c.expect {
        Expect::Steer { tenant, to } => {
            let id = ts.iter().position(|t| t.name == tenant).expect("tenant of the case") as u32 + 1;
            let t = &ts[id as usize - 1];
            let info = dp.tenant_info(id).unwrap().unwrap();
            let i = c.machine_index(&info);
            let backend = match to {
                Machine::Connector => &t.connectors[i],
                Machine::Core(_) => &t.cores[i],
            };
            // A SYN leaves with its MSS clamped to what the fabric carries
            // (1500 - 50 encapsulation - IP - TCP), if it announced more.
            let sent = match c.shape {
                Shape::Syn { mss } => {
                    let clamp = if c.src.is_ipv6() { 1390 } else { 1410 };
                    syn_with_mss(c.src, c.dst, c.sport, c.dport, mss.min(clamp))
                }
                _ => packet.clone(),
            };
            counters.push((Counter::Steered, 1));
            let out = steered(&sent, c.src, c.dst, c.sport, c.dport, t, backend);
            (XDP_REDIRECT, Output::Exact(out), vec![])
        }
        Expect::Drop(why) => (XDP_DROP, Output::Unchanged, vec![(why, 1)]),
        Expect::TooBig { mtu } => {
            let answer = if c.src.is_ipv6() {
                packet_too_big_for(&packet, mtu.into())
            } else {
                frag_needed_for(&packet, mtu)
            };
            (
                XDP_TX,
                Output::Exact(answer),
                vec![(dataplane_common::DropReason::TooBigIcmpSent, 1)],
            )
        }
        Expect::Pass => (XDP_PASS, Output::Unchanged, vec![]),
    };
    Case {
        name: c.name,
        packet,
        action,
        output,
        counters,
        drops,
    }
}

#[test]
fn inbound_fixtures() {
    require_root();
    let ts = tenants();
    let fab = FabricNs::new(&ts).unwrap();
    let mut dp = loaded(&fab, &ts).unwrap();

    let cases: Vec<Case> = inbound_cases().iter().map(|c| fixture(&dp, &ts, c)).collect();
    fab.ns
        .enter(|| check_all(&dp, programs::UPLINK, &cases))
        .unwrap()
        .unwrap();

    // Switching to the standby core is one update; jms follows it.
    dp.set_active_core(1, 1).unwrap();
    let after: Vec<Case> = after_core_switch().iter().map(|c| fixture(&dp, &ts, c)).collect();
    fab.ns
        .enter(|| check_all(&dp, programs::UPLINK, &after))
        .unwrap()
        .unwrap();

    // Per-tenant counters saw the same: beta dropped two (not allowed), and
    // its jms class is the one that was refused.
    let beta_stats = dp.tenant_stats(2).unwrap();
    let na = dataplane_common::DropReason::NotAllowed.slot();
    assert_eq!(beta_stats[dataplane_common::types::CLASS_JMS as usize][na], 1);
    assert_eq!(beta_stats[dataplane_common::types::CLASS_HTTPS as usize][na], 1);
    let acme_stats = dp.tenant_stats(1).unwrap();
    let https = &acme_stats[dataplane_common::types::CLASS_HTTPS as usize];
    assert_eq!(https[dataplane_common::drop::STEERED_PACKETS], 6);
}
