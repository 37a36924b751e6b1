//! `carwash tenant list`: every tenant the pinned maps hold, one line each.
use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;

use anyhow::Result;
use dataplane::maps::pins::Pins;
use dataplane::maps::policy::read::{AddrEntry, TenantRecord, connectors, cores, lane};
use serde::Serialize;

use super::{Format, PinArgs, output};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pin: PinArgs,
    /// `table`: aligned columns; `json`: one complete JSON document.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Format,
}

#[derive(Serialize)]
struct List {
    pin_path: String,
    tenants: Vec<Row>,
}

#[derive(Serialize)]
struct Row {
    name: String,
    id: u32,
    /// `null` for a tenant with a name but no record (being installed or removed).
    vni: Option<u32>,
    lane: Option<&'static str>,
    vips: Vec<IpAddr>,
    egress_ips: Vec<IpAddr>,
    /// Its policy is fully in place: its VIPs pass traffic.
    ready: bool,
    active_core: Option<ActiveCore>,
    connectors: usize,
    connectors_up: usize,
    cores: usize,
    cores_up: usize,
}

#[derive(Serialize)]
struct ActiveCore {
    index: u8,
    vtep: Ipv4Addr,
}

fn row(t: &TenantRecord, addrs: &[AddrEntry]) -> Row {
    let mine = |kind: &str| {
        addrs
            .iter()
            .filter(|a| a.tenant == t.id && a.kind == kind)
            .map(|a| a.ip)
            .collect()
    };
    let conns = t.info.map(|i| connectors(&i)).unwrap_or_default();
    let cores = t.info.map(|i| cores(&i)).unwrap_or_default();
    Row {
        name: t.display_name(),
        id: t.id,
        vni: t.info.map(|i| i.vni),
        lane: t.info.as_ref().map(lane),
        vips: mine("vip"),
        egress_ips: mine("egress"),
        ready: t.ready(),
        active_core: t.info.and_then(|i| {
            cores.get(i.active_core as usize).map(|c| ActiveCore {
                index: i.active_core,
                vtep: c.vtep,
            })
        }),
        connectors: conns.len(),
        connectors_up: conns.iter().filter(|m| m.up).count(),
        cores: cores.len(),
        cores_up: cores.iter().filter(|m| m.up).count(),
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    let pins: Pins = args.pin.open()?;
    let addrs = pins.addresses()?;
    let list = List {
        pin_path: pins.dir().display().to_string(),
        tenants: pins.tenants()?.iter().map(|t| row(t, &addrs)).collect(),
    };
    if args.output == Format::Json {
        output::print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    if list.tenants.is_empty() {
        println!("no tenants in the maps pinned under {}", list.pin_path);
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = output::table([
        "name",
        "id",
        "vni",
        "lane",
        "vips",
        "ready",
        "active core",
        "backends up",
    ]);
    let dash = |o: Option<String>| o.unwrap_or_else(|| "-".into());
    for r in &list.tenants {
        let vips: Vec<String> = r.vips.iter().map(IpAddr::to_string).collect();
        t.add_row(vec![
            r.name.clone(),
            r.id.to_string(),
            dash(r.vni.map(|v| v.to_string())),
            dash(r.lane.map(str::to_string)),
            output::or_dash(vips.join(", ")),
            output::yes_no(r.ready).to_string(),
            dash(r.active_core.as_ref().map(|c| format!("{} ({})", c.index, c.vtep))),
            format!(
                "connectors {}/{}, cores {}/{}",
                r.connectors_up, r.connectors, r.cores_up, r.cores
            ),
        ]);
    }
    println!("{t}");
    Ok(ExitCode::SUCCESS)
}
