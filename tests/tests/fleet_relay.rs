//! Replies between the hosts of a fleet, through BPF_PROG_TEST_RUN: two
//! loads of the programs stand for two hosts with disjoint source-NAT port
//! blocks. A flow translated by host B whose reply reaches host A is passed
//! by A, whole, to B's own fabric address (VXLAN, `RELAY_VNI`), and B
//! translates it and encapsulates it to the machine that opened the flow,
//! as if its uplink had received it; both count it. A relayed packet from
//! a stranger, or for a port B does not own (which could bounce back), is
//! dropped; a reply of A's own block that A does not track is not passed on.
use carwash_tests::fabric::{FABRIC_MAC, FabricNs, ROUTER_MAC, vtep_mac};
use carwash_tests::fixture::{XDP_DROP, XDP_REDIRECT};
use carwash_tests::fleet::*;
use carwash_tests::inbound_cases::tenants;
use carwash_tests::outbound::*;
use carwash_tests::packets::*;
use carwash_tests::require_root;
use dataplane::Dataplane;
use dataplane_common::types::{RELAY_VNI, SIDE_FABRIC, SIDE_UPLINK};
use dataplane_common::{DropReason, programs};

fn dropped(dp: &Dataplane, side: u32, why: DropReason) -> u64 {
    dp.counters(side).unwrap().dropped(why)
}

#[test]
fn a_reply_reaches_the_host_that_owns_its_port() {
    require_root();
    let ts = tenants();
    let acme = &ts[0];
    let c0 = &acme.connectors[0];
    let fab = FabricNs::new(&ts).unwrap();
    reach_hosts(&fab).unwrap();
    let (a, b) = (host(&fab, 0).unwrap(), host(&fab, 1).unwrap());
    let (block_a, block_b) = (
        cluster(0).blocks(ports()).unwrap().own(),
        cluster(1).blocks(ports()).unwrap().own(),
    );
    assert_eq!((block_a, block_b), ((20000, 39999), (40000, 59999)));

    fab.ns
        .enter(|| {
            // Host B translates an outbound flow to a port of its block.
            let port = open_flow(&b).unwrap();
            assert!((block_b.0..=block_b.1).contains(&port), "port {port} outside B's block");

            // Its reply reaches host A, which passes it to B whole.
            let reply = reply(port);
            let hash = reply_hash(port);
            let relayed = relayed(&reply, hash);
            let (action, got) = a.run(programs::UPLINK, &reply).unwrap();
            assert_eq!(action, XDP_REDIRECT);
            assert_eq!(got, relayed, "what A passes to B");
            assert_eq!(a.relay_stats().unwrap().sent, 1);

            // B translates it and sends it to the machine of the flow.
            let (action, got) = b.run(programs::FABRIC, &relayed).unwrap();
            assert_eq!(action, XDP_REDIRECT);
            assert_eq!(
                got,
                to_machine(acme, c0, hash, &udp4(PARTNER4, ACME_VM4, 53, 40000, b"answer")),
                "what B sends the machine"
            );
            assert_eq!(b.relay_stats().unwrap().received, 1);

            // A stranger's relay is refused, and so is one for a port B
            // does not own: passing it on again could loop.
            let mut forged = relayed.clone();
            forged[26..30].copy_from_slice(&STRANGER.octets());
            forged[24..26].copy_from_slice(&[0, 0]);
            let sum = dataplane_common::checksum::fold(dataplane_common::checksum::sum_bytes(0, &forged[14..34]));
            forged[24..26].copy_from_slice(&sum.to_be_bytes());
            assert_eq!(b.run(programs::FABRIC, &forged).unwrap().0, XDP_DROP);
            assert_eq!(dropped(&b, SIDE_FABRIC, DropReason::VtepNotOfTenant), 1);
            let not_b = vxlan_frame(
                FABRIC_MAC,
                vtep_mac(HOST_B),
                HOST_A,
                HOST_B,
                1,
                RELAY_VNI,
                ROUTER_MAC,
                [0; 6],
                ip_of(&udp4(PARTNER4, ACME_EGRESS4, 53, 30000, b"x")),
            );
            assert_eq!(b.run(programs::FABRIC, &not_b).unwrap().0, XDP_DROP);
            assert_eq!(b.relay_stats().unwrap().received, 1);

            // A reply in A's own block that A does not track stays A's.
            let untracked = udp4(PARTNER4, ACME_EGRESS4, 53, 30000, b"x");
            assert_eq!(a.run(programs::UPLINK, &untracked).unwrap().0, XDP_DROP);
            assert_eq!(dropped(&a, SIDE_UPLINK, DropReason::NoConntrack), 1);
            assert_eq!(a.relay_stats().unwrap().sent, 1);
        })
        .unwrap();
}

#[test]
fn an_icmp_error_about_another_hosts_flow_reaches_its_owner() {
    require_root();
    let ts = tenants();
    let acme = &ts[0];
    let c0 = &acme.connectors[0];
    let fab = FabricNs::new(&ts).unwrap();
    reach_hosts(&fab).unwrap();
    let (a, b) = (host(&fab, 0).unwrap(), host(&fab, 1).unwrap());

    fab.ns
        .enter(|| {
            // B translated a flow; a router on its path answers A with
            // fragmentation needed, quoting the packet as it left B.
            let port = open_flow(&b).unwrap();
            let sent = udp4(ACME_EGRESS4, PARTNER4, port, 53, b"q");
            let error = icmp4_frag_needed(ROUTER4, ACME_EGRESS4, 1280, ip_of(&sent));
            let hash = dataplane_common::hash::flow_hash(
                &carwash_tests::inbound_cases::addr16(v4(ROUTER4)),
                &carwash_tests::inbound_cases::addr16(v4(ACME_EGRESS4)),
                0,
                3 << 8 | 4,
                1,
            );
            let (action, got) = a.run(programs::UPLINK, &error).unwrap();
            assert_eq!(action, XDP_REDIRECT, "A's verdict on the error");
            assert_eq!(got, relayed(&error, hash), "what A passes to B");
            assert_eq!(a.relay_stats().unwrap().sent, 1);
            assert_eq!(dropped(&a, SIDE_UPLINK, DropReason::NoConntrack), 0);

            // B translates it back, quote and all, to the machine's own
            // address and port, as if its uplink had received it.
            let (action, got) = b.run(programs::FABRIC, &relayed(&error, hash)).unwrap();
            assert_eq!(action, XDP_REDIRECT, "B's verdict on the passed error");
            let orig = udp4(ACME_VM4, PARTNER4, 40000, 53, b"q");
            assert_eq!(
                got,
                to_machine(
                    acme,
                    c0,
                    hash,
                    &icmp4_frag_needed(ROUTER4, ACME_VM4, 1280, ip_of(&orig))
                ),
                "what B sends the machine"
            );
            assert_eq!(b.relay_stats().unwrap().received, 1);
            assert_eq!(
                b.counters(SIDE_UPLINK)
                    .unwrap()
                    .get(dataplane_common::Counter::SnatIcmpError),
                1
            );

            // An error about a port of nobody's flow on B is dropped there,
            // not passed on again.
            let stale = udp4(ACME_EGRESS4, PARTNER4, port.wrapping_add(1), 53, b"q");
            let stale_error = icmp4_frag_needed(ROUTER4, ACME_EGRESS4, 1280, ip_of(&stale));
            assert_eq!(a.run(programs::UPLINK, &stale_error).unwrap().0, XDP_REDIRECT);
            assert_eq!(
                b.run(programs::FABRIC, &relayed(&stale_error, hash)).unwrap().0,
                XDP_DROP
            );
            assert_eq!(b.relay_stats().unwrap().sent, 0);
        })
        .unwrap();
}
