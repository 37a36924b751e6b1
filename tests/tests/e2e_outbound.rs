//! End to end, paths 3 to 5: tenant machines in the lab open real TCP and
//! UDP connections (and pings) to the partners in the internet namespace
//! through carwash, which translates them to the tenant's egress IP;
//! replies, and ICMP errors about the flows, come back to the machine that
//! opened the flow. The partners tell which source address and port they
//! saw; the CONNTRACK map must say the same.
mod agent_common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_common::LabAgent;
use aya::maps::Map;
use carwash_tests::labrun::LabRun;
use carwash_tests::require_root;
use dataplane::conntrack::{Flow, flows_of, ip};
use dataplane::pinned::Pins;
use dataplane::tables::DEFAULT_SNAT_PORTS;
use dataplane_common::types::{CLASS_NONE, SIDE_FABRIC, SIDE_UPLINK};
use dataplane_common::{Counter, DropReason, maps};
use netlab::lab::{
    ALLOWED_CLIENT_V4, BIG_FILE, FAR_PARTNER_TCP_PORT, FAR_PARTNER_V4, FAR_PARTNER_V6, NARROW_MTU, PARTNER_TCP_PORT,
    PARTNER_UDP_PORT, PARTNER_V4, PARTNER_V6, one_mib, parse_peer, parse_peer_port,
};
use netlab::netns::unique_tag;
use netlab::{LabConfig, LabGuard, Machine};

/// Taken by the tests that must not share the two CPUs with each other:
/// the 1,000-connection test spawns two processes per connection at the
/// partner, and while they start, an echo through the partner can wait
/// several hundred milliseconds for a CPU, which the agent test would take
/// for a stall of the flow.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const TIMEOUT: Duration = Duration::from_secs(10);

/// What a partner saw: the source address and port of the connection.
fn seen(greeting: &str) -> (IpAddr, u16) {
    let peer = parse_peer(greeting).unwrap_or_else(|| panic!("no peer= in {greeting:?}"));
    let port = parse_peer_port(greeting).unwrap_or_else(|| panic!("no port= in {greeting:?}"));
    (peer, port)
}

fn in_snat_range(port: u16) -> bool {
    (DEFAULT_SNAT_PORTS.0..=DEFAULT_SNAT_PORTS.1).contains(&port)
}

/// A TCP connection opened inside `m`'s namespace (the socket stays there;
/// any thread may use it).
fn connect(m: &Machine, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let s = m
        .ns()
        .unwrap()
        .enter(|| TcpStream::connect_timeout(&dst, TIMEOUT))
        .unwrap()?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    Ok(s)
}

/// The same from a fixed source address and port (IPv4).
fn connect_from(m: &Machine, src: SocketAddrV4, dst: SocketAddrV4) -> std::io::Result<TcpStream> {
    fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            },
            sin_zero: [0; 8],
        }
    }
    let open = || -> std::io::Result<TcpStream> {
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: plain socket calls on a descriptor this closure owns (the
        // TcpStream closes it on every path).
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let s = TcpStream::from_raw_fd(fd);
            let one: libc::c_int = 1;
            let timeout = libc::timeval {
                tv_sec: TIMEOUT.as_secs() as libc::time_t,
                tv_usec: 0,
            };
            let (a, b) = (sockaddr(src), sockaddr(dst));
            if libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) != 0
                // Bounds the connect.
                || libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_SNDTIMEO,
                    (&timeout as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                ) != 0
                || libc::bind(fd, (&a as *const libc::sockaddr_in).cast(), len) != 0
                || libc::connect(fd, (&b as *const libc::sockaddr_in).cast(), len) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(s)
        }
    };
    let s = m.ns().unwrap().enter(open).unwrap()?;
    s.set_read_timeout(Some(TIMEOUT))?;
    Ok(s)
}

fn read_line(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut l = String::new();
    r.read_line(&mut l)?;
    Ok(l.trim_end_matches('\n').to_string())
}

/// An echoing session with the partner: its greeting, then lines echoed.
struct Session {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    local: SocketAddr,
    greeting: String,
}

impl Session {
    fn start(stream: TcpStream) -> Session {
        let local = stream.local_addr().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let greeting = read_line(&mut reader).unwrap_or_else(|e| panic!("partner greeting to {local}: {e}"));
        Session {
            stream,
            reader,
            local,
            greeting,
        }
    }

    fn echo(&mut self, line: &str) -> String {
        writeln!(self.stream, "{line}").unwrap();
        read_line(&mut self.reader).unwrap_or_else(|e| panic!("echo of {line:?} on {}: {e}", self.local))
    }

    /// Closes our side and reads to the partner's end: `Ok` is an orderly
    /// close, a reset is an error.
    fn finish(mut self) -> std::io::Result<String> {
        self.stream.shutdown(Shutdown::Write)?;
        let mut rest = String::new();
        self.reader.read_to_string(&mut rest)?;
        Ok(rest)
    }
}

/// One datagram to `dst` from inside `m`'s namespace; the local port, the
/// reply and where the reply came from.
fn udp_ask(
    m: &Machine,
    bind: SocketAddr,
    dst: SocketAddr,
    wait: Duration,
) -> std::io::Result<(u16, String, SocketAddr)> {
    udp_ask_with(m, bind, dst, wait, b"hello\n")
}

/// [`udp_ask`] with a datagram of the caller's.
fn udp_ask_with(
    m: &Machine,
    bind: SocketAddr,
    dst: SocketAddr,
    wait: Duration,
    datagram: &[u8],
) -> std::io::Result<(u16, String, SocketAddr)> {
    m.ns()
        .unwrap()
        .enter(|| -> std::io::Result<_> {
            let s = UdpSocket::bind(bind)?;
            s.set_read_timeout(Some(wait))?;
            s.send_to(datagram, dst)?;
            let mut buf = [0u8; 512];
            let (n, from) = s.recv_from(&mut buf)?;
            Ok((
                s.local_addr()?.port(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
                from,
            ))
        })
        .unwrap()
}

fn any_addr(v6: bool) -> SocketAddr {
    if v6 {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
    }
}

/// The tracked flow of tenant `tenant` from `src` to `dst`.
fn flow_of(flows: &[Flow], tenant: u32, proto: u8, src: SocketAddr, dst: SocketAddr) -> Option<Flow> {
    flows
        .iter()
        .find(|f| {
            f.out.is_some_and(|(k, _)| {
                k.tenant == tenant
                    && k.proto == proto
                    && ip(&k.src, k.family) == src.ip()
                    && u16::from_be_bytes(k.sport_be) == src.port()
                    && ip(&k.dst, k.family) == dst.ip()
                    && u16::from_be_bytes(k.dport_be) == dst.port()
            })
        })
        .copied()
}

/// The egress address and port a flow is translated to.
fn translation(f: &Flow) -> (IpAddr, u16) {
    let (k, v) = f.out.expect("outbound direction");
    (ip(&v.addr, k.family), u16::from_be_bytes(v.port_be))
}

/// What a tenant dropped for `why` (outbound traffic has no port class).
fn tenant_drops(run: &LabRun, tenant: &str, why: DropReason) -> u64 {
    let id = run.tenant_id(tenant).unwrap();
    run.dp.tenant_stats(id).unwrap()[CLASS_NONE as usize][why.slot()]
}

#[test]
fn machines_reach_the_partner_as_their_tenants_egress_ip() {
    require_root();
    let run = LabRun::up().unwrap();
    let fabric0 = run.dp.counters(SIDE_FABRIC).unwrap();
    let uplink0 = run.dp.counters(SIDE_UPLINK).unwrap();

    // Every tenant with egress, every family it has an egress IP for.
    let mut cases = Vec::new();
    for t in &run.lab.tenants {
        let m = t.connectors().next().unwrap();
        let families = [
            (t.egress_v4.map(IpAddr::V4), IpAddr::V4(PARTNER_V4)),
            (t.egress_v6.map(IpAddr::V6), IpAddr::V6(PARTNER_V6)),
        ];
        for (egress, partner) in families {
            if let Some(egress) = egress {
                cases.push((t.name.as_str(), m, egress, partner));
            }
        }
    }
    let names: Vec<String> = cases.iter().map(|(t, _, e, _)| format!("{t} {e}")).collect();
    assert_eq!(
        names,
        ["acme 203.0.113.200", "acme 2001:db8:10::200", "beta 203.0.113.201"],
        "the lab's tenants with egress"
    );

    for &(tenant, m, egress, partner) in &cases {
        let id = run.tenant_id(tenant).unwrap();
        let v6 = partner.is_ipv6();

        // TCP: the partner sees the egress IP, the echo comes back, and
        // the connection closes in order.
        let dst = SocketAddr::new(partner, PARTNER_TCP_PORT);
        let mut s = Session::start(connect(m, dst).unwrap_or_else(|e| panic!("{tenant} TCP to {dst}: {e}")));
        let (peer, port) = seen(&s.greeting);
        assert_eq!(peer, egress, "{tenant}: the partner saw {}", s.greeting);
        assert!(in_snat_range(port), "{tenant}: port {port} outside the SNAT range");
        assert_eq!(s.echo(&format!("hello from {tenant}")), format!("hello from {tenant}"));
        let own: IpAddr = if v6 {
            m.private_v6.unwrap().into()
        } else {
            m.private_v4.into()
        };
        assert_eq!(s.local.ip(), own, "the machine's own address");
        let flows = run.dp.conntrack_flows().unwrap();
        let f = flow_of(&flows, id, TCP, s.local, dst).unwrap_or_else(|| panic!("{tenant}: no flow for {}", s.local));
        assert_eq!(translation(&f), (egress, port), "CONNTRACK and the partner agree");
        assert!(f.reply.is_some(), "{tenant}: the reply direction is tracked: {f:?}");
        let local = s.local;
        let rest = s.finish().unwrap_or_else(|e| panic!("{tenant}: closing TCP: {e}"));
        assert_eq!(rest, "");
        println!("{tenant} TCP {local} -> {dst}: the partner saw {peer} port {port}");

        // UDP: the reply comes from the partner's address, to our port.
        let dst = SocketAddr::new(partner, PARTNER_UDP_PORT);
        let (lport, reply, from) =
            udp_ask(m, any_addr(v6), dst, TIMEOUT).unwrap_or_else(|e| panic!("{tenant} UDP to {dst}: {e}"));
        assert_eq!(from, dst, "{tenant}: UDP reply source");
        let (peer, port) = seen(&reply);
        assert_eq!(peer, egress, "{tenant}: UDP: the partner saw {reply}");
        let flows = run.dp.conntrack_flows().unwrap();
        let src = SocketAddr::new(local.ip(), lport);
        let f = flow_of(&flows, id, UDP, src, dst).unwrap_or_else(|| panic!("{tenant}: no UDP flow for {src}"));
        assert_eq!(translation(&f), (egress, port));
        println!("{tenant} UDP {src} -> {dst}: the partner saw {peer} port {port}");

        // ICMP echo.
        let out = m
            .ns()
            .unwrap()
            .exec(&["ping", "-n", "-c", "2", "-i", "0.2", "-W", "3", &partner.to_string()])
            .unwrap();
        assert!(
            out.status.success(),
            "{tenant}: ping {partner}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    let fabric = run.dp.counters(SIDE_FABRIC).unwrap().since(&fabric0);
    let uplink = run.dp.counters(SIDE_UPLINK).unwrap().since(&uplink0);
    println!(
        "fabric: snat_new_flow {}, snat_out {}; uplink: snat_reply {}, no_conntrack {}",
        fabric.get(Counter::SnatNewFlow),
        fabric.get(Counter::SnatOut),
        uplink.get(Counter::SnatReply),
        uplink.dropped(DropReason::NoConntrack)
    );
    // TCP, UDP and ICMP echo for each of the three.
    assert!(fabric.get(Counter::SnatNewFlow) >= 9, "{fabric:?}");
    assert!(fabric.get(Counter::SnatOut) >= 3 * 6, "{fabric:?}");
    assert!(uplink.get(Counter::SnatReply) >= 3 * 5, "{uplink:?}");
    for why in [
        DropReason::NoEgress,
        DropReason::EgressNotAllowed,
        DropReason::PortsExhausted,
        DropReason::NoHandoff,
    ] {
        assert_eq!(fabric.dropped(why), 0, "{why:?}: {fabric:?}");
    }
    assert_eq!(uplink.dropped(DropReason::NoConntrack), 0, "{uplink:?}");
}

#[test]
fn a_thousand_concurrent_connections_get_a_thousand_translations() {
    require_root();
    const N: usize = 1000;
    let _alone = heavy();
    let run = LabRun::up().unwrap();
    let acme = run.lab.tenant("acme").unwrap();
    let id = run.tenant_id("acme").unwrap();
    let egress = IpAddr::V4(acme.egress_v4.unwrap());
    let m = acme.connectors().next().unwrap();
    let dst = SocketAddr::new(IpAddr::V4(PARTNER_V4), PARTNER_TCP_PORT);

    let t0 = Instant::now();
    let streams = m
        .ns()
        .unwrap()
        .enter(|| {
            (0..N)
                .map(|i| {
                    TcpStream::connect_timeout(&dst, Duration::from_secs(30))
                        .map_err(|e| format!("connection {i}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap()
        .unwrap();
    let connected = t0.elapsed();

    // The partner's view: every connection from the egress IP, each from
    // a port of its own.
    let mut sessions = Vec::with_capacity(N);
    let mut partner_ports: BTreeMap<u16, u16> = BTreeMap::new();
    for s in streams {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let s = Session::start(s);
        let (peer, port) = seen(&s.greeting);
        assert_eq!(peer, egress, "{}", s.greeting);
        assert!(in_snat_range(port), "{port}");
        if let Some(other) = partner_ports.insert(port, s.local.port()) {
            panic!(
                "the partner saw port {port} for both local ports {other} and {}",
                s.local.port()
            );
        }
        sessions.push(s);
    }
    let greeted = t0.elapsed();
    assert_eq!(partner_ports.len(), N);

    // All of them open at once, and every one still carries data.
    for (i, s) in sessions.iter_mut().enumerate() {
        writeln!(s.stream, "ping {i}").unwrap();
    }
    for (i, s) in sessions.iter_mut().enumerate() {
        let l = read_line(&mut s.reader).unwrap_or_else(|e| panic!("echo on connection {i}: {e}"));
        assert_eq!(l, format!("ping {i}"));
    }
    let echoed = t0.elapsed();

    // CONNTRACK: one flow per connection, N distinct translated ports,
    // each the one the partner saw for that connection, both directions.
    let flows = run.dp.conntrack_flows().unwrap();
    let to_partner: Vec<&Flow> = flows
        .iter()
        .filter(|f| {
            f.out.is_some_and(|(k, _)| {
                k.tenant == id
                    && k.proto == TCP
                    && ip(&k.dst, k.family) == dst.ip()
                    && u16::from_be_bytes(k.dport_be) == dst.port()
            })
        })
        .collect();
    assert_eq!(to_partner.len(), N, "tracked flows of acme to the partner");
    let mut ports = BTreeSet::new();
    for f in &to_partner {
        let (k, _) = f.out.unwrap();
        let (addr, port) = translation(f);
        assert_eq!(addr, egress);
        assert!(f.reply.is_some(), "reply direction of {f:?}");
        assert_eq!(
            partner_ports.get(&port),
            Some(&u16::from_be_bytes(k.sport_be)),
            "translated port {port}: the partner saw another connection"
        );
        ports.insert(port);
    }
    assert_eq!(ports.len(), N, "distinct translated ports");
    let (lo, hi) = (ports.first().unwrap(), ports.last().unwrap());
    println!(
        "{N} connections: connected in {connected:?}, greeted by the partner after {greeted:?}, \
         all echoed after {echoed:?}; {} distinct translated ports from {lo} to {hi}",
        ports.len()
    );
    let uplink = run.dp.counters(SIDE_UPLINK).unwrap();
    assert_eq!(uplink.dropped(DropReason::NoConntrack), 0, "{uplink:?}");
    let fabric = run.dp.counters(SIDE_FABRIC).unwrap();
    assert_eq!(fabric.dropped(DropReason::PortsExhausted), 0, "{fabric:?}");
}

#[test]
fn two_tenants_with_the_same_private_address_talk_at_the_same_time() {
    require_root();
    let run = LabRun::up().unwrap();
    let a = run.lab.tenant("acme").unwrap();
    let b = run.lab.tenant("beta").unwrap();
    let (ma, mb) = (a.connectors().next().unwrap(), b.connectors().next().unwrap());
    assert_eq!(
        ma.private_v4, mb.private_v4,
        "the lab gives both machines the same address"
    );
    let (ida, idb) = (run.tenant_id("acme").unwrap(), run.tenant_id("beta").unwrap());
    let private = ma.private_v4;

    // The same inner tuple from both: same address, same source port.
    let src = SocketAddrV4::new(private, 40000);
    let dst = SocketAddrV4::new(PARTNER_V4, PARTNER_TCP_PORT);
    let sa = Session::start(connect_from(ma, src, dst).unwrap());
    let sb = Session::start(connect_from(mb, src, dst).unwrap());
    assert_eq!(sa.local, SocketAddr::V4(src));
    assert_eq!(sb.local, SocketAddr::V4(src));
    let (peer_a, port_a) = seen(&sa.greeting);
    let (peer_b, port_b) = seen(&sb.greeting);
    assert_eq!(peer_a, IpAddr::V4(a.egress_v4.unwrap()), "{}", sa.greeting);
    assert_eq!(peer_b, IpAddr::V4(b.egress_v4.unwrap()), "{}", sb.greeting);

    let flows = run.dp.conntrack_flows().unwrap();
    let fa = flow_of(&flows, ida, TCP, src.into(), dst.into()).expect("acme's flow");
    let fb = flow_of(&flows, idb, TCP, src.into(), dst.into()).expect("beta's flow");
    assert_eq!(translation(&fa), (peer_a, port_a));
    assert_eq!(translation(&fb), (peer_b, port_b));
    let ra = fa.reply.expect("acme's reply entry").1;
    let rb = fb.reply.expect("beta's reply entry").1;
    assert_eq!(
        (ra.tenant, rb.tenant),
        (ida, idb),
        "the replies go back to their own tenants"
    );

    // Both talk at once, each from its own thread; each gets only its own
    // lines back.
    let talk = |mut s: Session, who: &'static str| {
        std::thread::spawn(move || {
            for i in 0..40 {
                let line = format!("{who} says {i}");
                assert_eq!(s.echo(&line), line);
                std::thread::sleep(Duration::from_millis(10));
            }
            s.finish()
        })
    };
    let (ta, tb) = (talk(sa, "acme"), talk(sb, "beta"));
    assert_eq!(ta.join().unwrap().unwrap(), "", "acme's session closes in order");
    assert_eq!(tb.join().unwrap().unwrap(), "", "beta's session closes in order");

    // UDP, same again: one socket each on the same address and port,
    // both datagrams out before either reply is read.
    let usrc = SocketAddrV4::new(private, 40001);
    let udst = SocketAddr::V4(SocketAddrV4::new(PARTNER_V4, PARTNER_UDP_PORT));
    let open = |m: &Machine| {
        m.ns()
            .unwrap()
            .enter(|| {
                let s = UdpSocket::bind(usrc).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                s
            })
            .unwrap()
    };
    let (ua, ub) = (open(ma), open(mb));
    let (f0, u0) = (
        run.dp.counters(SIDE_FABRIC).unwrap(),
        run.dp.counters(SIDE_UPLINK).unwrap(),
    );
    // Both datagrams leave before either reply is read. The partner
    // (socat, a child per datagram) now and then loses one of two that
    // arrive together from different peers, carwash having translated and
    // sent both (seen in the counters: snat_out 2, one reply); so, like
    // any UDP client, each side asks again until it has its answer, and
    // the counters show that carwash itself lost nothing.
    let mut waiting = vec![(&ua, a), (&ub, b)];
    let mut sent = 0;
    for round in 0..5 {
        for (s, t) in &waiting {
            s.send_to(format!("{}\n", t.name).as_bytes(), udst).unwrap();
            sent += 1;
        }
        let mut still = Vec::new();
        for (s, t) in waiting {
            s.set_read_timeout(Some(Duration::from_millis(500 << round))).unwrap();
            let mut buf = [0u8; 256];
            match s.recv_from(&mut buf) {
                Ok((n, from)) => {
                    assert_eq!(from, udst);
                    let reply = String::from_utf8_lossy(&buf[..n]);
                    assert_eq!(seen(&reply).0, IpAddr::V4(t.egress_v4.unwrap()), "{}: {reply}", t.name);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => still.push((s, t)),
                Err(e) => panic!("{}: UDP: {e}", t.name),
            }
        }
        waiting = still;
        if waiting.is_empty() {
            break;
        }
    }
    let fabric = run.dp.counters(SIDE_FABRIC).unwrap().since(&f0);
    let uplink = run.dp.counters(SIDE_UPLINK).unwrap().since(&u0);
    assert!(
        waiting.is_empty(),
        "no UDP reply for {:?} after {sent} datagrams\nfabric {fabric:?}\nuplink {uplink:?}",
        waiting.iter().map(|(_, t)| &t.name).collect::<Vec<_>>()
    );
    assert_eq!(
        fabric.get(Counter::SnatOut),
        sent,
        "every datagram translated: {fabric:?}"
    );
    assert_eq!(fabric.get(Counter::SnatNewFlow), 2, "one flow each: {fabric:?}");
    assert_eq!(uplink.dropped(DropReason::NoConntrack), 0, "{uplink:?}");
    let flows = run.dp.conntrack_flows().unwrap();
    for id in [ida, idb] {
        assert!(
            flow_of(&flows, id, UDP, usrc.into(), udst).is_some(),
            "tenant {id}'s UDP flow"
        );
    }
    println!(
        "acme and beta from {src} to {dst}: the partner saw {peer_a}:{port_a} and {peer_b}:{port_b}; 40 echoes each; \
         UDP from {usrc}: {sent} datagrams for 2 answers"
    );
}

/// A policy directory for the lab: the repository's tenants and one more.
struct Policies(PathBuf);

impl Policies {
    fn with(extra: &[(&str, &str)]) -> Policies {
        let dir = std::env::temp_dir().join(format!("carwash-e2e-policies-{}", unique_tag()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["acme.toml", "beta.toml"] {
            std::fs::copy(agent_common::repo_policies_dir().join(name), dir.join(name)).unwrap();
        }
        for (name, text) in extra {
            std::fs::write(dir.join(name), text).unwrap();
        }
        Policies(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Policies {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A third tenant without any egress.
const GAMMA: &str = r#"
name = "gamma"
vni = 1003
lane = "single"
vips = ["203.0.113.30", "2001:db8:30::30"]
vpc_cidrs = ["10.103.0.0/16", "fd10:103::/64"]
connectors = [{ vtep = "10.200.3.10", mac = "02:00:0a:c8:03:0a" }]
cores = [{ vtep = "10.200.3.20", mac = "02:00:0a:c8:03:14" }]
[[allow]]
cidr = "198.51.100.0/24"
"#;

#[test]
fn without_egress_nothing_gets_out() {
    require_root();
    let policies = Policies::with(&[("gamma.toml", GAMMA)]);
    let run = LabRun::up_with(&LabConfig {
        name: format!("cwt{}", unique_tag()),
        policies: policies.path().to_path_buf(),
        ..LabConfig::default()
    })
    .unwrap();
    let gamma = run.lab.tenant("gamma").unwrap();
    assert!(gamma.egress_v4.is_none() && gamma.egress_v6.is_none());
    let g = gamma.connectors().next().unwrap();
    let gid = run.tenant_id("gamma").unwrap();
    let fabric0 = run.dp.counters(SIDE_FABRIC).unwrap();
    let gamma0 = tenant_drops(&run, "gamma", DropReason::NoEgress);

    // TCP and UDP, both families, and a ping: nothing answers.
    let short = Duration::from_secs(2);
    for partner in [IpAddr::V4(PARTNER_V4), IpAddr::V6(PARTNER_V6)] {
        let dst = SocketAddr::new(partner, PARTNER_TCP_PORT);
        let r = g
            .ns()
            .unwrap()
            .enter(|| TcpStream::connect_timeout(&dst, short))
            .unwrap();
        assert!(r.is_err(), "gamma connected to {dst}");
        let r = udp_ask(
            g,
            any_addr(partner.is_ipv6()),
            SocketAddr::new(partner, PARTNER_UDP_PORT),
            Duration::from_secs(1),
        );
        assert!(r.is_err(), "gamma got a UDP reply from {partner}: {r:?}");
    }
    let out = g
        .ns()
        .unwrap()
        .exec(&["ping", "-n", "-c", "1", "-W", "1", &PARTNER_V4.to_string()])
        .unwrap();
    assert!(!out.status.success(), "gamma's ping got an answer");

    let fabric = run.dp.counters(SIDE_FABRIC).unwrap().since(&fabric0);
    let dropped = tenant_drops(&run, "gamma", DropReason::NoEgress) - gamma0;
    println!(
        "gamma: {dropped} packets dropped with no_egress (fabric: {}); snat_new_flow {}",
        fabric.dropped(DropReason::NoEgress),
        fabric.get(Counter::SnatNewFlow)
    );
    // At least: two SYNs (v4, v6), two datagrams, one echo request.
    assert!(dropped >= 5, "gamma's no_egress drops: {dropped}");
    assert!(fabric.dropped(DropReason::NoEgress) >= dropped, "{fabric:?}");
    assert_eq!(fabric.get(Counter::SnatNewFlow), 0, "{fabric:?}");
    let flows = run.dp.conntrack_flows().unwrap();
    assert!(flows.iter().all(|f| f.tenant() != gid), "no flow of gamma is tracked");

    // Beta has an IPv4 egress IP only: its IPv6 attempts end the same way.
    let b = run.lab.tenant("beta").unwrap().connectors().next().unwrap();
    let beta0 = tenant_drops(&run, "beta", DropReason::NoEgress);
    let dst6 = SocketAddr::new(IpAddr::V6(PARTNER_V6), PARTNER_TCP_PORT);
    let r = b
        .ns()
        .unwrap()
        .enter(|| TcpStream::connect_timeout(&dst6, short))
        .unwrap();
    assert!(r.is_err(), "beta connected over IPv6");
    assert!(tenant_drops(&run, "beta", DropReason::NoEgress) > beta0);

    // And beta's egress allowlist (198.18.0.0/15) holds: the same server
    // on an address outside it is out of reach for beta, not for acme.
    let outside = SocketAddr::new(IpAddr::V4(ALLOWED_CLIENT_V4), PARTNER_TCP_PORT);
    let beta_na = tenant_drops(&run, "beta", DropReason::EgressNotAllowed);
    let r = b
        .ns()
        .unwrap()
        .enter(|| TcpStream::connect_timeout(&outside, short))
        .unwrap();
    assert!(r.is_err(), "beta reached {outside}");
    assert!(tenant_drops(&run, "beta", DropReason::EgressNotAllowed) > beta_na);
    let a = run.lab.tenant("acme").unwrap();
    let s = Session::start(connect(a.connectors().next().unwrap(), outside).unwrap());
    assert_eq!(seen(&s.greeting).0, IpAddr::V4(a.egress_v4.unwrap()));
    assert_eq!(s.finish().unwrap(), "");
}

/// The SHA-256 of `file`, in hex.
fn sha256_of(file: &Path) -> String {
    let out = std::process::Command::new("sha256sum").arg(file).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn path_mtu_discovery_across_a_narrow_link() {
    require_root();
    let run = LabRun::up().unwrap();
    let acme = run.lab.tenant("acme").unwrap();
    let m = acme.connectors().next().unwrap();
    let ns = m.ns().unwrap();
    let data = one_mib();
    let want = sha256_of(&run.lab.state_dir.join(BIG_FILE));
    let mtu = format!("mtu {NARROW_MTU}");

    for (far, egress) in [
        (IpAddr::V4(FAR_PARTNER_V4), IpAddr::V4(acme.egress_v4.unwrap())),
        (IpAddr::V6(FAR_PARTNER_V6), IpAddr::V6(acme.egress_v6.unwrap())),
    ] {
        let route = ns.ip(&["route", "get", &far.to_string()]).unwrap();
        assert!(!route.contains(&mtu), "before: {route}");
        let uplink0 = run.dp.counters(SIDE_UPLINK).unwrap();
        let dst = SocketAddr::new(far, FAR_PARTNER_TCP_PORT);
        let t0 = Instant::now();
        let mut s = connect(m, dst).unwrap_or_else(|e| panic!("TCP to {dst}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        // Segments as large as the machine's MTU allows, with DF (Linux's
        // default): only the narrow link's ICMP errors can make them fit.
        s.write_all(&data)
            .unwrap_or_else(|e| panic!("sending 1 MiB to {dst}: {e}"));
        s.shutdown(Shutdown::Write).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply)
            .unwrap_or_else(|e| panic!("the far partner's answer: {e} (so far {reply:?})"));
        let took = t0.elapsed();
        let uplink = run.dp.counters(SIDE_UPLINK).unwrap().since(&uplink0);
        let route = ns.ip(&["route", "get", &far.to_string()]).unwrap();
        println!(
            "1 MiB to {dst} in {took:?}; snat_icmp_error +{}; route: {}",
            uplink.get(Counter::SnatIcmpError),
            route.trim()
        );
        assert_eq!(seen(&reply).0, egress, "{reply}");
        assert!(
            reply.contains(&format!("sha256={want}")),
            "the far partner received something else: {reply}"
        );
        assert!(
            uplink.get(Counter::SnatIcmpError) >= 1,
            "no ICMP error was translated: {uplink:?}"
        );
        assert!(route.contains(&mtu), "the machine did not learn the path MTU: {route}");
    }
}

#[test]
fn icmp_errors_about_translated_flows_reach_the_machine() {
    require_root();
    let run = LabRun::up().unwrap();
    let acme = run.lab.tenant("acme").unwrap();
    let m = acme.connectors().next().unwrap();
    let ns = m.ns().unwrap();
    let uplink0 = run.dp.counters(SIDE_UPLINK).unwrap();

    // Port unreachable: a connected UDP socket learns of it as a refusal.
    for partner in [IpAddr::V4(PARTNER_V4), IpAddr::V6(PARTNER_V6)] {
        let closed = SocketAddr::new(partner, PARTNER_UDP_PORT + 1);
        let r = ns
            .enter(|| -> std::io::Result<usize> {
                let s = UdpSocket::bind(any_addr(partner.is_ipv6()))?;
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                s.connect(closed)?;
                s.send(b"anyone?\n")?;
                s.recv(&mut [0u8; 64])
            })
            .unwrap();
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            other => panic!("UDP to {closed}: expected a refusal from the port unreachable, got {other:?}"),
        }
    }
    // Not ICMP, but the same kind of answer: a closed TCP port's reset
    // reaches the machine as a refusal, at once.
    for partner in [IpAddr::V4(PARTNER_V4), IpAddr::V6(PARTNER_V6)] {
        let closed = SocketAddr::new(partner, PARTNER_TCP_PORT + 1);
        let t0 = Instant::now();
        match connect(m, closed) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            other => panic!("TCP to {closed}: expected a refusal, got {other:?}"),
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "the reset took {:?}",
            t0.elapsed()
        );
    }
    // Time exceeded: an echo request that dies at the internet's router
    // (carwash is no IP hop); the error quotes the translated request.
    for far in [IpAddr::V4(FAR_PARTNER_V4), IpAddr::V6(FAR_PARTNER_V6)] {
        let out = ns
            .exec(&["ping", "-n", "-c", "1", "-W", "2", "-t", "1", &far.to_string()])
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("exceeded"),
            "ping {far} with TTL 1: no time exceeded came back: {text}"
        );
    }
    let uplink = run.dp.counters(SIDE_UPLINK).unwrap().since(&uplink0);
    println!(
        "port unreachable and time exceeded, both families: snat_icmp_error +{}",
        uplink.get(Counter::SnatIcmpError)
    );
    assert!(uplink.get(Counter::SnatIcmpError) >= 4, "{uplink:?}");
    assert_eq!(uplink.dropped(DropReason::NoConntrack), 0, "{uplink:?}");
}

/// The tracked flows, read from the pins (as the CLI does).
fn pinned_flows(pins: &Path) -> Vec<Flow> {
    let p = Pins::open(pins).unwrap();
    flows_of(&Map::HashMap(p.map(maps::CONNTRACK).unwrap())).unwrap()
}

#[test]
fn an_outbound_flow_survives_sigkill_of_the_agent_with_its_translation() {
    require_root();
    let _alone = heavy();
    let lab = LabGuard::up(&LabConfig::unique()).unwrap();
    let host = lab.host_ns().unwrap();
    let agent = LabAgent::new(&lab, "snat-hitless", "").unwrap();
    let pins = &agent.pins;
    let a1 = agent.start(&host).unwrap();

    let acme = lab.tenant("acme").unwrap();
    let egress = IpAddr::V4(acme.egress_v4.unwrap());
    let m = acme.connectors().next().unwrap();
    let id = Pins::open(pins.path())
        .unwrap()
        .tenants()
        .unwrap()
        .into_iter()
        .find(|t| t.name.as_deref() == Some("acme"))
        .unwrap()
        .id;
    let dst = SocketAddr::new(IpAddr::V4(PARTNER_V4), PARTNER_TCP_PORT);
    let s = Session::start(connect(m, dst).unwrap_or_else(|e| panic!("TCP to {dst}: {e}\n{}", a1.log_text())));
    let (peer, port) = seen(&s.greeting);
    assert_eq!(peer, egress);
    let local = s.local;
    let flow = flow_of(&pinned_flows(pins.path()), id, TCP, local, dst).expect("the flow is tracked");
    assert_eq!(translation(&flow), (egress, port));

    // A line every 50 ms, each echoed, across the kill and the restart.
    let Session {
        stream: mut w,
        mut reader,
        ..
    } = s;
    let t0 = Instant::now();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let writer = std::thread::spawn(move || {
        let mut n = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            writeln!(w, "line {n}").unwrap();
            n += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        w.shutdown(Shutdown::Write).unwrap();
        n
    });
    let echo_reader = std::thread::spawn(move || {
        let mut times = Vec::new();
        loop {
            match read_line(&mut reader) {
                Ok(l) if l.is_empty() => return (times, Ok(())),
                Ok(l) => {
                    assert_eq!(l, format!("line {}", times.len()));
                    times.push(t0.elapsed());
                }
                Err(e) => return (times, Err(e)),
            }
        }
    });

    std::thread::sleep(Duration::from_secs(1));
    a1.kill();
    let killed_at = t0.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let during = flow_of(&pinned_flows(pins.path()), id, TCP, local, dst).expect("tracked without an agent");
    let t_start = Instant::now();
    let a2 = agent.start(&host).unwrap();
    let restarted_at = t0.elapsed();
    let adopt = t_start.elapsed();
    assert!(a2.status().adopted, "the new agent adopts the pins");
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = writer.join().unwrap();
    let (echoes, end) = echo_reader.join().unwrap();
    end.unwrap_or_else(|e| panic!("the flow ended with an error (reset?): {e}\n{}", a2.log_text()));
    assert_eq!(echoes.len(), sent, "lines echoed");
    let (worst, worst_at) = echoes.windows(2).map(|w| (w[1] - w[0], w[0])).max().unwrap_or_default();
    let drops = |side| {
        let c = Pins::open(pins.path()).unwrap().counters(side).unwrap();
        DropReason::ALL
            .iter()
            .filter(|r| c.dropped(**r) != 0)
            .map(|r| format!("{}={}", r.name(), c.dropped(*r)))
            .collect::<Vec<_>>()
    };
    assert!(
        worst < Duration::from_millis(500),
        "the flow stalled for {worst:?} after the echo at {worst_at:?} (agent killed at {killed_at:?}, \
         restarted at {restarted_at:?}, answering after {adopt:?}); drops: fabric {:?}, uplink {:?}",
        drops(SIDE_FABRIC),
        drops(SIDE_UPLINK)
    );
    assert!(echoes.iter().any(|t| *t > restarted_at), "no echo after the restart");

    let after = flow_of(&pinned_flows(pins.path()), id, TCP, local, dst).expect("still tracked after the restart");
    assert_eq!(translation(&during), (egress, port), "the mapping without an agent");
    assert_eq!(translation(&after), (egress, port), "the mapping after the restart");
    let p = Pins::open(pins.path()).unwrap();
    let uplink = p.counters(SIDE_UPLINK).unwrap();
    assert_eq!(uplink.dropped(DropReason::NoConntrack), 0, "{uplink:?}");
    // Every tail call found its program, across the kill and the adoption.
    for side in [SIDE_FABRIC, SIDE_UPLINK] {
        let c = p.counters(side).unwrap();
        assert_eq!(c.dropped(DropReason::NoHandoff), 0, "{c:?}");
    }
    println!(
        "{sent} lines over {:?} from {local} as {egress}:{port}; agent killed at {killed_at:?}, new agent \
         answered in {adopt:?}; longest gap between echoes {worst:?}; the mapping stayed {egress}:{port}",
        echoes.last().copied().unwrap_or_default()
    );
}

/// A datagram larger than the path: the machine fragments it, carwash
/// translates the first fragment (address, port, the whole datagram's
/// checksum) and the others (address), and the partner reassembles it and
/// answers.
#[test]
fn a_fragmented_datagram_gets_through() {
    require_root();
    let run = LabRun::up().unwrap();
    let fabric0 = run.dp.counters(SIDE_FABRIC).unwrap();
    let t = run.lab.tenant("acme").unwrap();
    let m = t.connectors().next().unwrap();
    let mut big = vec![b'x'; 3000];
    big.push(b'\n');
    for (partner, egress) in [
        (IpAddr::V4(PARTNER_V4), IpAddr::V4(t.egress_v4.unwrap())),
        (IpAddr::V6(PARTNER_V6), IpAddr::V6(t.egress_v6.unwrap())),
    ] {
        let dst = SocketAddr::new(partner, PARTNER_UDP_PORT);
        // UDP may lose a datagram now and then (the partner's, not
        // carwash's: see above): a few tries, like any UDP client.
        let answer = (0..3).find_map(|_| udp_ask_with(m, any_addr(partner.is_ipv6()), dst, TIMEOUT, &big).ok());
        let (_, reply, from) = answer.unwrap_or_else(|| panic!("no answer to a 3,001-byte datagram to {dst}"));
        assert_eq!(from, dst);
        let (peer, _) = seen(&reply);
        assert_eq!(peer, egress, "the partner saw {reply}");
    }
    let d = run.dp.counters(SIDE_FABRIC).unwrap().since(&fabric0);
    assert_eq!(d.dropped(DropReason::Fragment), 0, "no fragment dropped");
    assert!(
        d.get(Counter::SnatOut) >= 6,
        "three fragments each way out: {}",
        d.get(Counter::SnatOut)
    );
}

/// A table too small for the flows a machine opens, in front of a real
/// agent: a new flow that finds it full with nothing listed to give up is
/// dropped and counted; the agent sees the drop and lists the least
/// recently used flows at once; from then on new flows get through by
/// evicting the oldest idle flows, never the busy one.
#[test]
fn a_full_table_makes_room_from_the_agents_list() {
    require_root();
    let _alone = heavy();
    let lab = LabGuard::up(&LabConfig::unique()).unwrap();
    let host = lab.host_ns().unwrap();
    // 16 entries: 8 flows.
    let setup = LabAgent::new(&lab, "snat-full", "[conntrack]\nmax_entries = 16\n").unwrap();
    let pins = &setup.pins;
    let agent = setup.start(&host).unwrap();

    let acme = lab.tenant("acme").unwrap();
    let m = acme.connectors().next().unwrap();
    let dst = SocketAddr::new(IpAddr::V4(PARTNER_V4), PARTNER_UDP_PORT);
    let from = |port: u16| SocketAddr::new(IpAddr::V4(m.private_v4), port);
    let ask = |port: u16, wait: Duration| udp_ask(m, from(port), dst, wait);
    let fabric = || Pins::open(pins.path()).unwrap().counters(SIDE_FABRIC).unwrap();
    let tracked_ports = || -> BTreeSet<u16> {
        pinned_flows(pins.path())
            .iter()
            .filter(|f| f.reply.is_some())
            .filter_map(|f| f.out.map(|(k, _)| u16::from_be_bytes(k.sport_be)))
            .collect()
    };
    // Eight flows fill the table; the first stays busy.
    for port in 40001..=40008 {
        ask(port, TIMEOUT).unwrap_or_else(|e| panic!("flow {port}: {e}\n{}", agent.log_text()));
        std::thread::sleep(Duration::from_millis(30));
    }
    assert_eq!(tracked_ports().len(), 8);
    ask(40001, TIMEOUT).unwrap();
    // The ninth: refused until the agent has listed what to give up.
    let c0 = fabric();
    let t0 = Instant::now();
    let mut refused = 0;
    loop {
        match ask(40009, Duration::from_millis(300)) {
            Ok(_) => break,
            Err(_) => refused += 1,
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "no room made in 15 s\n{}",
            agent.log_text()
        );
    }
    let made_room = t0.elapsed();
    assert!(refused >= 1, "the table had room before the agent listed anything");
    let d = fabric().since(&c0);
    assert_eq!(d.get(Counter::CtEvicted), 1, "{d:?}");
    assert_eq!(d.dropped(DropReason::ConntrackFull), refused, "{d:?}");
    // Two more new flows evict the next oldest, at once.
    for port in [40010, 40011] {
        ask(port, TIMEOUT).unwrap_or_else(|e| panic!("flow {port}: {e}"));
    }
    let kept = tracked_ports();
    println!("refused {refused} times, room after {made_room:?}; tracked: {kept:?}");
    assert_eq!(
        kept,
        [40001, 40005, 40006, 40007, 40008, 40009, 40010, 40011]
            .into_iter()
            .collect(),
        "the oldest idle flows went, in order; the busy one stayed"
    );
}
