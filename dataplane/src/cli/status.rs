//! `carwash status`: programs, attachments, interfaces, policy generation
//! and digest, from the pins (so it answers while the agent is down), plus
//! what the running agent reports if one answers on the API socket.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use dataplane::agent::status::{PinnedStatus, ifname, pinned_status};
use dataplane::api::{self, AgentStatus, Request};
use serde::Serialize;

use super::{Format, PinArgs, output};

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pin: PinArgs,
    /// The agent's API socket (default: `api_socket` of the host configuration).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Name interfaces as the network namespace NAME (under /run/netns, or
    /// a path) sees them: the agent's, when it runs in one and is down.
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
    /// `table`: aligned columns; `json`: one complete JSON document.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Format,
}

#[derive(Serialize)]
struct Status {
    pins: PinnedStatus,
    /// `null` when no agent answers.
    agent: Option<AgentStatus>,
    agent_error: Option<String>,
}

fn socket(args: &StatusArgs) -> PathBuf {
    if let Some(s) = &args.socket {
        return s.clone();
    }
    std::fs::read_to_string(&args.pin.config)
        .ok()
        .and_then(|t| toml::from_str::<toml::Table>(&t).ok())
        .and_then(|t| t.get("api_socket").and_then(|v| v.as_str()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/run/carwash/api.sock"))
}

fn when(secs: u64) -> String {
    if secs == 0 {
        return "never".into();
    }
    let now = dataplane::clock::wall_secs();
    format!("{}s ago (unix {secs})", now.saturating_sub(secs))
}

pub fn run(args: StatusArgs) -> Result<ExitCode> {
    // The checks first: nothing pinned, not root, another layout.
    let checked = args.pin.open()?;
    // Interface names are per namespace: read them where the agent runs.
    let (pins, local_names) = dataplane::netns::in_netns(args.netns.as_deref(), || {
        let pins = pinned_status(checked.dir())?;
        let names: BTreeMap<u32, String> = [pins.uplink_ifindex, pins.fabric_ifindex]
            .into_iter()
            .filter_map(|i| ifname(i).map(|n| (i, n)))
            .collect();
        Ok((pins, names))
    })?;
    let (agent, agent_error) = match api::call(&socket(&args), &Request::Status, Duration::from_secs(5)) {
        Ok(r) if r.ok => (r.status.map(|s| *s), None),
        Ok(r) => (None, r.error),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    let s = Status {
        pins,
        agent,
        agent_error,
    };
    if args.output == Format::Json {
        output::print_json(&s)?;
        return Ok(ExitCode::SUCCESS);
    }
    let p = &s.pins;
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.add_row(vec!["pin path".into(), p.pin_path.display().to_string()]);
    t.add_row(vec!["layout version".into(), p.layout_version.to_string()]);
    t.add_row(vec!["policy generation".into(), p.generation.to_string()]);
    t.add_row(vec![
        "policy digest".into(),
        if p.digest.is_empty() && p.generation > 0 {
            "(apply under way or interrupted)".into()
        } else {
            p.digest.clone()
        },
    ]);
    t.add_row(vec!["applied".into(), when(p.applied_at)]);
    t.add_row(vec!["tenants".into(), p.tenants.len().to_string()]);
    t.add_row(vec!["vtep".into(), p.vtep.clone()]);
    t.add_row(vec!["router mac".into(), p.router_mac.clone()]);
    // The agent's names are those of its namespace; this command may run
    // in another.
    let name = |i: u32| {
        s.agent
            .as_ref()
            .and_then(|a| a.interfaces.iter().find(|x| x.ifindex == i).map(|x| x.name.clone()))
            .or_else(|| local_names.get(&i).cloned())
            .or_else(|| p.links.iter().find(|l| l.ifindex == i).and_then(|l| l.ifname.clone()))
            .unwrap_or_else(|| "?".into())
    };
    t.add_row(vec![
        "uplink".into(),
        format!("{} (ifindex {})", name(p.uplink_ifindex), p.uplink_ifindex),
    ]);
    t.add_row(vec![
        "fabric".into(),
        format!(
            "{} (ifindex {}, mtu {})",
            name(p.fabric_ifindex),
            p.fabric_ifindex,
            p.fabric_mtu
        ),
    ]);
    for pr in &p.programs {
        t.add_row(vec![format!("program {}", pr.name), format!("id {}", pr.prog_id)]);
    }
    for l in &p.links {
        t.add_row(vec![
            format!("link {}", l.name),
            format!(
                "id {}, program id {}, on {} (ifindex {})",
                l.link_id,
                l.prog_id,
                if l.ifindex == 0 {
                    "nothing: defunct".to_string()
                } else {
                    name(l.ifindex)
                },
                l.ifindex
            ),
        ]);
    }
    match p.redirect_watch {
        Some((id, prog)) => t.add_row(vec![
            format!("link {}", dataplane::loader::REDIRECT_LINK),
            format!(
                "id {id}, program id {prog}, on tracepoint {}",
                dataplane::loader::REDIRECT_TRACEPOINT
            ),
        ]),
        None => t.add_row(vec![
            format!("link {}", dataplane::loader::REDIRECT_LINK),
            "not pinned: refused redirects are not counted".into(),
        ]),
    };
    if p.redirect_failures.is_empty() {
        t.add_row(vec!["redirects refused".to_string(), "none".to_string()]);
    }
    for f in &p.redirect_failures {
        let label = match f.role {
            Some(r) => format!("{r} ({}, ifindex {})", name(f.ifindex), f.ifindex),
            None => f.label(),
        };
        t.add_row(vec![
            "redirects refused".into(),
            format!(
                "{} frames into {label}{}",
                f.frames,
                if f.last_error.is_empty() {
                    String::new()
                } else {
                    format!(", last: {}", f.last_error)
                }
            ),
        ]);
    }
    for i in s.agent.iter().flat_map(|a| &a.interfaces) {
        for w in &i.warnings {
            t.add_row(vec![format!("warning ({})", i.role), w.clone()]);
        }
    }
    match &s.agent {
        Some(a) => {
            t.add_row(vec![
                "agent".into(),
                format!(
                    "running, pid {}, started {}{}",
                    a.pid,
                    when(a.started_at),
                    if a.adopted { ", adopted the pins" } else { "" }
                ),
            ]);
            t.add_row(vec!["policy dir".into(), a.policy_dir.display().to_string()]);
            if let Some(ev) = &a.events {
                t.add_row(vec![
                    "flow log".into(),
                    match &ev.log_error {
                        None => format!("{} ({} events written)", ev.event_log.display(), ev.log_written),
                        Some(e) => format!("CANNOT BE WRITTEN: {e} ({} events lost from it)", ev.log_failed),
                    },
                ]);
                t.add_row(vec![
                    "monitors".into(),
                    format!("{} attached, {} events lost by slow ones", ev.monitors, ev.monitor_lost),
                ]);
            }
            if let Some(e) = &a.etcd {
                t.add_row(vec!["etcd".into(), super::fleet::etcd_line(e)]);
            }
            if let Some(c) = &a.cluster {
                t.add_row(vec![
                    "cluster".into(),
                    format!(
                        "host {} of {}, source-NAT ports {}-{}",
                        c.index, c.hosts, c.block.0, c.block.1
                    ),
                ]);
                t.add_row(vec![
                    "announcements".into(),
                    format!(
                        "{} routes in table {} (generation {})",
                        c.announced_routes, c.route_table, c.announced_generation
                    ),
                ]);
                t.add_row(vec![
                    "hand-offs".into(),
                    format!(
                        "{} replies sent to their port's host, {} received",
                        c.handoffs_sent, c.handoffs_received
                    ),
                ]);
            }
            if let Some(e) = &a.last_error {
                t.add_row(vec![
                    "last error".into(),
                    format!("{} ({}, {})", e.error, e.source, when(e.at)),
                ]);
                for pe in &e.errors {
                    t.add_row(vec!["".into(), pe.to_string()]);
                }
            }
        }
        None => {
            t.add_row(vec![
                "agent".into(),
                format!("not answering: {}", s.agent_error.as_deref().unwrap_or("?")),
            ]);
            if args.netns.is_none() {
                t.add_row(vec![
                    "note".to_string(),
                    "interface names are this network namespace's; if the agent runs in another, add --netns NAME"
                        .into(),
                ]);
            }
        }
    }
    println!("{t}");
    Ok(ExitCode::SUCCESS)
}
