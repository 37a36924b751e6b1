//! `cargo xtask bench -- events`: a flood of 64-byte denied SYNs at the
//! uplink, as live frames (`BPF_PROG_TEST_RUN` with
//! `BPF_F_TEST_XDP_LIVE_FRAMES`, so that a verdict is carried out and
//! XDP_PASS hands the frame to the kernel stack), through three paths with
//! the same injector: a bare XDP_DROP program, carwash's uplink program
//! with events on (within the default budget), and XDP_PASS then an
//! nftables netdev ingress chain dropping the same source. Then the
//! allowed path with events on against off. Every round checks that each
//! frame was dropped where it should have been.
use std::net::IpAddr;

use anyhow::{Context, Result, ensure};
use dataplane::event_maps::EventLimits;
use dataplane_common::events::{DEFAULT_EVENT_BURST, DEFAULT_EVENT_RATE, KIND_DROP};
use dataplane_common::types::SIDE_UPLINK;
use dataplane_common::{DropReason, programs};

use crate::bench::ns_per_packet;
use crate::bench_snat::live_run;
use crate::fabric::{FabricNs, loaded};
use crate::fixture::{XDP_PASS, XDP_REDIRECT};
use crate::inbound_cases::{Expect, inbound_cases, tenants};
use crate::packets::{syn4, tcp4};

const LIVE_FRAMES: u32 = 1_000_000;
const LIVE_ROUNDS: usize = 5;
const RUNS: u32 = 100_000;
const ROUNDS: usize = 5;

fn best(v: &[f64]) -> f64 {
    v.iter().cloned().fold(f64::INFINITY, f64::min)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

/// Packets nftables' named counter `denied` counted.
fn nft_denied(fab: &FabricNs) -> Result<u64> {
    let out = fab.ns.run(&["nft", "list", "counter", "netdev", "cwdeny", "denied"])?;
    let after = out
        .split("packets ")
        .nth(1)
        .with_context(|| format!("no packet count in `{out}`"))?;
    Ok(after.split_whitespace().next().unwrap_or("").parse()?)
}

pub fn run() -> Result<()> {
    let ts = tenants();
    let fab = FabricNs::new(&ts)?;
    let mut dp = loaded(&fab, &ts)?;
    let c = inbound_cases()
        .into_iter()
        .find(|c| matches!(c.expect, Expect::Drop(DropReason::NotAllowed)) && c.src.is_ipv4())
        .context("a denied case")?;
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (c.src, c.dst) else {
        unreachable!("an IPv4 case")
    };
    let mut frame = syn4(src, dst, c.sport, c.dport);
    frame.resize(frame.len().max(60), 0);
    // nftables drops the same source at the uplink's ingress, after XDP.
    let script = format!(
        "table netdev cwdeny {{
  counter denied {{ }}
  chain in {{
    type filter hook ingress device \"uplink\" priority 0;
    ip saddr {{ {src} }} counter name denied drop
  }}
}}
"
    );
    let file = std::env::temp_dir().join(format!("carwash-bench-deny-{}.nft", std::process::id()));
    std::fs::write(&file, script)?;
    let r = fab.ns.run(&["nft", "-f", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);
    r?;

    let ifindex = fab.uplink_ifindex;
    let mut walls = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let (on, off) = (
        EventLimits {
            rate: DEFAULT_EVENT_RATE,
            burst: DEFAULT_EVENT_BURST,
            flow_sample: 0,
        },
        EventLimits {
            rate: 0,
            burst: DEFAULT_EVENT_BURST,
            flow_sample: 0,
        },
    );
    let mut reported = (0, 0);
    for _ in 0..LIVE_ROUNDS {
        // The uplink program twice: events on, then off (what the event
        // code costs a dropped packet).
        for (i, prog) in [
            programs::BENCH_DROP,
            programs::UPLINK,
            programs::BENCH_PASS,
            programs::UPLINK,
        ]
        .into_iter()
        .enumerate()
        {
            dp.set_event_limits(if i == 3 { off } else { on })?;
            let e0 = dp.event_counts()?[KIND_DROP as usize];
            let (c0, n0) = (dp.counters(SIDE_UPLINK)?, nft_denied(&fab)?);
            let wall = fab.ns.enter(|| live_run(&dp, prog, &frame, ifindex, LIVE_FRAMES))??;
            let (c, n) = (dp.counters(SIDE_UPLINK)?.since(&c0), nft_denied(&fab)? - n0);
            let frames = LIVE_FRAMES as u64;
            match prog {
                programs::UPLINK if i == 1 || i == 3 => ensure!(
                    c.dropped(DropReason::NotAllowed) == frames && n == 0,
                    "carwash dropped {} of {frames} frames",
                    c.dropped(DropReason::NotAllowed)
                ),
                programs::BENCH_PASS => ensure!(n == frames, "nftables dropped {n} of {frames} frames"),
                _ => ensure!(n == 0, "a dropped frame reached nftables"),
            }
            let e = dp.event_counts()?[KIND_DROP as usize];
            let (emitted, held) = (e.emitted - e0.emitted, e.suppressed + e.lost - e0.suppressed - e0.lost);
            if i == 1 {
                ensure!(
                    emitted + held == frames,
                    "{emitted} events + {held} held back of {frames} drops"
                );
                reported = (reported.0 + emitted, reported.1 + held);
            } else {
                ensure!(emitted + held == 0, "events with events off");
            }
            walls[i].push(wall.as_nanos() as f64 / LIVE_FRAMES as f64);
        }
    }
    dp.set_event_limits(on)?;
    let (emitted, suppressed) = reported;
    let _ = fab.ns.run(&["nft", "delete", "table", "netdev", "cwdeny"]);

    println!(
        "\n### a denied flood at the uplink: live frames, {}-byte TCP SYNs from one source, {LIVE_FRAMES} frames × {LIVE_ROUNDS} rounds each, alternating\n",
        frame.len()
    );
    println!("| path | ns/frame, best | median | Mpps, best | × bare XDP_DROP |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let base = best(&walls[0]);
    for (name, w) in [
        ("bare XDP program returning XDP_DROP", &walls[0]),
        ("carwash uplink program, events on (default budget)", &walls[1]),
        ("XDP_PASS, then nftables netdev ingress drop by source set", &walls[2]),
        ("for reference: carwash uplink program, events off", &walls[3]),
    ] {
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} | {:.2} |",
            best(w),
            median(w),
            1e3 / best(w),
            best(w) / base
        );
    }
    println!(
        "\ncarwash / bare XDP_DROP: {:.2}× (target ≤ 1.3×); nftables / carwash: {:.1}× (target ≥ 6×)",
        best(&walls[1]) / base,
        best(&walls[2]) / best(&walls[1])
    );
    println!(
        "what the event code costs a dropped frame: {:.0} ns (best on − best off), {:.0} ns (medians)",
        best(&walls[1]) - best(&walls[3]),
        median(&walls[1]) - median(&walls[3])
    );
    println!(
        "events of the flood: {emitted} reported, {suppressed} held back by the budget ({DEFAULT_EVENT_RATE}/s, burst {DEFAULT_EVENT_BURST}, per CPU)"
    );

    // The allowed path: an accepted SYN steered to a connector.
    let ok = inbound_cases()
        .into_iter()
        .find(|c| matches!(c.expect, Expect::Steer { .. }) && c.src.is_ipv4())
        .context("a steered case")?;
    let (IpAddr::V4(s), IpAddr::V4(d)) = (ok.src, ok.dst) else {
        unreachable!("an IPv4 case")
    };
    let allowed = tcp4(s, d, ok.sport, ok.dport, &[0u8; 10]);
    let mut fig = Vec::new();
    for (name, limits) in [
        (
            "events on (default: no allowed flow sampled)",
            EventLimits {
                rate: DEFAULT_EVENT_RATE,
                burst: DEFAULT_EVENT_BURST,
                flow_sample: 0,
            },
        ),
        (
            "events off (rate_per_sec = 0)",
            EventLimits {
                rate: 0,
                burst: DEFAULT_EVENT_BURST,
                flow_sample: 0,
            },
        ),
        (
            "events on, one allowed packet in 1,000 sampled",
            EventLimits {
                rate: DEFAULT_EVENT_RATE,
                burst: DEFAULT_EVENT_BURST,
                flow_sample: 1000,
            },
        ),
    ] {
        dp.set_event_limits(limits)?;
        let (base, ns) = fab.ns.enter(|| -> Result<_> {
            let base = ns_per_packet(&dp, programs::BENCH_PASS, &allowed, XDP_PASS, RUNS, ROUNDS)?;
            let ns = ns_per_packet(&dp, programs::UPLINK, &allowed, XDP_REDIRECT, RUNS, ROUNDS)?;
            Ok((base, ns))
        })??;
        fig.push((name, ns, ns / base));
    }
    println!("\n### the allowed path (steered SYN), BPF_PROG_TEST_RUN, mean of {RUNS} runs, best of {ROUNDS}\n");
    println!("| events | ns/packet | × minimal XDP_PASS |");
    println!("| --- | ---: | ---: |");
    for (name, ns, r) in &fig {
        println!("| {name} | {ns:.1} | {r:.2} |");
    }
    println!("\nevents on / off: {:.3}× (target ≤ 1.05×)", fig[0].2 / fig[1].2);
    Ok(())
}
