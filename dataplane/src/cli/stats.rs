//! `carwash stats`: the counters, from the pinned maps: per program (what
//! it saw, its verdicts, its drops by reason) and per tenant and class
//! (steered and dropped packets and bytes, drops by reason). `--watch`
//! samples again every few seconds and adds rates per second.
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use comfy_table::Table;
use dataplane::maps::counters::{ClassStats, Counters, RedirectFailure, class_stats};
use dataplane::maps::pins::Pins;
use dataplane::maps::policy::read::TenantRecord;
use dataplane_common::{
    Counter, DropReason,
    types::{SIDE_FABRIC, SIDE_UPLINK, TenantStats},
};
use serde::Serialize;

use super::{Format, PinArgs, output};

#[derive(clap::Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pin: PinArgs,
    /// Only this tenant's counters (no per-program counters).
    #[arg(long, value_name = "NAME")]
    tenant: Option<String>,
    /// Sample again every SECS seconds (1 if not given) and show rates per
    /// second; with `-o json`, one JSON document per line and sample.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "1")]
    watch: Option<f64>,
    /// Name interfaces as the network namespace NAME (under /run/netns, or
    /// a path) sees them: the agent's, when it runs in another.
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
    /// With --watch: stop after N samples.
    #[arg(long, value_name = "N", requires = "watch")]
    count: Option<u64>,
    /// `table`: aligned columns; `json`: one complete JSON document (with
    /// --watch, one per line and sample).
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Format,
}

/// The counters of one program.
#[derive(Serialize, Clone, Debug)]
struct Program<T> {
    /// Counter word → value (every counter).
    counters: BTreeMap<&'static str, T>,
    /// Drop reason word → packets (every reason).
    dropped: BTreeMap<&'static str, T>,
}

#[derive(Serialize, Clone, Debug)]
struct TenantCounters<T> {
    name: String,
    id: u32,
    /// Class word (`https`, `jms`, `none`) → counters.
    classes: BTreeMap<&'static str, T>,
}

/// Per second, over the last interval.
#[derive(Serialize, Clone, Debug, Default)]
pub struct ClassRates {
    steered_packets: f64,
    steered_bytes: f64,
    dropped_packets: f64,
    dropped_bytes: f64,
    dropped: BTreeMap<&'static str, f64>,
}

#[derive(Serialize)]
struct Stats {
    pin_path: String,
    /// Unix time of the sample, in seconds.
    at: f64,
    /// Program name (`uplink`, `fabric`) → counters; absent with --tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    programs: Option<BTreeMap<&'static str, Program<u64>>>,
    tenants: Vec<TenantCounters<ClassStats>>,
    /// Frames the programs redirected that the kernel refused to deliver,
    /// by target interface (they were counted `steered` or `decapsulated`
    /// all the same); absent with --tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    redirect_failures: Option<Vec<RedirectFailure>>,
    /// With --watch, from the second sample on: the same counters per second.
    rates: Option<Rates>,
}

#[derive(Serialize)]
struct Rates {
    interval_secs: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    programs: Option<BTreeMap<&'static str, Program<f64>>>,
    tenants: Vec<TenantCounters<ClassRates>>,
}

/// The counters read at one moment.
struct Sample {
    at: Instant,
    unix: f64,
    programs: Option<BTreeMap<&'static str, Counters>>,
    redirects: Option<Vec<RedirectFailure>>,
    tenants: Vec<(String, u32, TenantStats)>,
}

const SIDES: [(&str, u32); 2] = [("uplink", SIDE_UPLINK), ("fabric", SIDE_FABRIC)];

fn sample(pins: &Pins, only: Option<&TenantRecord>, netns: Option<&str>) -> Result<Sample> {
    let programs = match only {
        Some(_) => None,
        None => Some(
            SIDES
                .iter()
                .map(|&(name, side)| Ok((name, pins.counters(side)?)))
                .collect::<Result<_>>()?,
        ),
    };
    let redirects = match only {
        Some(_) => None,
        // Interface names are per namespace: read them where the agent runs.
        None => Some(dataplane::netns::in_netns(netns, || pins.redirect_failures())?),
    };
    let records = match only {
        Some(t) => vec![t.clone()],
        None => pins.tenants()?,
    };
    let tenants = records
        .iter()
        .map(|t| Ok((t.display_name(), t.id, pins.tenant_stats(t.id)?)))
        .collect::<Result<_>>()?;
    Ok(Sample {
        at: Instant::now(),
        unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        programs,
        redirects,
        tenants,
    })
}

fn program(c: &Counters) -> Program<u64> {
    Program {
        counters: Counter::ALL.iter().map(|&k| (k.name(), c.get(k))).collect(),
        dropped: DropReason::ALL.iter().map(|&r| (r.name(), c.dropped(r))).collect(),
    }
}

fn per_sec(n: u64, secs: f64) -> f64 {
    n as f64 / secs
}

fn class_rates(now: &ClassStats, before: Option<&ClassStats>, secs: f64) -> ClassRates {
    let zero = ClassStats::default();
    let b = before.unwrap_or(&zero);
    let d = |x: u64, y: u64| per_sec(x.saturating_sub(y), secs);
    ClassRates {
        steered_packets: d(now.steered_packets, b.steered_packets),
        steered_bytes: d(now.steered_bytes, b.steered_bytes),
        dropped_packets: d(now.dropped_packets, b.dropped_packets),
        dropped_bytes: d(now.dropped_bytes, b.dropped_bytes),
        dropped: now
            .dropped
            .iter()
            .map(|(r, n)| (*r, d(*n, b.dropped.get(r).copied().unwrap_or(0))))
            .collect(),
    }
}

fn document(pins: &Pins, s: &Sample, before: Option<&Sample>) -> Stats {
    let tenants: Vec<TenantCounters<ClassStats>> = s
        .tenants
        .iter()
        .map(|(name, id, st)| TenantCounters {
            name: name.clone(),
            id: *id,
            classes: class_stats(st),
        })
        .collect();
    let rates = before.map(|b| {
        let secs = s.at.duration_since(b.at).as_secs_f64().max(1e-6);
        let programs = s.programs.as_ref().map(|now| {
            now.iter()
                .map(|(name, c)| {
                    let delta = b.programs.as_ref().and_then(|p| p.get(name)).map(|p| c.since(p));
                    let delta = delta.unwrap_or_else(|| c.clone());
                    let p = program(&delta);
                    let rate =
                        |m: BTreeMap<&'static str, u64>| m.into_iter().map(|(k, v)| (k, per_sec(v, secs))).collect();
                    (
                        *name,
                        Program {
                            counters: rate(p.counters),
                            dropped: rate(p.dropped),
                        },
                    )
                })
                .collect()
        });
        let tenants = tenants
            .iter()
            .map(|t| {
                let old = b
                    .tenants
                    .iter()
                    .find(|(_, id, _)| *id == t.id)
                    .map(|(_, _, st)| class_stats(st));
                TenantCounters {
                    name: t.name.clone(),
                    id: t.id,
                    classes: t
                        .classes
                        .iter()
                        .map(|(c, now)| (*c, class_rates(now, old.as_ref().and_then(|o| o.get(c)), secs)))
                        .collect(),
                }
            })
            .collect();
        Rates {
            interval_secs: secs,
            programs,
            tenants,
        }
    });
    Stats {
        pin_path: pins.dir().display().to_string(),
        at: s.unix,
        programs: s
            .programs
            .as_ref()
            .map(|p| p.iter().map(|(n, c)| (*n, program(c))).collect()),
        tenants,
        redirect_failures: s.redirects.clone(),
        rates,
    }
}

fn rate(r: f64) -> String {
    format!("{r:.1}")
}

/// The per-program table: counters that moved on either side (packets and
/// bytes always), then drops by reason.
fn program_table(
    p: &BTreeMap<&'static str, Program<u64>>,
    rates: Option<&BTreeMap<&'static str, Program<f64>>>,
) -> Table {
    let mut header = vec!["counter".to_string()];
    for (name, _) in SIDES {
        header.push(name.to_string());
        if rates.is_some() {
            header.push(format!("{name}/s"));
        }
    }
    let mut t = output::table(header);
    let mut row = |label: String, get: &dyn Fn(&Program<u64>) -> u64, getr: &dyn Fn(&Program<f64>) -> f64| {
        let mut cells = vec![label];
        for (name, _) in SIDES {
            cells.push(p.get(name).map(get).unwrap_or(0).to_string());
            if let Some(r) = rates {
                cells.push(rate(r.get(name).map(getr).unwrap_or(0.0)));
            }
        }
        t.add_row(cells);
    };
    for c in Counter::ALL {
        let name = c.name();
        let moved = p.values().any(|x| x.counters[name] != 0);
        if moved || matches!(c, Counter::Packets | Counter::Bytes) {
            row(name.to_string(), &|x| x.counters[name], &|x| x.counters[name]);
        }
    }
    for r in DropReason::ALL {
        let name = r.name();
        if p.values().any(|x| x.dropped[name] != 0) {
            row(format!("dropped {name}"), &|x| x.dropped[name], &|x| x.dropped[name]);
        }
    }
    t
}

/// Per tenant and class: https and jms always, `none` when it counted.
pub fn class_table(
    tenants: &[(String, BTreeMap<&'static str, ClassStats>)],
    rates: Option<&[BTreeMap<&'static str, ClassRates>]>,
) -> Table {
    let mut header = vec![
        "tenant",
        "class",
        "steered",
        "steered bytes",
        "dropped",
        "dropped bytes",
        "drops by reason",
    ];
    if rates.is_some() {
        header.extend(["steered/s", "steered bytes/s", "dropped/s"]);
    }
    let mut t = output::table(header);
    for (i, (name, classes)) in tenants.iter().enumerate() {
        for (class, s) in classes {
            let quiet = s.steered_packets == 0 && s.dropped_packets == 0;
            if *class == "none" && quiet {
                continue;
            }
            let reasons: Vec<String> = s.dropped.iter().map(|(r, n)| format!("{r}={n}")).collect();
            let mut cells = vec![
                name.clone(),
                class.to_string(),
                s.steered_packets.to_string(),
                s.steered_bytes.to_string(),
                s.dropped_packets.to_string(),
                s.dropped_bytes.to_string(),
                output::or_dash(reasons.join(" ")),
            ];
            if let Some(r) = rates {
                let c = r.get(i).and_then(|m| m.get(class)).cloned().unwrap_or_default();
                cells.extend([rate(c.steered_packets), rate(c.steered_bytes), rate(c.dropped_packets)]);
            }
            t.add_row(cells);
        }
    }
    t
}

/// Redirects the kernel refused: each frame here was counted steered (or
/// decapsulated) and never left.
pub fn redirect_table(r: &[RedirectFailure]) -> Table {
    let mut t = output::table(["redirect refused by the kernel into", "frames", "last reason"]);
    for f in r {
        t.add_row(vec![
            f.label(),
            f.frames.to_string(),
            output::or_dash(f.last_error.clone()),
        ]);
    }
    t
}

fn print_table(doc: &Stats, watch: Option<f64>) {
    if let Some(secs) = watch {
        if std::io::stdout().is_terminal() {
            // Home and clear: the next sample replaces this one.
            print!("\x1b[H\x1b[2J");
        }
        match &doc.rates {
            Some(r) => println!(
                "carwash stats, every {secs}s; rates per second over the last {:.2}s",
                r.interval_secs
            ),
            None => println!("carwash stats, every {secs}s; rates from the next sample on"),
        }
        println!();
    }
    if let Some(p) = &doc.programs {
        let rates = doc.rates.as_ref().and_then(|r| r.programs.as_ref());
        println!("{}\n", program_table(p, rates));
    }
    if let Some(r) = doc.redirect_failures.as_ref().filter(|r| !r.is_empty()) {
        println!("{}\n", redirect_table(r));
    }
    let tenants: Vec<_> = doc
        .tenants
        .iter()
        .map(|t| (t.name.clone(), t.classes.clone()))
        .collect();
    if tenants.is_empty() {
        println!("no tenants in the maps pinned under {}", doc.pin_path);
    } else {
        let rates: Option<Vec<_>> = doc
            .rates
            .as_ref()
            .map(|r| r.tenants.iter().map(|t| t.classes.clone()).collect());
        println!("{}", class_table(&tenants, rates.as_deref()));
    }
}

pub fn run(args: StatsArgs) -> Result<ExitCode> {
    let pins = args.pin.open()?;
    let only = args.tenant.as_deref().map(|n| pins.tenant(n)).transpose()?;
    let interval = match args.watch {
        Some(s) if !(s.is_finite() && s >= 0.1) => bail!("--watch {s}: give an interval of at least 0.1 seconds"),
        Some(s) => Some(Duration::from_secs_f64(s)),
        None => None,
    };
    let mut before: Option<Sample> = None;
    let mut n = 0u64;
    loop {
        let s = sample(&pins, only.as_ref(), args.netns.as_deref())?;
        let doc = document(&pins, &s, before.as_ref());
        match (args.output, interval) {
            (Format::Json, None) => output::print_json(&doc)?,
            (Format::Json, Some(_)) => println!("{}", serde_json::to_string(&doc)?),
            (Format::Table, _) => print_table(&doc, args.watch),
        }
        std::io::stdout().flush()?;
        n += 1;
        let Some(every) = interval else { break };
        if args.count.is_some_and(|c| n >= c) {
            break;
        }
        before = Some(s);
        std::thread::sleep(every);
    }
    Ok(ExitCode::SUCCESS)
}
