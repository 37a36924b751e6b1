//! Path 5 for steered flows through BPF_PROG_TEST_RUN: an ICMP error sent
//! to a VIP (a router's packet too big or unreachable about a machine's
//! reply) follows the flow it quotes to the machine the client's own
//! packets reach, untouched, for IPv4 and IPv6, https and jms; errors about
//! flows no client could have opened are dropped with their reason.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use carwash_policy::Backend;
use carwash_tests::fabric::{FabricNs, loaded};
use carwash_tests::fixture::{Case, check_all};
use carwash_tests::inbound_cases::{ACME4, ACME6, ALLOWED4, ALLOWED6, BETA4, DENIED4, addr16, tenants};
use carwash_tests::outbound::to_machine;
use carwash_tests::packets::*;
use carwash_tests::require_root;
use dataplane_common::hash::flow_hash;
use dataplane_common::types::MAGLEV_SIZE;
use dataplane_common::{Counter, DropReason, programs};

/// A router between carwash and the clients.
const ROUTER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf00, 0, 0, 0, 0, 1);

#[test]
fn icmp_errors_about_steered_flows_follow_them() {
    require_root();
    let ts = tenants();
    let fab = FabricNs::new(&ts).unwrap();
    let mut dp = loaded(&fab, &ts).unwrap();
    let acme = &ts[0];
    let info = dp.tenant_info(1).unwrap().unwrap();
    let connector = |client: IpAddr, vip: IpAddr, port: u16| -> (u32, &Backend) {
        let h = flow_hash(&addr16(client), &addr16(vip), port, 443, 6);
        (
            h,
            &acme.connectors[info.maglev[(h % MAGLEV_SIZE as u32) as usize] as usize],
        )
    };

    // For enough client ports that both connectors serve some: the client's
    // segment and the error about the connector's reply to it reach the same
    // connector, through the same tunnel source port.
    let mut cases = Vec::new();
    let mut seen = [false; 2];
    for port in 40000..40016u16 {
        let (h, c) = connector(ALLOWED4.into(), ACME4.into(), port);
        seen[acme.connectors.iter().position(|b| b.vtep == c.vtep).unwrap()] = true;
        let client = tcp4(ALLOWED4, ACME4, port, 443, b"GET /");
        cases.push(Case::redirected(
            "client segment",
            client.clone(),
            Counter::Tcp,
            to_machine(acme, c, h, &client),
            Counter::Steered,
        ));
        let reply = tcp4_sized_df(ACME4, ALLOWED4, 443, port, 1500, true);
        let error = icmp4_frag_needed(ROUTER4, ACME4, 1400, &ip_of(&reply)[..28]);
        cases.push(Case::redirected(
            "frag needed about a connector's reply",
            error.clone(),
            Counter::Icmp,
            to_machine(acme, c, h, &error),
            Counter::Steered,
        ));

        let (h, c) = connector(ALLOWED6.into(), ACME6.into(), port);
        let client = tcp6(ALLOWED6, ACME6, port, 443, b"GET /");
        cases.push(Case::redirected(
            "client segment v6",
            client.clone(),
            Counter::Tcp,
            to_machine(acme, c, h, &client),
            Counter::Steered,
        ));
        let reply = tcp6(ACME6, ALLOWED6, 443, port, &[0x44; 1400]);
        let error = icmp6_packet_too_big(ROUTER6, ACME6, 1280, &ip_of(&reply)[..1184]);
        cases.push(Case::redirected(
            "packet too big about a connector's v6 reply",
            error.clone(),
            Counter::Icmpv6,
            to_machine(acme, c, h, &error),
            Counter::Steered,
        ));
    }
    assert_eq!(seen, [true, true], "the ports chosen reach both connectors");

    // jms: the active core, whoever the error comes from.
    let reply = tcp4(ACME4, ALLOWED4, 61616, 50000, b"message");
    let unreachable = icmp4_unreachable(ROUTER4, ACME4, &ip_of(&reply)[..28]);
    let h = flow_hash(&addr16(ALLOWED4.into()), &addr16(ACME4.into()), 50000, 61616, 6);
    cases.push(Case::redirected(
        "host unreachable about a core's reply",
        unreachable.clone(),
        Counter::Icmp,
        to_machine(acme, &acme.cores[0], h, &unreachable),
        Counter::Steered,
    ));

    // Errors about flows no client could have opened.
    let denied = tcp4(ACME4, DENIED4, 443, 40000, b"?");
    cases.push(Case::dropped(
        "about a client the allowlist refuses",
        icmp4_frag_needed(ROUTER4, ACME4, 1400, &ip_of(&denied)[..28]),
        Counter::Icmp,
        DropReason::NotAllowed,
    ));
    let no_service = tcp4(ACME4, ALLOWED4, 22, 40000, b"?");
    cases.push(Case::dropped(
        "about a port with no service",
        icmp4_frag_needed(ROUTER4, ACME4, 1400, &ip_of(&no_service)[..28]),
        Counter::Icmp,
        DropReason::NoService,
    ));
    let other_vip = tcp4(BETA4, ALLOWED4, 443, 40000, b"?");
    cases.push(Case::dropped(
        "quoting another tenant's VIP",
        icmp4_frag_needed(ROUTER4, ACME4, 1400, &ip_of(&other_vip)[..28]),
        Counter::Icmp,
        DropReason::NoService,
    ));
    cases.push(Case::dropped(
        "a quote cut inside its transport header",
        icmp4_frag_needed(ROUTER4, ACME4, 1400, &ip_of(&reply)[..24]),
        Counter::Icmp,
        DropReason::Malformed,
    ));
    cases.push(Case::dropped(
        "an echo request is no error",
        icmp4_echo(ROUTER4, ACME4, 1, 1),
        Counter::Icmp,
        DropReason::NoService,
    ));

    fab.ns
        .enter(|| check_all(&dp, programs::UPLINK, &cases))
        .unwrap()
        .unwrap();

    // After a core switch the errors about jms flows follow to the new
    // active core, as the flows themselves do.
    dp.set_active_core(1, 1).unwrap();
    let after = vec![Case::redirected(
        "host unreachable after the switch",
        unreachable.clone(),
        Counter::Icmp,
        to_machine(acme, &acme.cores[1], h, &unreachable),
        Counter::Steered,
    )];
    fab.ns
        .enter(|| check_all(&dp, programs::UPLINK, &after))
        .unwrap()
        .unwrap();
}
