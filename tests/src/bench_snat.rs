//! `cargo xtask bench`, source NAT: what carwash's outbound translation
//! costs per packet against the minimal XDP program, with the tracking
//! table nearly empty and nearly full, and how fast it forwards against the
//! kernel's own stack (Linux `vxlan` device, routing, nftables `snat`)
//! doing the same translation in the same namespace.
//!
//! ns/packet: the single-run method of [`crate::bench`] (every run on a
//! fresh copy of the frame). The table is `CT_ENTRIES` entries, filled from
//! userspace with synthetic flows (both directions, as the data path writes
//! them, with an expiry far in the future). New flows are measured in
//! chunks of `CHUNK` flows, each flow never seen before; after every chunk
//! the measured flows are removed again (outside the measured time), so the
//! table stays at the fill level it is measured at.
//!
//! Packets per second: `BPF_PROG_TEST_RUN` in live-frames mode on `fabric`,
//! wall time per frame, the translated packets counted where they arrive
//! (nftables netdev ingress on the uplink's peer). See docs/benchmarks.md.
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use aya::maps::{HashMap, Map, MapData};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions};
use carwash_policy::Tenant;
use dataplane::Dataplane;
use dataplane::conntrack::{now_ns, reply_key_of};
use dataplane::loader::{DEFAULT_CONNTRACK_ENTRIES, map_pin};
use dataplane_common::hash::flow_hash;
use dataplane_common::types::{CT_ESTABLISHED, CT_REPLY, CtKey, CtValue, FAMILY_V4, SIDE_FABRIC, SIDE_UPLINK};
use dataplane_common::{Counter, DropReason, maps, programs};
use netlab::netns::PinDir;

use crate::bench::{ns_per_packet, ns_per_packet_many};
use crate::fabric::{FabricNs, HOST_VTEP, ROUTER_MAC};
use crate::fixture::{XDP_PASS, XDP_REDIRECT};
use crate::inbound_cases::{addr16, tenants};
use crate::outbound::{ACME_EGRESS4, ACME_VM4, PARTNER4, first_port, from_machine, ports, to_internet, to_machine, v4};
use crate::packets::{syn_with_mss, tcp4, udp4};

/// The tracking table's size: the default `[conntrack] max_entries`.
pub const CT_ENTRIES: u32 = DEFAULT_CONNTRACK_ENTRIES;
/// For comparison: a table of a power of two of entries, which the kernel
/// gives as many hash buckets as entries (half as many as the default).
const POW2_ENTRIES: u32 = 1 << 18;
const RUNS: u32 = 100_000;
const ROUNDS: usize = 5;
/// Established flows measured (see `ns_per_packet_figures`).
const MEASURED: u32 = 64;
/// Rounds of new flows: each is a mean over 100 chunks, and its spread
/// from round to round (about 7 % here: every run is a set of cache
/// misses, which other work on the machine stretches) is twice that of
/// the other figures.
const NEW_ROUNDS: usize = 10;
/// New flows measured between two clean-ups of the table.
const CHUNK: u32 = 1_000;
/// Fill levels of the tracking table, in percent of its entries.
const FILLS: [u32; 2] = [1, 90];
/// Live frames: frames per round, rounds (alternating), batch size.
const LIVE_FRAMES: u32 = 1_000_000;
const LIVE_ROUNDS: usize = 5;
const LIVE_BATCH: u32 = 64;

/// Acme: tenant id 1 in the order `inbound_cases::tenants` installs.
const ACME_ID: u32 = 1;
/// The 10 bytes of payload of the inbound benchmark's 64-byte TCP frames.
const PAYLOAD: &[u8] = &[0u8; 10];

/// One figure of the table: ns/packet at each fill level.
struct Figure {
    name: &'static str,
    ns: Vec<f64>,
    target: f64,
}

/// Runs the source-NAT benchmarks and prints their tables.
pub fn run() -> Result<()> {
    let ts = tenants();
    let acme = &ts[0];
    let fab = FabricNs::new(&ts)?;
    let pins = PinDir::new()?;
    let (mut dp, mut ct) = load(&pins, CT_ENTRIES, &fab, &ts)?;

    ns_per_packet_figures(&dp, &mut ct, &fab, acme)?;
    power_of_two_table(&fab, &ts)?;
    live_frames(&mut dp, &fab, acme)?;
    Ok(())
}

/// The programs with a tracking table of `entries`, pinned in `pins`, set
/// up for `fab` with the tenants `ts`; and the table, for writing from
/// userspace.
fn load(
    pins: &PinDir,
    entries: u32,
    fab: &FabricNs,
    ts: &[Tenant],
) -> Result<(Dataplane, HashMap<MapData, CtKey, CtValue>)> {
    let mut dp = Dataplane::load_with(Some(pins.path()), entries)?;
    dp.set_host(&fab.host_params())?;
    for (i, t) in ts.iter().enumerate() {
        dp.install_tenant(i as u32 + 1, t)?;
    }
    Ok((dp, conntrack(pins.path())?))
}

/// The pinned tracking table, for writing from userspace.
fn conntrack(pin_dir: &Path) -> Result<HashMap<MapData, CtKey, CtValue>> {
    let path = map_pin(pin_dir, maps::CONNTRACK);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(HashMap::try_from(Map::HashMap(data))?)
}

fn entries(ct: &HashMap<MapData, CtKey, CtValue>) -> usize {
    ct.keys().filter(|k| k.is_ok()).count()
}

/// Synthetic flow `i` of acme: a machine of its VPC to a remote of its own
/// (no two flows share a remote, so neither direction's key collides with
/// another flow or with the measured ones), translated to acme's egress IP
/// and a port of the range; established, expiring in a million seconds.
fn synthetic_flow(i: u32, now: u64) -> [(CtKey, CtValue); 2] {
    let src = Ipv4Addr::new(10, 101, 1 + (i / 256 % 250) as u8, (i % 256) as u8);
    let remote = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 80, 0, 0)) + i);
    let (lo, hi) = ports();
    let port = lo + (i % (hi - lo + 1) as u32) as u16;
    let out = CtKey {
        tenant: ACME_ID,
        src: addr16(v4(src)),
        dst: addr16(v4(remote)),
        sport_be: (30_000 + (i % 30_000) as u16).to_be_bytes(),
        dport_be: 443u16.to_be_bytes(),
        proto: 6,
        family: FAMILY_V4,
        _pad: [0; 2],
    };
    let expires_ns = now + 1_000_000 * 1_000_000_000;
    let out_v = CtValue {
        addr: addr16(v4(ACME_EGRESS4)),
        port_be: port.to_be_bytes(),
        origin: 0,
        state: CT_ESTABLISHED,
        tenant: ACME_ID,
        expires_ns,
        touched_ns: now,
        // Not checked against the tenant's tries yet: the first packet of
        // each synthetic flow is; the measured flow is kept up to date by
        // its own packets.
        version: 0,
        _pad: 0,
    };
    let reply_v = CtValue {
        addr: out.src,
        port_be: out.sport_be,
        state: CT_ESTABLISHED | CT_REPLY,
        ..out_v
    };
    [(out, out_v), (reply_key_of(&out, &out_v), reply_v)]
}

/// Writes synthetic flows `from..to` (two entries each).
fn fill(ct: &mut HashMap<MapData, CtKey, CtValue>, from: u32, to: u32) -> Result<()> {
    let now = now_ns();
    for i in from..to {
        for (k, v) in synthetic_flow(i, now) {
            ct.insert(k, v, 0).context("writing a synthetic flow")?;
        }
    }
    Ok(())
}

/// Synthetic flows that fill a table of `size` entries to `pct` percent.
fn flows_at(size: u32, pct: u32) -> u32 {
    (size as u64 * pct as u64 / 100 / 2) as u32
}

/// The new-flow figure again, in a table of `POW2_ENTRIES` entries: what
/// the default's one entry above a power of two buys (see
/// `DEFAULT_CONNTRACK_ENTRIES`), in the same run.
fn power_of_two_table(fab: &FabricNs, ts: &[Tenant]) -> Result<()> {
    let acme = &ts[0];
    let pins = PinDir::new()?;
    let (dp, mut ct) = load(&pins, POW2_ENTRIES, fab, ts)?;
    let probe = from_machine(
        acme,
        &acme.connectors[0],
        &tcp4(ACME_VM4, PARTNER4, 40000, 443, PAYLOAD),
    );
    let (mut filled, mut next) = (0, 0);
    let mut ratios = Vec::new();
    for fill_pct in FILLS {
        let want = flows_at(POW2_ENTRIES, fill_pct);
        fill(&mut ct, filled, want)?;
        filled = want;
        let (base, new) = fab.ns.enter(|| -> Result<_> {
            let base = ns_per_packet(&dp, programs::BENCH_PASS, &probe, XDP_PASS, RUNS, ROUNDS)?;
            let new = ns_new_flows(&dp, &mut ct, acme, &mut next)?;
            let again = ns_per_packet(&dp, programs::BENCH_PASS, &probe, XDP_PASS, RUNS, ROUNDS)?;
            Ok((base.min(again), new))
        })??;
        let n = entries(&ct);
        ensure!(
            n == 2 * filled as usize,
            "the {POW2_ENTRIES}-entry table holds {n} entries, not the {} measured at",
            2 * filled
        );
        ratios.push((new, new / base));
    }
    let ((a, ra), (b, rb)) = (ratios[0], ratios[1]);
    println!(
        "| for comparison: first packet of a new flow, table of {POW2_ENTRIES} entries (2^18, as many buckets as entries) | \
         {a:.1} ns, {ra:.2}× | {b:.1} ns, {rb:.2}× | {:.2} | |",
        rb / ra
    );
    Ok(())
}

/// The first packet of measured new flow `k` (never the same flow twice in
/// one run of the benchmark): a TCP SYN from a machine of acme's VPC.
fn new_flow(acme: &Tenant, k: u32) -> (CtKey, Vec<u8>) {
    let src = Ipv4Addr::new(10, 101, 100 + (k / 50_000) as u8, 7);
    let sport = 1024 + (k % 50_000) as u16;
    let key = CtKey {
        tenant: ACME_ID,
        src: addr16(v4(src)),
        dst: addr16(v4(PARTNER4)),
        sport_be: sport.to_be_bytes(),
        dport_be: 443u16.to_be_bytes(),
        proto: 6,
        family: FAMILY_V4,
        _pad: [0; 2],
    };
    let frame = from_machine(
        acme,
        &acme.connectors[0],
        &syn_with_mss(v4(src), v4(PARTNER4), sport, 443, 1460),
    );
    (key, frame)
}

/// Mean kernel-measured ns of `RUNS` new flows (best of `NEW_ROUNDS` rounds),
/// removing the measured flows again after every `CHUNK`; `next` numbers
/// the flows across calls. Checks that every run tracked a new flow.
fn ns_new_flows(
    dp: &Dataplane,
    ct: &mut HashMap<MapData, CtKey, CtValue>,
    acme: &Tenant,
    next: &mut u32,
) -> Result<f64> {
    let mut out = vec![0u8; 512];
    let mut best = f64::INFINITY;
    for _ in 0..NEW_ROUNDS {
        let mut total = 0u128;
        let mut done = 0;
        while done < RUNS {
            let n = CHUNK.min(RUNS - done);
            let flows: Vec<_> = (*next..*next + n).map(|k| new_flow(acme, k)).collect();
            *next += n;
            let before = dp.counters(SIDE_FABRIC)?;
            for (_, frame) in &flows {
                let r = dp.test_run(programs::FABRIC, frame, Some(&mut out), 1)?;
                if r.return_value != XDP_REDIRECT {
                    bail!("new flow: verdict {} where XDP_REDIRECT was expected", r.return_value);
                }
                total += r.duration.as_nanos();
            }
            let d = dp.counters(SIDE_FABRIC)?.since(&before);
            ensure!(
                d.get(Counter::SnatNewFlow) == n as u64 && d.get(Counter::SnatOut) == n as u64,
                "{n} new flows measured, the program tracked {} new and translated {}",
                d.get(Counter::SnatNewFlow),
                d.get(Counter::SnatOut)
            );
            // Back to the fill level measured: both directions of each.
            for (key, _) in &flows {
                let v = ct.get(key, 0).context("a measured flow is not in the table")?;
                ct.remove(key)?;
                ct.remove(&reply_key_of(key, &v))?;
            }
            done += n;
        }
        best = best.min(total as f64 / RUNS as f64);
    }
    Ok(best)
}

fn ns_per_packet_figures(
    dp: &Dataplane,
    ct: &mut HashMap<MapData, CtKey, CtValue>,
    fab: &FabricNs,
    acme: &Tenant,
) -> Result<()> {
    let m = &acme.connectors[0];
    let (sport, dport) = (40000, 443);
    // The measured flows: `MEASURED` of them, from source ports 40000 on,
    // each opened by a SYN. A flow's lookups walk its keys' buckets, and in
    // a 90 % full table where its entries sit on their chains is a matter
    // of the table's hash seed: the established and reply figures are the
    // mean over all of them, not one flow's luck.
    let sports: Vec<u16> = (sport..sport + MEASURED as u16).collect();
    let syns: Vec<Vec<u8>> = sports
        .iter()
        .map(|&s| from_machine(acme, m, &syn_with_mss(v4(ACME_VM4), v4(PARTNER4), s, dport, 1460)))
        .collect();
    let established: Vec<Vec<u8>> = sports
        .iter()
        .map(|&s| from_machine(acme, m, &tcp4(ACME_VM4, PARTNER4, s, dport, PAYLOAD)))
        .collect();
    let out_key = |s: u16| CtKey {
        tenant: ACME_ID,
        src: addr16(v4(ACME_VM4)),
        dst: addr16(v4(PARTNER4)),
        sport_be: s.to_be_bytes(),
        dport_be: dport.to_be_bytes(),
        proto: 6,
        family: FAMILY_V4,
        _pad: [0; 2],
    };
    // For reference: a reply from one of acme's VIPs (path 2) is
    // decapsulated and routed out of the uplink like a translated packet,
    // without tracking or translation.
    let vip_reply = from_machine(
        acme,
        m,
        &tcp4(
            Ipv4Addr::new(203, 0, 113, 10),
            Ipv4Addr::new(198, 51, 100, 10),
            443,
            sport,
            PAYLOAD,
        ),
    );

    let mut figures = vec![
        Figure {
            name: "established flow, outbound (fabric → uplink)",
            ns: vec![],
            target: 5.0,
        },
        Figure {
            name: "first packet of a new flow (TCP SYN)",
            ns: vec![],
            target: 15.0,
        },
        Figure {
            name: "reply of an established flow (uplink → fabric)",
            ns: vec![],
            target: 5.0,
        },
    ];
    let mut baselines = Vec::new();
    let mut vips = Vec::new();
    let mut filled = 0u32;
    let mut next_new = 0u32;
    for fill_pct in FILLS {
        // Entries to reach, the measured flows' included.
        let want_flows = flows_at(CT_ENTRIES, fill_pct) - MEASURED;
        fill(ct, filled, want_flows)?;
        filled = want_flows;
        let (baseline, est, new, rep, vip) = fab.ns.enter(|| -> Result<_> {
            // The measured flows: opened by a SYN (again, at 90 %: still
            // the same flows), then data both ways; the first one's exact
            // frames checked.
            for syn in &syns {
                let (a, _) = dp.run(programs::FABRIC, syn)?;
                ensure!(a == XDP_REDIRECT, "a measured flow's SYN: verdict {a}");
            }
            let mut replies = Vec::new();
            for &s in &sports {
                let v = ct.get(&out_key(s), 0).context("a measured flow is not tracked")?;
                replies.push(tcp4(
                    PARTNER4,
                    ACME_EGRESS4,
                    dport,
                    u16::from_be_bytes(v.port_be),
                    PAYLOAD,
                ));
            }
            let port = first_port(v4(ACME_VM4), v4(PARTNER4), sport, dport, 6, ports());
            ensure!(
                replies[0] == tcp4(PARTNER4, ACME_EGRESS4, dport, port, PAYLOAD),
                "the first measured flow is not on its first port"
            );
            let (a, o) = dp.run(programs::FABRIC, &established[0])?;
            ensure!(
                a == XDP_REDIRECT && o == to_internet(&tcp4(ACME_EGRESS4, PARTNER4, port, dport, PAYLOAD)),
                "the established packet is not translated as expected (verdict {a})"
            );
            let (a, o) = dp.run(programs::UPLINK, &replies[0])?;
            let hash = flow_hash(&addr16(v4(PARTNER4)), &addr16(v4(ACME_EGRESS4)), dport, port, 6);
            ensure!(
                a == XDP_REDIRECT && o == to_machine(acme, m, hash, &tcp4(PARTNER4, ACME_VM4, dport, sport, PAYLOAD)),
                "the reply is not translated back as expected (verdict {a})"
            );
            let baseline = ns_per_packet(dp, programs::BENCH_PASS, &established[0], XDP_PASS, RUNS, ROUNDS)?;
            let vip = ns_per_packet(dp, programs::FABRIC, &vip_reply, XDP_REDIRECT, RUNS, ROUNDS)?;
            let fab0 = dp.counters(SIDE_FABRIC)?;
            let up0 = dp.counters(SIDE_UPLINK)?;
            let est = ns_per_packet_many(dp, programs::FABRIC, &established, XDP_REDIRECT, RUNS, ROUNDS)?;
            let rep = ns_per_packet_many(dp, programs::UPLINK, &replies, XDP_REDIRECT, RUNS, ROUNDS)?;
            let (df, du) = (
                dp.counters(SIDE_FABRIC)?.since(&fab0),
                dp.counters(SIDE_UPLINK)?.since(&up0),
            );
            let runs = RUNS as u64 * ROUNDS as u64;
            ensure!(
                df.get(Counter::SnatOut) == runs && df.get(Counter::SnatNewFlow) == 0,
                "established: {} translated, {} new of {runs}",
                df.get(Counter::SnatOut),
                df.get(Counter::SnatNewFlow)
            );
            ensure!(
                du.get(Counter::SnatReply) == runs,
                "replies: {} translated of {runs}",
                du.get(Counter::SnatReply)
            );
            let new = ns_new_flows(dp, ct, acme, &mut next_new)?;
            // The minimal program again at the end of the phase: the lower
            // of its two figures, so that one noisy measurement of an
            // 80 ns program does not move every ratio of the phase.
            let again = ns_per_packet(dp, programs::BENCH_PASS, &established[0], XDP_PASS, RUNS, ROUNDS)?;
            let baseline = baseline.min(again);
            Ok((baseline, est, new, rep, vip))
        })??;
        let n = entries(ct);
        let expect = 2 * (filled + MEASURED) as usize;
        println!(
            "conntrack after the {fill_pct}% runs: {n} of {CT_ENTRIES} entries ({:.1}%), {expect} expected",
            100.0 * n as f64 / CT_ENTRIES as f64
        );
        ensure!(n == expect, "the table holds {n} entries, not the {expect} measured at");
        baselines.push(baseline);
        figures[0].ns.push(est);
        figures[1].ns.push(new);
        figures[2].ns.push(rep);
        vips.push(vip);
    }

    println!(
        "\n### source NAT: mean of {RUNS} single runs, each on a fresh copy of the frame (best of {ROUNDS}; new flows best of {NEW_ROUNDS})\n"
    );
    println!(
        "tracking table of {CT_ENTRIES} entries filled with synthetic established flows; minimal XDP_PASS program: {}\n",
        FILLS
            .iter()
            .zip(&baselines)
            .map(|(f, b)| format!("{b:.1} ns ({f}% run)"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "| scenario (64-byte TCP inside VXLAN) | table 1% full | table 90% full | 90% / 1% (of the ×; of the ns) | target |"
    );
    println!("| --- | ---: | ---: | ---: | --- |");
    for f in &figures {
        let (a, b) = (f.ns[0] / baselines[0], f.ns[1] / baselines[1]);
        println!(
            "| {} | {:.1} ns, {a:.2}× | {:.1} ns, {b:.2}× | {:.2}; {:.2} | ≤ {}×; 90%/1% ≤ 1.3 |",
            f.name,
            f.ns[0],
            f.ns[1],
            b / a,
            f.ns[1] / f.ns[0],
            f.target
        );
    }
    let (a, b) = (vips[0] / baselines[0], vips[1] / baselines[1]);
    println!(
        "| for reference: reply from a VIP (path 2: decapsulate and route, no NAT) | {:.1} ns, {a:.2}× | {:.1} ns, {b:.2}× | {:.2} | |",
        vips[0],
        vips[1],
        b / a
    );
    Ok(())
}

/// `xdp_md` for `BPF_PROG_TEST_RUN`: the frame arrives on `ifindex`.
pub fn xdp_md(len: usize, ifindex: u32) -> [u8; 24] {
    let mut md = [0u8; 24];
    // data = 0, data_end = len, data_meta = 0, ingress_ifindex,
    // rx_queue_index = 0, egress_ifindex = 0.
    md[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    md[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    md
}

/// Wall time of `frames` live frames of `frame` through `prog`, arriving on
/// `ifindex` (run in the calling thread's namespace).
pub fn live_run(dp: &Dataplane, prog: &str, frame: &[u8], ifindex: u32, frames: u32) -> Result<Duration> {
    Ok(live_run_timed(dp, prog, frame, ifindex, frames)?.0)
}

/// [`live_run`]'s wall time, and the kernel's own figure: the mean time per
/// frame over the run's loop, which leaves out the time the loop gave the
/// CPU away (`cond_resched`) on a busy machine.
pub fn live_run_timed(
    dp: &Dataplane,
    prog: &str,
    frame: &[u8],
    ifindex: u32,
    frames: u32,
) -> Result<(Duration, Duration)> {
    let md = xdp_md(frame.len(), ifindex);
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.ctx_in = Some(&md);
    opts.repeat = frames;
    opts.attrs = TestRunAttrs::new().xdp_live_frames(LIVE_BATCH);
    let t0 = Instant::now();
    let r = dp
        .xdp(prog)?
        .test_run(opts)
        .with_context(|| format!("live-frames run of {prog}"))?;
    Ok((t0.elapsed(), r.duration))
}

/// nftables in the fabric namespace: the kernel's way of doing carwash's
/// outbound translation (for acme's VPC, to acme's egress IP and the
/// host's port range), and counters where the translated packets arrive.
fn kernel_setup(fab: &FabricNs, acme: &Tenant) -> Result<()> {
    let ns = &fab.ns;
    // The machine's tunnel terminates here, as a Linux vxlan device that
    // answers to the router MAC the machines send to.
    let vni = acme.vni.to_string();
    let local = HOST_VTEP.to_string();
    ns.ip(&[
        "link",
        "add",
        "cwvx",
        "type",
        "vxlan",
        "id",
        &vni,
        "local",
        &local,
        "dstport",
        "4789",
        "nolearning",
        "dev",
        "fabric",
    ])?;
    let mac = ROUTER_MAC
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    ns.ip(&["link", "set", "cwvx", "address", &mac, "up"])?;
    ns.ip(&["route", "add", "10.101.0.0/16", "dev", "cwvx"])?;
    ns.sysctls(&[
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.cwvx.rp_filter", "0"),
    ])?;
    // Frames redirected to a veth need its peer to run NAPI (GRO on, or an
    // XDP program of its own).
    ns.run(&["ethtool", "-K", "upeer", "gro", "on"])?;
    let (lo, hi) = ports();
    let script = format!(
        "table ip cwbench {{
  chain raw {{
    type filter hook prerouting priority raw;
    udp dport 4789 ip daddr {local} notrack
  }}
  chain post {{
    type nat hook postrouting priority srcnat;
    oifname \"uplink\" ip saddr 10.101.0.0/16 meta l4proto {{ tcp, udp }} counter snat to {egress}:{lo}-{hi}
  }}
}}
table netdev cwpeer {{
  counter translated {{ }}
  counter other {{ }}
  chain in {{
    type filter hook ingress device \"upeer\" priority 0;
    ip saddr {egress} ip daddr {partner} udp sport {lo}-{hi} counter name translated drop
    meta protocol ip counter name other drop
  }}
}}
",
        egress = ACME_EGRESS4,
        partner = PARTNER4,
    );
    let file = std::env::temp_dir().join(format!("carwash-bench-{}.nft", std::process::id()));
    std::fs::write(&file, script)?;
    let r = ns.run(&["nft", "-f", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);
    r?;
    Ok(())
}

/// Packets of an nftables named counter of the peer table.
fn peer_counter(fab: &FabricNs, name: &str) -> Result<u64> {
    let out = fab.ns.run(&["nft", "list", "counter", "netdev", "cwpeer", name])?;
    let after = out
        .split("packets ")
        .nth(1)
        .with_context(|| format!("no packet count in `{out}`"))?;
    Ok(after.split_whitespace().next().unwrap_or("").parse()?)
}

fn live_frames(dp: &mut Dataplane, fab: &FabricNs, acme: &Tenant) -> Result<()> {
    kernel_setup(fab, acme)?;
    let m = &acme.connectors[0];
    // A UDP flow of its own, 64 bytes inside the tunnel.
    let frame = from_machine(acme, m, &udp4(ACME_VM4, PARTNER4, 40001, 443, &[0u8; 18]));
    dp.set_bench_frame(&frame)?;
    let restore_ns = fab.ns.enter(|| -> Result<_> {
        let base = ns_per_packet(dp, programs::BENCH_PASS, &frame, XDP_PASS, RUNS, ROUNDS)?;
        let restore = ns_per_packet(dp, programs::BENCH_RESTORE_PASS, &frame, XDP_PASS, RUNS, ROUNDS)?;
        Ok((base, restore))
    })??;

    // Reference: a reply from a VIP through carwash (path 2), the same
    // decapsulation and redirect without tracking or translation; it
    // arrives at the peer untranslated ("other").
    let vip_frame = from_machine(
        acme,
        m,
        &udp4(
            Ipv4Addr::new(203, 0, 113, 10),
            Ipv4Addr::new(198, 51, 100, 10),
            443,
            40001,
            &[0u8; 18],
        ),
    );
    let variants = [
        (programs::BENCH_RESTORE_FABRIC, &frame, true),
        (programs::BENCH_RESTORE_PASS, &frame, true),
        (programs::BENCH_RESTORE_FABRIC, &vip_frame, false),
    ];
    // Why the restore: the fabric program alone on live frames sees its
    // own output once the kernel reuses a page.
    let (t0, c0) = (peer_counter(fab, "translated")?, dp.counters(SIDE_FABRIC)?);
    fab.ns
        .enter(|| live_run(dp, programs::FABRIC, &frame, fab.fabric_ifindex, LIVE_FRAMES))??;
    let (unrestored, c) = (
        peer_counter(fab, "translated")? - t0,
        dp.counters(SIDE_FABRIC)?.since(&c0),
    );
    println!(
        "\nlive frames without the restore: {unrestored} of {LIVE_FRAMES} frames left translated; \
         {} dropped as inner source not allowed (the frame already translated)",
        c.dropped(DropReason::InnerSourceNotAllowed)
    );
    let mut walls = vec![Vec::new(); variants.len()];
    for _ in 0..LIVE_ROUNDS {
        for (i, &(prog, f, translated)) in variants.iter().enumerate() {
            dp.set_bench_frame(f)?;
            let (t0, o0) = (peer_counter(fab, "translated")?, peer_counter(fab, "other")?);
            let c0 = dp.counters(SIDE_FABRIC)?;
            let wall = fab
                .ns
                .enter(|| live_run(dp, prog, f, fab.fabric_ifindex, LIVE_FRAMES))??;
            let (t, o) = (peer_counter(fab, "translated")? - t0, peer_counter(fab, "other")? - o0);
            let c = dp.counters(SIDE_FABRIC)?.since(&c0);
            let want = if translated {
                (LIVE_FRAMES as u64, 0)
            } else {
                (0, LIVE_FRAMES as u64)
            };
            ensure!(
                (t, o) == want,
                "{prog}: {t} translated and {o} other packets reached the uplink's peer of {LIVE_FRAMES} frames \
                 (carwash translated {}, decapsulated {})",
                c.get(Counter::SnatOut),
                c.get(Counter::Decapsulated)
            );
            walls[i].push(wall.as_nanos() as f64 / LIVE_FRAMES as f64);
        }
    }
    // The count of refused redirects hangs on a tracepoint that fires on
    // failures only: with it attached, a redirect that succeeds must cost
    // the same.
    dp.set_bench_frame(&vip_frame)?;
    let mut watch = [Vec::new(), Vec::new()];
    for _ in 0..LIVE_ROUNDS {
        for (i, on) in [false, true].into_iter().enumerate() {
            let id = if on { Some(dp.watch_redirects()?) } else { None };
            let wall = fab.ns.enter(|| {
                live_run(
                    dp,
                    programs::BENCH_RESTORE_FABRIC,
                    &vip_frame,
                    fab.fabric_ifindex,
                    LIVE_FRAMES,
                )
            })??;
            if let Some(id) = id {
                dp.unwatch_redirects(id)?;
            }
            watch[i].push(wall.as_nanos() as f64 / LIVE_FRAMES as f64);
        }
    }
    ensure!(
        dp.redirect_errors()?.is_empty(),
        "redirects refused while every frame arrived: {:?}",
        dp.redirect_errors()?
    );
    let (carwash, kernel, vip) = (&walls[0], &walls[1], &walls[2]);
    let best = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
    let median = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        s[s.len() / 2]
    };
    let (cb, kb, vb) = (best(carwash), best(kernel), best(vip));
    let (cm, km, vm) = (median(carwash), median(kernel), median(vip));
    println!(
        "\n### source NAT against the kernel stack: live frames on `fabric`, {LIVE_FRAMES} frames × {LIVE_ROUNDS} rounds each, alternating\n"
    );
    println!("| path (64-byte UDP inside VXLAN, one established flow) | ns/frame, best | median | Mpps, best |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| carwash: restore, fabric → snat_out, redirect to uplink | {cb:.0} | {cm:.0} | {:.2} |",
        1e3 / cb
    );
    println!(
        "| kernel: restore, XDP_PASS, vxlan device, routing, nftables snat | {kb:.0} | {km:.0} | {:.2} |",
        1e3 / kb
    );
    println!(
        "| for reference, carwash: restore, reply from a VIP (path 2, no NAT), redirect to uplink | {vb:.0} | {vm:.0} | {:.2} |",
        1e3 / vb
    );
    let (off, on) = (&watch[0], &watch[1]);
    println!(
        "| reply from a VIP as above, refused redirects not counted / counted (tracepoint attached) | {:.0} / {:.0} | {:.0} / {:.0} | {:.2} / {:.2} |",
        best(off),
        best(on),
        median(off),
        median(on),
        1e3 / best(off),
        1e3 / best(on)
    );
    println!(
        "\ncarwash / kernel packet rate: {:.2}× (best), {:.2}× (median); target ≥ 2×",
        kb / cb,
        km / cm
    );
    println!(
        "every frame of every round arrived at the uplink's peer, translated where it should be (nftables counters); \
         the restore, counted against both: {:.1} ns single-run against {:.1} ns for the minimal program",
        restore_ns.1, restore_ns.0
    );
    Ok(())
}
