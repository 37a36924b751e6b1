//! The agent's metrics endpoint: `GET http://<metrics>/metrics` answers in
//! the Prometheus text format (0.0.4), or in OpenMetrics when the scraper
//! asks for it (`Accept: application/openmetrics-text`), encoded by
//! `prometheus-client`.
//!
//! Every scrape reads the pinned maps, read-only and through the same code
//! as `carwash stats` ([`Pins`], [`Counters`], [`class_stats`]), so the
//! endpoint reports what the programs counted, also right after a restart;
//! what only the agent knows (the last apply, its duration, the last
//! refused set) comes from the agent's loop as a status request, so a
//! scrape never touches the agent's state directly.
//!
//! The HTTP side is a minimal HTTP/1.1 server: one request per connection
//! (`Connection: close`), a request head of at most 8 KiB read within
//! 10 s, `GET` and `HEAD` on `/metrics` only (other paths 404, other
//! methods 405, anything unparsable 400, an oversized head 431, a head
//! not complete in time 408). A bad
//! client costs one short-lived task and never the agent.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dataplane_common::{
    Counter, DropReason,
    types::{SIDE_FABRIC, SIDE_UPLINK},
};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{debug, info, warn};

use super::messages::Event;
use crate::api::{AgentStatus, Request};
use crate::config::HostConfig;
use crate::maps::counters::{ClassStats, Counters, RedirectFailure, class_stats};
use crate::maps::pins::Pins;

/// The one path served.
pub const PATH: &str = "/metrics";
/// Longest request head accepted.
const MAX_HEAD: usize = 8192;
/// Time a client has to send its request head, and to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the agent's loop has to answer the status request of a scrape (it
/// may be in the middle of a large apply).
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;
/// Map memory is read again after a new policy generation or this long.
const MEMORY_TTL: Duration = Duration::from_secs(60);

const PROGRAMS: [(&str, u32); 2] = [("uplink", SIDE_UPLINK), ("fabric", SIDE_FABRIC)];

/// One tenant's counters and state, as the maps hold them.
#[derive(Debug, Clone)]
pub struct TenantSnapshot {
    pub name: String,
    pub ready: bool,
    /// Class word → counters: `https` and `jms` always, `none` when it
    /// counted anything.
    pub classes: BTreeMap<&'static str, ClassStats>,
    /// Index of the active core (double and single lane alike).
    pub active_core: Option<u8>,
    pub machines: Vec<MachineSnapshot>,
}

/// One machine's health, from `HEALTH`.
#[derive(Debug, Clone)]
pub struct MachineSnapshot {
    /// `connector/0`, `core/1`, ...
    pub machine: String,
    pub up: bool,
    pub drained: bool,
    pub transitions: u64,
    /// Of the last passing probe.
    pub latency_seconds: Option<f64>,
}

/// What only the running agent knows.
#[derive(Debug, Clone, Default)]
pub struct AgentSnapshot {
    pub started_at: u64,
    pub attempts: u64,
    /// Map-writing time of the last apply, in seconds.
    pub last_apply_seconds: Option<f64>,
    /// Unix time of the last refused or failed policy set.
    pub last_error_at: Option<u64>,
    pub conntrack: Option<crate::api::ConntrackStatus>,
    pub events: Option<crate::api::EventStreamStatus>,
    pub etcd: Option<crate::api::EtcdStatus>,
    pub cluster: Option<crate::cluster::ClusterStatus>,
    pub probes: Option<crate::api::ProbeStatus>,
}

impl From<&AgentStatus> for AgentSnapshot {
    fn from(s: &AgentStatus) -> Self {
        AgentSnapshot {
            started_at: s.started_at,
            attempts: s.attempts,
            last_apply_seconds: s.last_apply.as_ref().map(|a| a.micros as f64 / 1e6),
            last_error_at: s.last_error.as_ref().map(|e| e.at),
            conntrack: s.conntrack.clone(),
            events: s.events.clone(),
            etcd: s.etcd.clone(),
            cluster: s.cluster.clone(),
            probes: s.probes.clone(),
        }
    }
}

/// Everything one scrape reports.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Program (`uplink`, `fabric`) → its global counters.
    pub programs: Vec<(&'static str, Counters)>,
    pub tenants: Vec<TenantSnapshot>,
    /// Frames the kernel refused after a redirect, by target interface.
    pub redirect_failures: Vec<RedirectFailure>,
    pub generation: u64,
    pub applied_at: u64,
    /// Map → bytes of kernel memory (`memlock`), allowlist tries included.
    pub map_memory: MapMemory,
    /// `None` when the agent's loop did not answer in time.
    pub agent: Option<AgentSnapshot>,
    /// The data path's event counters, by kind (`events::KIND_*`).
    pub events: Vec<dataplane_common::events::EventCounts>,
}

/// Bytes per map, as [`crate::maps::memory::map_memory`] reads them.
type MapMemory = Vec<(&'static str, u64)>;

/// Map memory of an earlier scrape: reading it walks every allowlist slot.
#[derive(Debug, Default)]
pub struct MemoryCache {
    /// Policy generation, when, what.
    read: Option<(u64, Instant, MapMemory)>,
}

impl MemoryCache {
    fn get(&mut self, pins: &Pins) -> Result<MapMemory> {
        let generation = pins.meta().generation;
        if let Some((g, at, v)) = &self.read
            && *g == generation
            && at.elapsed() < MEMORY_TTL
        {
            return Ok(v.clone());
        }
        let v = crate::maps::memory::map_memory(pins.dir())?;
        self.read = Some((generation, Instant::now(), v.clone()));
        Ok(v)
    }
}

impl Snapshot {
    /// Reads the counters, tenants and map memory from the pins.
    pub fn read(pins: &Pins, memory: &mut MemoryCache) -> Result<Snapshot> {
        let programs = PROGRAMS
            .iter()
            .map(|&(name, side)| Ok((name, pins.counters(side)?)))
            .collect::<Result<_>>()?;
        let records = pins.tenants()?;
        let ids: Vec<u32> = records.iter().map(|t| t.id).collect();
        let stats = pins.tenant_stats_of(&ids)?;
        let health = crate::maps::health::read_pinned(pins)?;
        let tenants = records
            .iter()
            .zip(stats.iter())
            .map(|(t, st)| {
                let mut classes = class_stats(st);
                classes.retain(|c, s| *c != "none" || s.steered_packets != 0 || s.dropped_packets != 0);
                let machines = t
                    .info
                    .map(|i| crate::health::store::views(&i, health.get(&t.id)))
                    .unwrap_or_default()
                    .into_iter()
                    .map(|v| MachineSnapshot {
                        machine: v.machine.to_string(),
                        up: v
                            .record
                            .is_none_or(|r| r.state != dataplane_common::types::MACHINE_DOWN),
                        drained: v.record.is_some_and(|r| r.drained != 0),
                        transitions: v.record.map_or(0, |r| r.transitions.into()),
                        latency_seconds: v
                            .record
                            .filter(|r| r.last_latency_us != 0)
                            .map(|r| r.last_latency_us as f64 / 1e6),
                    })
                    .collect();
                TenantSnapshot {
                    name: t.display_name(),
                    ready: t.ready(),
                    classes,
                    active_core: t.info.map(|i| i.active_core),
                    machines,
                }
            })
            .collect();
        Ok(Snapshot {
            programs,
            tenants,
            redirect_failures: pins.redirect_failures()?,
            generation: pins.meta().generation,
            applied_at: pins.meta().applied_at,
            map_memory: memory.get(pins)?,
            agent: None,
            events: pins.event_counts()?,
        })
    }

    /// The Prometheus text format (0.0.4), or OpenMetrics.
    pub fn encode(self, openmetrics: bool) -> Result<String> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        }
        .context("encoding the metrics")?;
        Ok(out)
    }
}

type Labels = Vec<(&'static str, String)>;

fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, u64)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, N)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn one<N>(v: N) -> [(Labels, N); 1] {
    [(Vec::new(), v)]
}

/// The health checker's own counters.
fn probe_metrics(e: &mut DescriptorEncoder, p: &crate::api::ProbeStatus) -> std::fmt::Result {
    counters(
        e,
        "carwash_probes_sent",
        "Health probes started, by kind: half_open (TCP checks, no socket) or socket (TLS checks).",
        [
            (vec![("kind", "half_open".to_string())], p.half_open_sent),
            (vec![("kind", "socket".to_string())], p.socket_probes),
        ],
    )?;
    counters(
        e,
        "carwash_probe_answers_stale",
        "Answers to no half-open probe in flight (late, or not the probe's sequence).",
        one(p.stale_answers),
    )?;
    counters(
        e,
        "carwash_probe_resets_sent",
        "Resets sent to machines' SYN-ACKs (a machine keeps nothing of a probe), by sender: the agent, or the fabric's programs in place of the SYN-ACK.",
        [
            (vec![("by", "agent".to_string())], p.resets_sent),
            (vec![("by", "fabric".to_string())], p.resets_in_path),
        ],
    )?;
    gauge(
        e,
        "carwash_probe_fabric_resets_failed",
        "1 once the fabric program's probe resets stopped reaching the TC program that sends them (the agent sends them since).",
        one(u64::from(p.fabric_resets_failed)),
    )?;
    counters(
        e,
        "carwash_probe_send_errors",
        "Probe packets the kernel would not send (the probe fails with the reason).",
        one(p.send_errors),
    )?;
    counters(
        e,
        "carwash_probe_results_skipped",
        "Probe results the agent's loop had no room for (as if the probe had not been made).",
        one(p.results_skipped),
    )?;
    gauge(
        e,
        "carwash_probes_in_flight",
        "Half-open probes waiting for an answer.",
        one(p.in_flight),
    )
}

/// This host's place in a fleet and its announcements.
fn cluster_gauges(e: &mut DescriptorEncoder, c: &crate::cluster::ClusterStatus) -> std::fmt::Result {
    gauge(
        e,
        "carwash_cluster_index",
        "This host's index in the fleet.",
        one(c.index),
    )?;
    gauge(e, "carwash_cluster_hosts", "Hosts in the fleet.", one(c.hosts))?;
    gauge(
        e,
        "carwash_cluster_block_ports",
        "This host's source-NAT port block, first and last port.",
        [
            (vec![("end", "low".to_string())], u32::from(c.block.0)),
            (vec![("end", "high".to_string())], u32::from(c.block.1)),
        ],
    )?;
    gauge(
        e,
        "carwash_announced_routes",
        "Routes for the VIPs and egress IPs in force in the announcement table.",
        one(c.announced_routes as u64),
    )?;
    gauge(
        e,
        "carwash_announced_generation",
        "Policy generation of the routes announced (0: none).",
        one(c.announced_generation),
    )?;
    counters(
        e,
        "carwash_handoffs_sent",
        "Replies to an egress IP passed to the host of the fleet that owns their port.",
        one(c.handoffs_sent),
    )?;
    counters(
        e,
        "carwash_handoffs_received",
        "Replies another host of the fleet passed to this one.",
        one(c.handoffs_received),
    )
}

fn counter_help(c: Counter) -> String {
    match c {
        Counter::Packets => "Frames the program saw.".into(),
        Counter::Bytes => "Bytes of the frames the program saw.".into(),
        Counter::Steered => "Packets encapsulated towards a tenant machine.".into(),
        Counter::Decapsulated => "Packets from a tenant machine, decapsulated and sent on.".into(),
        c => format!("Frames counted as {} by the program.", c.name()),
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut enc;
        for &c in Counter::ALL {
            counters(
                e,
                &format!("carwash_program_{}", c.name()),
                &counter_help(c),
                self.programs
                    .iter()
                    .map(|(p, n)| (vec![("program", p.to_string())], n.get(c))),
            )?;
        }
        counters(
            e,
            "carwash_program_dropped",
            "Packets the program dropped, by reason.",
            self.programs.iter().flat_map(|(p, n)| {
                DropReason::ALL.iter().map(move |&r| {
                    (
                        vec![("program", p.to_string()), ("reason", r.name().to_string())],
                        n.dropped(r),
                    )
                })
            }),
        )?;
        counters(
            e,
            "carwash_redirect_refused_frames",
            "Frames a program redirected into the interface that the kernel refused to deliver (counted steered or \
             decapsulated all the same); see `carwash status` for what to change.",
            self.redirect_failures.iter().map(|f| {
                (
                    vec![
                        ("interface", f.interface.clone().unwrap_or_default()),
                        ("ifindex", f.ifindex.to_string()),
                        ("role", f.role.unwrap_or("").to_string()),
                    ],
                    f.frames,
                )
            }),
        )?;

        let per_class = |f: fn(&ClassStats) -> u64| {
            self.tenants.iter().flat_map(move |t| {
                t.classes
                    .iter()
                    .map(move |(c, s)| (vec![("tenant", t.name.clone()), ("class", c.to_string())], f(s)))
            })
        };
        counters(
            e,
            "carwash_tenant_steered_packets",
            "Packets steered for the tenant (to its machines, or from them to the internet), by port class.",
            per_class(|s| s.steered_packets),
        )?;
        counters(
            e,
            "carwash_tenant_steered_bytes",
            "Bytes steered for the tenant, as the programs left the frames (tunnel headers included), by port class.",
            per_class(|s| s.steered_bytes),
        )?;
        counters(
            e,
            "carwash_tenant_dropped_packets",
            "Packets of the tenant dropped, by port class and reason (reasons that counted).",
            self.tenants.iter().flat_map(|t| {
                t.classes.iter().flat_map(move |(c, s)| {
                    s.dropped.iter().map(move |(r, n)| {
                        (
                            vec![
                                ("tenant", t.name.clone()),
                                ("class", c.to_string()),
                                ("reason", r.to_string()),
                            ],
                            *n,
                        )
                    })
                })
            }),
        )?;
        counters(
            e,
            "carwash_tenant_dropped_bytes",
            "Bytes of the tenant's dropped packets, by port class.",
            per_class(|s| s.dropped_bytes),
        )?;
        gauge(
            e,
            "carwash_tenant_ready",
            "1 when the tenant's policy is complete in the maps, 0 while it passes nothing (fail closed).",
            self.tenants
                .iter()
                .map(|t| (vec![("tenant", t.name.clone())], u64::from(t.ready))),
        )?;
        let per_machine = |f: fn(&MachineSnapshot) -> Option<f64>| {
            self.tenants.iter().flat_map(move |t| {
                t.machines.iter().filter_map(move |m| {
                    f(m).map(|v| (vec![("tenant", t.name.clone()), ("machine", m.machine.clone())], v))
                })
            })
        };
        let per_flag = |f: fn(&MachineSnapshot) -> bool| {
            self.tenants.iter().flat_map(move |t| {
                t.machines.iter().map(move |m| {
                    (
                        vec![("tenant", t.name.clone()), ("machine", m.machine.clone())],
                        u64::from(f(m)),
                    )
                })
            })
        };
        gauge(
            e,
            "carwash_machine_up",
            "1 while the machine is declared up (or not probed yet), 0 once declared down.",
            per_flag(|m| m.up),
        )?;
        gauge(
            e,
            "carwash_machine_drained",
            "1 while an operator has the machine drained.",
            per_flag(|m| m.drained),
        )?;
        counters(
            e,
            "carwash_machine_transitions",
            "Times the machine was declared up or down.",
            self.tenants.iter().flat_map(|t| {
                t.machines.iter().map(move |m| {
                    (
                        vec![("tenant", t.name.clone()), ("machine", m.machine.clone())],
                        m.transitions,
                    )
                })
            }),
        )?;
        gauge(
            e,
            "carwash_machine_probe_latency_seconds",
            "Latency of the machine's last passing probe.",
            per_machine(|m| m.latency_seconds),
        )?;
        gauge(
            e,
            "carwash_tenant_active_core",
            "Index of the tenant's active core (0: the first in its policy).",
            self.tenants
                .iter()
                .filter_map(|t| t.active_core.map(|c| (vec![("tenant", t.name.clone())], u64::from(c)))),
        )?;
        // Read from the health records like the machine gauges: a tenant
        // whose every connector is down or drained has them all kept in
        // the choice (as if up), and this says so.
        let all_out: Vec<(Vec<(&str, String)>, u64)> = self
            .tenants
            .iter()
            .filter_map(|t| {
                let mut conns = t
                    .machines
                    .iter()
                    .filter(|m| m.machine.starts_with("connector/"))
                    .peekable();
                conns.peek()?;
                let out = conns.all(|m| !m.up || m.drained);
                Some((vec![("tenant", t.name.clone())], u64::from(out)))
            })
            .collect();
        let n_all_out = all_out.iter().filter(|(_, v)| *v == 1).count() as u64;
        gauge(
            e,
            "carwash_tenant_connectors_all_out",
            "1 while every connector of the tenant is down or drained (new flows are then spread over all of them as if up).",
            all_out,
        )?;
        gauge(
            e,
            "carwash_tenants_connectors_all_out",
            "Tenants whose every connector is down or drained.",
            one(n_all_out),
        )?;
        gauge(
            e,
            "carwash_tenants",
            "Tenants in the maps.",
            one(self.tenants.len() as u64),
        )?;
        gauge(
            e,
            "carwash_policy_generation",
            "Generation of the policy set in force (0: none yet).",
            one(self.generation),
        )?;
        gauge(
            e,
            "carwash_policy_applied_timestamp_seconds",
            "Unix time the policy set in force was applied.",
            one(self.applied_at),
        )?;
        gauge(
            e,
            "carwash_map_memory_bytes",
            "Kernel memory of each map (memlock), the per-tenant allowlist tries counted into their outer map.",
            self.map_memory.iter().map(|(m, b)| (vec![("map", m.to_string())], *b)),
        )?;
        self.encode_events(e)?;
        if let Some(p) = self.agent.as_ref().and_then(|a| a.probes.as_ref()) {
            probe_metrics(e, p)?;
        }
        if let Some(a) = &self.agent {
            gauge(
                e,
                "carwash_agent_start_time_seconds",
                "Unix time the agent started.",
                one(a.started_at),
            )?;
            counters(
                e,
                "carwash_policy_apply_attempts",
                "Policy sets the agent read or received (applied, unchanged or refused).",
                one(a.attempts),
            )?;
            gauge(
                e,
                "carwash_policy_last_apply_duration_seconds",
                "Time the last apply spent writing the maps (0: none yet).",
                one(a.last_apply_seconds.unwrap_or(0.0)),
            )?;
            gauge(
                e,
                "carwash_policy_last_error_timestamp_seconds",
                "Unix time of the last policy set refused or failed (0: none since the agent started).",
                one(a.last_error_at.unwrap_or(0)),
            )?;
            if let Some(st) = &a.etcd {
                gauge(
                    e,
                    "carwash_etcd_connected",
                    "1 while the agent follows the tenants in etcd, 0 while etcd is out of reach (the set in force \
                     stays).",
                    one(u64::from(st.connected)),
                )?;
                gauge(
                    e,
                    "carwash_etcd_revision_applied",
                    "The etcd revision of the policy set in force (0: none from etcd yet).",
                    one(st.revision),
                )?;
                counters(
                    e,
                    "carwash_etcd_reconnects",
                    "Times the agent lost etcd and reached it again.",
                    one(st.reconnects),
                )?;
                counters(
                    e,
                    "carwash_etcd_rereads",
                    "Full re-reads of the tenants because etcd had compacted the revision the agent had.",
                    one(st.rereads),
                )?;
            }
            if let Some(c) = &a.cluster {
                cluster_gauges(e, c)?;
            }
            if let Some(ct) = &a.conntrack {
                gauge(
                    e,
                    "carwash_conntrack_entries",
                    "Entries in the connection-tracking table (two per flow), at the agent's last pass over it.",
                    one(ct.entries as u64),
                )?;
                gauge(
                    e,
                    "carwash_conntrack_capacity",
                    "Size of the connection-tracking table in entries.",
                    one(u64::from(ct.capacity)),
                )?;
                gauge(
                    e,
                    "carwash_snat_port_range_ports",
                    "Ports of the source-NAT port range: what each egress IP has per protocol.",
                    one(u64::from(ct.snat_port_range)),
                )?;
                gauge(
                    e,
                    "carwash_snat_ports_in_use",
                    "Translated (protocol, port) pairs in use per egress IP, at the agent's last pass over the table.",
                    ct.snat_ports
                        .iter()
                        .map(|(ip, n)| (vec![("egress_ip", ip.to_string())], *n as u64)),
                )?;
            }
        }
        Ok(())
    }
}

// ---- HTTP ----

/// Binds the metrics endpoint of `cfg` (`None` when `metrics` is off). A
/// failure is a startup error naming the address.
pub async fn bind(cfg: &HostConfig) -> Result<Option<TcpListener>> {
    let Some(addr) = cfg.metrics_addr()? else {
        info!("metrics endpoint off (metrics = {:?})", cfg.metrics);
        return Ok(None);
    };
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("binding the metrics endpoint {addr} (`metrics` in the host configuration or --metrics; \"off\" turns it off)")
    })?;
    let bound = listener.local_addr().unwrap_or(addr);
    info!(address = %bound, path = PATH, "serving metrics");
    Ok(Some(listener))
}

struct Ctx {
    pin_path: PathBuf,
    tx: mpsc::UnboundedSender<Event>,
    memory: Mutex<MemoryCache>,
    slots: Arc<Semaphore>,
}

/// Serves the endpoint until the agent stops.
pub async fn serve(listener: TcpListener, pin_path: PathBuf, tx: mpsc::UnboundedSender<Event>) {
    let ctx = Arc::new(Ctx {
        pin_path,
        tx,
        memory: Mutex::new(MemoryCache::default()),
        slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
    });
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Ok(permit) = ctx.slots.clone().try_acquire_owned() else {
                    debug!(%peer, "metrics: too many connections, closing this one");
                    continue;
                };
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    connection(stream, peer, &ctx).await;
                    drop(permit);
                });
            }
            Err(e) => {
                warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What the client asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    Request {
        method: String,
        path: String,
        openmetrics: bool,
    },
    /// Not HTTP/1.x.
    Bad(String),
    /// Longer than [`MAX_HEAD`] or with too many headers.
    TooLarge,
    /// Closed before sending anything.
    Closed,
    /// Not all of it within [`IO_TIMEOUT`].
    Timeout,
}

/// Parses a request head; `None` while it is incomplete.
pub fn parse_head(buf: &[u8]) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {
            let openmetrics = req.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("accept")
                    && String::from_utf8_lossy(h.value)
                        .to_ascii_lowercase()
                        .contains("application/openmetrics-text")
            });
            Some(Head::Request {
                method: req.method.unwrap_or_default().to_string(),
                path: req.path.unwrap_or_default().to_string(),
                openmetrics,
            })
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Some(Head::TooLarge),
        Ok(httparse::Status::Partial) => None,
        Err(httparse::Error::TooManyHeaders) => Some(Head::TooLarge),
        Err(e) => Some(Head::Bad(e.to_string())),
    }
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(if buf.is_empty() {
                Head::Closed
            } else {
                Head::Bad("connection closed inside the request head".into())
            });
        }
        let room = MAX_HEAD - buf.len();
        buf.extend_from_slice(&chunk[..n.min(room)]);
        if let Some(head) = parse_head(&buf) {
            return Ok(head);
        }
    }
}

struct Reply {
    status: &'static str,
    content_type: &'static str,
    body: String,
    extra: &'static str,
}

impl Reply {
    fn text(status: &'static str, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            extra: "",
        }
    }

    fn bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
            self.status,
            self.content_type,
            self.body.len(),
            self.extra
        )
        .into_bytes();
        if !head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

async fn connection(mut stream: TcpStream, peer: SocketAddr, ctx: &Arc<Ctx>) {
    let head = match tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "metrics: reading the request");
            return;
        }
        Err(_) => Head::Timeout,
    };
    let mut head_only = false;
    let reply = match head {
        Head::Closed => return,
        Head::Bad(why) => Reply::text("400 Bad Request", format!("bad request: {why}\n")),
        Head::TooLarge => Reply::text("431 Request Header Fields Too Large", "request head too large\n"),
        Head::Timeout => Reply::text("408 Request Timeout", "request head not received in time\n"),
        Head::Request {
            method,
            path,
            openmetrics,
        } => {
            let path = path.split(['?', '#']).next().unwrap_or_default();
            if path != PATH {
                Reply::text("404 Not Found", format!("not found; metrics are at {PATH}\n"))
            } else if method != "GET" && method != "HEAD" {
                Reply {
                    extra: "Allow: GET, HEAD\r\n",
                    ..Reply::text("405 Method Not Allowed", "only GET and HEAD\n")
                }
            } else {
                head_only = method == "HEAD";
                match scrape(ctx, openmetrics).await {
                    Ok(body) => Reply {
                        status: "200 OK",
                        content_type: if openmetrics {
                            "application/openmetrics-text; version=1.0.0; charset=utf-8"
                        } else {
                            prometheus_client::encoding::prometheus_text::CONTENT_TYPE
                        },
                        body,
                        extra: "",
                    },
                    Err(e) => {
                        warn!(error = %format!("{e:#}"), "metrics: scrape failed");
                        Reply::text("500 Internal Server Error", format!("{e:#}\n"))
                    }
                }
            }
        }
    };
    let out = reply.bytes(head_only);
    let _ = tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(&out).await?;
        stream.shutdown().await
    })
    .await;
}

/// The agent's status, from its loop; `None` when it does not answer in time.
async fn agent_status(tx: &mpsc::UnboundedSender<Event>) -> Option<AgentSnapshot> {
    let (reply, rx) = oneshot::channel();
    tx.send(Event::Api(Request::Status, reply)).ok()?;
    match tokio::time::timeout(STATUS_TIMEOUT, rx).await {
        Ok(Ok(r)) => r.status.as_deref().map(AgentSnapshot::from),
        _ => {
            warn!("metrics: the agent's loop did not answer within {STATUS_TIMEOUT:?}; agent metrics left out");
            None
        }
    }
}

async fn scrape(ctx: &Arc<Ctx>, openmetrics: bool) -> Result<String> {
    let agent = agent_status(&ctx.tx).await;
    let c = ctx.clone();
    let mut snap = tokio::task::spawn_blocking(move || {
        let pins = Pins::open(&c.pin_path)?;
        let mut memory = c.memory.lock().unwrap_or_else(|e| e.into_inner());
        Snapshot::read(&pins, &mut memory)
    })
    .await
    .context("the scrape task")??;
    snap.agent = agent;
    snap.encode(openmetrics)
}

impl Snapshot {
    /// The event stream's counters: the data path's by kind, and the
    /// agent's (the stream by type, slow monitors, the flow log).
    fn encode_events(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        use dataplane_common::events::{EventCounts, kind_name};
        let by_kind = |f: fn(&EventCounts) -> u64| {
            self.events
                .iter()
                .enumerate()
                .skip(1)
                .map(move |(k, c)| (vec![("type", kind_name(k as u8).to_string())], f(c)))
        };
        counters(
            e,
            "carwash_events_emitted",
            "Events the data path reported, by type.",
            by_kind(|c| c.emitted),
        )?;
        counters(
            e,
            "carwash_events_suppressed",
            "Events the per-tenant, per-CPU budget held back (reported in summary events), by type.",
            by_kind(|c| c.suppressed),
        )?;
        counters(
            e,
            "carwash_events_lost",
            "Events lost because the ring buffer was full (reported in summary events too), by type.",
            by_kind(|c| c.lost),
        )?;
        let Some(ev) = self.agent.as_ref().and_then(|a| a.events.as_ref()) else {
            return Ok(());
        };
        counters(
            e,
            "carwash_events_streamed",
            "Events through the agent's stream (the data path's, summaries and the agent's own), by type.",
            ev.by_type.iter().map(|(t, n)| (vec![("type", t.clone())], *n)),
        )?;
        counters(
            e,
            "carwash_events_monitor_lost",
            "Events slow monitors did not get (their queues were full).",
            one(ev.monitor_lost),
        )?;
        counters(
            e,
            "carwash_event_log_written",
            "Events written to the flow log.",
            one(ev.log_written),
        )?;
        counters(
            e,
            "carwash_event_log_failed",
            "Events the flow log could not take (unwritable, disk full).",
            one(ev.log_failed),
        )?;
        gauge(
            e,
            "carwash_event_log_ok",
            "1 while the flow log is written, 0 while it cannot be.",
            one(i64::from(ev.log_error.is_none())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane_common::types::TENANT_READY;

    fn head(s: &str) -> Option<Head> {
        parse_head(s.as_bytes())
    }

    #[test]
    fn request_heads() {
        assert_eq!(head("GET /metrics HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(
            head("GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Head::Request {
                method: "GET".into(),
                path: "/metrics?x=1".into(),
                openmetrics: false
            })
        );
        assert_eq!(
            head(
                "GET /metrics HTTP/1.0\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n"
            ),
            Some(Head::Request {
                method: "GET".into(),
                path: "/metrics".into(),
                openmetrics: true
            })
        );
        assert!(matches!(head("\x16\x03\x01garbage\r\n\r\n"), Some(Head::Bad(_))));
        assert!(matches!(head("GET /metrics HTTP/2.0\r\n\r\n"), Some(Head::Bad(_))));
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(parse_head(&long.as_bytes()[..MAX_HEAD]), Some(Head::TooLarge));
        let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(head(&format!("GET / HTTP/1.1\r\n{many}\r\n")), Some(Head::TooLarge));
    }

    #[test]
    fn encodes_what_the_snapshot_holds() {
        let mut c = Counters::default();
        c.counters.insert(Counter::Packets, 9);
        c.drops.insert(DropReason::NotAllowed, 3);
        let mut st = [[0u64; dataplane_common::drop::TENANT_STAT_SLOTS]; dataplane_common::types::CLASSES];
        st[dataplane_common::types::CLASS_HTTPS as usize][dataplane_common::drop::STEERED_PACKETS] = 5;
        st[dataplane_common::types::CLASS_HTTPS as usize][DropReason::NotAllowed.slot()] = 2;
        let mut classes = class_stats(&st);
        classes.remove("none");
        let snap = Snapshot {
            programs: vec![("uplink", c), ("fabric", Counters::default())],
            tenants: vec![TenantSnapshot {
                name: "acme".into(),
                ready: TENANT_READY != 0,
                classes,
                active_core: Some(1),
                machines: vec![
                    MachineSnapshot {
                        machine: "core/0".into(),
                        up: false,
                        drained: false,
                        transitions: 2,
                        latency_seconds: Some(0.00025),
                    },
                    // One connector down, the other drained: all out.
                    MachineSnapshot {
                        machine: "connector/0".into(),
                        up: false,
                        drained: false,
                        transitions: 1,
                        latency_seconds: None,
                    },
                    MachineSnapshot {
                        machine: "connector/1".into(),
                        up: true,
                        drained: true,
                        transitions: 0,
                        latency_seconds: Some(0.0001),
                    },
                ],
            }],
            redirect_failures: vec![crate::maps::counters::RedirectFailure {
                ifindex: 3,
                role: Some("fabric"),
                interface: Some("eth1".into()),
                frames: 11,
                last_error: String::new(),
            }],
            generation: 7,
            applied_at: 1,
            map_memory: vec![("ADDRS", 4096)],
            agent: Some(AgentSnapshot {
                started_at: 2,
                attempts: 3,
                last_apply_seconds: Some(0.25),
                last_error_at: None,
                conntrack: Some(crate::api::ConntrackStatus {
                    at: 4,
                    capacity: 262_145,
                    entries: 6,
                    snat_port_range: 40_000,
                    snat_ports: [("203.0.113.200".parse().unwrap(), 3)].into(),
                }),
                events: Some(crate::api::EventStreamStatus {
                    by_type: [("drop".to_string(), 12)].into(),
                    monitor_lost: 2,
                    log_error: Some("disk full".into()),
                    ..Default::default()
                }),
                etcd: Some(crate::api::EtcdStatus {
                    connected: false,
                    revision: 42,
                    reconnects: 2,
                    ..Default::default()
                }),
                cluster: Some(crate::cluster::ClusterStatus {
                    index: 1,
                    hosts: 3,
                    block: (33333, 46665),
                    route_table: 4242,
                    announced_routes: 2,
                    announced_generation: 7,
                    handoffs_sent: 5,
                    handoffs_received: 4,
                }),
                probes: Some(crate::api::ProbeStatus {
                    half_open_sent: 40,
                    socket_probes: 3,
                    results_skipped: 7,
                    in_flight: 2,
                    ..Default::default()
                }),
            }),
            events: {
                let mut e = vec![dataplane_common::events::EventCounts::default(); 7];
                e[1] = dataplane_common::events::EventCounts {
                    emitted: 10,
                    suppressed: 90,
                    lost: 1,
                };
                e
            },
        };
        let text = snap.clone().encode(false).unwrap();
        for line in [
            "# TYPE carwash_program_packets_total counter",
            "carwash_program_packets_total{program=\"uplink\"} 9",
            "carwash_program_packets_total{program=\"fabric\"} 0",
            "carwash_program_dropped_total{program=\"uplink\",reason=\"not_allowed\"} 3",
            "carwash_tenant_steered_packets_total{tenant=\"acme\",class=\"https\"} 5",
            "carwash_tenant_steered_packets_total{tenant=\"acme\",class=\"jms\"} 0",
            "carwash_tenant_dropped_packets_total{tenant=\"acme\",class=\"https\",reason=\"not_allowed\"} 2",
            "carwash_tenant_ready{tenant=\"acme\"} 1",
            "carwash_tenants 1",
            "carwash_machine_up{tenant=\"acme\",machine=\"core/0\"} 0",
            "carwash_machine_transitions_total{tenant=\"acme\",machine=\"core/0\"} 2",
            "carwash_machine_probe_latency_seconds{tenant=\"acme\",machine=\"core/0\"} 0.00025",
            "carwash_tenant_active_core{tenant=\"acme\"} 1",
            "carwash_tenant_connectors_all_out{tenant=\"acme\"} 1",
            "carwash_tenants_connectors_all_out 1",
            "carwash_policy_generation 7",
            "carwash_map_memory_bytes{map=\"ADDRS\"} 4096",
            "carwash_policy_last_apply_duration_seconds 0.25",
            "carwash_policy_apply_attempts_total 3",
            "carwash_etcd_connected 0",
            "carwash_etcd_revision_applied 42",
            "carwash_etcd_reconnects_total 2",
            "carwash_policy_last_error_timestamp_seconds 0",
            "carwash_conntrack_entries 6",
            "carwash_cluster_index 1",
            "carwash_cluster_hosts 3",
            "carwash_cluster_block_ports{end=\"low\"} 33333",
            "carwash_announced_routes 2",
            "carwash_announced_generation 7",
            "carwash_handoffs_sent_total 5",
            "carwash_handoffs_received_total 4",
            "carwash_conntrack_capacity 262145",
            "carwash_snat_port_range_ports 40000",
            "carwash_snat_ports_in_use{egress_ip=\"203.0.113.200\"} 3",
            "carwash_redirect_refused_frames_total{interface=\"eth1\",ifindex=\"3\",role=\"fabric\"} 11",
            "carwash_events_emitted_total{type=\"drop\"} 10",
            "carwash_events_suppressed_total{type=\"drop\"} 90",
            "carwash_events_lost_total{type=\"drop\"} 1",
            "carwash_events_suppressed_total{type=\"translation\"} 0",
            "carwash_events_streamed_total{type=\"drop\"} 12",
            "carwash_events_monitor_lost_total 2",
            "carwash_probes_sent_total{kind=\"half_open\"} 40",
            "carwash_probes_sent_total{kind=\"socket\"} 3",
            "carwash_probe_results_skipped_total 7",
            "carwash_probes_in_flight 2",
            "carwash_event_log_ok 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }
        assert!(!text.contains("class=\"none\""), "{text}");
        let om = snap.encode(true).unwrap();
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE carwash_program_packets counter"), "{om}");
    }
}
