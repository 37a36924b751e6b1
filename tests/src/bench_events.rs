//! `cargo xtask bench -- events`: a flood of 64-byte denied SYNs at the
//! uplink, as live frames (`BPF_PROG_TEST_RUN` with
//! `BPF_F_TEST_XDP_LIVE_FRAMES`, so that a verdict is carried out and
//! XDP_PASS hands the frame to the kernel stack), through four paths with
//! the same injector: a bare XDP_DROP program, carwash's uplink program
//! with events on (within the default budget), and XDP_PASS then an
//! nftables netdev ingress chain doing the same job (the tenants' services
//! and allowlists as sets), and one dropping the source alone. Then the
//! allowed path with events on against off. Every round checks that each
//! frame was dropped where it should have been.
use std::net::IpAddr;

use anyhow::{Context, Result, ensure};
use dataplane::event_maps::EventLimits;
use dataplane_common::events::{DEFAULT_EVENT_BURST, DEFAULT_EVENT_RATE, KIND_DROP};
use dataplane_common::types::SIDE_UPLINK;
use dataplane_common::{DropReason, programs};

use crate::bench::ns_per_packet;
use crate::bench_snat::{live_run, live_run_timed};
use crate::fabric::{FabricNs, loaded};
use crate::fixture::{XDP_PASS, XDP_REDIRECT};
use crate::inbound_cases::{Expect, inbound_cases, tenants};
use crate::packets::{syn4, tcp4};
use carwash_policy::{Class, Tenant};
use ipnetwork::IpNetwork;

const LIVE_FRAMES: u32 = 3_000_000;
const LIVE_ROUNDS: usize = 9;
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

/// Packets the named counter `denied` of nftables table `table` counted.
fn nft_denied(fab: &FabricNs, table: &str) -> Result<u64> {
    let out = fab.ns.run(&["nft", "list", "counter", "netdev", table, "denied"])?;
    let after = out
        .split("packets ")
        .nth(1)
        .with_context(|| format!("no packet count in `{out}`"))?;
    Ok(after.split_whitespace().next().unwrap_or("").parse()?)
}

fn nft_load(fab: &FabricNs, script: &str) -> Result<()> {
    let file = std::env::temp_dir().join(format!("carwash-bench-deny-{}.nft", std::process::id()));
    std::fs::write(&file, script)?;
    let r = fab.ns.run(&["nft", "-f", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);
    r.map(|_| ())
}

/// nftables doing carwash's job for `tenants` at the uplink's ingress: each
/// VIP's service ports with their allowlists, as concatenated interval
/// sets (`daddr . dport . saddr`), accepted; anything else to a VIP
/// counted and dropped.
pub fn nft_policy(table: &str, tenants: &[Tenant]) -> String {
    let (mut allow4, mut allow6, mut vips4, mut vips6) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for t in tenants {
        for vip in &t.vips {
            match vip {
                IpAddr::V4(v) => vips4.push(v.to_string()),
                IpAddr::V6(v) => vips6.push(v.to_string()),
            }
            for (ports, class) in [(&t.https_ports, Class::Https), (&t.jms_ports, Class::Jms)] {
                for port in ports {
                    for a in t.allow.iter().filter(|a| a.classes.contains(&class)) {
                        let e = format!("{vip} . {port} . {}", a.cidr);
                        match (vip, a.cidr) {
                            (IpAddr::V4(_), IpNetwork::V4(_)) => allow4.push(e),
                            (IpAddr::V6(_), IpNetwork::V6(_)) => allow6.push(e),
                            _ => {}
                        }
                    }
                }
            }
        }
    }
    let set = |name: &str, ty: &str, flags: &str, elems: &[String]| {
        let elems = if elems.is_empty() {
            String::new()
        } else {
            format!(" elements = {{ {} }};", elems.join(", "))
        };
        format!("  set {name} {{ type {ty};{flags}{elems} }}\n")
    };
    format!(
        "table netdev {table} {{
  counter denied {{ }}
{}{}{}{}  chain in {{
    type filter hook ingress device \"uplink\" priority 0;
    ip daddr . tcp dport . ip saddr @allowed4 accept
    ip6 daddr . tcp dport . ip6 saddr @allowed6 accept
    ip daddr @vips4 counter name denied drop
    ip6 daddr @vips6 counter name denied drop
  }}
}}
",
        set(
            "allowed4",
            "ipv4_addr . inet_service . ipv4_addr",
            " flags interval;",
            &allow4
        ),
        set(
            "allowed6",
            "ipv6_addr . inet_service . ipv6_addr",
            " flags interval;",
            &allow6
        ),
        set("vips4", "ipv4_addr", "", &vips4),
        set("vips6", "ipv6_addr", "", &vips6),
    )
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
    // nftables at the uplink's ingress, after XDP: the same policy as
    // carwash's, and (a lighter job) a drop of the one source.
    let (policy, by_source) = ("cwpolicy", "cwsource");
    let policy_script = nft_policy(policy, &ts);
    let source_script = format!(
        "table netdev {by_source} {{
  counter denied {{ }}
  chain in {{
    type filter hook ingress device \"uplink\" priority 0;
    ip saddr {{ {src} }} counter name denied drop
  }}
}}
"
    );
    // The policy table lets an allowed packet through and denies this one.
    nft_load(&fab, &policy_script).context("loading the nftables policy")?;
    let ok = inbound_cases()
        .into_iter()
        .find(|c| matches!(c.expect, Expect::Steer { .. }) && c.src.is_ipv4())
        .context("a steered case")?;
    let (IpAddr::V4(s), IpAddr::V4(d)) = (ok.src, ok.dst) else {
        unreachable!("an IPv4 case")
    };
    let mut allowed_syn = syn4(s, d, ok.sport, ok.dport);
    allowed_syn.resize(allowed_syn.len().max(60), 0);
    for (f, want) in [(&allowed_syn, 0), (&frame, 1000)] {
        let n0 = nft_denied(&fab, policy)?;
        fab.ns
            .enter(|| live_run(&dp, programs::BENCH_PASS, f, fab.uplink_ifindex, 1000))??;
        let n = nft_denied(&fab, policy)? - n0;
        ensure!(n == want, "the nftables policy dropped {n} of 1000 frames, not {want}");
    }
    fab.ns.run(&["nft", "delete", "table", "netdev", policy])?;

    let ifindex = fab.uplink_ifindex;
    let mut walls = [Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let mut kernels = walls.clone();
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
    let mut hits = 0;
    // 0: bare XDP_DROP; 1: carwash, events on; 2: XDP_PASS then the
    // nftables policy; 3: XDP_PASS then nftables by source; 4: carwash,
    // events off (what the event code costs a dropped packet).
    let paths = [
        (programs::BENCH_DROP, None),
        (programs::UPLINK, None),
        (programs::BENCH_PASS, Some((policy, &policy_script))),
        (programs::BENCH_PASS, Some((by_source, &source_script))),
        (programs::UPLINK, None),
    ];
    for _ in 0..LIVE_ROUNDS {
        for (i, (prog, nft)) in paths.iter().enumerate() {
            dp.set_event_limits(if i == 4 { off } else { on })?;
            if let Some((_, script)) = nft {
                nft_load(&fab, script)?;
            }
            let e0 = dp.event_counts()?[KIND_DROP as usize];
            let n0 = match nft {
                Some((table, _)) => nft_denied(&fab, table)?,
                None => 0,
            };
            let (c0, h0) = (dp.counters(SIDE_UPLINK)?, dp.deny_cache_hits()?);
            let (wall, kernel) = fab
                .ns
                .enter(|| live_run_timed(&dp, prog, &frame, ifindex, LIVE_FRAMES))??;
            let (c, h) = (dp.counters(SIDE_UPLINK)?.since(&c0), dp.deny_cache_hits()? - h0);
            let n = match nft {
                Some((table, _)) => {
                    let n = nft_denied(&fab, table)? - n0;
                    fab.ns.run(&["nft", "delete", "table", "netdev", table])?;
                    n
                }
                None => 0,
            };
            let frames = LIVE_FRAMES as u64;
            if *prog == programs::UPLINK {
                ensure!(
                    c.dropped(DropReason::NotAllowed) == frames,
                    "carwash dropped {} of {frames} frames",
                    c.dropped(DropReason::NotAllowed)
                );
                hits += h;
            } else if *prog == programs::BENCH_PASS {
                ensure!(n == frames, "nftables dropped {n} of {frames} frames");
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
            kernels[i].push(kernel.as_nanos() as f64);
        }
    }
    dp.set_event_limits(on)?;
    let (emitted, suppressed) = reported;

    println!(
        "\n### a denied flood at the uplink: live frames, {}-byte TCP SYNs from one source, {LIVE_FRAMES} frames × {LIVE_ROUNDS} rounds each, alternating\n",
        frame.len()
    );
    println!(
        "wall time per frame (the toolchain notes' method), and the kernel's own figure: its loop's time per frame, without the run's set-up (the page pool) and the time the loop gave the CPU away\n"
    );
    println!(
        "| path | wall ns/frame, best | median | Mpps, best | × bare XDP_DROP | kernel ns/frame, best | median | × bare XDP_DROP |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let (base, kbase) = (best(&walls[0]), best(&kernels[0]));
    for (name, w, k) in [
        ("bare XDP program returning XDP_DROP", &walls[0], &kernels[0]),
        (
            "carwash uplink program, events on (default budget)",
            &walls[1],
            &kernels[1],
        ),
        (
            "XDP_PASS, then nftables netdev ingress: the same policy (daddr . dport . saddr interval set)",
            &walls[2],
            &kernels[2],
        ),
        (
            "XDP_PASS, then nftables netdev ingress drop by source set",
            &walls[3],
            &kernels[3],
        ),
        (
            "for reference: carwash uplink program, events off",
            &walls[4],
            &kernels[4],
        ),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.2} | {:.2} | {:.0} | {:.0} | {:.2} |",
            best(w),
            median(w),
            1e3 / best(w),
            best(w) / base,
            best(k),
            median(k),
            best(k) / kbase
        );
    }
    println!(
        "\ncarwash / bare XDP_DROP: {:.2}× (target ≤ 1.3×); nftables (same policy) / carwash: {:.1}× (target ≥ 6×); nftables (by source) / carwash: {:.1}×",
        best(&walls[1]) / base,
        best(&walls[2]) / best(&walls[1]),
        best(&walls[3]) / best(&walls[1])
    );
    println!(
        "medians: carwash / bare XDP_DROP {:.2}×; nftables (same policy) / carwash {:.1}×; nftables (by source) / carwash {:.1}×",
        median(&walls[1]) / median(&walls[0]),
        median(&walls[2]) / median(&walls[1]),
        median(&walls[3]) / median(&walls[1])
    );
    println!(
        "kernel figures: carwash / bare XDP_DROP {:.2}× best, {:.2}× medians; nftables (same policy) / carwash {:.1}× best, {:.1}× medians",
        best(&kernels[1]) / kbase,
        median(&kernels[1]) / median(&kernels[0]),
        best(&kernels[2]) / best(&kernels[1]),
        median(&kernels[2]) / median(&kernels[1])
    );
    println!(
        "what the event code costs a dropped frame: {:.0} ns (best on − best off), {:.0} ns (medians)",
        best(&walls[1]) - best(&walls[4]),
        median(&walls[1]) - median(&walls[4])
    );
    println!(
        "events of the flood: {emitted} reported, {suppressed} held back by the budget ({DEFAULT_EVENT_RATE}/s, burst {DEFAULT_EVENT_BURST}, per CPU)"
    );
    println!(
        "denial cache: {hits} of {} carwash frames dropped on a remembered verdict, {} of them by the fast path (every CPU, since the load)",
        2 * LIVE_ROUNDS as u64 * LIVE_FRAMES as u64,
        dp.deny_fast_drops()?
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
        // No flood now: the denial fast path off, as outside one.
        dp.disarm_deny_fast()?;
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
