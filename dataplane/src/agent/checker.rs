//! The checker: one task that probes every machine of every tenant on the
//! shared [`Schedule`] (each machine at its own phase of its interval, so
//! probes trickle instead of bursting), with the policy's timeout. A TCP
//! check is a half-open probe (`super::syn_probe`: no socket); a TLS check
//! is a non-blocking connect and handshake from the probe source address,
//! marked with the machine's probe mark so the probe program carries it
//! through that machine's tunnel. The task takes a turn at most once a
//! millisecond. Results go to the agent's loop in batches on a bounded
//! queue (skips counted); the loop owns the maps and decides.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use carwash_policy::{HttpsCheck, Tenant};
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, watch};

use super::syn_probe::SynProber;
use super::sys::setsockopt;
use crate::api::ProbeStatus;
use crate::clock::monotonic_ns;
use crate::health::{Machine, Probe, Role, Schedule};

pub use super::target::Target;

/// One probe's result, for the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub tenant: u32,
    pub machine: Machine,
    pub probe: Probe,
}

/// The machines of tenant `id` to probe: each connector at the first HTTPS
/// port of the tenant's first IPv4 VIP, each core at its first JMS port.
/// A tenant without an IPv4 VIP is not probed (the probe path is IPv4).
pub fn targets(id: u32, t: &Tenant) -> Vec<Target> {
    let Some(vip) = t.vips.iter().find_map(|v| match v {
        std::net::IpAddr::V4(a) => Some(*a),
        _ => None,
    }) else {
        return Vec::new();
    };
    let h = &t.health;
    let mut out = Vec::new();
    let roles = [
        (Role::Connector, &t.connectors, t.https_ports.first()),
        (Role::Core, &t.cores, t.jms_ports.first()),
    ];
    for (role, machines, port) in roles {
        let Some(port) = port else { continue };
        for (index, m) in machines.iter().enumerate().take(2) {
            out.push(Target {
                tenant: id,
                machine: Machine {
                    role,
                    index: index as u8,
                },
                addr: SocketAddrV4::new(vip, *port),
                tls: role == Role::Connector && h.https_check == HttpsCheck::Tls,
                timeout: Duration::from_millis(h.timeout.0),
                interval_ms: h.interval.0,
                vni: t.vni,
                vtep: m.vtep,
                mac: m.mac.0,
            });
        }
    }
    out
}

/// Probe targets by key (the probe mark). Looked up several times per
/// probe: a hash map with a fast hash (the keys are the agent's own).
pub type Targets = HashMap<u64, Target, foldhash::fast::FixedState>;

/// The probes of a running agent.
pub struct Probing {
    pub(super) checker: Checker,
    /// The policy of every probed tenant, by id, as last handed out.
    pub(super) policies: std::collections::HashMap<u32, Arc<Tenant>>,
    /// The digest of the set the targets are of: an event that applied
    /// nothing new costs no pass over the tenants.
    pub(super) digest: Option<String>,
    /// What the maps say of each probed tenant (`health::known`).
    pub(super) known: crate::health::known::Known,
}

/// The handle the loop keeps: it hands the checker new targets after an
/// apply.
pub struct Checker {
    targets: watch::Sender<Arc<Targets>>,
    /// The checker's counters, for `carwash status` and the metrics.
    status: SharedStatus,
}

/// The checker's counters, updated at each of its turns.
pub type SharedStatus = Arc<std::sync::Mutex<ProbeStatus>>;

/// Results waiting for the agent's loop, in batches (one per turn of the
/// checker): a second's worth at 1 ms turns. When it is full, results are
/// skipped and counted (`ProbeStatus::results_skipped`), never queued
/// without bound.
pub const RESULT_BATCHES: usize = 1024;

/// Where results go: a batch at a time, never blocking the checker.
#[derive(Clone)]
pub struct Results {
    tx: mpsc::Sender<Vec<Reply>>,
    status: SharedStatus,
}

impl Results {
    fn send(&self, batch: Vec<Reply>) {
        if batch.is_empty() {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(b)) = self.tx.try_send(batch) {
            lock(&self.status).results_skipped += b.len() as u64;
        }
    }
}

fn lock(s: &SharedStatus) -> std::sync::MutexGuard<'_, ProbeStatus> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl Checker {
    /// Starts the checker task; results arrive on `out`. With `syn`, the
    /// TCP checks are half-open probes (`super::syn_probe`); without, each
    /// is a socket's connect, like the TLS checks.
    pub fn spawn(source: Ipv4Addr, out: mpsc::Sender<Vec<Reply>>, syn: Option<SynProber>) -> Checker {
        let (tx, rx) = watch::channel(Arc::new(Targets::default()));
        let status = SharedStatus::default();
        let results = Results {
            tx: out,
            status: status.clone(),
        };
        tokio::spawn(run(source, rx, results, syn));
        Checker { targets: tx, status }
    }

    /// The checker's counters as of its last turn.
    pub fn status(&self) -> ProbeStatus {
        lock(&self.status).clone()
    }

    /// Replaces the set of machines probed (nothing happens if it is the
    /// same).
    pub fn set(&self, targets: Targets) {
        self.targets.send_if_modified(|cur| {
            if **cur == targets {
                false
            } else {
                *cur = Arc::new(targets);
                true
            }
        });
    }
}

/// The schedule's clock: CLOCK_MONOTONIC in milliseconds. Not the wall
/// clock: stepped back, that would hold every probe until it caught up
/// (and with them every failover).
fn schedule_ms() -> u64 {
    monotonic_ns() / 1_000_000
}

/// The checker's turn: probes due meanwhile are sent together, answers
/// read, time-outs decided, at most this often.
const TURN: Duration = Duration::from_millis(1);

fn send_results(targets: &Targets, results: &mut Vec<(u64, Probe)>, out: &Results) {
    let batch: Vec<Reply> = results
        .drain(..)
        .filter_map(|(key, probe)| {
            targets.get(&key).map(|t| Reply {
                tenant: t.tenant,
                machine: t.machine,
                probe,
            })
        })
        .collect();
    out.send(batch);
}

async fn run(source: Ipv4Addr, mut rx: watch::Receiver<Arc<Targets>>, out: Results, mut syn: Option<SynProber>) {
    let mut schedule = Schedule::new();
    let mut targets: Arc<Targets> = Arc::new(Targets::default());
    let tls = Arc::new(tls_connector());
    let mut due = Vec::new();
    let mut results = Vec::new();
    let mut last_turn = Instant::now();
    loop {
        let mut wait = match schedule.next_due() {
            Some(t) => Duration::from_millis(t.saturating_sub(schedule_ms())),
            None => Duration::from_secs(3600),
        };
        if let Some(p) = syn.as_ref()
            && p.flights.in_flight() > 0
        {
            // Answers are polled: every turn while probes are out.
            wait = wait.min(TURN);
            if let Some(d) = p.flights.next_deadline() {
                wait = wait.min(Duration::from_nanos(d.saturating_sub(monotonic_ns())));
            }
        }
        // One turn per `TURN` at most: what falls due meanwhile goes out
        // together, in one system call.
        wait = wait.max(TURN.saturating_sub(last_turn.elapsed()));
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                let new = rx.borrow_and_update().clone();
                let now = schedule_ms();
                for key in targets.keys() {
                    if !new.contains_key(key) {
                        schedule.remove(*key);
                    }
                }
                for (key, t) in new.iter() {
                    schedule.insert(*key, t.interval_ms, now);
                }
                if let Some(p) = syn.as_mut() {
                    p.flights.retain(&|k| new.contains_key(&k));
                }
                targets = new;
            }
            _ = tokio::time::sleep(wait) => {
                due.clear();
                schedule.due(schedule_ms(), &mut due);
                for key in &due {
                    let Some(t) = targets.get(key) else { continue };
                    match syn.as_mut() {
                        Some(p) if !t.tls => p.flights.probe(*key, t),
                        _ => {
                            lock(&out.status).socket_probes += 1;
                            tokio::spawn(probe_one(source, t.clone(), tls.clone(), out.clone()));
                        }
                    }
                }
            }
        }
        last_turn = Instant::now();
        if let Some(p) = syn.as_mut() {
            p.check_fabric_resets();
            p.read(&|k| targets.get(&k).cloned(), &mut results);
            p.flush(&mut results);
            p.flights.expire(monotonic_ns(), &mut results);
            let st = p.flights.stats;
            let mut status = lock(&out.status);
            status.half_open_sent = st.sent;
            status.stale_answers = st.stale;
            status.resets_sent = st.resets;
            status.resets_in_path = st.resets_in_path;
            status.fabric_resets_failed = st.fabric_resets_failed;
            status.send_errors = st.send_errors;
            status.in_flight = p.flights.in_flight() as u64;
        }
        send_results(&targets, &mut results, &out);
    }
}

async fn probe_one(source: Ipv4Addr, t: Target, tls: Arc<tokio_rustls::TlsConnector>, out: Results) {
    let start = Instant::now();
    let probe = match tokio::time::timeout(t.timeout, check(source, &t, &tls)).await {
        Ok(Ok(())) => Probe::Pass {
            latency_us: start.elapsed().as_micros().min(u32::MAX as u128) as u32,
        },
        Ok(Err(why)) => Probe::Fail { why },
        Err(_) => Probe::Fail {
            why: format!("no answer within {} ms", t.timeout.as_millis()),
        },
    };
    out.send(vec![Reply {
        tenant: t.tenant,
        machine: t.machine,
        probe,
    }]);
}

async fn check(source: Ipv4Addr, t: &Target, tls: &tokio_rustls::TlsConnector) -> Result<(), String> {
    let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    let fd = sock.as_raw_fd();
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_MARK, &t.mark()).map_err(|e| format!("SO_MARK: {e}"))?;
    // The source port is chosen by connect, by the whole four-tuple: a
    // bind to port 0 searches the bind table for a port no socket on the
    // probe address holds, and with thousands of probes in flight that
    // search was nearly all of the checker's CPU.
    setsockopt(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, &1i32)
        .map_err(|e| format!("IP_BIND_ADDRESS_NO_PORT: {e}"))?;
    // A probe leaves nothing behind: closed with a reset, no TIME_WAIT
    // (40,000 probes a second would otherwise keep a few million).
    setsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_LINGER,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .map_err(|e| format!("SO_LINGER: {e}"))?;
    sock.bind(std::net::SocketAddr::V4(SocketAddrV4::new(source, 0)))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let stream = sock
        .connect(std::net::SocketAddr::V4(t.addr))
        .await
        .map_err(|e| format!("connect {}: {e}", t.addr))?;
    if t.tls {
        let name = rustls::pki_types::ServerName::IpAddress((*t.addr.ip()).into());
        tls.connect(name, stream)
            .await
            .map_err(|e| format!("TLS handshake with {}: {e}", t.addr))?;
    }
    Ok(())
}

/// A TLS client that completes the handshake without judging the
/// certificate: the probe asks whether the connector's TLS endpoint
/// answers, and the design gives no trust anchors to check it against.
fn tls_connector() -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::store::slot;

    fn tenant(extra: &str) -> Tenant {
        let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/acme.toml");
        let text = std::fs::read_to_string(policies).unwrap() + extra;
        Tenant::from_toml(&text).unwrap()
    }

    #[test]
    fn every_machine_is_probed_at_the_vip_and_port_clients_use() {
        let t = tenant("");
        let got = targets(7, &t);
        let names: Vec<String> = got.iter().map(|g| g.machine.to_string()).collect();
        assert_eq!(names, ["connector/0", "connector/1", "core/0", "core/1"]);
        let vip: Ipv4Addr = "203.0.113.10".parse().unwrap();
        for g in &got {
            let port = if g.machine.role == Role::Connector { 443 } else { 61616 };
            assert_eq!(g.addr, SocketAddrV4::new(vip, port), "{}", g.machine);
            // The defaults: TLS for connectors, a TCP connect for cores.
            assert_eq!(g.tls, g.machine.role == Role::Connector);
            assert_eq!((g.interval_ms, g.timeout), (1000, Duration::from_secs(1)));
            assert_eq!(
                probe_target_of(g.mark()),
                Some((7, slot(g.machine) as u32)),
                "{}",
                g.machine
            );
        }
        // Four machines, four marks.
        let marks: std::collections::BTreeSet<u32> = got.iter().map(Target::mark).collect();
        assert_eq!(marks.len(), 4);
    }

    #[test]
    fn the_policy_chooses_the_check_and_the_timing() {
        let t = tenant("\n[health]\nhttps_check = \"tcp\"\ninterval = \"500ms\"\ntimeout = \"200ms\"\n");
        for g in targets(1, &t) {
            assert!(!g.tls);
            assert_eq!((g.interval_ms, g.timeout), (500, Duration::from_millis(200)));
        }
    }

    #[test]
    fn a_tenant_without_an_ipv4_vip_is_not_probed() {
        let mut t = tenant("");
        t.vips.retain(|v| v.is_ipv6());
        assert!(targets(1, &t).is_empty());
    }

    fn probe_target_of(mark: u32) -> Option<(u32, u32)> {
        dataplane_common::types::probe_target(mark)
    }
}
