//! `cargo xtask bench`: ns/packet of carwash's programs against the minimal
//! XDP_PASS program measured in the same run (BPF_PROG_TEST_RUN, JIT; see
//! `carwash_tests::bench` for the method), at 10 and at 10,000 tenants with
//! ten allow prefixes each, and the maps' kernel memory; then source NAT
//! (`carwash_tests::bench_snat`; `cargo xtask bench -- snat` runs it alone).
use std::net::Ipv4Addr;
use std::time::Instant;

use carwash_tests::bench::{Row, ns_per_packet, ns_per_packet_loop, print_table};
use carwash_tests::fabric::FabricNs;
use carwash_tests::fixture::{XDP_DROP, XDP_PASS, XDP_REDIRECT};
use carwash_tests::packets::*;
use carwash_tests::synthetic;
use dataplane::Dataplane;
use dataplane::tables::Health;
use dataplane_common::programs;
use netlab::netns::PinDir;

const RUNS: u32 = 100_000;
const ROUNDS: usize = 5;
const LOOP_REPEAT: u32 = 1_000_000;
const SCALES: [u32; 2] = [10, 10_000];

struct Scenario {
    name: &'static str,
    packet: Vec<u8>,
    verdict: u32,
    target: f64,
}

fn scenarios(i: u32) -> Vec<Scenario> {
    let (v4, v6) = (synthetic::vip4(i), synthetic::vip6(i));
    vec![
        Scenario {
            name: "allowed https, IPv4",
            packet: tcp4(synthetic::allowed4(i), v4, 40000, 443, &[0u8; 10]),
            verdict: XDP_REDIRECT,
            target: 4.0,
        },
        Scenario {
            name: "allowed jms, IPv6",
            packet: tcp6(synthetic::allowed6(i), v6, 40000, 61616, &[0u8; 10]),
            verdict: XDP_REDIRECT,
            target: 4.0,
        },
        Scenario {
            name: "denied source, IPv4",
            packet: tcp4(Ipv4Addr::new(192, 0, 2, 66), v4, 40000, 443, &[0u8; 10]),
            verdict: XDP_DROP,
            target: 3.0,
        },
        Scenario {
            name: "not a VIP (pass-through), IPv4",
            packet: tcp4(
                synthetic::allowed4(i),
                Ipv4Addr::new(192, 0, 2, 80),
                40000,
                443,
                &[0u8; 10],
            ),
            verdict: XDP_PASS,
            target: 1.5,
        },
    ]
}

fn main() -> anyhow::Result<()> {
    carwash_tests::require_root();
    // `cargo xtask bench -- snat`: the source-NAT section alone.
    if std::env::args().any(|a| a == "snat") {
        return carwash_tests::bench_snat::run();
    }
    let measured: Vec<u32> = SCALES.iter().map(|s| s / 2).collect();
    let fab = FabricNs::new(&measured.iter().map(|&i| synthetic::tenant(i)).collect::<Vec<_>>())?;

    let mut per_scale = Vec::new();
    for (&scale, &m) in SCALES.iter().zip(&measured) {
        let pins = PinDir::new()?;
        let mut dp = Dataplane::load(Some(pins.path()))?;
        dp.set_host(&fab.host_params())?;
        let tenants: Vec<_> = (1..=scale).map(synthetic::tenant).collect();
        let batch: Vec<_> = tenants
            .iter()
            .enumerate()
            .map(|(i, t)| (i as u32 + 1, t, Health::default()))
            .collect();
        let t0 = Instant::now();
        dp.install_tenants(&batch)?;
        let install = t0.elapsed();
        let (baseline, (figures, base_loop, looped)) = fab.ns.enter(|| -> anyhow::Result<_> {
            let base_pkt = tcp4(synthetic::allowed4(m), synthetic::vip4(m), 40000, 443, &[0u8; 10]);
            let baseline = ns_per_packet(&dp, programs::BENCH_PASS, &base_pkt, XDP_PASS, RUNS, ROUNDS)?;
            let mut figures = Vec::new();
            for s in scenarios(m) {
                figures.push((
                    s.name,
                    ns_per_packet(&dp, programs::UPLINK, &s.packet, s.verdict, RUNS, ROUNDS)?,
                    s.target,
                ));
            }
            // The kernel's own loop, for the verdicts that leave the frame
            // as it came: the hot-cache figure, where the single-run one
            // includes the cold start of every run.
            let base_loop = ns_per_packet_loop(&dp, programs::BENCH_PASS, &base_pkt, XDP_PASS, LOOP_REPEAT, ROUNDS)?;
            let mut looped = Vec::new();
            for s in scenarios(m).into_iter().filter(|s| s.verdict != XDP_REDIRECT) {
                let ns = ns_per_packet_loop(&dp, programs::UPLINK, &s.packet, s.verdict, LOOP_REPEAT, ROUNDS)?;
                looped.push((s.name, ns, ns / base_loop));
            }
            Ok((baseline, (figures, base_loop, looped)))
        })??;
        let memory = dataplane::memory::map_memory(pins.path())?;
        let total: u64 = memory.iter().map(|(_, b)| b).sum();
        println!("\n### kernel loop (1,000,000 repetitions, frames left unchanged only), {scale} tenants\n");
        println!("| scenario | ns/packet | × minimal |\n| --- | ---: | ---: |");
        println!("| minimal XDP_PASS program | {base_loop:.1} | 1.00 |");
        for (name, ns, ratio) in looped {
            println!("| {name} | {ns:.1} | {ratio:.2} |");
        }
        per_scale.push((scale, baseline, figures, memory, total, install));
    }

    let mut rows = Vec::new();
    for (scale, baseline, figures, _, _, _) in &per_scale {
        for (name, ns, target) in figures {
            rows.push(Row {
                scenario: format!("{name}, {scale} tenants"),
                ns: *ns,
                ratio: ns / baseline,
                target: Some(format!("≤ {target}×")),
            });
        }
    }
    let (small, large) = (&per_scale[0], &per_scale[1]);
    print_table(
        "uplink program (path 1): mean of 100,000 single runs, each on a fresh copy of the frame",
        small.1,
        &rows,
    );
    println!(
        "(minimal program in the {}-tenant run: {:.1} ns/packet)",
        large.0, large.1
    );

    println!(
        "\n### 10,000 tenants against 10 (same scenario, each against its own run's minimal program; target ≤ 1.25×)\n"
    );
    println!("| scenario | 10 tenants | 10,000 tenants | ratio |");
    println!("| --- | ---: | ---: | ---: |");
    for ((name, a, _), (_, b, _)) in small.2.iter().zip(&large.2) {
        let (ra, rb) = (a / small.1, b / large.1);
        println!("| {name} | {ra:.2}× | {rb:.2}× | {:.2} |", rb / ra);
    }

    println!("\n### Map memory (kernel accounting, memlock)\n");
    println!("| map | {} tenants | {} tenants |", small.0, large.0);
    println!("| --- | ---: | ---: |");
    for ((name, a), (_, b)) in small.3.iter().zip(&large.3) {
        println!("| {name} | {} KiB | {} KiB |", a / 1024, b / 1024);
    }
    println!(
        "| total | {:.1} MiB | {:.1} MiB |",
        small.4 as f64 / 1048576.0,
        large.4 as f64 / 1048576.0
    );
    println!(
        "\ninstalling the tenants through the library: {} in {:.2?}, {} in {:.2?}",
        small.0, small.5, large.0, large.5
    );

    carwash_tests::bench_snat::run()
}
