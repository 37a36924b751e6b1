//! Whole-set atomicity: a policy transaction writes the generation not in
//! force, and packets see none of it until the switch; then all of it, for
//! every tenant at once. An aborted transaction leaves no trace.
use carwash_tests::fabric::{FabricNs, loaded};
use carwash_tests::fixture::{XDP_DROP, XDP_REDIRECT};
use carwash_tests::inbound_cases::{ACME4, ALLOWED4, BETA4, tenants};
use carwash_tests::packets::tcp4;
use carwash_tests::require_root;
use dataplane::Dataplane;
use dataplane_common::programs;

#[test]
fn a_transaction_is_seen_whole_or_not_at_all() {
    require_root();
    let ts = tenants();
    let fab = FabricNs::new(&ts).unwrap();
    let mut dp = loaded(&fab, &ts).unwrap();
    let to = |vip| tcp4(ALLOWED4, vip, 40000, 443, b"x");
    let verdicts = |dp: &Dataplane| {
        fab.ns
            .enter(|| {
                (
                    dp.run(programs::UPLINK, &to(ACME4)).unwrap().0,
                    dp.run(programs::UPLINK, &to(BETA4)).unwrap().0,
                )
            })
            .unwrap()
    };
    assert_eq!(verdicts(&dp), (XDP_REDIRECT, XDP_REDIRECT), "both allow the client");

    // Neither tenant allows the client any more: written one tenant after
    // the other, inside a transaction.
    let mut closed = ts.clone();
    for t in closed.iter_mut().take(2) {
        t.allow = vec![carwash_policy::Allow {
            cidr: "192.0.2.0/24".parse().unwrap(),
            classes: vec![carwash_policy::Class::Https, carwash_policy::Class::Jms],
        }];
    }
    let g0 = dp.active_generation();
    dp.begin_policy().unwrap();
    dp.install_tenant(1, &closed[0]).unwrap();
    assert_eq!(
        verdicts(&dp),
        (XDP_REDIRECT, XDP_REDIRECT),
        "half a transaction is not in force"
    );
    dp.install_tenant(2, &closed[1]).unwrap();
    assert_eq!(verdicts(&dp), (XDP_REDIRECT, XDP_REDIRECT));
    dp.commit_policy().unwrap();
    assert_ne!(dp.active_generation(), g0);
    assert_eq!(verdicts(&dp), (XDP_DROP, XDP_DROP), "the whole set, at once");

    // The old generation catches up; the next transaction starts from the
    // set in force.
    let t0 = std::time::Instant::now();
    dp.settle().unwrap();
    println!(
        "the old generation caught up in {:?} (one RCU grace period and the replay)",
        t0.elapsed()
    );
    assert_eq!(verdicts(&dp), (XDP_DROP, XDP_DROP));

    // An aborted transaction: nothing of it is ever seen, and the copy it
    // wrote is the set in force again.
    dp.begin_policy().unwrap();
    dp.install_tenant(1, &ts[0]).unwrap();
    dp.abort_policy().unwrap();
    assert_eq!(verdicts(&dp), (XDP_DROP, XDP_DROP));
    let g1 = dp.active_generation();
    dp.begin_policy().unwrap();
    dp.install_tenant(2, &ts[1]).unwrap();
    dp.commit_policy().unwrap();
    assert_ne!(dp.active_generation(), g1);
    assert_eq!(
        verdicts(&dp),
        (XDP_DROP, XDP_REDIRECT),
        "only beta changed: the aborted write to acme is gone"
    );
}
