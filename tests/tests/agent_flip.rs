//! The agent's apply engine flips a tenant between two policies 1,000 times
//! while packets run through the uplink program (BPF_PROG_TEST_RUN on the
//! same pinned maps, from another thread): every packet gets the verdict of
//! one of the two policies, never a mix (the allowlist of one with the
//! backends of the other).
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use carwash_policy::{PolicySet, Tenant};
use carwash_tests::fabric::{FabricNs, repo_policies};
use carwash_tests::fixture::{XDP_DROP, XDP_REDIRECT, XDP_TX};
use carwash_tests::packets::syn4;
use carwash_tests::require_root;
use dataplane::Dataplane;
use dataplane::agent::apply::Engine;
use dataplane_common::programs;
use netlab::netns::PinDir;

const FLIPS: usize = 1000;
const X: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const Y: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 5);

/// acme as in the repository (allows X), and acme' (allows Y, other machines).
fn policies() -> (Tenant, Tenant) {
    let a = repo_policies().get("acme").unwrap().clone();
    let mut b = a.clone();
    b.allow[0].cidr = "192.0.2.0/24".parse().unwrap();
    for (i, m) in b.connectors.iter_mut().chain(b.cores.iter_mut()).enumerate() {
        m.vtep = Ipv4Addr::new(10, 200, 9, 10 + i as u8);
        m.mac.0[5] = 0x90 + i as u8;
    }
    (a, b)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    Drop,
    SteeredA,
    SteeredB,
    Other,
}

#[test]
fn every_packet_sees_one_policy_or_the_other_across_1000_flips() {
    require_root();
    let (a, b) = policies();
    let fab = FabricNs::new(&[a.clone(), b.clone()]).unwrap();
    let pins = PinDir::new().unwrap();
    let mut dp = Dataplane::load(Some(pins.path())).unwrap();
    dp.set_host(&fab.host_params()).unwrap();
    // A second handle on the same pinned maps runs the packets.
    let runner = Dataplane::load(Some(pins.path())).unwrap();
    let mut engine = Engine::adopt(&dp, None).unwrap();
    let sets = [PolicySet::new(vec![a.clone()]), PolicySet::new(vec![b.clone()])];
    engine.apply(&mut dp, &sets[0]).unwrap();

    let vip = match a.vips[0] {
        std::net::IpAddr::V4(v) => v,
        _ => unreachable!("acme's first VIP is IPv4"),
    };
    let vteps = |t: &Tenant| t.connectors.iter().map(|c| c.vtep.octets()).collect::<Vec<_>>();
    let (va, vb) = (vteps(&a), vteps(&b));
    let done = AtomicBool::new(false);

    let (counts, flips_took) = std::thread::scope(|s| {
        let packets = s.spawn(|| {
            fab.ns
                .enter(|| {
                    let mut counts: BTreeMap<(char, Seen), u64> = BTreeMap::new();
                    let mut port = 1024u16;
                    while !done.load(Ordering::Relaxed) {
                        for (who, src) in [('X', X), ('Y', Y)] {
                            port = port.wrapping_add(1).max(1024);
                            let (verdict, out) = runner.run(programs::UPLINK, &syn4(src, vip, port, 443)).unwrap();
                            let seen = match verdict {
                                XDP_DROP => Seen::Drop,
                                XDP_REDIRECT | XDP_TX if out.len() > 34 => {
                                    let dst: [u8; 4] = out[30..34].try_into().unwrap();
                                    if va.contains(&dst) {
                                        Seen::SteeredA
                                    } else if vb.contains(&dst) {
                                        Seen::SteeredB
                                    } else {
                                        Seen::Other
                                    }
                                }
                                _ => Seen::Other,
                            };
                            *counts.entry((who, seen)).or_default() += 1;
                        }
                    }
                    counts
                })
                .unwrap()
        });
        let t0 = Instant::now();
        for i in 1..=FLIPS {
            let r = engine.apply(&mut dp, &sets[i % 2]).unwrap();
            assert_eq!(r.changed, vec!["acme".to_string()]);
        }
        let took = t0.elapsed();
        done.store(true, Ordering::Relaxed);
        (packets.join().unwrap(), took)
    });

    println!("{FLIPS} flips in {flips_took:?}; packets seen: {counts:?}");
    // Under policy A: X steered to A's machines, Y dropped. Under B: X
    // dropped, Y steered to B's machines. Nothing else.
    for ((who, seen), n) in &counts {
        let ok = matches!(
            (who, seen),
            ('X', Seen::SteeredA) | ('X', Seen::Drop) | ('Y', Seen::Drop) | ('Y', Seen::SteeredB)
        );
        assert!(
            ok,
            "{n} packets from {who} got a verdict of neither policy: {seen:?} ({counts:?})"
        );
    }
    // Both policies were really seen while flipping.
    assert!(
        counts.get(&('X', Seen::SteeredA)).copied().unwrap_or(0) > 0,
        "{counts:?}"
    );
    assert!(
        counts.get(&('Y', Seen::SteeredB)).copied().unwrap_or(0) > 0,
        "{counts:?}"
    );
    assert_eq!(engine.generation, FLIPS as u64 + 1);
}
