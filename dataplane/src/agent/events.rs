//! The event stream: the data path's events (read from the `EVENTS` ring
//! buffer by the agent's loop, which knows the tenants' names) and the
//! agent's own (policy applied or refused; health transitions, core
//! switches and drains through [`EventSink::emit`]) go to one hub task,
//! which appends each to the flow log ([`super::flowlog`]) and hands it to
//! every `carwash monitor` connected. Each monitor has a bounded queue: a
//! monitor that cannot keep up loses events (counted, and told how many)
//! rather than slowing the hub, and the hub never waits on the agent's
//! loop.
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aya::maps::{MapData, RingBuf};
use dataplane_common::events::DataEvent;
use serde_json::{Map, Value};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tracing::warn;

use super::flowlog::{FlowLog, SystemClock};
use crate::event::{Event, Filter};

/// What the hub counts (read by the metrics).
#[derive(Debug, Default)]
pub struct HubStats {
    /// Events through the hub, by type.
    pub by_type: Mutex<BTreeMap<String, u64>>,
    /// Events a slow monitor did not get.
    pub monitor_lost: AtomicU64,
    pub log_written: AtomicU64,
    pub log_failed: AtomicU64,
    pub monitors: AtomicU64,
    /// Why the flow log cannot be written, while it cannot.
    pub log_error: Mutex<Option<String>>,
}

enum HubMsg {
    Event(Event),
    Subscribe(Filter, mpsc::Sender<String>),
}

/// Where events go: cheap to clone, never blocks.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::UnboundedSender<HubMsg>,
    pub stats: Arc<HubStats>,
    queue: usize,
}

impl EventSink {
    /// Emits an agent event of type `kind` (e.g. `policy`, `health`,
    /// `core_switch`, `drain`) with `fields`; see docs/events.md for the
    /// schema of each type.
    pub fn emit(&self, kind: &str, fields: Map<String, Value>) {
        self.send(Event::new(kind, fields));
    }

    pub fn send(&self, e: Event) {
        let _ = self.tx.send(HubMsg::Event(e));
    }

    pub fn status(&self, event_log: &std::path::Path) -> crate::api::EventStreamStatus {
        let s = &self.stats;
        crate::api::EventStreamStatus {
            by_type: s.by_type.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            monitors: s.monitors.load(Ordering::Relaxed),
            monitor_lost: s.monitor_lost.load(Ordering::Relaxed),
            event_log: event_log.to_path_buf(),
            log_written: s.log_written.load(Ordering::Relaxed),
            log_failed: s.log_failed.load(Ordering::Relaxed),
            log_error: s.log_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// A new monitor: the lines (JSON) of every event `filter` matches,
    /// from now on.
    pub fn subscribe(&self, filter: Filter) -> mpsc::Receiver<String> {
        let (tx, rx) = mpsc::channel(self.queue.max(1));
        let _ = self.tx.send(HubMsg::Subscribe(filter, tx));
        rx
    }
}

struct Monitor {
    filter: Filter,
    tx: mpsc::Sender<String>,
    /// Events this monitor lost since it was last told.
    lost: u64,
}

/// Starts the hub (on the current tokio runtime) with the flow log at
/// `log` (none: no flow log).
pub fn start(log: Option<FlowLog>, monitor_queue: usize) -> EventSink {
    let (tx, rx) = mpsc::unbounded_channel();
    let stats = Arc::new(HubStats::default());
    tokio::spawn(hub(rx, log, stats.clone()));
    EventSink {
        tx,
        stats,
        queue: monitor_queue,
    }
}

/// The flow log of the host config.
pub fn flow_log(cfg: &crate::config::HostConfig) -> FlowLog {
    FlowLog::new(
        &cfg.event_log,
        cfg.events.max_file_bytes,
        cfg.event_retention_days,
        Box::new(SystemClock),
    )
}

async fn hub(mut rx: mpsc::UnboundedReceiver<HubMsg>, mut log: Option<FlowLog>, stats: Arc<HubStats>) {
    let mut monitors: Vec<Monitor> = Vec::new();
    // Monitors that went away are let go of within a second, events or not.
    let mut prune = tokio::time::interval(Duration::from_secs(1));
    loop {
        let msg = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => m,
                None => break,
            },
            _ = prune.tick() => {
                monitors.retain(|m| !m.tx.is_closed());
                stats.monitors.store(monitors.len() as u64, Ordering::Relaxed);
                continue;
            }
        };
        let e = match msg {
            HubMsg::Subscribe(filter, tx) => {
                monitors.push(Monitor { filter, tx, lost: 0 });
                stats.monitors.store(monitors.len() as u64, Ordering::Relaxed);
                continue;
            }
            HubMsg::Event(e) => e,
        };
        *stats
            .by_type
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(e.kind.clone())
            .or_default() += 1;
        let Ok(line) = serde_json::to_string(&e) else {
            continue;
        };
        let mut outage = None;
        if let Some(log) = log.as_mut() {
            match log.append(&line) {
                Ok(()) => {
                    stats.log_written.fetch_add(1, Ordering::Relaxed);
                }
                Err(first) => {
                    stats.log_failed.fetch_add(1, Ordering::Relaxed);
                    outage = first;
                }
            }
            *stats.log_error.lock().unwrap_or_else(|p| p.into_inner()) = log.broken().map(str::to_string);
        }
        let mut extra = Vec::new();
        if let Some(err) = outage {
            // The monitors hear of it: the log itself cannot say it.
            let mut f = Map::new();
            f.insert("error".into(), err.into());
            extra.push(Event::new("log_error", f));
        }
        monitors.retain_mut(|m| {
            for ev in &extra {
                if let Ok(l) = serde_json::to_string(ev)
                    && deliver(m, l, &stats).is_err()
                {
                    return false;
                }
            }
            if !m.filter.matches(&e) {
                return true;
            }
            deliver(m, line.clone(), &stats).is_ok()
        });
        stats.monitors.store(monitors.len() as u64, Ordering::Relaxed);
    }
}

/// Queues `line` for a monitor, after a note of what it lost before if
/// there is room for both; `Err` when the monitor is gone.
fn deliver(m: &mut Monitor, line: String, stats: &HubStats) -> Result<(), ()> {
    if m.lost > 0 {
        let mut f = Map::new();
        f.insert("lost".into(), m.lost.into());
        let note = serde_json::to_string(&Event::new("monitor_lost", f)).unwrap_or_default();
        match m.tx.try_send(note) {
            Ok(()) => m.lost = 0,
            Err(mpsc::error::TrySendError::Full(_)) => {
                m.lost += 1;
                stats.monitor_lost.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(()),
        }
    }
    match m.tx.try_send(line) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(_)) => {
            m.lost += 1;
            stats.monitor_lost.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
    }
}

/// The programs' ring buffer, watched by the agent's loop.
pub type EventRing = AsyncFd<RingBuf<MapData>>;

/// Waits until the ring buffer has records (never, without one).
pub async fn ring_ready(ring: &mut Option<EventRing>) {
    let Some(fd) = ring.as_mut() else {
        return std::future::pending().await;
    };
    match fd.readable_mut().await {
        Ok(mut guard) => guard.clear_ready(),
        Err(e) => {
            warn!(error = %e, "the programs' event ring buffer stopped");
            *ring = None;
        }
    }
}

/// Turns the data path's records into events with names, and works out
/// the summaries of what the tenants' budgets held back.
#[derive(Default)]
pub struct Decoder {
    /// (tenant, cpu) → the bucket's suppressed count last reported.
    reported: HashMap<(u32, u32), u64>,
    /// Tenants that reported lately: their buckets are checked for what
    /// they held back since (a flood that stopped leaves no event to
    /// carry its count).
    recent: HashMap<u32, Instant>,
    /// Boot time to wall time: `bpf_ktime_get_ns` counts from boot.
    boot: Option<SystemTime>,
}

/// Of the tenants given, what their buckets held back on each CPU, read
/// together: `(tenant, [suppressed on CPU 0, 1, ...])`.
pub type SuppressedOf<'a> = dyn Fn(&[u32]) -> Option<Vec<(u32, Vec<u64>)>> + 'a;

/// How long a tenant's buckets are checked after its last event.
const RECENT: Duration = Duration::from_secs(120);

impl Decoder {
    /// Reads what the ring buffer holds into events, summaries first.
    pub fn drain(
        &mut self,
        ring: &mut RingBuf<MapData>,
        name: &dyn Fn(u32) -> Option<String>,
        ifname: &dyn Fn(u32) -> Option<String>,
        out: &mut Vec<Event>,
    ) {
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<DataEvent>() {
                continue;
            }
            // SAFETY: at least a DataEvent's bytes; any bit pattern is valid.
            let e: DataEvent = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const DataEvent) };
            self.decode(&e, name, ifname, out);
        }
    }

    /// One record: a summary of what its bucket held back before it, if
    /// anything, then the event.
    pub fn decode(
        &mut self,
        e: &DataEvent,
        name: &dyn Fn(u32) -> Option<String>,
        ifname: &dyn Fn(u32) -> Option<String>,
        out: &mut Vec<Event>,
    ) {
        let tenant = name(e.tenant);
        self.note(e.tenant, e.cpu, e.suppressed_total, tenant.as_deref(), out);
        let wall = self.wall(e.ts_ns);
        out.push(crate::event::from_data(
            e,
            tenant.as_deref(),
            ifname(e.ifindex).as_deref(),
            wall,
        ));
    }

    fn wall(&mut self, ts_ns: u64) -> SystemTime {
        let boot = *self
            .boot
            .get_or_insert_with(|| SystemTime::now() - Duration::from_nanos(crate::clock::monotonic_ns()));
        boot + Duration::from_nanos(ts_ns)
    }

    /// Takes what the buckets (pinned, so older than this agent) held back
    /// before now as reported: an earlier agent reported it.
    pub fn seed(&mut self, tenant: u32, per_cpu: &[u64]) {
        for (cpu, &total) in per_cpu.iter().enumerate() {
            if total > 0 {
                self.reported.insert((tenant, cpu as u32), total);
            }
        }
    }

    /// A bucket's suppressed count as seen now: a summary of what it held
    /// back since the last one.
    fn note(&mut self, tenant: u32, cpu: u32, total: u64, name: Option<&str>, out: &mut Vec<Event>) {
        self.recent.insert(tenant, Instant::now());
        let last = self.reported.entry((tenant, cpu)).or_insert(0);
        if total > *last {
            out.push(crate::event::summary(name, tenant, cpu, total - *last));
            *last = total;
        }
    }

    /// Summaries of what the buckets of recently reporting tenants held
    /// back since (`buckets`: of the tenants given, their suppressed count
    /// on each CPU, read together).
    pub fn flush(&mut self, buckets: &SuppressedOf, name: &dyn Fn(u32) -> Option<String>, out: &mut Vec<Event>) {
        self.recent.retain(|_, t| t.elapsed() < RECENT);
        let tenants: Vec<u32> = self.recent.keys().copied().collect();
        if tenants.is_empty() {
            return;
        }
        let Some(all) = buckets(&tenants) else { return };
        for (id, per_cpu) in all {
            let n = name(id);
            for (cpu, total) in per_cpu.into_iter().enumerate() {
                let last = self.reported.get(&(id, cpu as u32)).copied().unwrap_or(0);
                if total > last {
                    out.push(crate::event::summary(n.as_deref(), id, cpu as u32, total - last));
                    self.reported.insert((id, cpu as u32), total);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_monitor_gets_every_event_and_a_slow_one_loses_counted() {
        let sink = start(None, 4);
        let mut fast = sink.subscribe(Filter::default());
        let mut slow = sink.subscribe(Filter::default());
        let mut policy_only = sink.subscribe(Filter {
            kind: Some("policy".into()),
            ..Default::default()
        });
        for n in 0..10u32 {
            let mut f = Map::new();
            f.insert("n".into(), n.into());
            sink.emit(if n == 5 { "policy" } else { "health" }, f);
            if let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(5), fast.recv()).await {
                assert!(line.contains(&format!(r#""n":{n}"#)), "{line}");
            } else {
                panic!("the fast monitor got no event {n}");
            }
        }
        let p = policy_only.recv().await.unwrap();
        assert!(p.contains(r#""type":"policy""#), "{p}");
        // The slow monitor read nothing: its queue of 4 took the first 4.
        let mut got = Vec::new();
        while let Ok(Some(l)) = tokio::time::timeout(Duration::from_millis(200), slow.recv()).await {
            got.push(l);
        }
        assert_eq!(got.len(), 4, "{got:#?}");
        assert_eq!(sink.stats.monitor_lost.load(Ordering::Relaxed), 6);
        // The next event comes after a note of what was lost.
        sink.emit("health", Map::new());
        let note = slow.recv().await.unwrap();
        assert!(
            note.contains(r#""type":"monitor_lost""#) && note.contains(r#""lost":6"#),
            "{note}"
        );
    }

    #[test]
    fn what_pinned_buckets_held_back_before_a_restart_is_not_reported_again() {
        let mut d = Decoder::default();
        d.seed(7, &[500, 0]);
        let mut out = Vec::new();
        d.note(7, 0, 500, None, &mut out);
        assert!(out.is_empty());
        d.note(7, 0, 530, None, &mut out);
        d.note(7, 1, 4, None, &mut out);
        let got: Vec<u64> = out.iter().map(|e| e.fields["suppressed"].as_u64().unwrap()).collect();
        assert_eq!(got, [30, 4]);
    }

    #[test]
    fn summaries_add_up_to_what_the_buckets_held_back() {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        d.note(7, 0, 0, Some("acme"), &mut out);
        d.note(7, 0, 40, Some("acme"), &mut out);
        d.note(7, 1, 5, Some("acme"), &mut out);
        let buckets = |ids: &[u32]| Some(ids.iter().map(|&id| (id, vec![100, 5])).collect());
        d.flush(&buckets, &|_| Some("acme".into()), &mut out);
        d.flush(&buckets, &|_| Some("acme".into()), &mut out);
        let total: u64 = out.iter().map(|e| e.fields["suppressed"].as_u64().unwrap()).sum();
        assert_eq!(total, 105);
        assert_eq!(out.len(), 3);
    }
}
