//! Measuring programs with `BPF_PROG_TEST_RUN`.
//!
//! The kernel reuses one frame across the repetitions of a single test run,
//! so a program that rewrites the frame (encapsulation) would see its own
//! output from the second repetition on. Every figure is therefore the mean
//! of the kernel-measured duration of many single runs, each on a fresh copy
//! of the packet; the minimal XDP_PASS program is measured the same way in
//! the same run, and the ratio is what counts. The best of several rounds
//! filters out the noise of a shared machine.
use anyhow::{Result, bail};
use dataplane::Dataplane;

/// Mean ns/packet of `prog` on `packet`: best of `rounds` rounds of `runs`
/// single runs. Fails if the program's verdict is not `expect`.
pub fn ns_per_packet(dp: &Dataplane, prog: &str, packet: &[u8], expect: u32, runs: u32, rounds: usize) -> Result<f64> {
    ns_per_packet_many(dp, prog, &[packet], expect, runs, rounds)
}

/// [`ns_per_packet`] over several packets taken in turn (`runs` in all):
/// the mean over them, for a figure that is not one packet's alone.
pub fn ns_per_packet_many(
    dp: &Dataplane,
    prog: &str,
    packets: &[impl AsRef<[u8]>],
    expect: u32,
    runs: u32,
    rounds: usize,
) -> Result<f64> {
    let longest = packets.iter().map(|p| p.as_ref().len()).max().unwrap_or(0);
    let mut out = vec![0u8; longest + 256];
    let mut best = f64::INFINITY;
    for _ in 0..rounds {
        let mut total = 0u128;
        for packet in packets.iter().cycle().take(runs as usize) {
            let r = dp.test_run(prog, packet.as_ref(), Some(&mut out), 1)?;
            if r.return_value != expect {
                bail!("{prog}: verdict {} where {expect} was expected", r.return_value);
            }
            total += r.duration.as_nanos();
        }
        best = best.min(total as f64 / runs as f64);
    }
    Ok(best)
}

/// Mean ns/packet of `prog` on `packet` in the kernel's own loop (best of
/// `rounds` runs of `repeat` repetitions): only for verdicts that leave the
/// frame as it came (checked), since the loop reuses it.
pub fn ns_per_packet_loop(
    dp: &Dataplane,
    prog: &str,
    packet: &[u8],
    expect: u32,
    repeat: u32,
    rounds: usize,
) -> Result<f64> {
    let mut out = vec![0u8; packet.len() + 256];
    let mut best = f64::INFINITY;
    for _ in 0..rounds {
        let r = dp.test_run(prog, packet, Some(&mut out), repeat)?;
        if r.return_value != expect || &out[..r.data_size_out as usize] != packet {
            bail!(
                "{prog}: verdict {} (want {expect}) or a rewritten frame: not measurable in a loop",
                r.return_value
            );
        }
        best = best.min(r.duration.as_nanos() as f64);
    }
    Ok(best)
}

/// A row of a benchmark table.
pub struct Row {
    pub scenario: String,
    pub ns: f64,
    pub ratio: f64,
    pub target: Option<String>,
}

/// Prints rows as a Markdown table, the form docs/benchmarks.md quotes.
pub fn print_table(title: &str, baseline_ns: f64, rows: &[Row]) {
    println!("\n### {title}\n");
    println!("minimal XDP_PASS program: {baseline_ns:.1} ns/packet\n");
    println!("| scenario | ns/packet | × minimal | target |");
    println!("| --- | ---: | ---: | --- |");
    for r in rows {
        println!(
            "| {} | {:.1} | {:.2} | {} |",
            r.scenario,
            r.ns,
            r.ratio,
            r.target.as_deref().unwrap_or("")
        );
    }
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled` off while the guard lives, and back as it
/// was when it drops. With it on, the kernel reads its clock twice around
/// every program run (for `run_time_ns`): two reads of a paravirtual
/// clock cost a frame tens of ns, the same for every program, and a
/// ratio to the bare program then says more about the clock than about
/// the programs. Off is the kernel's default. `CARWASH_BENCH_BPF_STATS=keep`
/// measures with whatever the host has.
pub struct BpfStatsOff {
    was: Option<String>,
}

impl BpfStatsOff {
    pub fn new() -> BpfStatsOff {
        let now = std::fs::read_to_string(BPF_STATS).unwrap_or_default();
        let now = now.trim().to_string();
        if std::env::var("CARWASH_BENCH_BPF_STATS").as_deref() == Ok("keep") {
            println!("kernel.bpf_stats_enabled = {now} (kept: CARWASH_BENCH_BPF_STATS=keep)");
            return BpfStatsOff { was: None };
        }
        if now != "0" && !now.is_empty() {
            match std::fs::write(BPF_STATS, "0") {
                Ok(()) => {
                    println!("kernel.bpf_stats_enabled was {now}: 0 for the benchmarks, {now} again after them");
                    return BpfStatsOff { was: Some(now) };
                }
                Err(e) => println!(
                    "kernel.bpf_stats_enabled = {now}, could not be turned off ({e}): every program run also pays for two clock reads"
                ),
            }
        }
        BpfStatsOff { was: None }
    }
}

impl Default for BpfStatsOff {
    fn default() -> Self {
        BpfStatsOff::new()
    }
}

impl Drop for BpfStatsOff {
    fn drop(&mut self) {
        if let Some(was) = &self.was
            && let Err(e) = std::fs::write(BPF_STATS, was)
        {
            eprintln!("could not set kernel.bpf_stats_enabled back to {was}: {e}");
        }
    }
}
