//! The uplink's cache of recent denials, through BPF_PROG_TEST_RUN: a
//! remembered verdict counts and reports exactly as the full path does; a
//! policy change that lifts a denial (or a tenant failing closed) takes
//! effect on the next packet; two flows sharing a slot never take each
//! other's verdict. Every run is on CPU 0: the cache is per CPU.
use std::net::{IpAddr, Ipv4Addr};

use aya::maps::{MapData, RingBuf};
use carwash_policy::{Allow, Class, Tenant};
use carwash_tests::fabric::{FabricNs, loaded, loaded_at};
use carwash_tests::fixture::{XDP_DROP, XDP_REDIRECT};
use carwash_tests::inbound_cases::{ACME4, ALLOWED4, BETA4, DENIED4, Expect, addr16, inbound_cases, tenants};
use carwash_tests::packets::tcp4;
use carwash_tests::require_root;
use dataplane::Dataplane;
use dataplane::counters::Counters;
use dataplane::event_maps::EventLimits;
use dataplane_common::deny::{DenySlot, deny_slot};
use dataplane_common::events::DataEvent;
use dataplane_common::types::{SIDE_UPLINK, TenantStats};
use dataplane_common::{DropReason, programs};
use netlab::netns::PinDir;

const TENANTS: u32 = 3;

fn drain(ring: &mut RingBuf<MapData>) -> Vec<DataEvent> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        // SAFETY: a whole record; every bit pattern is valid.
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const DataEvent) });
    }
    out
}

fn on_cpu0() {
    // SAFETY: sched_setaffinity of this thread with a valid set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

/// The test tenants' programs loaded in their namespace, the event ring
/// taken, and every event reported, so that each packet's can be compared.
fn uplink() -> (Vec<Tenant>, FabricNs, Dataplane, RingBuf<MapData>) {
    require_root();
    let ts = tenants();
    let fab = FabricNs::new(&ts).unwrap();
    let mut dp = loaded(&fab, &ts).unwrap();
    let ring = dp.take_events().unwrap();
    dp.set_event_limits(EventLimits {
        rate: 1_000_000,
        burst: 1_000_000,
        flow_sample: 0,
    })
    .unwrap();
    (ts, fab, dp, ring)
}

/// What one packet did: its verdict, the global and per-tenant counters
/// it moved, and its events (clock cleared).
#[derive(Debug, PartialEq)]
struct Effect {
    action: u32,
    counters: Counters,
    tenants: Vec<TenantStats>,
    events: Vec<DataEvent>,
}

fn stats(dp: &Dataplane) -> (Counters, Vec<TenantStats>) {
    let t = (1..=TENANTS).map(|id| dp.tenant_stats(id).unwrap()).collect();
    (dp.counters(SIDE_UPLINK).unwrap(), t)
}

fn send(dp: &Dataplane, ring: &mut RingBuf<MapData>, packet: &[u8]) -> Effect {
    drain(ring);
    let (c0, t0) = stats(dp);
    let (action, _) = dp.run(programs::UPLINK, packet).unwrap();
    let (c1, t1) = stats(dp);
    let tenants = t0
        .iter()
        .zip(&t1)
        .map(|(a, b)| {
            let mut d = *b;
            for (row, row0) in d.iter_mut().zip(a) {
                for (v, v0) in row.iter_mut().zip(row0) {
                    *v -= v0;
                }
            }
            d
        })
        .collect();
    let mut events = drain(ring);
    for e in &mut events {
        e.ts_ns = 0;
    }
    Effect {
        action,
        counters: c1.since(&c0),
        tenants,
        events,
    }
}

fn slot_of(src: IpAddr, dst: IpAddr, dport: u16) -> u32 {
    deny_slot(&addr16(src), &addr16(dst), dport, 6)
}

/// CPU 0's copy of a slot.
/// A slot's drops on its remembered verdict, by either path.
fn hits(s: &DenySlot) -> u32 {
    s.hits + s.fast_hits
}

fn cpu0(dp: &Dataplane, slot: u32) -> DenySlot {
    dp.deny_slots(slot).unwrap()[0]
}

#[test]
fn a_remembered_denial_counts_and_reports_as_the_full_path() {
    let (_ts, fab, dp, mut ring) = uplink();
    let cases: Vec<_> = inbound_cases()
        .into_iter()
        .filter(|c| {
            matches!(
                c.expect,
                Expect::Drop(DropReason::NotAllowed) | Expect::Drop(DropReason::NoService)
            )
        })
        .collect();
    // v4 and v6, both reasons, and a class other than https.
    assert!(cases.len() >= 5, "{cases:#?}");
    fab.ns
        .enter(|| {
            on_cpu0();
            for c in &cases {
                let Expect::Drop(why) = c.expect else { unreachable!() };
                let slot = deny_slot(&addr16(c.src), &addr16(c.dst), c.dport, 6);
                let packet = c.packet();
                let full = send(&dp, &mut ring, &packet);
                assert_eq!(full.action, XDP_DROP, "{}", c.name);
                assert_eq!(full.counters.dropped(why), 1, "{}", c.name);
                assert_eq!(full.events.len(), 1, "{}: {:#?}", c.name, full.events);
                let e = cpu0(&dp, slot);
                assert_eq!(
                    (u32::from(e.tenant), hits(&e)),
                    (full.events[0].tenant, 0),
                    "{}: {e:#?}",
                    c.name
                );
                assert_eq!(u32::from(e.class_why & 0xff), why.index(), "{}", c.name);
                // The first case's first hit is the full path's lookup,
                // which turns the fast path on; every later one is the fast
                // path's (on for 256 ticks).
                let fast0 = dp.deny_fast_drops().unwrap();
                for _ in 0..3 {
                    let hit = send(&dp, &mut ring, &packet);
                    assert_eq!(hit, full, "{}: the remembered verdict differs", c.name);
                }
                assert_eq!(hits(&cpu0(&dp, slot)), 3, "{}: not taken from the cache", c.name);
                let fast = dp.deny_fast_drops().unwrap() - fast0;
                assert!(fast == 2 || fast == 3, "{}: {fast} of 3 by the fast path", c.name);
            }
        })
        .unwrap();
}

#[test]
fn a_policy_change_takes_effect_on_the_next_packet() {
    let (ts, fab, mut dp, mut ring) = uplink();
    let acme = ts[0].clone();
    let mut opened = acme.clone();
    opened.allow.push(Allow {
        cidr: format!("{DENIED4}/32").parse().unwrap(),
        classes: vec![Class::Https],
    });
    let packet = tcp4(DENIED4, ACME4, 40000, 443, b"x");
    let slot = slot_of(DENIED4.into(), ACME4.into(), 443);
    fab.ns
        .enter(|| {
            on_cpu0();
            let denied = |dp: &Dataplane, ring: &mut RingBuf<MapData>, why: DropReason| {
                let fx = send(dp, ring, &packet);
                assert_eq!((fx.action, fx.counters.dropped(why)), (XDP_DROP, 1), "{fx:#?}");
                assert_eq!(fx.events[0].reason, why.index() as u8);
            };
            for _ in 0..3 {
                denied(&dp, &mut ring, DropReason::NotAllowed);
            }
            assert_eq!(hits(&cpu0(&dp, slot)), 2);

            // A policy transaction allowing the source, as the agent applies
            // one: the next packet is steered.
            dp.begin_policy().unwrap();
            dp.install_tenant(1, &opened).unwrap();
            dp.commit_policy().unwrap();
            let fx = send(&dp, &mut ring, &packet);
            assert_eq!(fx.action, XDP_REDIRECT, "{fx:#?}");

            // Denied again by the next transaction: the full path, then
            // remembered.
            dp.begin_policy().unwrap();
            dp.install_tenant(1, &acme).unwrap();
            dp.commit_policy().unwrap();
            denied(&dp, &mut ring, DropReason::NotAllowed);
            assert_eq!(hits(&cpu0(&dp, slot)), 0);
            denied(&dp, &mut ring, DropReason::NotAllowed);
            assert_eq!(hits(&cpu0(&dp, slot)), 1);

            // A write outside a transaction (a tenant failing closed): the
            // next packet has the new reason, not the remembered one.
            dp.set_tenant_ready(1, false).unwrap();
            denied(&dp, &mut ring, DropReason::NotReady);
            denied(&dp, &mut ring, DropReason::NotReady);
            dp.set_tenant_ready(1, true).unwrap();
            denied(&dp, &mut ring, DropReason::NotAllowed);

            // Allowed outside a transaction too (tests, health writes).
            dp.install_tenant(1, &opened).unwrap();
            assert_eq!(send(&dp, &mut ring, &packet).action, XDP_REDIRECT);
        })
        .unwrap();
}

/// A source in 100.64.0.0/10 (in no tenant's allowlist) whose flow to
/// `dst:dport` takes `slot`.
fn colliding(slot: u32, dst: Ipv4Addr, dport: u16, not: &[Ipv4Addr]) -> Ipv4Addr {
    (0..1u32 << 22)
        .map(|i| Ipv4Addr::from(0x6440_0000 | i))
        .find(|s| !not.contains(s) && slot_of((*s).into(), dst.into(), dport) == slot)
        .expect("a colliding source")
}

#[test]
fn flows_sharing_a_slot_never_take_each_others_verdict() {
    let (_ts, fab, dp, mut ring) = uplink();
    // An allowed flow, and denied ones in its slot: to the same VIP and
    // port, to another tenant's VIP, to a port with no service.
    let slot = slot_of(ALLOWED4.into(), ACME4.into(), 443);
    let s1 = colliding(slot, ACME4, 443, &[]);
    let s2 = colliding(slot, BETA4, 443, &[]);
    let s3 = colliding(slot, ACME4, 80, &[]);
    let allowed = tcp4(ALLOWED4, ACME4, 40000, 443, b"x");
    let to_acme = tcp4(s1, ACME4, 40000, 443, b"x");
    let to_beta = tcp4(s2, BETA4, 40000, 443, b"x");
    let no_service = tcp4(s3, ACME4, 40000, 80, b"x");
    fab.ns
        .enter(|| {
            on_cpu0();
            let drop = |dp: &Dataplane, ring: &mut RingBuf<MapData>, p: &[u8], why: DropReason, tenant: u32| {
                let fx = send(dp, ring, p);
                assert_eq!((fx.action, fx.counters.dropped(why)), (XDP_DROP, 1), "{fx:#?}");
                let e = fx.events[0];
                assert_eq!((e.reason, e.tenant), (why.index() as u8, tenant), "{e:#?}");
                let dropped: u64 = fx.tenants[tenant as usize - 1].iter().flatten().sum();
                let others: u64 = fx
                    .tenants
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != tenant as usize - 1)
                    .map(|(_, t)| t.iter().flatten().sum::<u64>())
                    .sum();
                assert!(dropped > 0 && others == 0, "{fx:#?}");
            };
            let steered = |dp: &Dataplane, ring: &mut RingBuf<MapData>| {
                assert_eq!(send(dp, ring, &allowed).action, XDP_REDIRECT);
            };
            drop(&dp, &mut ring, &to_acme, DropReason::NotAllowed, 1);
            drop(&dp, &mut ring, &to_acme, DropReason::NotAllowed, 1);
            assert_eq!(hits(&cpu0(&dp, slot)), 1);
            // The allowed flow misses the slot (another key) and leaves it.
            steered(&dp, &mut ring);
            assert_eq!((hits(&cpu0(&dp, slot)), cpu0(&dp, slot).tenant), (1, 1));
            // Another tenant's denial takes the slot over; the first flow
            // then gets its own verdict from the full path again.
            drop(&dp, &mut ring, &to_beta, DropReason::NotAllowed, 2);
            assert_eq!(cpu0(&dp, slot).tenant, 2);
            drop(&dp, &mut ring, &to_acme, DropReason::NotAllowed, 1);
            assert_eq!((cpu0(&dp, slot).tenant, hits(&cpu0(&dp, slot))), (1, 0));
            drop(&dp, &mut ring, &no_service, DropReason::NoService, 1);
            drop(&dp, &mut ring, &no_service, DropReason::NoService, 1);
            assert_eq!(hits(&cpu0(&dp, slot)), 1);
            drop(&dp, &mut ring, &to_beta, DropReason::NotAllowed, 2);
            steered(&dp, &mut ring);
            drop(&dp, &mut ring, &to_acme, DropReason::NotAllowed, 1);
        })
        .unwrap();
}

/// `frame` with `f` applied to its bytes.
fn edited(frame: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = frame.to_vec();
    f(&mut v);
    v
}

/// The IPv4 header checksum of `frame` (Ethernet, IPv4) written again.
fn ip_checksum(v: &mut [u8]) {
    let ihl = (v[14] & 0x0f) as usize * 4;
    v[24..26].copy_from_slice(&[0, 0]);
    let sum = carwash_tests::model::checksum(&v[14..14 + ihl]);
    v[24..26].copy_from_slice(&sum.to_be_bytes());
}

/// The uplink's fast path reads only untagged IPv4 without options or IPv6
/// without extension headers, TCP or UDP, well formed: a frame with the
/// key of a remembered denial but another shape takes the full parse,
/// which still finds the denial where the frame is sound (VLAN tags, IP
/// options, an extension header) and counts what is wrong with the rest
/// (and passes it, as for any malformed frame) instead of dropping it on
/// the remembered verdict. UDP's remembered denials count as UDP.
#[test]
fn the_fast_path_leaves_other_shapes_to_the_full_parse() {
    use carwash_tests::fixture::XDP_PASS;
    use carwash_tests::inbound_cases::{ACME6, DENIED6};
    use carwash_tests::packets::{fragments4, tcp4_vlan, tcp6_hop_by_hop, udp4};
    use dataplane_common::Counter;
    let (_ts, fab, dp, mut ring) = uplink();
    fab.ns
        .enter(|| {
            on_cpu0();
            let (src, dst) = (IpAddr::V4(DENIED4), IpAddr::V4(ACME4));
            let slot = slot_of(src, dst, 443);
            let frame = tcp4(DENIED4, ACME4, 40000, 443, &[0u8; 40]);
            let full = send(&dp, &mut ring, &frame);
            assert_eq!(full.action, XDP_DROP);
            assert_eq!(full.counters.dropped(DropReason::NotAllowed), 1);
            // The full path's lookup (which turns the fast path on), then
            // the fast path.
            let fast0 = dp.deny_fast_drops().unwrap();
            for _ in 0..2 {
                let hit = send(&dp, &mut ring, &frame);
                assert_eq!(hit, full, "the remembered drop differs from the full path's");
            }
            assert_eq!(hits(&cpu0(&dp, slot)), 2);
            assert_eq!(dp.deny_fast_drops().unwrap() - fast0, 1, "not dropped by the fast path");

            // Sound frames of other shapes: dropped on the remembered
            // verdict by the full path, which counts their shape too.
            let tagged = tcp4_vlan(&[100], DENIED4, ACME4, 40000, 443);
            let e = send(&dp, &mut ring, &tagged);
            assert_eq!(e.action, XDP_DROP);
            assert_eq!(e.counters.dropped(DropReason::NotAllowed), 1);
            assert_eq!(e.counters.get(Counter::Vlan), 1);
            assert_eq!(hits(&cpu0(&dp, slot)), 3, "a tagged frame: the full path's lookup");
            // Four bytes of options (NOPs): IHL 6.
            let options = edited(&frame, |v| {
                v.splice(34..34, [1u8; 4]);
                v[14] = 0x46;
                let len = u16::from_be_bytes([v[16], v[17]]) + 4;
                v[16..18].copy_from_slice(&len.to_be_bytes());
                ip_checksum(v);
            });
            let e = send(&dp, &mut ring, &options);
            assert_eq!(e.action, XDP_DROP);
            assert_eq!(e.counters.dropped(DropReason::NotAllowed), 1);
            assert_eq!(hits(&cpu0(&dp, slot)), 4, "IPv4 options: the full path's lookup");

            // Unsound frames with the same key: never dropped on the
            // remembered verdict.
            let bad_offset = edited(&frame, |v| v[46] = 0x40);
            let short_total = edited(&frame, |v| {
                v[16..18].copy_from_slice(&19u16.to_be_bytes());
                ip_checksum(v);
            });
            let cut = frame[..50].to_vec();
            for (name, f, counter) in [
                ("a TCP data offset of 4", &bad_offset, Counter::MalformedTcpHeader),
                ("an IPv4 total length of 19", &short_total, Counter::MalformedIpHeader),
                ("a TCP header cut short", &cut, Counter::MalformedTruncated),
            ] {
                let e = send(&dp, &mut ring, f);
                assert_eq!(e.action, XDP_PASS, "{name}");
                assert_eq!(e.counters.get(counter), 1, "{name}: {:#?}", e.counters);
                assert!(e.counters.drops.values().all(|&n| n == 0), "{name}: {:#?}", e.counters);
                assert!(e.events.is_empty(), "{name}");
            }
            // A later fragment carries no ports: the full path decides it.
            let (_, later) = fragments4(&frame, 16);
            let e = send(&dp, &mut ring, &later);
            assert_eq!(e.counters.get(Counter::Fragment), 1);
            assert_eq!(hits(&cpu0(&dp, slot)), 4, "no frame above came from the cache");
            assert_eq!(
                dp.deny_fast_drops().unwrap() - fast0,
                1,
                "only sound untagged frames take the fast path"
            );

            // IPv6 with a hop-by-hop header: the full path's lookup.
            let (src6, dst6) = (IpAddr::V6(DENIED6), IpAddr::V6(ACME6));
            let slot6 = slot_of(src6, dst6, 443);
            let hbh = tcp6_hop_by_hop(DENIED6, ACME6, 40000, 443, &[0u8; 10]);
            let first = send(&dp, &mut ring, &hbh);
            assert_eq!(first.action, XDP_DROP);
            assert_eq!(send(&dp, &mut ring, &hbh), first);
            assert_eq!(hits(&cpu0(&dp, slot6)), 1);

            // UDP to a VIP port without a service: remembered, and counted
            // as UDP on the fast path.
            let udp = udp4(DENIED4, ACME4, 40000, 9999, &[0u8; 10]);
            let udp_slot = deny_slot(&addr16(src), &addr16(dst), 9999, 17);
            let full = send(&dp, &mut ring, &udp);
            assert_eq!(full.action, XDP_DROP);
            assert_eq!(full.counters.get(Counter::Udp), 1);
            assert_eq!(full.counters.dropped(DropReason::NoService), 1);
            assert_eq!(send(&dp, &mut ring, &udp), full);
            assert_eq!(hits(&cpu0(&dp, udp_slot)), 1);
        })
        .unwrap();
}

/// While a tenant's event budget is empty, the fast path counts a drop's
/// event as held back without the bucket (the slot's `quiet_until`, in
/// ticks); once that tick passes the bucket is consulted again and lets
/// the next event through. Every drop is an event reported or held back.
#[test]
fn held_back_events_skip_the_bucket_until_it_has_credit() {
    use dataplane_common::events::KIND_DROP;
    let (_ts, fab, mut dp, mut ring) = uplink();
    // Ten events a second, no burst: the bucket is empty for 100 ms after
    // each, longer than the 20 drops take, so that they all fall in one
    // quiet spell.
    dp.set_event_limits(EventLimits {
        rate: 10,
        burst: 1,
        flow_sample: 0,
    })
    .unwrap();
    fab.ns
        .enter(|| {
            on_cpu0();
            let slot = slot_of(IpAddr::V4(DENIED4), IpAddr::V4(ACME4), 443);
            let frame = tcp4(DENIED4, ACME4, 40000, 443, &[0u8; 40]);
            let (e0, fast0, t0) = (
                dp.event_counts().unwrap()[KIND_DROP as usize],
                dp.deny_fast_drops().unwrap(),
                dp.kernel_ticks().unwrap(),
            );
            let mut reported = 0;
            for _ in 0..20 {
                reported += send(&dp, &mut ring, &frame).events.len();
            }
            let e = dp.event_counts().unwrap()[KIND_DROP as usize];
            let (emitted, held) = (e.emitted - e0.emitted, e.suppressed + e.lost - e0.suppressed - e0.lost);
            assert_eq!(emitted + held, 20, "{e:?}");
            assert_eq!(emitted as usize, reported);
            // Ten a second: one or two events in 20 quick drops.
            assert!((1..=3).contains(&emitted), "{emitted} events");
            assert!(
                dp.deny_fast_drops().unwrap() - fast0 >= 18,
                "the fast path dropped them"
            );
            let quiet = cpu0(&dp, slot).quiet_until;
            assert!(quiet > t0, "the slot knows the bucket is empty ({quiet} ≤ {t0})");
            // The held-back events wait in the slot; the readers count them.
            let waiting = cpu0(&dp, slot).held;
            assert!(waiting >= 1, "held back in the slot: {:?}", cpu0(&dp, slot));
            assert_eq!(dp.held_events().unwrap().total(), waiting as u64);
            let bucket = dp.event_buckets(1).unwrap()[0].suppressed;
            // The bucket has credit again after the quiet tick.
            std::thread::sleep(std::time::Duration::from_millis(150));
            assert!(dp.kernel_ticks().unwrap() >= quiet);
            let after = send(&dp, &mut ring, &frame);
            assert_eq!(after.events.len(), 1, "{:#?}", after.events);
            let e1 = dp.event_counts().unwrap()[KIND_DROP as usize];
            assert_eq!(e1.emitted - e.emitted, 1);
            assert_eq!(e1.suppressed, e.suppressed, "held-back events counted once");
            // The drop after the quiet tick moved them into the bucket,
            // before its own event: the event's running total covers them.
            assert_eq!(cpu0(&dp, slot).held, 0);
            assert_eq!(after.events[0].suppressed_total, bucket);
            assert_eq!(dp.event_buckets(1).unwrap()[0].suppressed, bucket);
        })
        .unwrap();
}

/// A flood whose events the budget holds back (ten a second, no burst:
/// all but the first in one quiet spell): `n` drops of `frame`, the fast path taking all but the first.
fn quiet_flood(dp: &mut Dataplane, ring: &mut RingBuf<MapData>, frame: &[u8], n: usize) {
    dp.set_event_limits(EventLimits {
        rate: 10,
        burst: 1,
        flow_sample: 0,
    })
    .unwrap();
    for _ in 0..n {
        assert_eq!(send(dp, ring, frame).action, XDP_DROP);
    }
}

/// Drop events emitted plus held back (however counted), of every kind.
fn accounted(dp: &Dataplane) -> u64 {
    dp.event_counts()
        .unwrap()
        .iter()
        .map(|c| c.emitted + c.suppressed + c.lost)
        .sum()
}

#[test]
fn held_events_move_to_the_bucket_when_their_slot_is_taken() {
    let (_ts, fab, mut dp, mut ring) = uplink();
    let slot = slot_of(IpAddr::V4(DENIED4), IpAddr::V4(ACME4), 443);
    let other = colliding(slot, BETA4, 443, &[]);
    let flood = tcp4(DENIED4, ACME4, 40000, 443, b"x");
    let taker = tcp4(other, BETA4, 40000, 443, b"x");
    fab.ns
        .enter(|| {
            on_cpu0();
            let a0 = accounted(&dp);
            quiet_flood(&mut dp, &mut ring, &flood, 30);
            let held = cpu0(&dp, slot).held;
            assert!(held >= 1, "{:?}", cpu0(&dp, slot));
            assert_eq!(accounted(&dp) - a0, 30);
            let acme = dp.event_buckets(1).unwrap()[0].suppressed;
            // Another tenant's denial in the same slot: the full path
            // replaces the entry, moving its held events to acme's bucket.
            let fx = send(&dp, &mut ring, &taker);
            assert_eq!(fx.action, XDP_DROP);
            let s = cpu0(&dp, slot);
            assert_eq!((s.tenant, s.held), (2, 0), "{s:?}");
            assert_eq!(dp.held_events().unwrap().total(), 0);
            assert_eq!(dp.event_buckets(1).unwrap()[0].suppressed, acme, "none lost");
            assert_eq!(accounted(&dp) - a0, 31);
        })
        .unwrap();
}

#[test]
fn held_events_outlive_the_agent_that_loaded_the_programs() {
    require_root();
    let ts = tenants();
    let fab = FabricNs::new(&ts).unwrap();
    let pins = PinDir::new().unwrap();
    let mut dp = loaded_at(&fab, &ts, Some(pins.path())).unwrap();
    let mut ring = dp.take_events().unwrap();
    let slot = slot_of(IpAddr::V4(DENIED4), IpAddr::V4(ACME4), 443);
    let flood = tcp4(DENIED4, ACME4, 40000, 443, b"x");
    fab.ns
        .enter(|| {
            on_cpu0();
            quiet_flood(&mut dp, &mut ring, &flood, 30);
            let held = cpu0(&dp, slot).held;
            assert!(held >= 1, "{:?}", cpu0(&dp, slot));
            let (counts, buckets) = (dp.event_counts().unwrap(), dp.event_buckets(1).unwrap());
            drop(ring);
            drop(dp);
            // The next agent loads its programs over the same pins.
            let dp = Dataplane::load(Some(pins.path())).unwrap();
            assert_eq!(cpu0(&dp, slot).held, held);
            assert_eq!(dp.event_counts().unwrap(), counts);
            assert_eq!(dp.event_buckets(1).unwrap(), buckets);
            // So do the read commands, from the pins alone.
            let p = dataplane::maps::pins::Pins::open(pins.path()).unwrap();
            assert_eq!(p.event_counts().unwrap(), counts);
        })
        .unwrap();
}
