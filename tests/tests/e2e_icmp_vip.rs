//! End to end, path 5 for steered flows: a client behind a narrow link
//! (MTU 1280, between the internet namespace and the router `NAME-rt`)
//! downloads 1 MiB over TLS from a connector through a VIP. The
//! connector's full-size replies do not fit the narrow link; the internet
//! namespace answers them with fragmentation needed / packet too big, sent
//! to the VIP; carwash steers each error to the connector that sent the
//! reply, whose kernel lowers the path MTU, and the download completes.
//! Without that, the errors were dropped (`no_service`) and the transfer
//! stalled in a PMTU black hole.
use carwash_tests::labrun::LabRun;
use carwash_tests::require_root;
use dataplane_common::types::SIDE_UPLINK;
use dataplane_common::{Counter, DropReason};
use netlab::lab::{FAR_IF, FAR_V4, FAR_V6, NARROW_IF, NARROW_ROUTER_V4, NARROW_ROUTER_V6, one_mib};
use netlab::netns::NetNs;

/// Clients behind the narrow link, inside acme's allowlist.
const FAR_CLIENT_V4: &str = "198.51.100.77";
const FAR_CLIENT_V6: &str = "2001:db8:beef::77";

#[test]
fn packet_too_big_about_a_connectors_reply_reaches_the_connector() {
    require_root();
    let run = LabRun::up().unwrap();
    let acme = run.lab.tenant("acme").unwrap();
    let (vip4, vip6) = (acme.vip_v4().unwrap(), acme.vip_v6().unwrap());
    let far = NetNs::open(&run.lab.far).unwrap();
    let router = NetNs::open(&run.lab.router).unwrap();
    far.addr("lo", &format!("{FAR_CLIENT_V4}/32")).unwrap();
    far.addr("lo", &format!("{FAR_CLIENT_V6}/128")).unwrap();
    router
        .route(&format!("{FAR_CLIENT_V4}/32"), &FAR_V4.to_string(), Some(FAR_IF))
        .unwrap();
    router
        .route(&format!("{FAR_CLIENT_V6}/128"), &FAR_V6.to_string(), Some(FAR_IF))
        .unwrap();
    run.inet
        .route(
            &format!("{FAR_CLIENT_V4}/32"),
            &NARROW_ROUTER_V4.to_string(),
            Some(NARROW_IF),
        )
        .unwrap();
    run.inet
        .route(
            &format!("{FAR_CLIENT_V6}/128"),
            &NARROW_ROUTER_V6.to_string(),
            Some(NARROW_IF),
        )
        .unwrap();

    let want = one_mib();
    for (client, url) in [
        (FAR_CLIENT_V4, format!("https://{vip4}/1MiB.bin")),
        (FAR_CLIENT_V6, format!("https://[{vip6}]/1MiB.bin")),
    ] {
        let before = run.dp.counters(SIDE_UPLINK).unwrap();
        let out = far
            .exec(&["curl", "-sk", "--max-time", "30", "--interface", client, &url])
            .unwrap();
        let d = run.dp.counters(SIDE_UPLINK).unwrap().since(&before);
        assert!(
            out.status.success() && out.stdout == want,
            "{client}: {} bytes, {}; uplink counters: {d:?}",
            out.stdout.len(),
            String::from_utf8_lossy(&out.stderr)
        );
        // The errors were steered, none dropped for want of a service.
        let icmp = d.get(Counter::Icmp) + d.get(Counter::Icmpv6);
        assert!(icmp >= 1, "{client}: no ICMP error reached the uplink: {d:?}");
        assert_eq!(d.dropped(DropReason::NoService), 0, "{client}: {d:?}");
    }
}
