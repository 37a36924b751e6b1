//! Next hops the kernel has not resolved: the programs' FIB lookup fails
//! (the packet is dropped as `no_route`) and reports the next hop; the
//! agent's handler has the kernel resolve it and keep it resolved (a
//! managed neighbour), and the next packet goes through. Here the machine
//! behind the fabric is a real peer that answers ARP, with no static
//! neighbour anywhere.
use std::time::{Duration, Instant};

use carwash_tests::fixture::{XDP_DROP, XDP_REDIRECT};
use carwash_tests::inbound_cases::{ACME4, ALLOWED4, tenants};
use carwash_tests::packets::syn4;
use carwash_tests::require_root;
use dataplane::Dataplane;
use dataplane::tables::{DEFAULT_SNAT_PORTS, HostParams};
use dataplane_common::{DropReason, programs};
use netlab::netns::{NetNs, veth_pair};

#[test]
fn an_unresolved_next_hop_is_resolved_and_kept() {
    require_root();
    let ts = tenants();
    let acme = &ts[0];
    let host = NetNs::new("cwt-nh").unwrap();
    let peer = NetNs::new("cwt-nhp").unwrap();
    veth_pair(&host, "fabric", None, &peer, "vteps", None).unwrap();
    veth_pair(&host, "uplink", None, &host, "upeer", None).unwrap();
    host.addr("fabric", "10.200.0.1/16").unwrap();
    host.sysctl("net.ipv4.ip_forward", "1").unwrap();
    // The peer is every machine of acme.
    for b in acme.connectors.iter().chain(&acme.cores) {
        peer.addr("vteps", &format!("{}/16", b.vtep)).unwrap();
    }
    let (fabric, uplink) = host
        .enter(|| {
            (
                carwash_tests::fabric::ifindex("fabric").unwrap(),
                carwash_tests::fabric::ifindex("uplink").unwrap(),
            )
        })
        .unwrap();
    let mut dp = Dataplane::load(None).unwrap();
    dp.set_host(&HostParams {
        vtep: "10.200.0.1".parse().unwrap(),
        router_mac: [2, 0, 0, 0, 0, 1],
        fabric_ifindex: fabric,
        fabric_mtu: 1500,
        uplink_ifindex: uplink,
        snat_ports: DEFAULT_SNAT_PORTS,
    })
    .unwrap();
    dp.install_tenant(1, acme).unwrap();
    let syn = syn4(ALLOWED4, ACME4, 40000, 443);
    let run = |dp: &Dataplane| host.enter(|| dp.run(programs::UPLINK, &syn).unwrap().0).unwrap();

    // Nothing resolved the machine: dropped, and reported.
    let before = dp.counters(dataplane_common::types::SIDE_UPLINK).unwrap();
    assert_eq!(run(&dp), XDP_DROP);
    let d = dp
        .counters(dataplane_common::types::SIDE_UPLINK)
        .unwrap()
        .since(&before);
    assert_eq!(d.dropped(DropReason::NoRoute), 1);
    let hops = dp.take_unresolved().unwrap();
    assert_eq!(hops.len(), 1, "{hops:?}");
    let (ifindex, ip) = hops[0];
    assert_eq!(ifindex, fabric);
    assert!(
        acme.connectors.iter().any(|c| std::net::IpAddr::V4(c.vtep) == ip),
        "the next hop is the connector the flow goes to: {ip}"
    );
    assert!(dp.take_unresolved().unwrap().is_empty(), "taken once");

    // The agent's handler: a managed neighbour, resolved by the kernel.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let added = host
        .enter(|| rt.block_on(dataplane::agent::host::manage_neighbour(ifindex, ip)))
        .unwrap()
        .unwrap();
    assert!(added);
    let again = host
        .enter(|| rt.block_on(dataplane::agent::host::manage_neighbour(ifindex, ip)))
        .unwrap()
        .unwrap();
    assert!(!again, "already managed: left as it is");
    let t0 = Instant::now();
    loop {
        let neigh = host.ip(&["neigh", "show", "dev", "fabric", &ip.to_string()]).unwrap();
        if neigh.contains("managed") && neigh.contains("lladdr") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "not resolved: {neigh}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(run(&dp), XDP_REDIRECT, "the next packet goes through");
    assert!(dp.take_unresolved().unwrap().is_empty());
}
