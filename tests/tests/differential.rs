//! The programs against the reference model (`carwash_tests::model`):
//! random policies (overlapping prefixes, both families, both lanes,
//! connectors down or drained, the standby core active, tenants not ready)
//! and random and edge-case frames through `carwash_uplink` and
//! `carwash_fabric` with BPF_PROG_TEST_RUN, every field compared: action,
//! every counter and drop reason, the output frame. Any difference fails
//! with the frame and the policy. The contract's isolation invariants are
//! checked on every frame besides.
//!
//! `CARWASH_DIFF_CASES` sets the number of frames (CI default below;
//! `cargo xtask fuzz` runs 1,000,000), `CARWASH_SEED` the seed.
use std::time::Instant;

use carwash_policy::MacAddr;
use carwash_tests::fabric::{FabricNs, HOST_VTEP, vtep_mac};
use carwash_tests::frames::{Rng, fabric_frame, uplink_frame, vtep_pool};
use carwash_tests::model::ReplyKey;
use carwash_tests::modelrun::{
    Tally, check_tenant_stats, compare, describe_policy, env_u64, install_random, seed, tenant_stats_before, uninstall,
};
use carwash_tests::require_root;
use dataplane::Dataplane;

const CI_CASES: u64 = 150_000;
/// Frames per random policy.
const PER_POLICY: u64 = 5_000;
/// Differences reported at most (the run stops there).
const MAX_FAILURES: usize = 50;

#[test]
fn programs_agree_with_the_model() {
    require_root();
    let cases = env_u64("CARWASH_DIFF_CASES", CI_CASES);
    let seed = seed();
    println!("differential: {cases} frames, seed {seed} (CARWASH_SEED={seed} repeats the run)");
    let fab = FabricNs::new(&[]).unwrap();
    for v in vtep_pool() {
        fab.ns.neigh("fabric", &v.to_string(), MacAddr(vtep_mac(v))).unwrap();
    }
    let started = Instant::now();
    let (tally, failures, hits) = fab.ns.enter(|| run(&fab, cases, seed)).unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "differential: {cases} frames in {secs:.1} s ({:.0} frames/s); actions {:?}; {} translations checked",
        cases as f64 / secs,
        tally.actions,
        tally.translated
    );
    let mut reasons: Vec<_> = tally.reasons.into_iter().collect();
    reasons.sort();
    println!("differential: drop reasons {reasons:?}");
    println!("differential: paths {:?}", tally.paths);
    println!("differential: {hits} frames dropped on a remembered denial (slots not overwritten since)");
    assert!(
        cases < 10_000 || hits > 0,
        "no frame was dropped on a remembered denial: the repeats do not test the cache"
    );
    assert!(
        failures.is_empty(),
        "{} frames where the programs and the model differ (seed {seed}); the first:\n{}",
        failures.len(),
        failures.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
    );
}

fn run(fab: &FabricNs, cases: u64, seed: u64) -> (Tally, Vec<String>, u64) {
    let mut r = Rng::new(seed);
    let mut dp = Dataplane::load(None).unwrap();
    dp.set_host(&fab.host_params()).unwrap();
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    let mut done = 0u64;
    let mut serial = 0u64;
    while done < cases && failures.len() < MAX_FAILURES {
        let n_tenants = 2 + r.below(5);
        let (tenants, mut m, maglev) = install_random(&mut dp, &mut r, n_tenants);
        if let Err(e) = maglev {
            failures.push(format!("{e}\npolicy:\n{}", describe_policy(&m)));
        }
        let stats_before = tenant_stats_before(&dp, n_tenants);
        let n = PER_POLICY.min(cases - done);
        for _ in 0..n {
            let fabric = r.chance(45);
            serial += 1;
            let frame = if fabric {
                fabric_frame(&mut r, &tenants, HOST_VTEP, serial)
            } else {
                let replies: Vec<ReplyKey> = m.replies.keys().take(64).copied().collect();
                uplink_frame(&mut r, &tenants, &replies)
            };
            // An uplink frame again, at once, now and then: a denial the
            // uplink remembered must give the model's verdict too.
            let times = if !fabric && r.chance(30) { 2 } else { 1 };
            for _ in 0..times {
                if let Err(e) = compare(&dp, &mut m, fabric, &frame, &mut tally) {
                    failures.push(format!("{e}policy:\n{}", describe_policy(&m)));
                }
            }
            if failures.len() >= MAX_FAILURES {
                break;
            }
        }
        if let Err(e) = check_tenant_stats(&dp, &stats_before, &mut tally) {
            failures.push(format!(
                "per-tenant counters after {n} frames:\n{e}\npolicy:\n{}",
                describe_policy(&m)
            ));
        }
        done += n;
        uninstall(&mut dp, &tenants);
    }
    let hits = dp.deny_cache_hits().unwrap();
    (tally, failures, hits)
}
