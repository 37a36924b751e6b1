//! Probe results carried into the maps move traffic as the contract says,
//! seen through the uplink program itself: `fall` failures of the active
//! core make the standby active (JMS to the VIP reaches it), its recovery
//! does not move JMS back (it does with `failback = true`, after the
//! hold-down); a connector declared down gets no new flows and the other's
//! flows stay; back up, it gets its flows back; a twin tenant's machine with
//! the same private addresses failing moves nothing of this one.
use std::net::{IpAddr, Ipv4Addr};

use carwash_policy::{Millis, Tenant};
use carwash_tests::fabric::{FabricNs, loaded, repo_policies};
use carwash_tests::fixture::XDP_REDIRECT;
use carwash_tests::packets::tcp4;
use carwash_tests::require_root;
use dataplane::Dataplane;
use dataplane::health::apply::record_probe;
use dataplane::health::known::{Known, LATENCY_REFRESH_MS};
use dataplane::health::{HOLD_DOWN_INTERVALS, Machine, Probe};
use dataplane_common::programs;

const ACME: u32 = 1;
const TWIN: u32 = 2;

fn vtep_of(dp: &Dataplane, vip: IpAddr, sport: u16, dport: u16) -> Ipv4Addr {
    let IpAddr::V4(vip) = vip else { unreachable!() };
    let pkt = tcp4(
        Ipv4Addr::new(198, 51, 100, (sport % 200) as u8 + 1),
        vip,
        sport,
        dport,
        b"x",
    );
    let (action, out) = dp.run(programs::UPLINK, &pkt).unwrap();
    assert_eq!(action, XDP_REDIRECT, "flow from port {sport} to {dport}");
    Ipv4Addr::new(out[30], out[31], out[32], out[33])
}

fn fail() -> Probe {
    Probe::Fail {
        why: "connection refused".into(),
    }
}

fn pass() -> Probe {
    Probe::Pass { latency_us: 120 }
}

fn m(s: &str) -> Machine {
    s.parse().unwrap()
}

#[test]
fn probe_results_fail_over_cores_and_move_only_a_down_connectors_flows() {
    require_root();
    let mut acme = repo_policies().tenants.into_iter().find(|t| t.name == "acme").unwrap();
    acme.health.interval = Millis(1000);
    let mut twin: Tenant = acme.clone();
    twin.name = "twin".into();
    twin.vni = 1999;
    twin.vips = vec!["203.0.113.99".parse().unwrap()];
    twin.egress = None;
    let fab = FabricNs::new(&[acme.clone(), twin.clone()]).unwrap();
    let mut dp = loaded(&fab, &[acme.clone(), twin.clone()]).unwrap();
    let mut known = Known::new();
    let vip = acme.vips[0];
    let (core0, core1) = (acme.cores[0].vtep, acme.cores[1].vtep);
    let (conn0, conn1) = (acme.connectors[0].vtep, acme.connectors[1].vtep);
    let run = |dp: &Dataplane, sport: u16, dport: u16| fab.ns.enter(|| vtep_of(dp, vip, sport, dport)).unwrap();
    let https = |dp: &Dataplane| -> Vec<Ipv4Addr> { (0..400u16).map(|i| run(dp, 20000 + i * 7, 443)).collect() };

    assert_eq!(run(&dp, 40000, 61616), core0);
    let before = https(&dp);
    assert!(before.contains(&conn0) && before.contains(&conn1));

    // The twin's core/0 (same VTEP and MAC as acme's) fails: acme keeps it.
    let mut t = 0u64;
    for _ in 0..acme.health.fall {
        t += 1000;
        record_probe(&mut dp, &mut known, TWIN, &twin, m("core/0"), fail(), t).unwrap();
    }
    assert_eq!(run(&dp, 40000, 61616), core0, "the twin's failure moved acme's JMS");
    assert_eq!(https(&dp), before);

    // Acme's active core fails: nothing before `fall`, the standby at `fall`.
    for i in 1..=acme.health.fall {
        t += 1000;
        let o = record_probe(&mut dp, &mut known, ACME, &acme, m("core/0"), fail(), t).unwrap();
        if i < acme.health.fall {
            assert_eq!((o.transition, o.core_switch), (None, None), "failure {i}");
            assert_eq!(run(&dp, 40000, 61616), core0);
        } else {
            assert!(o.transition.is_some());
            assert_eq!(o.core_switch, Some((0, 1)));
        }
    }
    for sport in [40000, 40001, 50000] {
        assert_eq!(run(&dp, sport, 61616), core1, "JMS reaches the standby");
        assert_eq!(run(&dp, sport, 61617), core1);
    }

    // Core/0 recovers: it stays standby (failback is off), however long.
    for _ in 0..(HOLD_DOWN_INTERVALS * 3) {
        t += 1000;
        let o = record_probe(&mut dp, &mut known, ACME, &acme, m("core/0"), pass(), t).unwrap();
        assert_eq!(o.core_switch, None);
    }
    assert_eq!(run(&dp, 40000, 61616), core1, "no failback without failback = true");

    // Connector/0 goes down: its flows move, connector/1's stay.
    for _ in 0..acme.health.fall {
        t += 1000;
        record_probe(&mut dp, &mut known, ACME, &acme, m("connector/0"), fail(), t).unwrap();
    }
    let during = https(&dp);
    for (i, (b, d)) in before.iter().zip(&during).enumerate() {
        assert_eq!(*d, conn1, "flow {i} still on the connector that is down");
        if *b == conn1 {
            assert_eq!(*d, conn1, "flow {i} of the connector that stayed moved");
        }
    }
    // Back up after `rise` passes: exactly its flows come back.
    for _ in 0..acme.health.rise {
        t += 1000;
        record_probe(&mut dp, &mut known, ACME, &acme, m("connector/0"), pass(), t).unwrap();
    }
    assert_eq!(https(&dp), before);

    // Both connectors down: spread over both as if up, and said so.
    let mut said = false;
    for c in ["connector/0", "connector/1"] {
        for _ in 0..acme.health.fall {
            t += 1000;
            said |= record_probe(&mut dp, &mut known, ACME, &acme, m(c), fail(), t)
                .unwrap()
                .all_connectors_out;
        }
    }
    assert!(said, "all connectors out is reported");
    assert_eq!(https(&dp), before);

    // With failback = true, core/0 (up for more than the hold-down since
    // the passes above) takes over again at its next probe. That it waits
    // for the hold-down is `health::decide`'s failback test.
    acme.health.failback = true;
    let first = t + 1000;
    let mut switched_at = None;
    for _ in 0..(HOLD_DOWN_INTERVALS * 2) {
        t += 1000;
        let o = record_probe(&mut dp, &mut known, ACME, &acme, m("core/0"), pass(), t).unwrap();
        if o.core_switch == Some((1, 0)) {
            switched_at = Some(t);
            break;
        }
    }
    let at = switched_at.expect("failback happened");
    assert_eq!(at, first, "failback at the first probe after it was allowed");
    assert_eq!(run(&dp, 40000, 61616), core0);

    // What a result that changes nothing costs the agent's loop (the
    // decisions; the maps are read once per tenant and written on changes
    // only), for the bench figures.
    let n = 4000u32;
    let started = std::time::Instant::now();
    for i in 0..n {
        t += 1;
        let machine = ["connector/0", "connector/1", "core/0", "core/1"][i as usize % 4];
        record_probe(&mut dp, &mut known, ACME, &acme, m(machine), pass(), t).unwrap();
    }
    let per = started.elapsed() / n;
    println!(
        "record_probe: {per:?} per result ({} results/s on one core)",
        1_000_000_000 / per.as_nanos().max(1)
    );
}

/// A result that only repeats the last one writes nothing: `HEALTH` keeps
/// its value (latency included) until a result changes something or the
/// latency there is `LATENCY_REFRESH_MS` old; a restarted agent (a new
/// `Known`) continues from what `HEALTH` holds.
#[test]
fn repeated_results_leave_health_unwritten_and_a_restart_continues_from_it() {
    require_root();
    let mut acme = repo_policies().tenants.into_iter().find(|t| t.name == "acme").unwrap();
    acme.health.interval = Millis(1000);
    let fab = FabricNs::new(std::slice::from_ref(&acme)).unwrap();
    let mut dp = loaded(&fab, std::slice::from_ref(&acme)).unwrap();
    let mut known = Known::new();
    let lat = |us: u32| Probe::Pass { latency_us: us };
    let machine = m("connector/0");
    let mut t = 1_000_000u64;

    record_probe(&mut dp, &mut known, ACME, &acme, machine, lat(100), t).unwrap();
    assert_eq!(known.writes(), 1, "the machine's first record is written");
    let first = dp.tenant_health(ACME).unwrap().expect("a record");
    assert_eq!(first.machines[0].last_latency_us, 100);

    // Passes every second with another latency each: no write, the map as
    // it was.
    for i in 1..(LATENCY_REFRESH_MS / 1000) {
        t += 1000;
        record_probe(&mut dp, &mut known, ACME, &acme, machine, lat(100 + i as u32), t).unwrap();
    }
    assert_eq!(known.writes(), 1);
    assert_eq!(
        dp.tenant_health(ACME).unwrap(),
        Some(first),
        "HEALTH rewritten by repeats"
    );

    // The latency is refreshed once it is old.
    t += 1000;
    record_probe(&mut dp, &mut known, ACME, &acme, machine, lat(777), t).unwrap();
    assert_eq!(known.writes(), 2);
    assert_eq!(
        dp.tenant_health(ACME).unwrap().unwrap().machines[0].last_latency_us,
        777
    );

    // A failure changes the count: written at once.
    t += 1000;
    let o = record_probe(&mut dp, &mut known, ACME, &acme, machine, fail(), t).unwrap();
    assert_eq!(o.transition, None);
    assert_eq!(known.writes(), 3);
    assert_eq!(dp.tenant_health(ACME).unwrap().unwrap().machines[0].streak, 1);

    // A new agent's copy starts from the map: the failures it sees add to
    // the one already counted, so `fall` in all declare the machine down.
    let mut restarted = Known::new();
    for i in 2..=acme.health.fall {
        t += 1000;
        let o = record_probe(&mut dp, &mut restarted, ACME, &acme, machine, fail(), t).unwrap();
        assert_eq!(o.transition.is_some(), i == acme.health.fall, "failure {i}");
    }
    let h = dp.tenant_health(ACME).unwrap().unwrap();
    assert_eq!(h.machines[0].state, dataplane_common::types::MACHINE_DOWN);
    assert_eq!(h.machines[0].transitions, 1);
    let info = dp.tenant_info(ACME).unwrap().unwrap();
    assert_eq!(
        [info.connectors[0].up, info.connectors[1].up],
        [0, 1],
        "the record follows"
    );
}
