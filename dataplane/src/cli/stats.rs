//! `carwash stats`: the counters, from the pinned maps.
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use super::{Format, PinArgs, output};

#[derive(clap::Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pin: PinArgs,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Format,
}

#[derive(Serialize)]
struct Stats {
    global: std::collections::BTreeMap<&'static str, u64>,
    dropped: std::collections::BTreeMap<&'static str, u64>,
}

pub fn run(args: StatsArgs) -> Result<ExitCode> {
    let pin = args.pin.resolve()?;
    let counters = dataplane::loader::pinned_counters(&pin, dataplane_common::types::SIDE_UPLINK)?;
    let stats = Stats {
        global: counters.counters.iter().map(|(c, n)| (c.name(), *n)).collect(),
        dropped: counters.drops.iter().map(|(r, n)| (r.name(), *n)).collect(),
    };
    match args.output {
        Format::Json => output::print_json(&stats)?,
        Format::Table => {
            let mut t = output::table(["counter", "value"]);
            for (c, n) in &counters.counters {
                t.add_row(vec![c.name().to_string(), n.to_string()]);
            }
            for (r, n) in &counters.drops {
                t.add_row(vec![format!("dropped: {}", r.name()), n.to_string()]);
            }
            println!("{t}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
