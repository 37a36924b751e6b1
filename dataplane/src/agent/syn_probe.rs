//! Half-open probes: the TCP checks without a socket
//! (`dataplane_common::types::SYN_PROBE_PORT_BASE`).
//!
//! For each due machine the checker writes the whole tunnel packet a
//! client's SYN would be (VXLAN with the tenant's VNI, inner Ethernet from
//! the router MAC to the machine's MAC, IPv4 from the probe address to the
//! VIP, TCP SYN to the port clients use) and sends it to the machine's
//! VTEP from one UDP socket bound to the host's VTEP, many per system call
//! (`sendmmsg`). The fabric program hands the machine's answer to the
//! `PROBE_REPLIES` ring buffer. A SYN-ACK that acknowledges the probe's
//! own initial sequence number passes it, a reset fails it ("refused"),
//! silence until the timeout fails it. Every SYN-ACK is answered with a
//! reset, so the machine keeps nothing of a probe: by the fabric's programs
//! in place of the SYN-ACK (`[probes] resets = "fabric"`, the default,
//! where the fabric's driver keeps XDP metadata), or else by the agent,
//! sent with the next SYNs.
//!
//! That is what the kernel's connect would decide, at a fraction of the
//! cost: no socket, no file descriptor, no connection state, no timer per
//! probe; one deadline queue per timeout, one table of the probes in
//! flight.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use dataplane_common::checksum;
use dataplane_common::types::{SYN_PROBE_PORT_BASE, SYN_PROBE_PORTS, SynProbeReply, VXLAN_PORT, syn_probe_port};

use super::sys::setsockopt;
use super::target::Target;
use crate::clock::monotonic_ns;
use crate::health::Probe;
use crate::health::store::slot;

/// The tables keyed by machine, consulted for every probe and answer: a
/// fast hash (the keys are the agent's own, not anyone's input).
type FastHash = foldhash::fast::FixedState;

/// One timeout's probes in deadline order: (deadline, probe key, source
/// port, initial sequence number).
type Deadlines = VecDeque<(u64, u64, u16, u32)>;

/// The host's side of every probe packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostSide {
    /// The host's VTEP: the outer source.
    pub vtep: Ipv4Addr,
    /// The inner source MAC (what the host's inbound packets carry).
    pub router_mac: [u8; 6],
    /// The probe source address: the inner source.
    pub source: Ipv4Addr,
}

const VXLAN: usize = 8;
const ETH: usize = 14;
const IP: usize = 20;
/// A SYN carries one option, the MSS, as a client's would.
const TCP_SYN: usize = 24;
const TCP_RST: usize = 20;
/// The longest frame: VXLAN + Ethernet + IPv4 + TCP with the MSS option.
pub const FRAME_MAX: usize = VXLAN + ETH + IP + TCP_SYN;

const TCP_FIN: u8 = 0x01;
const TCP_SYN_FLAG: u8 = 0x02;
const TCP_RST_FLAG: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// One tunnel packet, as the UDP payload to the machine's VTEP.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub to: SocketAddrV4,
    pub len: usize,
    pub bytes: [u8; FRAME_MAX],
}

/// What a TCP segment of a probe says.
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    pub sport: u16,
    pub seq: u32,
    pub flags: u8,
}

/// The tunnel packet of `seg` from the probe address to `t`'s VIP and
/// port, through `t`'s machine's tunnel.
pub fn frame(host: &HostSide, t: &Target, seg: Segment) -> Frame {
    let syn = seg.flags & TCP_SYN_FLAG != 0;
    let tcp_len = if syn { TCP_SYN } else { TCP_RST };
    let mut b = [0u8; FRAME_MAX];
    // VXLAN: the I flag and the tenant's VNI.
    b[0] = 0x08;
    b[4..7].copy_from_slice(&t.vni.to_be_bytes()[1..4]);
    // Inner Ethernet.
    let e = VXLAN;
    b[e..e + 6].copy_from_slice(&t.mac);
    b[e + 6..e + 12].copy_from_slice(&host.router_mac);
    b[e + 12..e + 14].copy_from_slice(&0x0800u16.to_be_bytes());
    // IPv4, don't fragment.
    let i = e + ETH;
    b[i] = 0x45;
    b[i + 2..i + 4].copy_from_slice(&((IP + tcp_len) as u16).to_be_bytes());
    b[i + 6] = 0x40;
    b[i + 8] = 64;
    b[i + 9] = 6;
    b[i + 12..i + 16].copy_from_slice(&host.source.octets());
    b[i + 16..i + 20].copy_from_slice(&t.addr.ip().octets());
    let csum = checksum::fold(checksum::sum_bytes(0, &b[i..i + IP]));
    b[i + 10..i + 12].copy_from_slice(&csum.to_be_bytes());
    // TCP.
    let p = i + IP;
    b[p..p + 2].copy_from_slice(&seg.sport.to_be_bytes());
    b[p + 2..p + 4].copy_from_slice(&t.addr.port().to_be_bytes());
    b[p + 4..p + 8].copy_from_slice(&seg.seq.to_be_bytes());
    b[p + 12] = ((tcp_len / 4) as u8) << 4;
    b[p + 13] = seg.flags;
    if syn {
        b[p + 14..p + 16].copy_from_slice(&64240u16.to_be_bytes());
        // MSS 1360: what fits a 1500-byte fabric under the tunnel.
        b[p + 20..p + 24].copy_from_slice(&[2, 4, 0x05, 0x50]);
    }
    // The checksum over the pseudo-header and the segment.
    let mut sum = checksum::sum_bytes(0, &b[i + 12..i + 20]);
    sum += 6 + tcp_len as u32;
    sum = checksum::sum_bytes(sum, &b[p..p + tcp_len]);
    let csum = checksum::fold(sum);
    b[p + 16..p + 18].copy_from_slice(&csum.to_be_bytes());
    Frame {
        to: SocketAddrV4::new(t.vtep, VXLAN_PORT),
        len: p + tcp_len,
        bytes: b,
    }
}

/// A frame to send, and the probe (key, source port) it is the SYN of;
/// `None` for a reset.
pub type Outgoing = (Frame, Option<(u64, u16)>);

/// A probe in flight.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    isn: u32,
    sent_ns: u64,
    timeout_ms: u64,
}

/// What the half-open prober has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SynStats {
    pub sent: u64,
    /// Answers to no probe in flight (late, or not the probe's sequence).
    pub stale: u64,
    /// Resets sent to SYN-ACKs.
    pub resets: u64,
    /// SYN-ACKs the fabric's programs turned into resets themselves.
    pub resets_in_path: u64,
    /// The fabric program's resets did not reach the TC program that sends
    /// them (`fabric_resets_lost`): the agent sends every reset since.
    pub fabric_resets_failed: bool,
    pub send_errors: u64,
}

/// The half-open probes' bookkeeping, apart from the socket and the ring
/// buffer: what is in flight, until when, and what to send.
pub struct Flights {
    host: HostSide,
    /// (probe key, source port) → the probe.
    inflight: HashMap<(u64, u16), InFlight, FastHash>,
    /// (deadline, probe key, source port, initial sequence number), one
    /// queue per timeout: each is in deadline order as probes are sent, so
    /// timing out is a look at the queues' heads.
    deadlines: HashMap<u64, Deadlines, FastHash>,
    /// The last round of each machine (the low bits of its source port).
    rounds: HashMap<u64, u32, FastHash>,
    /// Frames to send, and the probe each SYN is (key, port) for.
    pending: Vec<Outgoing>,
    rng: u64,
    pub stats: SynStats,
}

/// Whether the fabric's resets are lost between the fabric program, which
/// wrote `written` of them, and the TC program that sends them back, which
/// saw `sent` (over the same few seconds): where the driver keeps XDP
/// metadata but does not hand it to TC, or the TC program is gone.
pub fn fabric_resets_lost(written: u64, sent: u64) -> bool {
    written >= 64 && sent.saturating_mul(2) < written
}

/// How often the checker compares the fabric's reset counts.
const RESET_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// The fabric's reset counts (`PROBE_RESETS`) and the last look at them.
struct ResetCounts {
    map: PerCpuArray<MapData, u64>,
    last: (u64, u64),
    at: std::time::Instant,
}

impl ResetCounts {
    fn read(&self) -> (u64, u64) {
        let sum = |i: u32| self.map.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
        (sum(0), sum(1))
    }
}

/// The half-open prober of one checker.
pub struct SynProber {
    pub flights: Flights,
    resets: Option<ResetCounts>,
    sock: UdpSocket,
    /// Polled at every turn of the checker: the fabric program does not
    /// wake anyone for an answer (40,000 wake-ups a second cost more than
    /// the answers).
    ring: RingBuf<MapData>,
}

impl SynProber {
    /// The prober, with the socket it sends from, the ring buffer the
    /// answers arrive in, and the fabric's reset counts if it has them.
    pub fn new(
        host: HostSide,
        ring: RingBuf<MapData>,
        resets: Option<PerCpuArray<MapData, u64>>,
    ) -> anyhow::Result<SynProber> {
        use anyhow::Context;
        let sock = socket(host.vtep).with_context(|| format!("a UDP socket on the VTEP {}", host.vtep))?;
        let mut seed = [0u8; 8];
        // SAFETY: a buffer of the size given.
        unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        let resets = resets.map(|map| {
            let mut r = ResetCounts {
                map,
                last: (0, 0),
                at: std::time::Instant::now(),
            };
            r.last = r.read();
            r
        });
        Ok(SynProber {
            flights: Flights::new(host, u64::from_ne_bytes(seed)),
            resets,
            sock,
            ring,
        })
    }

    /// Sends what is queued; a probe whose SYN could not be sent fails
    /// with the reason.
    pub fn flush(&mut self, failed: &mut Vec<(u64, Probe)>) {
        let sock = &self.sock;
        self.flights.flush(&mut |batch| send_batch(sock, batch), failed);
    }

    /// Every `RESET_CHECK`, compares the resets the fabric program wrote
    /// with those its TC program sent; if they part, the agent sends the
    /// resets from then on (said once, in the log and the status).
    pub fn check_fabric_resets(&mut self) {
        let Some(r) = self.resets.as_mut() else {
            return;
        };
        if self.flights.stats.fabric_resets_failed || r.at.elapsed() < RESET_CHECK {
            return;
        }
        let now = r.read();
        let (written, sent) = (now.0.wrapping_sub(r.last.0), now.1.wrapping_sub(r.last.1));
        r.last = now;
        r.at = std::time::Instant::now();
        if fabric_resets_lost(written, sent) {
            self.flights.stats.fabric_resets_failed = true;
            tracing::warn!(
                written,
                sent,
                "the fabric program's probe resets do not reach carwash_probe_reset (XDP metadata lost on the way to TC?): the agent sends the resets from now on; [probes] resets = \"agent\" stops the fabric program writing them"
            );
        }
    }

    /// Takes every answer out of the ring buffer: results to `out`, resets
    /// queued for the SYN-ACKs. `target` finds a probe's machine by key.
    pub fn read(&mut self, target: &dyn Fn(u64) -> Option<Target>, out: &mut Vec<(u64, Probe)>) {
        while let Some(item) = self.ring.next() {
            if item.len() < std::mem::size_of::<SynProbeReply>() {
                continue;
            }
            // SAFETY: the record is at least a SynProbeReply, plain data.
            let r = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<SynProbeReply>()) };
            drop(item);
            self.flights.answer(r, target, out);
        }
    }
}

impl Flights {
    pub fn new(host: HostSide, seed: u64) -> Flights {
        Flights {
            host,
            inflight: HashMap::default(),
            deadlines: HashMap::default(),
            rounds: HashMap::default(),
            pending: Vec::new(),
            rng: seed | 1,
            stats: SynStats::default(),
        }
    }

    fn next_isn(&mut self) -> u32 {
        // xorshift64*: unpredictable enough that an answer must have seen
        // the probe.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }

    /// Queues the SYN of a probe of `t` (sent by [`SynProber::flush`]).
    pub fn probe(&mut self, key: u64, t: &Target) {
        let round = self.rounds.entry(key).or_insert(0);
        *round = round.wrapping_add(1);
        let sport = syn_probe_port(slot(t.machine) as u32, *round);
        let isn = self.next_isn();
        let f = frame(
            &self.host,
            t,
            Segment {
                sport,
                seq: isn,
                flags: TCP_SYN_FLAG,
            },
        );
        self.inflight.insert(
            (key, sport),
            InFlight {
                isn,
                sent_ns: 0,
                timeout_ms: t.timeout.as_millis() as u64,
            },
        );
        self.pending.push((f, Some((key, sport))));
    }

    /// Probes in flight.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Hands what is queued to `send` (which sends a prefix of a batch and
    /// says how long); a probe whose SYN could not be sent fails with the
    /// reason.
    pub fn flush(
        &mut self,
        send: &mut dyn FnMut(&[Outgoing]) -> std::io::Result<usize>,
        failed: &mut Vec<(u64, Probe)>,
    ) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let now = monotonic_ns();
        let mut start = 0;
        while start < pending.len() {
            let batch = &pending[start..];
            match send(batch) {
                Ok(n) if n > 0 => {
                    for (_, probe) in &batch[..n] {
                        match probe {
                            Some(k) => self.sent(*k, now),
                            None => self.stats.resets += 1,
                        }
                    }
                    start += n;
                }
                res => {
                    let e = res.err().unwrap_or_else(|| std::io::ErrorKind::WouldBlock.into());
                    // The first of the batch failed: its probe fails with
                    // the reason; the rest is tried again.
                    let (f, probe) = &batch[0];
                    self.stats.send_errors += 1;
                    if let Some(k) = probe
                        && self.inflight.remove(k).is_some()
                    {
                        failed.push((
                            k.0,
                            Probe::Fail {
                                why: format!("sending the probe to the VTEP {}: {e}", f.to.ip()),
                            },
                        ));
                    }
                    start += 1;
                }
            }
        }
        let mut pending = pending;
        pending.clear();
        self.pending = pending;
    }

    fn sent(&mut self, k: (u64, u16), now: u64) {
        if let Some(p) = self.inflight.get_mut(&k) {
            p.sent_ns = now;
            self.stats.sent += 1;
            let deadline = now + p.timeout_ms * 1_000_000;
            self.deadlines
                .entry(p.timeout_ms)
                .or_default()
                .push_back((deadline, k.0, k.1, p.isn));
        }
    }

    /// When the next probe in flight times out (CLOCK_MONOTONIC ns).
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.values().filter_map(|q| q.front().map(|d| d.0)).min()
    }

    /// Fails the probes whose time is up.
    pub fn expire(&mut self, now: u64, out: &mut Vec<(u64, Probe)>) {
        for (ms, q) in self.deadlines.iter_mut() {
            while let Some(&(deadline, key, port, isn)) = q.front() {
                if deadline > now {
                    break;
                }
                q.pop_front();
                if self.inflight.get(&(key, port)).is_some_and(|p| p.isn == isn) {
                    self.inflight.remove(&(key, port));
                    out.push((
                        key,
                        Probe::Fail {
                            why: format!("no answer within {ms} ms"),
                        },
                    ));
                }
            }
        }
        self.deadlines.retain(|_, q| !q.is_empty());
    }

    /// One answer.
    pub fn answer(&mut self, r: SynProbeReply, target: &dyn Fn(u64) -> Option<Target>, out: &mut Vec<(u64, Probe)>) {
        if !(SYN_PROBE_PORT_BASE..SYN_PROBE_PORT_BASE + SYN_PROBE_PORTS).contains(&r.port) {
            self.stats.stale += 1;
            return;
        }
        let slot = u32::from((r.port - SYN_PROBE_PORT_BASE) >> 7);
        let key = u64::from(dataplane_common::types::probe_mark(r.tenant, slot));
        let Some(t) = target(key) else {
            self.stats.stale += 1;
            return;
        };
        // The answer must come from the VIP and port probed.
        if Ipv4Addr::from(r.vip) != *t.addr.ip() || r.vip_port != t.addr.port() {
            self.stats.stale += 1;
            return;
        }
        let synack = r.flags & (TCP_SYN_FLAG | TCP_ACK) == TCP_SYN_FLAG | TCP_ACK;
        if synack && r.reset == 1 && !self.stats.fabric_resets_failed {
            self.stats.resets_in_path += 1;
        } else if synack {
            // Whatever probe it answers, the machine forgets it.
            let f = frame(
                &self.host,
                &t,
                Segment {
                    sport: r.port,
                    seq: r.ack,
                    flags: TCP_RST_FLAG,
                },
            );
            self.pending.push((f, None));
        }
        let k = (key, r.port);
        let Some(p) = self.inflight.get(&k).copied() else {
            self.stats.stale += 1;
            return;
        };
        if r.ack != p.isn.wrapping_add(1) || r.flags & TCP_ACK == 0 {
            self.stats.stale += 1;
            return;
        }
        let probe = if synack {
            Probe::Pass {
                latency_us: (r.ts_ns.saturating_sub(p.sent_ns) / 1000).min(u64::from(u32::MAX)) as u32,
            }
        } else if r.flags & (TCP_RST_FLAG | TCP_FIN) != 0 {
            Probe::Fail {
                why: format!("connect {}: refused (reset)", t.addr),
            }
        } else {
            self.stats.stale += 1;
            return;
        };
        self.inflight.remove(&k);
        out.push((key, probe));
    }

    /// Forgets the probes of machines no longer probed.
    pub fn retain(&mut self, keep: &dyn Fn(u64) -> bool) {
        self.inflight.retain(|k, _| keep(k.0));
        self.rounds.retain(|k, _| keep(*k));
    }
}

/// A UDP socket on the host's VTEP (any port): the outer packets are the
/// host's own, routed to the machine's VTEP like the tunnel traffic.
fn socket(vtep: Ipv4Addr) -> std::io::Result<UdpSocket> {
    // SAFETY: socket(2); the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor of ours.
    let sock = unsafe { <UdpSocket as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // The VTEP may be on the fabric device or only in the host config.
    setsockopt(fd, libc::IPPROTO_IP, libc::IP_FREEBIND, &1i32)?;
    // Any source: the route lookup of each datagram skips the search for
    // the device that has the source address (`__ip_dev_find`, a few % of
    // the checker's CPU at 80,000 datagrams a second).
    let _ = setsockopt(fd, libc::IPPROTO_IP, libc::IP_TRANSPARENT, &1i32);
    // Don't fragment: no IP identifier to draw from the shared generator
    // for each packet (they are small, and the path's MTU is not theirs
    // to probe).
    setsockopt(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, &libc::IP_PMTUDISC_PROBE)?;
    // Room for a second of 40,000 SYNs and their resets.
    let _ = setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, &(4i32 << 20));
    // The outer packets are not VXLAN offloads' business: no checksum.
    let _ = setsockopt(fd, libc::SOL_SOCKET, libc::SO_NO_CHECK, &1i32);
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(vtep).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: a valid address of the size given.
    let rc = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(sock)
}

/// Sends up to 256 frames in one system call; how many went.
fn send_batch(sock: &UdpSocket, frames: &[Outgoing]) -> std::io::Result<usize> {
    const MAX: usize = 256;
    let n = frames.len().min(MAX);
    let mut addrs: Vec<libc::sockaddr_in> = Vec::with_capacity(n);
    let mut iovs: Vec<libc::iovec> = Vec::with_capacity(n);
    for (f, _) in &frames[..n] {
        addrs.push(libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: f.to.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*f.to.ip()).to_be(),
            },
            sin_zero: [0; 8],
        });
        iovs.push(libc::iovec {
            iov_base: f.bytes.as_ptr() as *mut libc::c_void,
            iov_len: f.len,
        });
    }
    let mut msgs: Vec<libc::mmsghdr> = (0..n)
        .map(|i| {
            // SAFETY: plain data; all zero is a valid msghdr.
            let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
            h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            libc::mmsghdr { msg_hdr: h, msg_len: 0 }
        })
        .collect();
    // SAFETY: n valid headers pointing at live buffers.
    let rc = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), n as libc::c_uint, 0) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc as usize)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::health::{Machine, Role};

    fn target() -> Target {
        Target {
            tenant: 7,
            machine: Machine {
                role: Role::Core,
                index: 1,
            },
            addr: SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 61616),
            tls: false,
            timeout: Duration::from_millis(500),
            interval_ms: 1000,
            vni: 1001,
            vtep: Ipv4Addr::new(10, 200, 1, 21),
            mac: [2, 0, 10, 200, 1, 0x15],
        }
    }

    fn host() -> HostSide {
        HostSide {
            vtep: Ipv4Addr::new(10, 200, 0, 1),
            router_mac: [2, 0, 0, 0, 0, 1],
            source: Ipv4Addr::new(192, 0, 0, 8),
        }
    }

    /// The one's complement sum of `b` folded: zero for a valid checksum.
    fn verify(sum: u32) -> u16 {
        checksum::fold(sum)
    }

    #[test]
    fn a_syn_is_a_clients_syn_through_the_machines_tunnel() {
        let t = target();
        let f = frame(
            &host(),
            &t,
            Segment {
                sport: syn_probe_port(3, 5),
                seq: 0xdead_beef,
                flags: TCP_SYN_FLAG,
            },
        );
        let b = &f.bytes[..f.len];
        assert_eq!(f.to, SocketAddrV4::new(t.vtep, 4789));
        assert_eq!(f.len, 8 + 14 + 20 + 24);
        assert_eq!(&b[..8], &[0x08, 0, 0, 0, 0, 0x03, 0xe9, 0]);
        assert_eq!(&b[8..14], &t.mac);
        assert_eq!(&b[14..20], &host().router_mac);
        assert_eq!(&b[20..22], &[0x08, 0x00]);
        let ip = &b[22..42];
        assert_eq!(verify(checksum::sum_bytes(0, ip)), 0, "IPv4 header checksum");
        assert_eq!(&ip[12..16], &[192, 0, 0, 8]);
        assert_eq!(&ip[16..20], &[203, 0, 113, 10]);
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 44);
        let tcp = &b[42..];
        assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), 512 + (3 << 7) + 5);
        assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), 61616);
        assert_eq!(&tcp[4..8], &0xdead_beefu32.to_be_bytes());
        assert_eq!(tcp[12] >> 4, 6);
        assert_eq!(tcp[13], TCP_SYN_FLAG);
        let mut sum = checksum::sum_bytes(0, &ip[12..20]);
        sum += 6 + tcp.len() as u32;
        assert_eq!(verify(checksum::sum_bytes(sum, tcp)), 0, "TCP checksum");
    }

    #[test]
    fn a_reset_has_no_options_and_the_sequence_asked_for() {
        let f = frame(
            &host(),
            &target(),
            Segment {
                sport: 600,
                seq: 42,
                flags: TCP_RST_FLAG,
            },
        );
        let b = &f.bytes[..f.len];
        assert_eq!(f.len, 8 + 14 + 20 + 20);
        let tcp = &b[42..];
        assert_eq!((tcp[12] >> 4, tcp[13]), (5, TCP_RST_FLAG));
        assert_eq!(&tcp[4..8], &42u32.to_be_bytes());
        let mut sum = checksum::sum_bytes(0, &b[22 + 12..22 + 20]);
        sum += 6 + 20;
        assert_eq!(verify(checksum::sum_bytes(sum, tcp)), 0);
    }

    /// Sends every frame (or fails them all with `fail`), keeping copies.
    fn flush(f: &mut Flights, sent: &mut Vec<Frame>, fail: Option<i32>) -> Vec<(u64, Probe)> {
        let mut failed = Vec::new();
        f.flush(
            &mut |batch| match fail {
                Some(errno) => Err(std::io::Error::from_raw_os_error(errno)),
                None => {
                    sent.extend(batch.iter().map(|(fr, _)| *fr));
                    Ok(batch.len())
                }
            },
            &mut failed,
        );
        failed
    }

    fn seq_of(f: &Frame) -> (u16, u32, u8) {
        let tcp = &f.bytes[42..f.len];
        (
            u16::from_be_bytes([tcp[0], tcp[1]]),
            u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
            tcp[13],
        )
    }

    fn answer_to(t: &Target, port: u16, ack: u32, flags: u8, after_ns: u64) -> SynProbeReply {
        SynProbeReply {
            ts_ns: monotonic_ns() + after_ns,
            tenant: t.tenant,
            seq: 77,
            ack,
            vip: t.addr.ip().octets(),
            vip_port: t.addr.port(),
            port,
            origin: 3,
            flags,
            reset: 0,
            _pad: [0; 5],
        }
    }

    fn key(t: &Target) -> u64 {
        u64::from(t.mark())
    }

    #[test]
    fn a_syn_ack_acknowledging_the_probe_passes_it_and_is_reset() {
        let t = target();
        let lookup = |k: u64| (k == key(&target())).then(target);
        let mut f = Flights::new(host(), 42);
        f.probe(key(&t), &t);
        let mut sent = Vec::new();
        assert!(flush(&mut f, &mut sent, None).is_empty());
        let (port, isn, flags) = seq_of(&sent[0]);
        assert_eq!(flags, TCP_SYN_FLAG);
        assert_eq!(f.in_flight(), 1);
        let mut out = Vec::new();
        f.answer(
            answer_to(&t, port, isn.wrapping_add(1), TCP_SYN_FLAG | TCP_ACK, 250_000),
            &lookup,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert!(
            matches!(out[0], (k, Probe::Pass { latency_us }) if k == key(&t) && latency_us >= 250),
            "{out:?}"
        );
        assert_eq!(f.in_flight(), 0);
        // The SYN-ACK is reset with the sequence it acknowledged.
        sent.clear();
        flush(&mut f, &mut sent, None);
        assert_eq!(seq_of(&sent[0]), (port, isn.wrapping_add(1), TCP_RST_FLAG));
        assert_eq!(f.stats.resets, 1);
        // A retransmitted SYN-ACK: stale, and reset all the same.
        out.clear();
        f.answer(
            answer_to(&t, port, isn.wrapping_add(1), TCP_SYN_FLAG | TCP_ACK, 0),
            &lookup,
            &mut out,
        );
        assert!(out.is_empty());
        assert_eq!(f.stats.stale, 1);
        sent.clear();
        flush(&mut f, &mut sent, None);
        assert_eq!(seq_of(&sent[0]), (port, isn.wrapping_add(1), TCP_RST_FLAG));
        assert_eq!(f.stats.resets, 2);
        // Nothing left to time out.
        f.expire(u64::MAX, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_syn_ack_the_fabric_reset_itself_is_not_reset_again() {
        let t = target();
        let lookup = |k: u64| (k == key(&target())).then(target);
        let mut f = Flights::new(host(), 42);
        f.probe(key(&t), &t);
        let mut sent = Vec::new();
        flush(&mut f, &mut sent, None);
        let (port, isn, _) = seq_of(&sent[0]);
        let mut out = Vec::new();
        let mut a = answer_to(&t, port, isn.wrapping_add(1), TCP_SYN_FLAG | TCP_ACK, 0);
        a.reset = 1;
        f.answer(a, &lookup, &mut out);
        assert!(matches!(out[..], [(k, Probe::Pass { .. })] if k == key(&t)), "{out:?}");
        // The probe passes; nothing more goes to the machine.
        sent.clear();
        flush(&mut f, &mut sent, None);
        assert!(sent.is_empty());
        assert_eq!((f.stats.resets, f.stats.resets_in_path), (0, 1));
        // A late copy the fabric reset too: stale, and not reset again.
        f.answer(a, &lookup, &mut out);
        flush(&mut f, &mut sent, None);
        assert!(sent.is_empty());
        assert_eq!((f.stats.stale, f.stats.resets_in_path), (1, 2));
        // Once the fabric's resets are known lost, the agent sends them.
        f.stats.fabric_resets_failed = true;
        f.answer(a, &lookup, &mut out);
        flush(&mut f, &mut sent, None);
        assert_eq!(seq_of(&sent[0]), (port, isn.wrapping_add(1), TCP_RST_FLAG));
        assert_eq!((f.stats.resets, f.stats.resets_in_path), (1, 2));
    }

    #[test]
    fn the_fabric_s_resets_are_lost_when_fewer_than_half_reach_tc() {
        // Too few to say.
        assert!(!fabric_resets_lost(0, 0));
        assert!(!fabric_resets_lost(63, 0));
        // None, or under half, sent back.
        assert!(fabric_resets_lost(64, 0));
        assert!(fabric_resets_lost(1000, 499));
        // All, or a few counted on either side of the look.
        assert!(!fabric_resets_lost(1000, 1000));
        assert!(!fabric_resets_lost(1000, 990));
        assert!(!fabric_resets_lost(1000, 1003));
    }

    #[test]
    fn answers_that_do_not_acknowledge_the_probe_count_for_nothing() {
        let t = target();
        let lookup = |k: u64| (k == key(&target())).then(target);
        let mut f = Flights::new(host(), 7);
        f.probe(key(&t), &t);
        let mut sent = Vec::new();
        flush(&mut f, &mut sent, None);
        let (port, isn, _) = seq_of(&sent[0]);
        let mut out = Vec::new();
        // Another sequence number; another port; another VIP; no tenant.
        f.answer(
            answer_to(&t, port, isn.wrapping_add(2), TCP_SYN_FLAG | TCP_ACK, 0),
            &lookup,
            &mut out,
        );
        f.answer(
            answer_to(&t, port ^ 1, isn.wrapping_add(1), TCP_SYN_FLAG | TCP_ACK, 0),
            &lookup,
            &mut out,
        );
        let mut other = answer_to(&t, port, isn.wrapping_add(1), TCP_SYN_FLAG | TCP_ACK, 0);
        other.vip = [203, 0, 113, 11];
        f.answer(other, &lookup, &mut out);
        other = answer_to(&t, port, isn.wrapping_add(1), TCP_SYN_FLAG | TCP_ACK, 0);
        other.tenant = 8;
        f.answer(other, &lookup, &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(f.stats.stale, 4);
        assert_eq!(f.in_flight(), 1);
        // A reset acknowledging the SYN: refused.
        f.answer(
            answer_to(&t, port, isn.wrapping_add(1), TCP_RST_FLAG | TCP_ACK, 0),
            &lookup,
            &mut out,
        );
        assert!(
            matches!(&out[..], [(_, Probe::Fail { why })] if why.contains("refused")),
            "{out:?}"
        );
        assert_eq!(f.in_flight(), 0);
    }

    #[test]
    fn silence_fails_a_probe_at_its_timeout_and_not_before() {
        let t = target();
        let mut f = Flights::new(host(), 9);
        f.probe(key(&t), &t);
        let mut sent = Vec::new();
        flush(&mut f, &mut sent, None);
        let deadline = f.next_deadline().expect("a probe in flight");
        let mut out = Vec::new();
        f.expire(deadline - 1, &mut out);
        assert!(out.is_empty());
        f.expire(deadline, &mut out);
        assert!(
            matches!(&out[..], [(_, Probe::Fail { why })] if why == "no answer within 500 ms"),
            "{out:?}"
        );
        assert_eq!((f.in_flight(), f.next_deadline()), (0, None));
        // The next probe of the machine leaves from another port.
        f.probe(key(&t), &t);
        flush(&mut f, &mut sent, None);
        assert_ne!(seq_of(&sent[0]).0, seq_of(&sent[1]).0);
    }

    #[test]
    fn a_probe_that_cannot_be_sent_fails_with_the_reason() {
        let t = target();
        let mut f = Flights::new(host(), 11);
        f.probe(key(&t), &t);
        let failed = flush(&mut f, &mut Vec::new(), Some(libc::ENETUNREACH));
        assert!(
            matches!(&failed[..], [(_, Probe::Fail { why })] if why.contains("10.200.1.21") && why.contains("unreachable")),
            "{failed:?}"
        );
        assert_eq!((f.in_flight(), f.stats.send_errors), (0, 1));
    }
}
