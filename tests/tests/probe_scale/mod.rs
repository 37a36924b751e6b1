//! The health checker at scale: the real agent probing every machine of
//! `n` synthetic tenants (2 connectors, 2 cores each) through their
//! tunnels, against one responder namespace that answers for all of them
//! the way the machines would. Shared by `cargo xtask bench -- health`
//! (10,000 tenants) and the `health_scale` test (CI-sized).
//!
//! The responder: a collect-metadata VXLAN device (`vx0`) takes every
//! tunnel packet to a local VTEP (all of `10.200.0.0/16` is local there,
//! every VIP too), the kernel answers the SYN on listeners on 0.0.0.0
//! (HTTPS and the first JMS port; an accept-and-close loop keeps the
//! backlog empty), and the answer goes back into the tenant's tunnel: its
//! VNI, from the machine's VTEP (connector/0's for HTTPS, core/0's for JMS;
//! the fabric program asks that the VTEP be one of the tenant's) to the
//! host's. This kernel has no tc flower, `tunnel_key` or `skbedit`, so two
//! small TC programs on `vx0` do their work: ingress takes the frames to
//! the machines' MACs as the device's own, egress sets the tunnel key from
//! a map of VIP and port (`carwash_bench_tunnel_in`/`_out`, never attached
//! by the agent). The VTEPs are behind one gateway on the host's side, so
//! the host keeps one neighbour, not 40,000.
#![allow(dead_code)]

use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use aya::maps::{HashMap, Map, MapData};
use carwash_policy::HttpsCheck;
use carwash_tests::synthetic;
use dataplane::Dataplane;
use dataplane::config::ProbeResets;
use dataplane_common::maps;
use dataplane_common::types::{BenchTunnel, BenchTunnelKey, MACHINE_UP, TenantHealth};
use netlab::netns::{NetNs, PinDir, veth_pair};

use crate::agent_common::{AgentProc, TempDir};

const HOST_VTEP: &str = "10.199.0.1";
const GATEWAY: &str = "10.199.0.2";
const PROBE_SOURCE: &str = "192.0.0.8";
const PORTS: [u16; 2] = [443, 61616];

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Figures {
    pub tenants: u32,
    pub probes: bool,
    /// Who sent the resets (`[probes] resets`), with probes on.
    pub resets: Option<ProbeResets>,
    /// Whether the fabric program's resets were dropped before they left.
    pub lose_fabric_resets: bool,
    /// From the binary's start to every machine up with a passing probe
    /// (probes), or to the uplink's addresses in place (no probes).
    pub ready: Duration,
    /// Whether every machine was up with a passing probe before the window.
    pub all_up: bool,
    pub window: Duration,
    /// utime + stime over the window, as % of one core.
    pub cpu_pct: f64,
    /// The host's kernel thread receiving on `fabric` (the answers through
    /// the fabric program into the probe sockets), % of one core.
    pub host_rx_pct: f64,
    /// The responder's receive thread (the machines' side), % of one core.
    pub responder_rx_pct: f64,
    /// VmRSS at the end of the window.
    pub rss_kib: u64,
    /// SYNs the responders answered per second over the window: the TCP
    /// segments their namespace sent, less retransmissions (a TCP check
    /// draws one SYN-ACK; the half-open probe answers it with a reset).
    pub answered_per_s: f64,
    /// Segments the responders sent again per second: SYN-ACKs no reset
    /// or ACK answered within their timer (a probe that leaves state on
    /// the machine).
    pub retransmitted_per_s: f64,
    /// Connections the responders accepted per second (checks that
    /// complete the handshake; none for half-open probes).
    pub accepted_per_s: f64,
    /// The checker's own counters at the end (`carwash status`): results
    /// its loop had no room for, answers to no probe, packets not sent.
    pub probe_status: Option<dataplane::api::ProbeStatus>,
    /// Machines declared down or up again during the window.
    pub transitions_in_window: u64,
    /// Machines not up at the end.
    pub not_up: usize,
}

impl Figures {
    pub fn probes_per_s(&self) -> f64 {
        self.answered_per_s
    }
}

/// The responder namespace and its accept loops (stopped on drop).
struct Responder {
    // Declared first, dropped first: the programs' links go before the
    // namespace and the pins.
    _dp: Dataplane,
    _pins: PinDir,
    ns: NetNs,
    listeners: Vec<TcpListener>,
    loops: Vec<JoinHandle<()>>,
    accepted: Arc<[AtomicU64; 2]>,
}

impl Responder {
    /// `lose_resets`: a program on the host's fabric, ahead of the
    /// agent's, drops the resets the fabric program writes.
    fn new(host: &NetNs, n: u32, lose_resets: bool) -> Result<Responder> {
        let ns = NetNs::new("cwresp")?;
        veth_pair(host, "fabric", None, &ns, "fpeer", None)?;
        host.addr("fabric", &format!("{HOST_VTEP}/24"))?;
        ns.addr("fpeer", &format!("{GATEWAY}/24"))?;
        host.route("10.200.0.0/16", GATEWAY, Some("fabric"))?;
        // Each side's receive work in a kernel thread of its own (threaded
        // NAPI; GRO is on, so veth polls): otherwise the responder's TCP
        // stack would run in the softirq of whoever sent the packet, the
        // agent, and count as its CPU.
        // CARWASH_HEALTH_THREADED: `both` (the default), `responder` or
        // `none`, to compare.
        let threaded = std::env::var("CARWASH_HEALTH_THREADED").unwrap_or_else(|_| "both".into());
        let devs: Vec<(&NetNs, &str)> = match threaded.as_str() {
            "none" => vec![],
            "responder" => vec![(&ns, "fpeer")],
            _ => vec![(host, "fabric"), (&ns, "fpeer")],
        };
        for (ns, dev) in devs {
            let cmd = format!("echo 1 > /sys/class/net/{dev}/threaded");
            netlab::netns::run_checked(std::process::Command::new("ip").args([
                "netns",
                "exec",
                ns.name(),
                "sh",
                "-c",
                &cmd,
            ]))?;
        }
        ns.ip(&["link", "add", "vx0", "type", "vxlan", "external", "dstport", "4789"])?;
        ns.link_up("vx0")?;
        ns.ip(&["route", "add", "local", "10.200.0.0/16", "dev", "lo"])?;
        ns.ip(&["route", "add", "local", "100.64.0.0/10", "dev", "lo"])?;
        ns.ip(&["route", "add", &format!("{PROBE_SOURCE}/32"), "dev", "vx0"])?;
        // The inner destination MAC of the answers is the host's business
        // (the fabric program sets it); no ARP into a tunnel that has none.
        ns.ip(&[
            "neigh",
            "add",
            PROBE_SOURCE,
            "lladdr",
            "02:00:00:00:00:08",
            "dev",
            "vx0",
            "nud",
            "permanent",
        ])?;
        // The tunnels of the answers: one entry per tenant and port.
        let pins = PinDir::new()?;
        let mut dp = Dataplane::load(Some(pins.path()))?;
        let host_vtep: Ipv4Addr = HOST_VTEP.parse()?;
        for i in 1..=n {
            let t = synthetic::tenant(i);
            for (port, vtep) in [(443u16, t.connectors[0].vtep), (61616, t.cores[0].vtep)] {
                dp.set_bench_tunnel(
                    BenchTunnelKey {
                        addr: synthetic::vip4(i).octets(),
                        port_be: port.to_be_bytes(),
                        _pad: [0; 2],
                    },
                    BenchTunnel {
                        vni: t.vni,
                        local: vtep.octets(),
                        remote: host_vtep.octets(),
                    },
                )?;
            }
        }
        ns.enter(|| dp.attach_bench_tunnel("vx0"))??;
        if lose_resets {
            host.enter(|| dp.attach_bench_lose_resets("fabric"))??;
        }
        let listeners = ns.enter(|| -> Result<Vec<TcpListener>> {
            PORTS
                .iter()
                .map(|p| {
                    let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, *p))?;
                    let fd = l.as_raw_fd();
                    // A backlog as long as the namespace allows, for the
                    // accept loop's scheduling. Answers are closed with a
                    // FIN, not a reset: a reset could reach a probe before
                    // its connect is seen complete, and fail it.
                    // SAFETY: listen(2) on our own socket.
                    unsafe {
                        if libc::listen(fd, 65535) != 0 {
                            return Err(std::io::Error::last_os_error().into());
                        }
                    }
                    Ok(l)
                })
                .collect()
        })??;
        let accepted: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let mut loops = Vec::new();
        for (k, l) in listeners.iter().enumerate() {
            let l = l.try_clone()?;
            let accepted = accepted.clone();
            loops.push(std::thread::spawn(move || {
                // A server waits for its client to speak; the probe resets
                // the connection first, and closing it after that sends
                // nothing. Closing at once would add a FIN and the reset
                // that answers it to every probe.
                let mut open = std::collections::VecDeque::new();
                loop {
                    match l.accept() {
                        Ok((c, _)) => {
                            accepted[k].fetch_add(1, Ordering::Relaxed);
                            let now = Instant::now();
                            open.push_back((now, c));
                            while open
                                .front()
                                .is_some_and(|(at, _)| now.duration_since(*at) > Duration::from_millis(100))
                            {
                                open.pop_front();
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
                        Err(_) => return,
                    }
                }
            }));
        }
        Ok(Responder {
            _dp: dp,
            _pins: pins,
            ns,
            listeners,
            loops,
            accepted,
        })
    }

    fn accepted(&self) -> u64 {
        [0, 1].iter().map(|k| self.accepted[*k].load(Ordering::Relaxed)).sum()
    }

    /// The responder namespace's `Tcp: OutSegs` and `RetransSegs`.
    fn segments(&self) -> (u64, u64) {
        let text = self
            .ns
            .enter(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default();
        let tcp: Vec<&str> = text.lines().filter(|l| l.starts_with("Tcp:")).collect();
        let (Some(names), Some(values)) = (tcp.first(), tcp.get(1)) else {
            return (0, 0);
        };
        let get = |name: &str| {
            names
                .split_whitespace()
                .position(|n| n == name)
                .and_then(|i| values.split_whitespace().nth(i))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        (get("OutSegs"), get("RetransSegs"))
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        for l in &self.listeners {
            // SAFETY: shutdown(2) of our own socket wakes its accept loop.
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
        for h in self.loops.drain(..) {
            let _ = h.join();
        }
    }
}

fn cpu_ticks(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces).
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); here 12 and 13.
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// CPU ticks of the kernel threads polling `dev` (threaded NAPI:
/// `napi/DEV-N`).
fn napi_ticks(dev: &str) -> u64 {
    let prefix = format!("napi/{dev}-");
    let mut total = 0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end().starts_with(&prefix) {
            total += cpu_ticks(pid);
        }
    }
    total
}

pub fn rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Every machine's (state, transitions, latency recorded) in `HEALTH`.
fn machines(h: &HashMap<MapData, u32, TenantHealth>) -> Vec<(u32, u8, u32, bool)> {
    let mut out = Vec::new();
    for (id, rec) in h.iter().flatten() {
        for (k, m) in rec.machines.iter().enumerate() {
            out.push((id * 4 + k as u32, m.state, m.transitions, m.last_latency_us != 0));
        }
    }
    out.sort();
    out
}

/// One run: the agent at `n` tenants (TCP checks, interval 1 s, the other
/// `[health]` defaults), probes off (`None`) or on with the resets sent as
/// `resets` says, measured over `window` once every machine is up (probes)
/// or the agent has settled (no probes). `lose_fabric_resets`: the resets
/// the fabric program writes are dropped before they can leave (the agent
/// must notice and send them itself).
pub fn run(n: u32, resets: Option<ProbeResets>, window: Duration, lose_fabric_resets: bool) -> Result<Figures> {
    let probes = resets.is_some();
    let resets_name = match resets.unwrap_or_default() {
        ProbeResets::Fabric => "fabric",
        ProbeResets::Agent => "agent",
    };
    let host = NetNs::new("cwhb")?;
    veth_pair(&host, "uplink", None, &host, "upeer", None)?;
    let responder = Responder::new(&host, n, lose_fabric_resets)?;
    let dir = TempDir::new("probe-scale");
    let policy_dir = dir.path().join("policies");
    std::fs::create_dir_all(&policy_dir)?;
    for i in 1..=n {
        let mut t = synthetic::tenant(i);
        t.health.https_check = HttpsCheck::Tcp;
        std::fs::write(policy_dir.join(format!("{}.json", t.name)), serde_json::to_string(&t)?)?;
    }
    let pins = PinDir::new()?;
    let socket = dir.path().join("api.sock");
    let config = dir.path().join("carwash.toml");
    std::fs::write(
        &config,
        format!(
            "uplink = \"uplink\"\nfabric = \"fabric\"\nvtep = \"{HOST_VTEP}\"\npolicy_dir = \"{}\"\npin_path = \"{}\"\napi_socket = \"{}\"\nevent_log = \"{}\"\n[probes]\nenabled = {probes}\nresets = \"{resets_name}\"\n",
            policy_dir.display(),
            pins.path().display(),
            socket.display(),
            dir.path().join("events.jsonl").display()
        ),
    )?;
    crate::agent_common::carwash_bin();
    let t0 = Instant::now();
    let mut agent = AgentProc::start(&host, &config, &socket, &dir.path().join("agent.log"))?;
    let pid = agent.child.id();
    let status = agent.status();
    if status.tenants.len() != n as usize {
        bail!(
            "the agent applied {} of {n} tenants: {:?}",
            status.tenants.len(),
            status.last_error
        );
    }
    // The one-off start-up work (the uplink's 2n addresses) is not the
    // checker's: the window starts after it.
    let limit = Duration::from_secs(120 + u64::from(n) / 50);
    // Asked with a short timeout and asked again: the agent's loop may be
    // busy for a while with the addresses.
    let addresses = |socket: &std::path::Path| {
        dataplane::api::call(socket, &dataplane::api::Request::Status, Duration::from_secs(5))
            .ok()
            .and_then(|r| r.status)
            .map_or(0, |s| s.uplink_addresses_generation)
    };
    while addresses(&socket) < status.generation {
        if t0.elapsed() > limit {
            bail!("the uplink's addresses were not in place after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let health: HashMap<MapData, u32, TenantHealth> = HashMap::try_from(Map::HashMap(MapData::from_pin(
        pins.path().join("maps").join(maps::HEALTH),
    )?))?;
    let machines_n = 4 * n as usize;
    let mut all_up = !probes;
    while !all_up {
        let m = machines(&health);
        let up = m.iter().filter(|(_, s, _, seen)| *s == MACHINE_UP && *seen).count();
        all_up = up == machines_n;
        if !all_up && t0.elapsed() > limit {
            // Measured all the same, and failed by `check`: the figures of
            // an agent that cannot keep up say by how much.
            eprintln!(
                "{up} of {machines_n} machines up with a passing probe after {:?}; measuring anyway",
                t0.elapsed()
            );
            let log = agent.log_text();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            eprintln!(
                "the agent's log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    if !probes {
        // The same settling time as a probing run gets, roughly.
        std::thread::sleep(Duration::from_secs(3));
    }
    if lose_fabric_resets {
        // The half-open connections of the probes made before the agent
        // noticed get its resets at their next SYN-ACK, within seconds.
        std::thread::sleep(Duration::from_secs(6));
    }
    let ready = t0.elapsed();
    let before = machines(&health);
    let (cpu0, acc0, seg0, w0) = (
        cpu_ticks(pid),
        responder.accepted(),
        responder.segments(),
        Instant::now(),
    );
    let (host0, resp0) = (napi_ticks("fabric"), napi_ticks("fpeer"));
    std::thread::sleep(window);
    let (cpu1, acc1, seg1, elapsed) = (cpu_ticks(pid), responder.accepted(), responder.segments(), w0.elapsed());
    let (host1, resp1) = (napi_ticks("fabric"), napi_ticks("fpeer"));
    let rss = rss_kib(pid);
    let probe_status = agent.status().probes;
    let after = machines(&health);
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let secs = elapsed.as_secs_f64();
    let transitions_in_window = before
        .iter()
        .zip(&after)
        .map(|(b, a)| u64::from(a.2.saturating_sub(b.2)))
        .sum::<u64>()
        + (after.len() as u64).abs_diff(before.len() as u64);
    let not_up = if probes {
        machines_n - after.iter().filter(|(_, s, _, _)| *s == MACHINE_UP).count()
    } else {
        0
    };
    if let Ok(Some(status)) = agent.child.try_wait() {
        bail!("the agent exited ({status}) during the window");
    }
    if transitions_in_window != 0 {
        // Why: the agent's reasons, and what the links dropped.
        let log = agent.log_text();
        let downs: Vec<&str> = log.lines().filter(|l| l.contains("machine down")).take(12).collect();
        eprintln!("machines declared down:\n{}", downs.join("\n"));
        for (ns, dev) in [(&host, "fabric"), (&responder.ns, "fpeer")] {
            if let Ok(out) = ns.ip(&["-s", "link", "show", dev]) {
                eprintln!("{dev}:\n{out}");
            }
        }
    }
    drop(agent);
    drop(responder);
    Ok(Figures {
        tenants: n,
        probes,
        resets,
        lose_fabric_resets,
        ready,
        all_up,
        window: elapsed,
        cpu_pct: (cpu1 - cpu0) as f64 / tick / secs * 100.0,
        host_rx_pct: host1.saturating_sub(host0) as f64 / tick / secs * 100.0,
        responder_rx_pct: resp1.saturating_sub(resp0) as f64 / tick / secs * 100.0,
        rss_kib: rss,
        answered_per_s: seg1
            .0
            .saturating_sub(seg0.0)
            .saturating_sub(seg1.1.saturating_sub(seg0.1)) as f64
            / secs,
        retransmitted_per_s: seg1.1.saturating_sub(seg0.1) as f64 / secs,
        accepted_per_s: acc1.saturating_sub(acc0) as f64 / secs,
        transitions_in_window,
        not_up,
        probe_status,
    })
}

/// Fails loudly when a probing run was not what it should be: a machine
/// declared down (none is), or probes falling behind (fewer than 95 % of
/// `4 n` a second answered).
pub fn check(f: &Figures) -> Result<()> {
    if !f.probes {
        return Ok(());
    }
    if f.not_up != 0 || f.transitions_in_window != 0 {
        bail!(
            "machines flapped: {} not up at the end, {} transitions in the window",
            f.not_up,
            f.transitions_in_window
        );
    }
    let want = 4.0 * f64::from(f.tenants);
    if f.probes_per_s() < 0.95 * want {
        bail!(
            "probes fell behind: {:.0} answered a second of {want:.0} due",
            f.probes_per_s()
        );
    }
    // The loop kept up with the results.
    if let Some(p) = &f.probe_status
        && p.results_skipped != 0
    {
        bail!(
            "{} probe results skipped: the agent's loop fell behind",
            p.results_skipped
        );
    }
    // The resets came from where the configuration says; where the
    // fabric's were lost, the agent noticed and sent them.
    if let (Some(p), Some(resets)) = (&f.probe_status, f.resets) {
        let (agent, fabric, failed) = (p.resets_sent, p.resets_in_path, p.fabric_resets_failed);
        let right = match resets {
            ProbeResets::Fabric if f.lose_fabric_resets => failed && agent > 0,
            ProbeResets::Fabric => fabric > 0 && agent == 0 && !failed,
            ProbeResets::Agent => agent > 0 && fabric == 0 && !failed,
        };
        if !right {
            bail!(
                "resets = {resets:?}{}, but the agent sent {agent} resets and the fabric's programs {fabric}; fabric resets failed: {failed}",
                if f.lose_fabric_resets {
                    " (the fabric's lost)"
                } else {
                    ""
                }
            );
        }
    }
    // Every SYN-ACK answered: a machine keeps nothing of a probe.
    if f.retransmitted_per_s > 0.01 * want {
        bail!(
            "the responders sent {:.0} segments a second again: probes leave connections half open",
            f.retransmitted_per_s
        );
    }
    Ok(())
}
