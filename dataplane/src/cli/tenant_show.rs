//! `carwash tenant show NAME`: everything the pinned maps say about one
//! tenant: its record, addresses, services, allowlists (read from the
//! tenant's own tries through the allow slot its record names), machines
//! with their Maglev share, and counters.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::ExitCode;

use anyhow::Result;
use dataplane::maps::counters::{ClassStats, class_stats};
use dataplane::maps::pins::Pins;
use dataplane::maps::policy::read::{
    AllowEntry, Machine, class_name, connectors, cores, lane, maglev_buckets, mask_classes, proto_name,
};
use dataplane_common::types::MAGLEV_SIZE;
use dataplane_common::types::{MASK_EGRESS, MASK_VPC};
use serde::Serialize;

use super::{Format, PinArgs, output};

#[derive(clap::Args)]
pub struct Args {
    /// The tenant's name (as in its policy file).
    name: String,
    #[command(flatten)]
    pin: PinArgs,
    /// `table`: aligned columns; `json`: one complete JSON document.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Format,
}

#[derive(Serialize)]
struct Show {
    name: String,
    id: u32,
    vni: Option<u32>,
    lane: Option<&'static str>,
    ready: bool,
    /// The slot of `ALLOW_V4`/`ALLOW_V6` holding the allowlists in force.
    allow_slot: Option<u32>,
    addresses: Vec<Address>,
    services: Vec<Service>,
    allow: Allow,
    outbound: Outbound,
    connectors: Vec<Connector>,
    cores: Vec<Core>,
    /// Counters by class (`https`, `jms`, `none`).
    stats: BTreeMap<&'static str, ClassStats>,
}

#[derive(Serialize)]
struct Address {
    ip: IpAddr,
    /// `vip` or `egress`.
    kind: &'static str,
}

#[derive(Serialize)]
struct Service {
    vip: IpAddr,
    proto: String,
    port: u16,
    class: &'static str,
}

#[derive(Serialize, Default)]
struct Allow {
    ipv4: Vec<Prefix>,
    ipv6: Vec<Prefix>,
}

/// The outbound side of the tenant's tries: the private space it may send
/// from and the destinations it may reach (the outermost prefixes with
/// that bit; nested ones add nothing).
#[derive(Serialize, Default)]
struct Outbound {
    vpc: Vec<String>,
    egress_allow: Vec<String>,
}

#[derive(Serialize)]
struct Prefix {
    prefix: String,
    /// The classes the prefix lets through: its own and those of every
    /// shorter prefix covering it (what the trie answers with).
    classes: Vec<&'static str>,
}

#[derive(Serialize)]
struct Connector {
    #[serde(flatten)]
    machine: Machine,
    /// Maglev buckets that name it, of `maglev_size`.
    maglev_buckets: usize,
    maglev_size: usize,
    /// Its share of new https flows.
    maglev_share: f64,
}

#[derive(Serialize)]
struct Core {
    #[serde(flatten)]
    machine: Machine,
    /// The core jms traffic goes to; the other is the standby.
    active: bool,
}

fn prefixes(list: &[AllowEntry]) -> Vec<Prefix> {
    list.iter()
        .filter(|e| !mask_classes(e.mask).is_empty())
        .map(|e| Prefix {
            prefix: e.prefix.to_string(),
            classes: mask_classes(e.mask),
        })
        .collect()
}

/// The outermost prefixes of `list` whose mask has `bit`.
fn outermost(list: &[AllowEntry], bit: u32) -> Vec<String> {
    let with: Vec<&AllowEntry> = list.iter().filter(|e| e.mask & bit != 0).collect();
    with.iter()
        .filter(|e| {
            !with
                .iter()
                .any(|o| o.prefix.prefix() < e.prefix.prefix() && o.prefix.contains(e.prefix.network()))
        })
        .map(|e| e.prefix.to_string())
        .collect()
}

fn dash_list(v: &[String]) -> String {
    if v.is_empty() { "-".to_string() } else { v.join(", ") }
}

fn gather(pins: &Pins, name: &str) -> Result<Show> {
    let t = pins.tenant(name)?;
    let mut outbound = Outbound::default();
    let allow = match t.info {
        Some(i) => {
            let l = pins.allow(i.allow_slot)?;
            let both: Vec<AllowEntry> = l.v4.iter().chain(&l.v6).cloned().collect();
            outbound = Outbound {
                vpc: outermost(&both, MASK_VPC),
                egress_allow: outermost(&both, MASK_EGRESS),
            };
            Allow {
                ipv4: prefixes(&l.v4),
                ipv6: prefixes(&l.v6),
            }
        }
        None => Allow::default(),
    };
    let (connectors, cores) = match t.info {
        Some(i) => {
            let buckets = maglev_buckets(&i);
            let connectors = connectors(&i)
                .into_iter()
                .zip(buckets)
                .map(|(machine, n)| Connector {
                    machine,
                    maglev_buckets: n,
                    maglev_size: MAGLEV_SIZE,
                    maglev_share: n as f64 / MAGLEV_SIZE as f64,
                })
                .collect();
            let cores = cores(&i)
                .into_iter()
                .map(|machine| Core {
                    active: machine.index == i.active_core as usize,
                    machine,
                })
                .collect();
            (connectors, cores)
        }
        None => (Vec::new(), Vec::new()),
    };
    Ok(Show {
        name: t.display_name(),
        id: t.id,
        vni: t.info.map(|i| i.vni),
        lane: t.info.as_ref().map(lane),
        ready: t.ready(),
        allow_slot: t.info.map(|i| i.allow_slot),
        addresses: pins
            .addresses()?
            .into_iter()
            .filter(|a| a.tenant == t.id)
            .map(|a| Address { ip: a.ip, kind: a.kind })
            .collect(),
        services: pins
            .services()?
            .into_iter()
            .filter(|s| s.tenant == t.id)
            .map(|s| Service {
                vip: s.vip,
                proto: proto_name(s.proto),
                port: s.port,
                class: class_name(s.class),
            })
            .collect(),
        allow,
        outbound,
        connectors,
        cores,
        stats: class_stats(&pins.tenant_stats(t.id)?),
    })
}

pub fn run(args: Args) -> Result<ExitCode> {
    let pins = args.pin.open()?;
    let s = gather(&pins, &args.name)?;
    if args.output == Format::Json {
        output::print_json(&s)?;
        return Ok(ExitCode::SUCCESS);
    }
    let dash = |o: Option<String>| o.unwrap_or_else(|| "-".into());
    let mut head = output::pairs();
    head.add_row(vec!["tenant".into(), format!("{} (id {})", s.name, s.id)]);
    head.add_row(vec!["vni".into(), dash(s.vni.map(|v| v.to_string()))]);
    head.add_row(vec!["lane".into(), dash(s.lane.map(str::to_string))]);
    head.add_row(vec!["ready".to_string(), output::yes_no(s.ready).into()]);
    head.add_row(vec!["allow slot".into(), dash(s.allow_slot.map(|v| v.to_string()))]);
    let addrs: Vec<String> = s.addresses.iter().map(|a| format!("{} ({})", a.ip, a.kind)).collect();
    head.add_row(vec!["addresses".into(), output::or_dash(addrs.join(", "))]);
    println!("{head}\n");

    let mut svc = output::table(["service vip", "proto", "port", "class"]);
    for x in &s.services {
        svc.add_row(vec![
            x.vip.to_string(),
            x.proto.clone(),
            x.port.to_string(),
            x.class.into(),
        ]);
    }
    println!("{svc}\n");

    let mut allow = output::table(["allow prefix", "classes"]);
    for p in s.allow.ipv4.iter().chain(&s.allow.ipv6) {
        allow.add_row(vec![p.prefix.clone(), p.classes.join(",")]);
    }
    if s.allow.ipv4.is_empty() && s.allow.ipv6.is_empty() {
        allow.add_row(vec!["(none: nothing may reach the VIPs)".to_string(), String::new()]);
    }
    println!("{allow}\n");

    let mut out = output::table(["outbound", "prefixes"]);
    out.add_row(vec!["vpc (may send from)".to_string(), dash_list(&s.outbound.vpc)]);
    out.add_row(vec![
        "egress allow (may reach)".to_string(),
        dash_list(&s.outbound.egress_allow),
    ]);
    println!("{out}\n");

    let mut m = output::table(["machine", "vtep", "mac", "up", "traffic"]);
    for c in &s.connectors {
        m.add_row(vec![
            format!("connector {}", c.machine.index),
            c.machine.vtep.to_string(),
            c.machine.mac.clone(),
            output::yes_no(c.machine.up).into(),
            format!(
                "https: {}/{} Maglev buckets ({:.1}%)",
                c.maglev_buckets,
                c.maglev_size,
                100.0 * c.maglev_share
            ),
        ]);
    }
    for c in &s.cores {
        m.add_row(vec![
            format!("core {}", c.machine.index),
            c.machine.vtep.to_string(),
            c.machine.mac.clone(),
            output::yes_no(c.machine.up).into(),
            if c.active { "jms: active" } else { "jms: standby" }.into(),
        ]);
    }
    println!("{m}\n");
    println!(
        "{}",
        super::stats::class_table(&[(s.name.clone(), s.stats.clone())], None)
    );
    Ok(ExitCode::SUCCESS)
}
