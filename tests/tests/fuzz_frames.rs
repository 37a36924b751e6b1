//! Mutated and random frames through every attached program
//! (`carwash_uplink`, `carwash_fabric`, and through their tail calls the
//! source NAT, reply, ICMP-error, too-big and deliver programs) with
//! BPF_PROG_TEST_RUN: truncated headers, broken lengths, IPv4 options,
//! IPv6 extension chains, VLAN stacks, VXLAN inside VXLAN, fragments. On
//! every frame: a verdict the kernel knows (never XDP_ABORTED) and
//! The contract's isolation invariants (`Model::isolation`); over every batch:
//! every frame accounted for by exactly one verdict counter, every drop by
//! one reason, in the programs' per-CPU `COUNTERS`.
//!
//! The seeds are the differential test's frames, among them replies and
//! ICMP errors to flows the fabric translated first, so that mutations
//! reach the tracked paths. `CARWASH_FUZZ_FRAMES` sets the count (CI
//! default below; `cargo xtask fuzz` runs 10,000,000), `CARWASH_SEED`
//! the seed.
use std::collections::HashMap;
use std::time::Instant;

use carwash_policy::MacAddr;
use carwash_tests::fabric::{FabricNs, HOST_VTEP, vtep_mac};
use carwash_tests::fixture::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, action_name};
use carwash_tests::frames::{Rng, fabric_frame, mutate, uplink_frame, vtep_pool, vxlan};
use carwash_tests::model::{Model, ReplyKey};
use carwash_tests::modelrun::{Tally, compare, env_u64, install_random, seed, uninstall};
use carwash_tests::require_root;
use dataplane::Dataplane;
use dataplane_common::types::{SIDE_FABRIC, SIDE_UPLINK};
use dataplane_common::{Counter, DropReason, programs};

const CI_FRAMES: u64 = 1_000_000;
/// Frames between two checks of the counter sums.
const BATCH: u64 = 100_000;
/// Frames per policy (a new random policy after each).
const PER_POLICY: u64 = 1_000_000;
const SEEDS: usize = 4_000;

#[test]
fn fuzzed_frames_keep_isolation_and_are_all_counted() {
    require_root();
    let frames = env_u64("CARWASH_FUZZ_FRAMES", CI_FRAMES);
    let seed = seed();
    println!("fuzz: {frames} frames, seed {seed} (CARWASH_SEED={seed} repeats the run)");
    let fab = FabricNs::new(&[]).unwrap();
    for v in vtep_pool() {
        fab.ns.neigh("fabric", &v.to_string(), MacAddr(vtep_mac(v))).unwrap();
    }
    let started = Instant::now();
    let result = fab.ns.enter(|| run(&fab, frames, seed)).unwrap();
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(actions) => println!(
            "fuzz: {frames} frames in {secs:.1} s ({:.0} frames/s); verdicts {actions:?}",
            frames as f64 / secs
        ),
        Err(e) => panic!("fuzz (seed {seed}): {e}"),
    }
}

/// What one side's programs did to a batch, as the test saw it.
#[derive(Default, Debug)]
struct Seen {
    frames: u64,
    actions: [u64; 5],
}

fn run(fab: &FabricNs, frames: u64, seed: u64) -> Result<HashMap<&'static str, u64>, String> {
    let mut r = Rng::new(seed);
    let mut dp = Dataplane::load(None).unwrap();
    dp.set_host(&fab.host_params()).unwrap();
    let mut totals: HashMap<&'static str, u64> = HashMap::new();
    let mut done = 0u64;
    let mut out = vec![0u8; 4096];
    while done < frames {
        let n_tenants = 2 + r.below(5);
        let (tenants, mut m, maglev) = install_random(&mut dp, &mut r, n_tenants);
        maglev?;
        let seeds = seeds(&dp, &mut m, &mut r, &tenants)?;
        let in_policy = PER_POLICY.min(frames - done);
        let mut left = in_policy;
        while left > 0 {
            let batch = BATCH.min(left);
            check_batch(&dp, &m, &mut r, &seeds, batch, &mut out, &mut totals)?;
            left -= batch;
        }
        done += in_policy;
        uninstall(&mut dp, &tenants);
    }
    Ok(totals)
}

/// Seed frames for the policy in force, each with the side it is for. The
/// fabric's frames go first, through the model comparison, so that the
/// flows they open are tracked and replies to them can be made.
fn seeds(
    dp: &Dataplane,
    m: &mut Model,
    r: &mut Rng,
    tenants: &[carwash_policy::Tenant],
) -> Result<Vec<(bool, Vec<u8>)>, String> {
    let mut out = Vec::with_capacity(SEEDS);
    let mut tally = Tally::default();
    for serial in 0..SEEDS as u64 / 2 {
        let f = fabric_frame(r, tenants, HOST_VTEP, serial);
        compare(dp, m, true, &f, &mut tally)?;
        out.push((true, f));
    }
    let replies: Vec<ReplyKey> = m.replies.keys().copied().collect();
    for _ in 0..SEEDS / 2 {
        out.push((false, uplink_frame(r, tenants, &replies)));
    }
    Ok(out)
}

fn action_index(a: u32) -> Option<usize> {
    match a {
        XDP_DROP | XDP_PASS | XDP_TX | XDP_REDIRECT => Some(a as usize),
        _ => None,
    }
}

#[allow(clippy::too_many_arguments)]
fn check_batch(
    dp: &Dataplane,
    m: &Model,
    r: &mut Rng,
    seeds: &[(bool, Vec<u8>)],
    n: u64,
    out: &mut [u8],
    totals: &mut HashMap<&'static str, u64>,
) -> Result<(), String> {
    let before = [SIDE_UPLINK, SIDE_FABRIC].map(|s| dp.counters(s).unwrap());
    let mut seen = [Seen::default(), Seen::default()];
    for _ in 0..n {
        let (mut fabric, mut frame) = if r.chance(95) {
            let (f, s) = r.pick(seeds);
            (*f, s.clone())
        } else {
            let len = r.below(200);
            (r.chance(50), r.bytes(len))
        };
        for _ in 0..1 + r.below(3) {
            mutate(r, &mut frame);
        }
        if r.chance(10) {
            fabric = !fabric;
        }
        if r.chance(3) {
            // VXLAN inside VXLAN that passes the outer checks: a real
            // machine of a real tenant carries whatever the frame became.
            let t = r.pick(&m.tenants);
            let from = r.pick(&t.policy.connectors).vtep;
            frame = vxlan(from, HOST_VTEP, t.policy.vni, 0x08, &frame, r.u16());
            fabric = true;
        }
        // The kernel runs XDP on whole Ethernet headers only (a NIC drops
        // runts), and on at most a page.
        while frame.len() < 14 {
            frame.push(r.u8());
        }
        frame.truncate(3000);
        let prog = if fabric { programs::FABRIC } else { programs::UPLINK };
        let res = dp
            .test_run(prog, &frame, Some(out), 1)
            .map_err(|e| format!("{prog} on {frame:02x?}: {e:#}"))?;
        let action = res.return_value;
        let output = &out[..res.data_size_out as usize];
        let Some(i) = action_index(action) else {
            return Err(format!("{prog}: verdict {action} on {frame:02x?}"));
        };
        m.isolation(fabric, &frame, action, output)
            .map_err(|e| format!("{prog}: {e}\n  frame {frame:02x?}\n  out   {output:02x?}"))?;
        let s = &mut seen[fabric as usize];
        s.frames += 1;
        s.actions[i] += 1;
        *totals.entry(action_name(action)).or_default() += 1;
    }
    for (side, s) in [SIDE_UPLINK, SIDE_FABRIC].into_iter().zip(&seen) {
        let d = dp.counters(side).unwrap().since(&before[side as usize]);
        let name = if side == SIDE_UPLINK { "uplink" } else { "fabric" };
        let verdicts = [
            (Counter::ActionDrop, XDP_DROP),
            (Counter::ActionPass, XDP_PASS),
            (Counter::ActionTx, XDP_TX),
            (Counter::ActionRedirect, XDP_REDIRECT),
        ];
        let mut errors = Vec::new();
        if d.get(Counter::Packets) != s.frames {
            errors.push(format!("packets {} for {} frames", d.get(Counter::Packets), s.frames));
        }
        for (c, a) in verdicts {
            if d.get(c) != s.actions[a as usize] {
                errors.push(format!(
                    "{} {} for {} such verdicts",
                    c.name(),
                    d.get(c),
                    s.actions[a as usize]
                ));
            }
        }
        // A frame answered with an ICMP error is sent (XDP_TX) and counted
        // under its reason; every other reason is a drop.
        let answered = d.dropped(DropReason::TooBigIcmpSent);
        let dropped: u64 = DropReason::ALL
            .iter()
            .filter(|r| **r != DropReason::TooBigIcmpSent)
            .map(|r| d.dropped(*r))
            .sum();
        if dropped != s.actions[XDP_DROP as usize] {
            errors.push(format!(
                "{dropped} drops by reason for {} XDP_DROP",
                s.actions[XDP_DROP as usize]
            ));
        }
        if answered != s.actions[XDP_TX as usize] {
            errors.push(format!(
                "{answered} ICMP answers counted for {} XDP_TX",
                s.actions[XDP_TX as usize]
            ));
        }
        if !errors.is_empty() {
            return Err(format!(
                "{name} counters do not account for the batch: {}",
                errors.join("; ")
            ));
        }
    }
    Ok(())
}
