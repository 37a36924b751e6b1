//! `carwash agent`: loads (or adopts) the programs and maps under
//! `pin_path`, attaches the programs through pinned bpf links, applies the
//! policy set of `policy_dir`, follows its changes, and serves the API
//! ([`crate::api`]) on `api_socket`.
//!
//! Everything the dataplane needs lives in pins: maps (`maps/`), programs
//! (`progs/`) and links (`links/`). When the agent exits or is killed, the
//! programs keep forwarding with the pinned maps; the next agent checks the
//! layout version, loads the same object onto the pinned maps, and swaps its
//! programs into the pinned links (`bpf_link_update`), so no packet meets an
//! interface without a program and connection state survives. Only
//! [`uninstall`] detaches.
pub mod announce;
pub mod apply;
pub mod checker;
pub mod digest;
pub mod etcd_publish;
pub mod etcd_set;
pub mod etcd_watch;
pub mod events;
mod fleet;
pub mod flowlog;
pub mod health;
pub mod host;
pub mod load;
pub mod messages;
pub mod metrics;
pub mod notify;
pub mod persist;
pub mod probe_path;
pub mod probing;
pub mod server;
pub mod status;
pub mod syn_probe;
pub mod target;
use crate::clock::wall_secs;
use messages::Manual;
pub(crate) mod sys;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use aya::programs::XdpMode;
use carwash_policy::{PolicyErrors, PolicySet};
use dataplane_common::{LAYOUT_VERSION, programs, types::Meta};
use tracing::{error, info, warn};

use crate::Dataplane;
use crate::api::Request;
use crate::api::{
    AgentStatus, ApiError, ApplyReport, AttachmentStatus, Document, InterfaceStatus, LastError, Response, TenantId,
};
use crate::config::HostConfig;
use crate::loader::{self, PinState, PinnedAttachment};
use crate::maps::host::HostParams;
use apply::{Engine, Target};
use host::Interface;

/// Debounce of `policy_dir` changes: an editor's or a control plane's burst
/// of writes becomes one apply.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

/// How often deferred work of earlier applies is done.
const HOUSEKEEPING: Duration = Duration::from_secs(2);
/// Housekeeping rounds between two passes over the connection-tracking
/// table (a pass reads the whole table).
const RECLAIM_EVERY: u64 = 5;

pub use crate::api::is_policy_file;

/// Where the agent keeps the per-tenant digests of the set in force
/// ([`apply::StateFile`]): `applied.json` beside the API socket.
pub fn state_file(cfg: &HostConfig) -> PathBuf {
    cfg.api_socket.with_file_name("applied.json")
}

/// Hands memory freed after a reload back to the system: parsing a large
/// policy set peaks far above what the agent keeps.
fn release_memory() {
    // SAFETY: malloc_trim only walks the allocator's free lists.
    unsafe { libc::malloc_trim(0) };
}

/// Raises the soft limit of open files to the hard limit: every map (and
/// every allowlist trie while it is built) is a file descriptor.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// An exclusive `flock` on the pin directory: one agent per pin path.
pub struct PinLock(#[allow(dead_code)] OwnedFd);

impl PinLock {
    pub fn acquire(pin_path: &Path) -> Result<PinLock> {
        let dir = std::fs::File::open(pin_path).with_context(|| format!("opening {}", pin_path.display()))?;
        let fd: OwnedFd = dir.into();
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                bail!(
                    "another carwash agent is running on {} (it holds the lock on that directory)",
                    pin_path.display()
                );
            }
            return Err(e).with_context(|| format!("locking {}", pin_path.display()));
        }
        Ok(PinLock(fd))
    }
}

/// A running agent: the loaded dataplane and what it applied.
pub struct Agent {
    cfg: HostConfig,
    dp: Dataplane,
    engine: Engine,
    uplink: Interface,
    fabric: Interface,
    attachments: Vec<PinnedAttachment>,
    started_at: u64,
    adopted: bool,
    last_apply: Option<ApplyReport>,
    last_error: Option<LastError>,
    /// Whether the last attempt to apply was refused (or failed).
    last_refused: bool,
    attempts: u64,
    cache: load::DirCache,
    /// Housekeeping rounds so far.
    ticks: u64,
    /// New flows the data path dropped for a full tracking table, as last
    /// seen: more of them calls for a reclaim pass (and fresh eviction
    /// candidates) at once.
    ct_full_seen: u64,
    /// Redirects the kernel refused so far, by target ifindex.
    redirect_failures_seen: BTreeMap<u32, u64>,
    /// What the attach-time check (or a later one) found wrong with the
    /// interfaces the programs redirect into.
    target_problems: Vec<crate::xdp_target::TargetProblem>,
    generic_xdp: bool,
    uplink_addrs: host::UplinkAddrs,
    /// What the last pass over the tracking table found.
    ct_fill: Option<crate::api::ConntrackStatus>,
    metrics: Option<tokio::net::TcpListener>,
    /// Route announcements, on a host in a fleet.
    announcer: Option<announce::Announcer>,
    /// The programs' aya-log ring buffer, when `ebpf_log` is on.
    ebpf_log: Option<EbpfLogFd>,
    /// The event stream: the flow log and the monitors.
    pub events: events::EventSink,
    event_ring: Option<events::EventRing>,
    decoder: events::Decoder,
    /// The link to etcd, with `[etcd]`.
    etcd: Option<crate::api::EtcdStatus>,
    etcd_set: etcd_set::EtcdSet,
    /// The health probes, when `[probes]` is enabled and its path is up.
    probing: Option<checker::Probing>,
    _lock: PinLock,
}

type EbpfLogFd = tokio::io::unix::AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>;

/// Forwards the programs' log records as they come (never, without a
/// logger).
async fn ebpf_log_ready(slot: &mut Option<EbpfLogFd>) {
    let Some(fd) = slot.as_mut() else {
        return std::future::pending().await;
    };
    let failed = match fd.readable_mut().await {
        Ok(mut guard) => {
            guard.get_inner_mut().flush();
            guard.clear_ready();
            false
        }
        Err(e) => {
            warn!(error = %e, "the programs' log stopped");
            true
        }
    };
    if failed {
        *slot = None;
    }
}

impl Agent {
    /// Sets everything up (see the module documentation) and applies
    /// `policy_dir`. An invalid `policy_dir` does not stop the agent: what
    /// is pinned stays in force and the errors are logged.
    pub async fn start(cfg: HostConfig, mode: XdpMode) -> Result<Agent> {
        let started_at = wall_secs();
        raise_fd_limit();
        crate::pin::ensure_bpffs(&cfg.pin_path)?;
        std::fs::create_dir_all(&cfg.pin_path).with_context(|| format!("creating {}", cfg.pin_path.display()))?;
        let lock = PinLock::acquire(&cfg.pin_path)?;
        let pins = loader::check_pins(&cfg.pin_path)?;
        let metrics = metrics::bind(&cfg).await?;
        let adopted = matches!(pins, PinState::Adoptable { .. });

        let names = [cfg.uplink.as_str(), cfg.fabric()];
        let ifs = host::interfaces(&names).await?;
        let (uplink, fabric) = (ifs[0].clone(), ifs[1].clone());
        for i in [&uplink, &fabric] {
            info!(interface = %i.name, ifindex = i.ifindex, mac = %i.mac_string(), mtu = i.mtu, "interface");
        }
        host::enable_forwarding(&uplink.name)?;
        if fabric.ifindex != uplink.ifindex {
            host::enable_forwarding(&fabric.name)?;
        }

        let mut dp = Dataplane::load_opts(Some(&cfg.pin_path), cfg.conntrack.max_entries, cfg.ebpf_log)?;
        let ebpf_log = match cfg.ebpf_log {
            crate::loader::EbpfLog::Off => None,
            level => {
                let logger = aya_log::EbpfLogger::init(&mut dp.ebpf).context("reading the programs' log")?;
                info!(level = ?level, "the programs log into this log (target dataplane_ebpf)");
                // SAFETY: the logger owns its ring buffer's file descriptor
                // for as long as it lives, and the AsyncFd owns the logger.
                let fd =
                    unsafe { tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
                Some(fd.map_err(|e| anyhow::anyhow!("watching the programs' log: {e}"))?)
            }
        };
        dp.set_event_limits(cfg.events.limits())?;
        let ring = dp.take_events()?;
        // SAFETY: the ring buffer owns its file descriptor for as long as
        // it lives, and the AsyncFd owns the ring buffer.
        let event_ring =
            unsafe { tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
                .map_err(|e| anyhow::anyhow!("watching the programs' event ring buffer: {e}"))?;
        let event_sink = events::start(Some(events::flow_log(&cfg)), cfg.events.monitor_queue);
        let ct_capacity = dp.conntrack_capacity()?;
        if ct_capacity != cfg.conntrack.max_entries {
            warn!(
                pinned = ct_capacity,
                configured = cfg.conntrack.max_entries,
                "the pinned connection-tracking table keeps its size and its flows; `carwash agent --uninstall` \
                 (dropping all state) applies the new size"
            );
        }
        match pins {
            PinState::Empty => {
                info!(pin_path = %cfg.pin_path.display(), "fresh start: maps created and pinned");
                dp.set_meta(&Meta {
                    layout_version: LAYOUT_VERSION,
                    ..Default::default()
                })?;
            }
            PinState::Adoptable { meta } => {
                info!(
                    pin_path = %cfg.pin_path.display(),
                    generation = meta.generation,
                    digest = %apply::hex(&meta.digest),
                    "adopting pinned maps"
                );
                if meta.layout_version == 0 {
                    dp.set_meta(&Meta {
                        layout_version: LAYOUT_VERSION,
                        ..meta
                    })?;
                }
            }
        }
        let router_mac = cfg.router_mac.map(|m| m.0).unwrap_or(fabric.mac);
        dp.set_host(&HostParams {
            vtep: cfg.vtep,
            router_mac,
            fabric_ifindex: fabric.ifindex,
            fabric_mtu: fabric.mtu.min(u32::from(u16::MAX)) as u16,
            uplink_ifindex: uplink.ifindex,
            snat_ports: cfg.snat_ports()?,
        })?;
        let fleet = match &cfg.cluster {
            Some(c) => c.fleet(cfg.snat.ports()?)?,
            None => Default::default(),
        };
        dp.set_fleet(&fleet)?;
        let engine = Engine::adopt(&dp, Some(&state_file(&cfg)))?;
        if !engine.installed.is_empty() {
            info!(
                tenants = engine.installed.len(),
                generation = engine.generation,
                "tenants recovered from the pins"
            );
        }

        if !cfg.policy_dir.exists() {
            std::fs::create_dir_all(&cfg.policy_dir)
                .with_context(|| format!("creating policy_dir {}", cfg.policy_dir.display()))?;
            warn!(policy_dir = %cfg.policy_dir.display(), "policy_dir did not exist: created it, empty");
        }
        // The buckets are pinned: what they held back before this agent
        // was reported by an earlier one.
        let mut decoder = events::Decoder::default();
        let ids: Vec<u32> = std::iter::once(0).chain(engine.installed.keys().copied()).collect();
        if let Ok(all) = dp.event_buckets_of(&ids) {
            for (id, b) in all {
                decoder.seed(id, &b.iter().map(|b| b.suppressed).collect::<Vec<_>>());
            }
        }
        let etcd = cfg.etcd.as_ref().map(etcd_set::initial_status);
        let mut agent = Agent {
            cfg,
            dp,
            engine,
            uplink,
            fabric,
            attachments: Vec::new(),
            started_at,
            adopted,
            last_apply: None,
            last_error: None,
            last_refused: false,
            attempts: 0,
            cache: load::DirCache::default(),
            ticks: 0,
            ct_full_seen: 0,
            redirect_failures_seen: BTreeMap::new(),
            target_problems: Vec::new(),
            generic_xdp: matches!(mode, XdpMode::Skb),
            uplink_addrs: host::UplinkAddrs::default(),
            ct_fill: None,
            metrics,
            announcer: None,
            ebpf_log,
            events: event_sink,
            event_ring: Some(event_ring),
            decoder,
            etcd,
            etcd_set: etcd_set::EtcdSet::default(),
            probing: None,
            _lock: lock,
        };
        // Policies before programs: on a fresh start the programs see every
        // tenant complete from their first packet.
        agent.reload("startup");
        // Both generations equal before anything else happens (and the
        // writes kept for the replay given back).
        agent.dp.settle()?;
        release_memory();
        agent.attach(mode)?;
        if let Some(c) = &agent.cfg.cluster {
            agent.announcer = Some(announce::Announcer::new(c.route_table, agent.uplink.ifindex));
        }
        Ok(agent)
    }

    fn attach(&mut self, mode: XdpMode) -> Result<()> {
        let pin = self.cfg.pin_path.clone();
        let mut done = vec![
            self.dp
                .attach_pinned(programs::UPLINK, "uplink", self.uplink.ifindex, mode, &pin)?,
        ];
        if self.fabric.ifindex != self.uplink.ifindex {
            done.push(
                self.dp
                    .attach_pinned(programs::FABRIC, "fabric", self.fabric.ifindex, mode, &pin)?,
            );
        } else {
            // One interface runs one XDP program: the uplink program, which
            // hands VXLAN to this host's VTEP to the fabric program.
            info!(
                interface = %self.uplink.name,
                "fabric is the uplink interface: {} is attached there and hands tunnel traffic to {}",
                programs::UPLINK,
                programs::FABRIC
            );
            let stale = loader::link_pin(&pin, "fabric");
            if stale.exists() {
                std::fs::remove_file(&stale).with_context(|| format!("unpinning {}", stale.display()))?;
            }
        }
        for a in &done {
            info!(
                program = %a.program,
                ifindex = a.ifindex,
                link_id = a.link_id,
                prog_id = a.prog_id,
                attach = ?a.attach,
                link_pin = %a.link_pin.display(),
                "attached"
            );
        }
        self.attachments = done;
        // Counting is for the operator's eyes: a kernel without the
        // tracepoint costs the count, not the data path.
        match self.dp.watch_redirects_pinned(&pin) {
            Ok(link_id) => info!(
                link_id,
                tracepoint = loader::REDIRECT_TRACEPOINT,
                "counting the redirects the kernel refuses, per interface"
            ),
            Err(e) => warn!(
                error = %format!("{e:#}"),
                "redirects the kernel refuses are not counted: `carwash stats` cannot show them"
            ),
        }
        self.redirect_failures_seen = self.redirect_failures();
        self.check_targets();
        Ok(())
    }

    /// Checks that the interfaces the programs redirect into can take XDP
    /// frames, and says what to change where one cannot (once per
    /// problem: the check runs on every housekeeping tick, since a veth's
    /// peer may change at any time) and when a problem is gone.
    fn check_targets(&mut self) {
        let targets = [
            (self.uplink.name.as_str(), self.uplink.ifindex),
            (self.fabric.name.as_str(), self.fabric.ifindex),
        ];
        let now = crate::xdp_target::check_targets(&targets, self.generic_xdp);
        for p in now.iter().filter(|p| !self.target_problems.contains(p)) {
            warn!(interface = %p.ifname, ifindex = p.ifindex, "{}", p.warning);
        }
        for p in self.target_problems.iter().filter(|p| !now.contains(p)) {
            info!(
                interface = %p.ifname,
                ifindex = p.ifindex,
                "the interface takes redirected XDP frames now"
            );
        }
        self.target_problems = now;
    }

    fn redirect_failures(&self) -> BTreeMap<u32, u64> {
        self.dp
            .redirect_errors()
            .map(|m| m.into_iter().map(|(i, e)| (i, e.frames)).collect())
            .unwrap_or_default()
    }

    /// Reports redirects the kernel refused since the last look.
    fn watch_redirect_failures(&mut self) {
        let now = self.redirect_failures();
        let grown: Vec<(u32, u64)> = now
            .iter()
            .filter_map(|(i, n)| {
                let before = self.redirect_failures_seen.get(i).copied().unwrap_or(0);
                (*n > before).then_some((*i, n - before))
            })
            .collect();
        self.redirect_failures_seen = now;
        for (ifindex, n) in &grown {
            let name = status::ifname(*ifindex).unwrap_or_else(|| "?".into());
            warn!(
                interface = %name,
                ifindex,
                frames = n,
                "the kernel refused frames redirected into this interface (see `carwash stats`)"
            );
        }
    }

    pub fn config(&self) -> &HostConfig {
        &self.cfg
    }

    /// Re-reads `policy_dir` (every file) and applies it (only what changed).
    pub fn reload(&mut self, source: &str) -> Response {
        self.reload_changed(source, None)
    }

    /// Re-reads `policy_dir`, where the files `changed` names (all with
    /// `None`) may have changed, and applies it: only the files named are
    /// read, and only the tenants they held or hold are compared with what
    /// is in force (with `None`, every file's metadata and every tenant).
    pub fn reload_changed(&mut self, source: &str, changed: Option<&[PathBuf]>) -> Response {
        self.attempts += 1;
        let t0 = std::time::Instant::now();
        let loaded = self.cache.load_changed(&self.cfg.policy_dir, changed);
        let t1 = t0.elapsed();
        let touched = self.cache.set().touched().len();
        let resp = match loaded {
            Ok(()) => {
                let set = self.cache.set();
                if let Err(errors) = apply::check_capacity_of(Target::count(set), Target::each(set)) {
                    let dir = self.cfg.policy_dir.clone();
                    let errors = capacity_errors(&errors, &dir, |name| {
                        let file = tenant_file(&dir, name)?;
                        let text = std::fs::read_to_string(&file).ok()?;
                        Some((file, text))
                    });
                    self.refused(source, &errors)
                } else {
                    // Tenants touched since the last apply that succeeded (a
                    // refused set in between leaves its changes in the list).
                    let hint = changed.map(|_| self.cache.set().touched().clone());
                    let result = self.engine.apply_with(&mut self.dp, self.cache.set(), hint.as_ref());
                    let resp = self.applied(result, source);
                    if resp.ok {
                        self.cache.set_mut().take_touched();
                    }
                    resp
                }
            }
            Err(errors) => self.refused(source, &errors),
        };
        let t2 = t0.elapsed();
        // Parsing many files peaks far above what is kept; one file does not.
        if changed.is_none() || touched > 64 {
            release_memory();
        }
        tracing::debug!(
            source,
            touched,
            read_validate_us = t1.as_micros() as u64,
            apply_us = (t2 - t1).as_micros() as u64,
            trim_us = (t0.elapsed() - t2).as_micros() as u64,
            "reload"
        );
        resp
    }

    fn refused(&mut self, source: &str, errors: &PolicyErrors) -> Response {
        let list: Vec<ApiError> = errors.0.iter().map(ApiError::from).collect();
        error!(
            source,
            errors = list.len(),
            "policy set refused; the set in force stays in force:\n{errors}"
        );
        let msg = format!(
            "policy set refused ({} errors); the set in force stays in force",
            list.len()
        );
        self.last_error = Some(LastError {
            at: wall_secs(),
            source: source.to_string(),
            error: msg.clone(),
            errors: list.clone(),
        });
        self.last_refused = true;
        self.policy_event_refused(source, &msg, &list);
        Response {
            ok: false,
            error: Some(msg),
            errors: list,
            ..Default::default()
        }
    }

    fn failed(&mut self, source: &str, msg: String) -> Response {
        error!(source, "{msg}");
        self.policy_event_refused(source, &msg, &[]);
        self.last_error = Some(LastError {
            at: wall_secs(),
            source: source.to_string(),
            error: msg.clone(),
            errors: Vec::new(),
        });
        self.last_refused = true;
        Response::error(msg)
    }

    /// One line for the service manager: the set in force, and the last
    /// refusal if the last attempt was refused.
    fn service_status(&self) -> String {
        let in_force = format!(
            "generation {}, {} tenants, digest {}",
            self.engine.generation,
            self.engine.installed.len(),
            self.engine.digest.get(..12).unwrap_or(&self.engine.digest)
        );
        match &self.last_error {
            Some(e) if self.last_refused => {
                let first = e
                    .errors
                    .first()
                    .map(|f| format!(": {}:{}: {}", f.file, f.line, f.message));
                format!("{}{}; in force: {in_force}", e.error, first.unwrap_or_default())
            }
            _ => format!("in force: {in_force}"),
        }
    }

    fn tell_status(&self, service: Option<&notify::Notifier>) {
        if let Some(sm) = service {
            sm.status(&self.service_status());
        }
    }

    fn apply_set(&mut self, set: &PolicySet, source: &str) -> Response {
        let result = self.engine.apply(&mut self.dp, set);
        self.applied(result, source)
    }

    fn applied(&mut self, result: Result<ApplyReport>, source: &str) -> Response {
        match result {
            Ok(report) => {
                if report.is_noop() {
                    tracing::debug!(source, generation = report.generation, "policy set unchanged");
                } else {
                    info!(
                        source,
                        generation = report.generation,
                        digest = %report.digest,
                        tenants = report.tenants,
                        added = %host::few(&report.added),
                        changed = %host::few(&report.changed),
                        removed = %host::few(&report.removed),
                        unchanged = report.unchanged,
                        micros = report.micros,
                        "policy set applied"
                    );
                }
                if !report.is_noop() {
                    self.policy_event_applied(source, &report);
                }
                self.last_apply = Some(report.clone());
                self.last_refused = false;
                Response {
                    ok: true,
                    applied: Some(report),
                    ..Default::default()
                }
            }
            Err(e) => self.failed(source, format!("{e:#}")),
        }
    }

    /// An apply request of the API: validate the documents as one set,
    /// store them in `policy_dir`, apply.
    pub fn apply_documents(
        &mut self,
        mut documents: Vec<Document>,
        tenants: Vec<serde_json::Value>,
        dry_run: bool,
    ) -> Response {
        self.attempts += 1;
        for (i, v) in tenants.into_iter().enumerate() {
            let name = v
                .get("name")
                .and_then(|n| n.as_str())
                .filter(|n| carwash_policy::valid_name(n))
                .map(|n| format!("{n}.json"))
                .unwrap_or_else(|| format!("tenants[{i}].json"));
            let content = serde_json::to_string_pretty(&v).unwrap_or_default();
            documents.push(Document { name, content });
        }
        if let Err(msg) = persist::check_names(&documents) {
            return self.failed("api", msg);
        }
        let set = match validate_documents(&documents) {
            Ok(set) => set,
            Err(errors) => return self.refused("api", &errors),
        };
        if let Err(errors) = apply::check_capacity(&set) {
            let errors = capacity_errors(&errors, &self.cfg.policy_dir, |name| {
                documents
                    .iter()
                    .find(|d| Path::new(&d.name).file_stem().is_some_and(|s| s == name))
                    .map(|d| (PathBuf::from(&d.name), d.content.clone()))
            });
            return self.refused("api", &errors);
        }
        if dry_run {
            return Response {
                ok: true,
                applied: Some(ApplyReport {
                    generation: self.engine.generation,
                    digest: set.digest(),
                    tenants: set.tenants.len(),
                    ..Default::default()
                }),
                ..Default::default()
            };
        }
        if let Err(e) = persist::write_set(&self.cfg.policy_dir, &documents) {
            return self.failed("api", format!("{e:#}"));
        }
        let resp = self.apply_set(&set, "api");
        release_memory();
        resp
    }

    /// Deferred work of earlier applies (emptying removed tenants' allow
    /// slots); run when the agent is otherwise idle.
    /// Has the kernel keep resolved the next hops the programs' FIB lookups
    /// found unresolved (their packets were dropped as `no_route`).
    pub async fn keep_next_hops(&mut self) {
        let hops = match self.dp.take_unresolved() {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "reading the unresolved next hops");
                return;
            }
        };
        for (ifindex, ip) in hops {
            match host::manage_neighbour(ifindex, ip).await {
                Ok(true) => {
                    info!(ifindex, next_hop = %ip, "next hop unresolved: the kernel now keeps it resolved (managed neighbour)")
                }
                Ok(false) => {}
                Err(e) => warn!(ifindex, next_hop = %ip, error = %format!("{e:#}"), "keeping a next hop resolved"),
            }
        }
    }

    /// Brings the old policy generation up to date if that costs no wait.
    pub fn settle_if_due(&mut self) {
        match self.dp.settle_if_due() {
            Ok(true) => tracing::debug!("the old policy generation caught up with the one in force"),
            Ok(false) => {}
            Err(e) => warn!(error = %format!("{e:#}"), "bringing the old policy generation up to date"),
        }
    }

    pub fn housekeep(&mut self) {
        match self.engine.housekeep(&mut self.dp) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(tenants = n, "emptied the allow slots of removed tenants"),
            Err(e) => warn!(error = %format!("{e:#}"), "emptying the allow slots of removed tenants"),
        }
        self.ticks += 1;
        let full = self
            .dp
            .counters(dataplane_common::types::SIDE_FABRIC)
            .map(|c| c.dropped(dataplane_common::DropReason::ConntrackFull))
            .unwrap_or(0);
        self.watch_redirect_failures();
        self.check_targets();
        let newly_full = full > self.ct_full_seen;
        self.ct_full_seen = full;
        if newly_full || self.ticks.is_multiple_of(RECLAIM_EVERY) {
            self.reclaim_conntrack();
        }
    }

    /// Removes tracked flows the data path already treats as dead (expired,
    /// half gone) and those of tenants no longer in force.
    pub fn reclaim_conntrack(&mut self) {
        let installed = &self.engine.installed;
        let result = self
            .dp
            .reclaim_conntrack(crate::maps::conntrack::now_ns(), |t| installed.contains_key(&t));
        if let Ok(r) = &result {
            let (lo, hi) = self.cfg.snat_ports().unwrap_or((1, 0));
            self.ct_fill = Some(crate::api::ConntrackStatus {
                at: wall_secs(),
                capacity: self.dp.conntrack_capacity().unwrap_or(0),
                entries: r.fill.entries,
                snat_port_range: u32::from(hi).saturating_sub(u32::from(lo)) + 1,
                snat_ports: r.fill.snat_ports.clone(),
            });
        }
        match result {
            Ok(r) if r.total() == 0 => {}
            Ok(r) => tracing::debug!(
                expired = r.expired,
                orphans = r.orphans,
                gone_tenants = r.gone_tenants,
                eviction_candidates = r.candidates,
                "reclaimed tracked flows"
            ),
            Err(e) => warn!(error = %format!("{e:#}"), "reclaiming tracked flows"),
        }
    }

    pub fn status(&self) -> AgentStatus {
        let mut tenants: Vec<TenantId> = self
            .engine
            .ids()
            .into_iter()
            .map(|(name, id)| TenantId { name, id })
            .collect();
        tenants.sort_by(|a, b| a.name.cmp(&b.name));
        AgentStatus {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: self.started_at,
            adopted: self.adopted,
            pin_path: self.cfg.pin_path.clone(),
            policy_dir: self.cfg.policy_dir.clone(),
            api_socket: self.cfg.api_socket.clone(),
            generation: self.engine.generation,
            digest: self.engine.digest.clone(),
            applied_at: self.engine.applied_at,
            tenants,
            interfaces: [("uplink", &self.uplink), ("fabric", &self.fabric)]
                .into_iter()
                .map(|(role, i)| {
                    let mut st = InterfaceStatus::new(role, i);
                    st.warnings = self
                        .target_problems
                        .iter()
                        .filter(|p| p.ifindex == i.ifindex)
                        .map(|p| p.warning.clone())
                        .collect();
                    st
                })
                .collect(),
            attachments: self.attachments.iter().map(AttachmentStatus::from).collect(),
            last_apply: self.last_apply.clone(),
            last_error: self.last_error.clone(),
            attempts: self.attempts,
            uplink_addresses_generation: self.uplink_addrs.done.load(std::sync::atomic::Ordering::Relaxed),
            conntrack: self.ct_fill.clone(),
            events: Some(self.events.status(&self.cfg.event_log)),
            etcd: self.etcd.clone(),
            cluster: self.cluster_status(),
            probes: self.probing.as_ref().map(|p| p.checker.status()),
        }
    }

    fn cluster_status(&self) -> Option<crate::cluster::ClusterStatus> {
        let c = self.cfg.cluster.as_ref()?;
        let blocks = c.blocks(self.cfg.snat.ports().ok()?).ok()?;
        let announced = self.announcer.as_ref().map(|a| a.announced.clone()).unwrap_or_default();
        let relayed = crate::maps::pins::Pins::open(&self.cfg.pin_path)
            .and_then(|p| crate::cluster::relay_stats(&p))
            .unwrap_or_default();
        Some(crate::cluster::ClusterStatus {
            index: c.index,
            hosts: blocks.list.len() as u32,
            block: blocks.own(),
            route_table: c.route_table,
            announced_routes: announced.routes,
            announced_generation: announced.generation,
            handoffs_sent: relayed.sent,
            handoffs_received: relayed.received,
        })
    }

    /// Announces the VIPs and egress IPs in force (on a host in a fleet):
    /// called only once the programs are attached, after each apply.
    async fn announce(&mut self) {
        let want = self.addresses_in_force();
        let generation = self.engine.generation;
        if let Some(a) = &mut self.announcer {
            a.announce(generation, &want).await;
        }
    }
}

/// Parses and validates API documents as one set, as `load_path` does a
/// directory.
pub fn validate_documents(documents: &[Document]) -> Result<PolicySet, PolicyErrors> {
    let mut errors = Vec::new();
    let mut docs = Vec::new();
    for d in documents {
        match carwash_policy::parse_document(Path::new(&d.name), &d.content) {
            Ok(doc) => docs.push(doc),
            Err(e) => errors.extend(e.0),
        }
    }
    match carwash_policy::validate_set(&docs) {
        Ok(set) if errors.is_empty() => Ok(set),
        Ok(_) => Err(sorted(errors)),
        Err(e) => {
            errors.extend(e.0);
            Err(sorted(errors))
        }
    }
}

/// Capacity errors as policy errors: a tenant's at the field in its
/// document (`doc` gives its file and text), the set's as a whole at
/// `set_file` (the directory or the request it came in).
pub fn capacity_errors(
    errors: &[apply::CapacityError],
    set_file: &Path,
    doc: impl Fn(&str) -> Option<(PathBuf, String)>,
) -> PolicyErrors {
    sorted(
        errors
            .iter()
            .map(|e| match e.tenant.as_deref().and_then(&doc) {
                Some((file, text)) => e.at(&file, Some(&text)),
                None => e.at(set_file, None),
            })
            .collect(),
    )
}

/// The policy file of tenant `name` in `dir`, if there is one.
pub fn tenant_file(dir: &Path, name: &str) -> Option<PathBuf> {
    ["toml", "json"]
        .iter()
        .map(|ext| dir.join(format!("{name}.{ext}")))
        .find(|p| p.is_file())
}

fn sorted(mut errors: Vec<carwash_policy::PolicyError>) -> PolicyErrors {
    errors.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    PolicyErrors(errors)
}

/// Events of the agent's own, and the data path's as the loop reads them.
impl Agent {
    fn policy_event_applied(&self, source: &str, r: &ApplyReport) {
        let mut f = serde_json::Map::new();
        let tenants: Vec<&String> = r.added.iter().chain(&r.changed).chain(&r.removed).collect();
        f.insert("result".into(), "applied".into());
        f.insert("source".into(), source.into());
        f.insert("generation".into(), r.generation.into());
        f.insert("digest".into(), r.digest.clone().into());
        f.insert("tenants".into(), serde_json::json!(tenants));
        f.insert("added".into(), serde_json::json!(r.added));
        f.insert("changed".into(), serde_json::json!(r.changed));
        f.insert("removed".into(), serde_json::json!(r.removed));
        self.events.emit("policy", f);
    }

    fn policy_event_refused(&self, source: &str, msg: &str, errors: &[ApiError]) {
        let mut f = serde_json::Map::new();
        f.insert("result".into(), "refused".into());
        f.insert("source".into(), source.into());
        f.insert("generation".into(), self.engine.generation.into());
        f.insert("digest".into(), self.engine.digest.clone().into());
        f.insert("error".into(), msg.into());
        let errors: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        f.insert("errors".into(), serde_json::json!(errors));
        self.events.emit("policy", f);
    }

    fn tenant_name(&self, id: u32) -> Option<String> {
        self.engine.installed.get(&id).map(|i| i.name.clone())
    }

    fn ifname(&self, ifindex: u32) -> Option<String> {
        [&self.uplink, &self.fabric]
            .into_iter()
            .find(|i| i.ifindex == ifindex)
            .map(|i| i.name.clone())
    }

    /// Hands what the ring buffer holds to the stream.
    fn read_events(&mut self, ring: &mut Option<events::EventRing>) {
        let Some(fd) = ring.as_mut() else { return };
        let mut out = Vec::new();
        let mut decoder = std::mem::take(&mut self.decoder);
        decoder.drain(fd.get_mut(), &|id| self.tenant_name(id), &|i| self.ifname(i), &mut out);
        self.decoder = decoder;
        // The programs know which of the two copies of the policy a
        // packet was looked up in; the number is the agent's: the copy in
        // force holds the generation in force, the other the one before.
        let (slot, current) = (self.dp.active_generation(), self.engine.generation);
        for mut e in out {
            if let Some(g) = e.fields.get_mut("generation")
                && let Some(s) = g.as_u64()
            {
                *g = if s as u32 == slot {
                    current
                } else {
                    current.saturating_sub(1)
                }
                .into();
            }
            self.events.send(e);
        }
    }

    /// Summaries of what the tenants' budgets held back since their last
    /// event.
    fn flush_event_summaries(&mut self) {
        let mut out = Vec::new();
        let mut decoder = std::mem::take(&mut self.decoder);
        decoder.flush(
            &|ids| {
                let all = self.dp.event_buckets_of(ids).ok()?;
                Some(
                    all.into_iter()
                        .map(|(id, b)| (id, b.iter().map(|b| b.suppressed).collect()))
                        .collect(),
                )
            },
            &|id| self.tenant_name(id),
            &mut out,
        );
        self.decoder = decoder;
        for e in out {
            self.events.send(e);
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT (`SIGHUP` re-reads `policy_dir`).
/// The programs stay attached when it returns.
///
/// Started by a service manager (`NOTIFY_SOCKET`), the agent tells it
/// ([`notify`]); and a first policy set that is refused ends it with
/// [`notify::EXIT_POLICY_REFUSED`] instead of `READY=1`: the manager then
/// reports the unit failed with the refusal as its status, while the
/// programs go on forwarding what is pinned.
pub fn run(cfg: HostConfig, mode: XdpMode) -> Result<std::process::ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let service = notify::Notifier::from_env();
        // The socket's directory and group are checked before anything
        // is loaded or attached.
        let access = server::Access::new(&cfg.api)?;
        server::check_dir(&cfg.api_socket)?;
        let mut agent = Agent::start(cfg, mode).await?;
        if let Some(sm) = &service
            && agent.last_refused
        {
            let status = agent.service_status();
            error!("{status}; not ready (exit {})", notify::EXIT_POLICY_REFUSED);
            sm.status(&status);
            return Ok(std::process::ExitCode::from(notify::EXIT_POLICY_REFUSED));
        }
        let mut ebpf_log = agent.ebpf_log.take();
        let mut event_ring = agent.event_ring.take();
        let mut summaries = tokio::time::interval(Duration::from_secs(1));
        summaries.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let listener = server::bind(&agent.cfg.api_socket, &access)?;
        tokio::spawn(server::serve(listener, tx.clone(), access, agent.events.clone()));
        if let Some(l) = agent.metrics.take() {
            tokio::spawn(metrics::serve(l, agent.cfg.pin_path.clone(), tx.clone()));
        }
        agent.sync_uplink_addresses();
        agent.announce().await;
        let mut probe_rx = agent.start_probing().await;
        // The tracking table's figures from the start, not after the first
        // ten seconds.
        agent.reclaim_conntrack();
        let _watcher = watch::spawn(&agent.cfg.policy_dir, tx.clone(), DEBOUNCE)?;
        let publisher = agent.cfg.etcd.clone().map(|e| {
            etcd_watch::spawn(e.clone(), tx.clone());
            etcd_publish::spawn(e)
        });
        agent.publish(&publisher);
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
        // The old policy generation catches up soon after a switch, as soon
        // as its grace period is over (checked without waiting).
        let mut settle = tokio::time::interval(Duration::from_millis(10));
        settle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // Next hops the programs found unresolved are handed to the kernel
        // to resolve and keep resolved, promptly.
        let mut neighbours = tokio::time::interval(Duration::from_millis(100));
        neighbours.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut idle = tokio::time::interval(HOUSEKEEPING);
        idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Petted by this loop itself: a loop that hangs stops petting.
        let mut watchdog = service
            .as_ref()
            .and_then(notify::Notifier::watchdog_every)
            .map(tokio::time::interval);
        if let Some(sm) = &service {
            sm.ready(&agent.service_status());
        }
        info!(
            api_socket = %agent.cfg.api_socket.display(),
            policy_dir = %agent.cfg.policy_dir.display(),
            generation = agent.engine.generation,
            "carwash agent running"
        );
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(messages::Event::Reload(source, changed)) => {
                        agent.reload_changed(source, changed.as_deref());
                        agent.refresh_probes();
                        agent.sync_uplink_addresses();
                        agent.announce().await;
                        agent.tell_status(service.as_ref());
                        agent.publish(&publisher);
                    }
                    Some(messages::Event::Api(req, reply)) => {
                        let resp = handle(&mut agent, req);
                        agent.refresh_probes();
                        agent.sync_uplink_addresses();
                        agent.announce().await;
                        agent.tell_status(service.as_ref());
                        let _ = reply.send(resp);
                        agent.publish(&publisher);
                    }
                    Some(messages::Event::Etcd(update)) => {
                        agent.on_etcd(update);
                        agent.refresh_probes();
                        agent.sync_uplink_addresses();
                        agent.tell_status(service.as_ref());
                        agent.publish(&publisher);
                    }
                    None => break,
                },
                batch = async { probe_rx.as_mut().expect("guarded").recv().await }, if probe_rx.is_some() => {
                    // Results come 40,000 a second at scale, in batches
                    // (one per turn of the checker).
                    // One clock read per batch: a batch is a millisecond's.
                    let now = crate::clock::wall_ms();
                    for r in batch.into_iter().flatten() {
                        agent.on_probe(r, now);
                    }
                }
                _ = hup.recv() => {
                    info!("SIGHUP: re-reading policy_dir");
                    if let Some(sm) = &service {
                        sm.reloading();
                    }
                    agent.reload("SIGHUP");
                    agent.refresh_probes();
                    agent.sync_uplink_addresses();
                    agent.publish(&publisher);
                    agent.announce().await;
                    if let Some(sm) = &service {
                        sm.ready(&agent.service_status());
                    }
                }
                _ = async { watchdog.as_mut().expect("guarded").tick().await }, if watchdog.is_some() => {
                    if let Some(sm) = &service {
                        sm.watchdog();
                    }
                }
                _ = idle.tick() => agent.housekeep(),
                _ = settle.tick() => agent.settle_if_due(),
                _ = neighbours.tick() => agent.keep_next_hops().await,
                _ = ebpf_log_ready(&mut ebpf_log) => {}
                _ = events::ring_ready(&mut event_ring) => agent.read_events(&mut event_ring),
                _ = summaries.tick() => agent.flush_event_summaries(),
                _ = term.recv() => { info!("SIGTERM: stopping; the programs stay attached"); break; }
                _ = int.recv() => { info!("SIGINT: stopping; the programs stay attached"); break; }
            }
        }
        // The routers stop sending before anything else changes.
        if let Some(a) = &mut agent.announcer {
            a.withdraw().await;
        }
        if let Some(sm) = &service {
            sm.stopping("stopping; the programs stay attached and forward the set in force");
        }
        let _ = std::fs::remove_file(&agent.cfg.api_socket);
        if let Some(p) = publisher {
            p.stop().await;
        }
        anyhow::Ok(std::process::ExitCode::SUCCESS)
    })
}

/// `carwash agent --uninstall`: removes the agent's addresses from the
/// uplink ([`host::remove_uplink_addresses`]), detaches the programs
/// (removes the link pins) and removes everything under `pin_path`, and the
/// state file. Refused while an agent runs on that pin path.
pub fn uninstall(cfg: &HostConfig) -> Result<Vec<PathBuf>> {
    if !cfg.pin_path.exists() {
        return Ok(Vec::new());
    }
    let _lock = PinLock::acquire(&cfg.pin_path)?;
    match host::remove_uplink_addresses(cfg) {
        Ok(ips) if !ips.is_empty() => info!(removed = ips.len(), "uplink addresses removed"),
        Ok(_) => {}
        Err(e) => warn!(error = %format!("{e:#}"), "removing the uplink addresses"),
    }
    if let Some(c) = &cfg.cluster {
        match announce::withdraw_all(c.route_table) {
            Ok(n) if n > 0 => info!(removed = n, table = c.route_table, "announcements withdrawn"),
            Ok(_) => {}
            Err(e) => warn!(error = %format!("{e:#}"), "withdrawing the announcements"),
        }
    }
    let removed = loader::uninstall(&cfg.pin_path)?;
    let state = state_file(cfg);
    if state.exists() {
        std::fs::remove_file(&state).with_context(|| format!("removing {}", state.display()))?;
    }
    Ok(removed)
}

impl Agent {
    /// The VIPs and egress IPs in force, by the engine's account of the maps.
    pub fn addresses_in_force(&self) -> BTreeSet<IpAddr> {
        self.engine
            .installed
            .values()
            .flat_map(|t| t.entries.addrs.iter())
            .map(|k| crate::maps::policy::read::addr_of(&k.addr, k.family))
            .collect()
    }

    /// Has the uplink made to answer for the addresses in force, when the
    /// policy generation changed since the last time (or nothing was done
    /// yet, as after a restart: then what is on the uplink is reconciled).
    /// Returns at once: the work is done on the reconciler's thread.
    pub fn sync_uplink_addresses(&mut self) {
        let generation = self.engine.generation;
        if self.uplink_addrs.is_current(generation) {
            return;
        }
        let want = Arc::new(self.addresses_in_force());
        self.uplink_addrs
            .hand_over(generation, self.uplink.ifindex, &self.uplink.name, want);
    }
}

/// Serves one request (on the agent's loop).
fn handle(agent: &mut Agent, req: Request) -> Response {
    match req {
        Request::Status => Response {
            ok: true,
            status: Some(Box::new(agent.status())),
            ..Default::default()
        },
        Request::Reload => agent.reload("api"),
        Request::Apply {
            documents,
            tenants,
            dry_run,
        } => agent.apply_documents(documents, tenants, dry_run),
        Request::Drain { tenant, machine } => agent.manual(Manual::Drain, &tenant, &machine),
        Request::Undrain { tenant, machine } => agent.manual(Manual::Undrain, &tenant, &machine),
        Request::Activate { tenant, machine, force } => agent.manual(Manual::Activate { force }, &tenant, &machine),
    }
}
