//! Measuring programs with `BPF_PROG_TEST_RUN`: the kernel reports the mean
//! time per repetition; the best of several rounds filters out the noise of
//! a shared machine. Figures are always reported next to the minimal
//! XDP_PASS program measured in the same run, as a ratio.
use anyhow::Result;
use dataplane::Dataplane;

/// Mean ns/packet of `prog` on `packet`, best of `rounds` rounds of `repeat`.
pub fn ns_per_packet(dp: &Dataplane, prog: &str, packet: &[u8], repeat: u32, rounds: usize) -> Result<f64> {
    let mut out = vec![0u8; packet.len() + 256];
    let mut best = f64::INFINITY;
    for _ in 0..rounds {
        let r = dp.test_run(prog, packet, Some(&mut out), repeat)?;
        best = best.min(r.duration.as_nanos() as f64);
    }
    Ok(best)
}

/// A row of a benchmark table.
pub struct Row {
    pub scenario: String,
    pub ns: f64,
    pub ratio: f64,
    pub target: Option<f64>,
}

/// Prints rows as a Markdown table, the form the README quotes.
pub fn print_table(title: &str, baseline_ns: f64, rows: &[Row]) {
    println!("\n### {title}\n");
    println!("minimal XDP_PASS program: {baseline_ns:.1} ns/packet\n");
    println!("| scenario | ns/packet | × minimal | target |");
    println!("| --- | ---: | ---: | ---: |");
    for r in rows {
        let target = r.target.map(|t| format!("≤ {t}×")).unwrap_or_else(|| "-".into());
        let flag = match r.target {
            Some(t) if r.ratio > t => " (over)",
            _ => "",
        };
        println!("| {} | {:.1} | {:.2}{flag} | {target} |", r.scenario, r.ns, r.ratio);
    }
}
