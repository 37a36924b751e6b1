//! `carwash health`: per machine, its role, VTEP, state (up, down,
//! drained), whether it takes new flows or is the active core, the last
//! probe's latency and since when; from the pins, so it answers while the
//! agent is down.
use std::net::Ipv4Addr;
use std::process::ExitCode;

use anyhow::{Result, bail};
use dataplane::maps::health::read_pinned;
use dataplane::maps::pins::Pins;
use dataplane::maps::policy::read::{TenantRecord, connectors, cores, machine};
use dataplane_common::types::{MACHINE_DOWN, MACHINE_UNKNOWN, MachineRecord, TenantHealth};
use serde::Serialize;

use super::{Format, PinArgs, output};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pin: PinArgs,
    /// Only this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// `table`: aligned columns; `json`: one complete JSON document.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Format,
}

#[derive(Serialize)]
struct Report {
    pin_path: String,
    machines: Vec<Row>,
}

#[derive(Serialize)]
struct Row {
    tenant: String,
    machine: String,
    vtep: Ipv4Addr,
    mac: String,
    /// `up`, `down`, `drained`; `unknown` before any probe or request.
    state: &'static str,
    /// Connectors: in the consistent-hash choice. Cores: `active`.
    takes_traffic: bool,
    /// Cores only: `active` or `standby`.
    #[serde(skip_serializing_if = "Option::is_none")]
    core: Option<&'static str>,
    last_latency_us: Option<u32>,
    transitions: u32,
    /// Milliseconds since the Unix epoch; `null` when unknown.
    since_ms: Option<u64>,
}

fn rows(t: &TenantRecord, h: Option<TenantHealth>) -> Vec<Row> {
    let Some(info) = t.info else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let groups = [("connector", connectors(&info), 0usize), ("core", cores(&info), 2usize)];
    for (role, ms, base) in groups {
        for m in ms {
            let rec: MachineRecord = h.map(|h| h.machines[base + m.index]).unwrap_or_default();
            let same = Ipv4Addr::from(rec.vtep) == m.vtep && machine(0, &backend(&rec)).mac == m.mac;
            let rec = if same { rec } else { MachineRecord::default() };
            let state = if rec.drained != 0 {
                "drained"
            } else if rec.state == MACHINE_DOWN {
                "down"
            } else if rec.state == MACHINE_UNKNOWN {
                "unknown"
            } else {
                "up"
            };
            let active = role == "core" && m.index == info.active_core as usize;
            out.push(Row {
                tenant: t.display_name(),
                machine: format!("{role}/{}", m.index),
                vtep: m.vtep,
                mac: m.mac.clone(),
                state,
                takes_traffic: if role == "core" { active } else { m.up },
                core: (role == "core").then_some(if active { "active" } else { "standby" }),
                last_latency_us: (rec.last_latency_us != 0).then_some(rec.last_latency_us),
                transitions: rec.transitions,
                since_ms: (rec.since_ms != 0).then_some(rec.since_ms),
            });
        }
    }
    out
}

fn backend(rec: &MachineRecord) -> dataplane_common::types::BackendEntry {
    dataplane_common::types::BackendEntry {
        vtep: rec.vtep,
        mac: rec.mac,
        ..Default::default()
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    let pins: Pins = args.pin.open()?;
    let health = read_pinned(&pins)?;
    let mut tenants = pins.tenants()?;
    if let Some(name) = &args.tenant {
        tenants.retain(|t| t.name.as_deref() == Some(name));
        if tenants.is_empty() {
            bail!("no tenant {name:?} in the maps pinned under {}", pins.dir().display());
        }
    }
    let mut report = Report {
        pin_path: pins.dir().display().to_string(),
        machines: Vec::new(),
    };
    for t in &tenants {
        let h = health.get(&t.id).copied();
        report.machines.extend(rows(t, h));
    }
    if args.output == Format::Json {
        output::print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = output::table(["tenant", "machine", "vtep", "state", "traffic", "last probe", "since"]);
    for r in &report.machines {
        table.add_row(vec![
            r.tenant.clone(),
            r.machine.clone(),
            r.vtep.to_string(),
            r.state.to_string(),
            match r.core {
                Some(c) => c.to_string(),
                None if r.takes_traffic => "in choice".into(),
                None => "out".into(),
            },
            r.last_latency_us
                .map(|l| format!("{l} us"))
                .unwrap_or_else(|| "-".into()),
            r.since_ms.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
        ]);
    }
    println!("{table}");
    Ok(ExitCode::SUCCESS)
}
