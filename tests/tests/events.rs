//! Data-path events through BPF_PROG_TEST_RUN: each refusal reports
//! exactly the event expected (every field checked), a new translation
//! names the machine and the egress IP and port, and a flood of denied
//! SYNs reports at most the tenant's budget, with summaries whose
//! suppressed counts add up to the packets dropped.
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use aya::maps::{MapData, RingBuf};
use carwash_tests::fabric::{FabricNs, loaded};
use carwash_tests::fixture::{XDP_DROP, XDP_REDIRECT};
use carwash_tests::inbound_cases::{Expect, addr16, inbound_cases, tenants};
use carwash_tests::outbound::*;
use carwash_tests::packets::*;
use carwash_tests::require_root;
use dataplane::Dataplane;
use dataplane::agent::events::Decoder;
use dataplane::event::Event;
use dataplane::event_maps::EventLimits;
use dataplane_common::events::{self as ev, DataEvent};
use dataplane_common::types::{CLASS_HTTPS, CLASS_NONE};
use dataplane_common::{DropReason, programs};

fn drain(ring: &mut RingBuf<MapData>) -> Vec<DataEvent> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), std::mem::size_of::<DataEvent>());
        // SAFETY: a whole record; every bit pattern is valid.
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const DataEvent) });
    }
    out
}

fn ip(a: &[u8; 16], v6: bool) -> IpAddr {
    if v6 {
        IpAddr::from(*a)
    } else {
        IpAddr::from([a[0], a[1], a[2], a[3]])
    }
}

/// The one event `packet` reports on `prog`, with the verdict checked.
fn one_event(dp: &Dataplane, ring: &mut RingBuf<MapData>, prog: &str, packet: &[u8], action: u32) -> DataEvent {
    drain(ring);
    let (got, _) = dp.run(prog, packet).unwrap();
    assert_eq!(got, action);
    let events = drain(ring);
    assert_eq!(events.len(), 1, "{events:#?}");
    events[0]
}

#[allow(clippy::too_many_arguments)]
fn check(
    e: &DataEvent,
    kind: u8,
    reason: DropReason,
    tenant: u32,
    class: u8,
    proto: u8,
    (src, sport): (IpAddr, u16),
    (dst, dport): (IpAddr, u16),
) {
    let v6 = src.is_ipv6();
    assert_eq!(
        (e.kind, e.reason, e.tenant, e.class, e.proto, e.v6),
        (kind, reason.index() as u8, tenant, class, proto, v6 as u8),
        "{e:#?}"
    );
    assert_eq!(
        (ip(&e.src, v6), e.sport, ip(&e.dst, v6), e.dport),
        (src, sport, dst, dport),
        "{e:#?}"
    );
    // BPF_PROG_TEST_RUN runs the program as on the loopback interface.
    assert_eq!(e.ifindex, 1, "{e:#?}");
    assert_eq!(e.generation, 0, "{e:#?}");
    assert_eq!(e.suppressed_total, 0, "{e:#?}");
    assert!(e.ts_ns > 0);
}

#[test]
fn each_refusal_reports_exactly_its_event() {
    require_root();
    let ts = tenants();
    let (acme, gamma) = (&ts[0], &ts[2]);
    let fab = FabricNs::new(&ts).unwrap();
    let mut dp = loaded(&fab, &ts).unwrap();
    let mut ring = dp.take_events().unwrap();
    let cases = inbound_cases();
    // A denied client, and an unknown port, on the uplink.
    for (reason, class) in [
        (DropReason::NotAllowed, CLASS_HTTPS),
        (DropReason::NoService, CLASS_NONE),
    ] {
        let c = cases
            .iter()
            .find(|c| matches!(c.expect, Expect::Drop(r) if r == reason) && c.src.is_ipv4())
            .expect("a case");
        let e = one_event(&dp, &mut ring, programs::UPLINK, &c.packet(), XDP_DROP);
        let tenant = e.tenant;
        assert!(tenant >= 1 && tenant <= ts.len() as u32, "{e:#?}");
        check(
            &e,
            ev::KIND_DROP,
            reason,
            tenant,
            class,
            6,
            (c.src, c.sport),
            (c.dst, c.dport),
        );
        assert_eq!(addr16(c.dst), e.dst);
    }
    fab.ns
        .enter(|| {
            // A spoofed VTEP claiming acme's VNI: the tunnel's addresses.
            let spoof = Ipv4Addr::new(10, 200, 9, 9);
            let inner = udp4(ACME_VM4, PARTNER4, 40000, 53, b"q");
            let pkt = from_vtep(spoof, acme.vni, &inner);
            let e = one_event(&dp, &mut ring, programs::FABRIC, &pkt, XDP_DROP);
            check(
                &e,
                ev::KIND_DROP,
                DropReason::VtepNotOfTenant,
                1,
                CLASS_NONE,
                17,
                (spoof.into(), e.sport),
                (Ipv4Addr::new(10, 200, 0, 1).into(), 4789),
            );
            // A tenant without egress: the machine's own packet.
            let vm = Ipv4Addr::new(10, 103, 0, 5);
            let pkt = from_machine(gamma, &gamma.connectors[0], &udp4(vm, PARTNER4, 40000, 53, b"q"));
            let e = one_event(&dp, &mut ring, programs::FABRIC, &pkt, XDP_DROP);
            check(
                &e,
                ev::KIND_DROP,
                DropReason::NoEgress,
                3,
                CLASS_NONE,
                17,
                (vm.into(), 40000),
                (PARTNER4.into(), 53),
            );
        })
        .unwrap();
    // A new translation, then port exhaustion, with three ports.
    let mut host = fab.host_params();
    host.snat_ports = (31000, 31002);
    dp.set_host(&host).unwrap();
    let m = &acme.connectors[0];
    let frame = |sport: u16| from_machine(acme, m, &udp4(ACME_VM4, PARTNER4, sport, 53, b"q"));
    fab.ns
        .enter(|| {
            let e = one_event(&dp, &mut ring, programs::FABRIC, &frame(1), XDP_REDIRECT);
            assert_eq!(e.kind, ev::KIND_TRANSLATION, "{e:#?}");
            assert_eq!((e.tenant, e.proto, e.v6), (1, 17, 0));
            assert_eq!((ip(&e.src, false), e.sport), (IpAddr::from(ACME_VM4), 1));
            assert_eq!(ip(&e.dst, false), IpAddr::from(ACME_EGRESS4));
            assert!((31000..=31002).contains(&e.dport), "{e:#?}");
            let ev = dataplane::event::from_data(&e, Some("acme"), None, std::time::SystemTime::now());
            assert_eq!(ev.kind, "translation");
            assert_eq!(ev.str("machine"), Some("10.101.0.5"));
            assert_eq!(ev.str("egress_ip"), Some("203.0.113.200"));
            for sport in 2..=3 {
                assert_eq!(dp.run(programs::FABRIC, &frame(sport)).unwrap().0, XDP_REDIRECT);
            }
            let e = one_event(&dp, &mut ring, programs::FABRIC, &frame(4), XDP_DROP);
            check(
                &e,
                ev::KIND_PORTS_EXHAUSTED,
                DropReason::PortsExhausted,
                1,
                CLASS_NONE,
                17,
                (ACME_VM4.into(), 4),
                (PARTNER4.into(), 53),
            );
            let ev = dataplane::event::from_data(&e, Some("acme"), None, std::time::SystemTime::now());
            assert_eq!(
                (ev.kind.as_str(), ev.str("reason")),
                ("ports_exhausted", Some("snat_ports_exhausted"))
            );
        })
        .unwrap();
}

#[test]
fn a_flood_reports_the_budget_and_summaries_that_add_up() {
    require_root();
    let ts = tenants();
    let fab = FabricNs::new(&ts).unwrap();
    let mut dp = loaded(&fab, &ts).unwrap();
    let (rate, burst) = (50u32, 20u32);
    dp.set_event_limits(EventLimits {
        rate,
        burst,
        flow_sample: 0,
    })
    .unwrap();
    let mut ring = dp.take_events().unwrap();
    let c = inbound_cases()
        .into_iter()
        .find(|c| matches!(c.expect, Expect::Drop(DropReason::NotAllowed)) && c.src.is_ipv4())
        .unwrap();
    let syn = syn4(
        match c.src {
            IpAddr::V4(a) => a,
            _ => unreachable!(),
        },
        match c.dst {
            IpAddr::V4(a) => a,
            _ => unreachable!(),
        },
        c.sport,
        c.dport,
    );
    let flood = 100_000u32;
    let t0 = Instant::now();
    let res = dp.test_run(programs::UPLINK, &syn, None, flood).unwrap();
    let elapsed = t0.elapsed();
    assert_eq!(res.return_value, XDP_DROP);
    let records = drain(&mut ring);
    let tenant = records.first().expect("some events").tenant;
    // The kernel may move a long run to another CPU, which has a budget of
    // its own.
    let cpus = std::thread::available_parallelism().unwrap().get() as f64;
    let allowed = cpus * (burst as f64 + rate as f64 * elapsed.as_secs_f64() + 1.0);
    assert!(
        (records.len() as f64) <= allowed,
        "{} events in {elapsed:?}, budget {allowed}",
        records.len()
    );
    assert!(records.iter().all(|e| e.kind == ev::KIND_DROP && e.tenant == tenant));
    // Held back, for a flood of 100,000: nearly all.
    assert!(records.len() < 1_000, "{} events", records.len());
    // What the agent makes of them: the events, with summaries of what
    // was held back before each, then of the rest.
    let mut d = Decoder::default();
    let mut out: Vec<Event> = Vec::new();
    for e in &records {
        d.decode(e, &|_| None, &|_| None, &mut out);
    }
    d.flush(
        &|ids| {
            let all = dp.event_buckets_of(ids).unwrap();
            Some(
                all.into_iter()
                    .map(|(id, b)| (id, b.iter().map(|b| b.suppressed).collect()))
                    .collect(),
            )
        },
        &|_| None,
        &mut out,
    );
    let drops = out.iter().filter(|e| e.kind == "drop").count() as u64;
    let suppressed: u64 = out
        .iter()
        .filter(|e| e.kind == "summary")
        .map(|e| e.fields["suppressed"].as_u64().unwrap())
        .sum();
    assert_eq!(drops, records.len() as u64);
    assert_eq!(
        drops + suppressed,
        flood as u64,
        "{drops} events + {suppressed} suppressed"
    );
    let counts = dp.event_counts().unwrap();
    assert_eq!(counts[ev::KIND_DROP as usize].emitted, drops);
    assert_eq!(
        counts[ev::KIND_DROP as usize].suppressed + counts[ev::KIND_DROP as usize].lost,
        suppressed
    );
}

#[test]
fn allowed_flows_are_reported_only_when_sampled() {
    require_root();
    let ts = tenants();
    let fab = FabricNs::new(&ts).unwrap();
    let mut dp = loaded(&fab, &ts).unwrap();
    let mut ring = dp.take_events().unwrap();
    let c = inbound_cases()
        .into_iter()
        .find(|c| matches!(c.expect, Expect::Steer { .. }) && c.src.is_ipv4())
        .unwrap();
    let packet = c.packet();
    let run = |dp: &Dataplane, n: usize| {
        fab.ns
            .enter(|| {
                // One CPU: the countdown is per CPU.
                // SAFETY: sched_setaffinity of this thread with a valid set.
                unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(0, &mut set);
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                }
                for _ in 0..n {
                    assert_eq!(dp.run(programs::UPLINK, &packet).unwrap().0, XDP_REDIRECT);
                }
            })
            .unwrap()
    };
    // Off by default.
    run(&dp, 10);
    assert!(drain(&mut ring).is_empty());
    dp.set_event_limits(EventLimits {
        rate: 100,
        burst: 200,
        flow_sample: 3,
    })
    .unwrap();
    run(&dp, 9);
    let flows = drain(&mut ring);
    assert_eq!(flows.len(), 3, "one in three of 9 on one CPU: {flows:#?}");
    let e = flows[0];
    assert_eq!((e.kind, e.class, e.proto), (ev::KIND_FLOW, CLASS_HTTPS, 6));
    assert_eq!((ip(&e.src, false), e.sport), (c.src, c.sport));
    assert_eq!((ip(&e.dst, false), e.dport), (c.dst, c.dport));
}

#[test]
fn a_tenant_failing_closed_reports_fail_closed() {
    require_root();
    let ts = tenants();
    let fab = FabricNs::new(&ts).unwrap();
    let mut dp = loaded(&fab, &ts).unwrap();
    let mut ring = dp.take_events().unwrap();
    let c = inbound_cases()
        .into_iter()
        .find(|c| matches!(c.expect, Expect::Steer { .. }) && c.src.is_ipv4())
        .unwrap();
    let tenant = {
        drain(&mut ring);
        dp.set_event_limits(EventLimits {
            rate: 100,
            burst: 200,
            flow_sample: 1,
        })
        .unwrap();
        let e = fab
            .ns
            .enter(|| one_event(&dp, &mut ring, programs::UPLINK, &c.packet(), XDP_REDIRECT))
            .unwrap();
        dp.set_event_limits(EventLimits {
            rate: 100,
            burst: 200,
            flow_sample: 0,
        })
        .unwrap();
        e.tenant
    };
    dp.set_tenant_ready(tenant, false).unwrap();
    let e = one_event(&dp, &mut ring, programs::UPLINK, &c.packet(), XDP_DROP);
    check(
        &e,
        ev::KIND_FAIL_CLOSED,
        DropReason::NotReady,
        tenant,
        CLASS_HTTPS,
        6,
        (c.src, c.sport),
        (c.dst, c.dport),
    );
    let ev = dataplane::event::from_data(&e, None, None, std::time::SystemTime::now());
    assert_eq!(
        (ev.kind.as_str(), ev.str("reason")),
        ("fail_closed", Some("tenant_not_ready"))
    );
}
