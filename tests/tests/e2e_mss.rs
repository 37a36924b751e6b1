//! An upload through a PMTU black hole: a client in a fresh namespace (no
//! path MTU cached) sends 50 MiB through the VIP to a core's JMS port,
//! where the core's tunnel device has MTU 1500 (so its SYN-ACK announces a
//! full-size MSS) while the fabric, once encapsulated, carries 1450-byte
//! packets; the client's namespace drops ICMP errors, as many enterprise
//! firewalls do, so carwash's fragmentation-needed answers never arrive.
//! Only the SYN-ACK's clamped MSS keeps the client's segments small
//! enough: the transfer runs at full speed from its first second.
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use carwash_tests::labrun::LabRun;
use carwash_tests::require_root;
use netlab::lab::Role;
use netlab::netns::{NetNs, netns_pids, veth_pair};

const UPLOAD: usize = 50 << 20;
/// A JMS port of acme's; the lab's echo server there makes way for a sink.
const PORT: u16 = 61617;
/// The client, inside acme's allowlist (198.51.100.0/24).
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 77);
/// Long enough for a loaded machine, short enough that a stalled transfer
/// fails the test in reasonable time.
const STALL: Duration = Duration::from_secs(20);

/// A fresh namespace behind the lab's internet namespace, with `CLIENT` on
/// its loopback and every ICMP destination-unreachable dropped.
fn client_ns(run: &LabRun) -> NetNs {
    let ns = NetNs::new("cwt-cli").unwrap();
    let peer = format!("c{}", &ns.name()[ns.name().len() - 6..]);
    veth_pair(&ns, "eth0", None, &run.inet, &peer, None).unwrap();
    ns.sysctls(&[
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
    ])
    .unwrap();
    ns.addr("eth0", "100.64.9.2/30").unwrap();
    ns.addr("lo", &format!("{CLIENT}/32")).unwrap();
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        "100.64.9.1",
        "dev",
        "eth0",
        "src",
        &CLIENT.to_string(),
    ])
    .unwrap();
    run.inet.addr(&peer, "100.64.9.1/30").unwrap();
    run.inet
        .route(&format!("{CLIENT}/32"), "100.64.9.2", Some(&peer))
        .unwrap();
    assert!(run.inet.read_sysctl("net.ipv4.ip_forward").unwrap() == "1");
    for cmd in [
        "add table inet blackhole",
        "add chain inet blackhole input { type filter hook input priority 0; }",
        "add rule inet blackhole input icmp type destination-unreachable counter drop",
        "add rule inet blackhole input icmpv6 type packet-too-big counter drop",
    ] {
        let mut args = vec!["nft"];
        args.extend(cmd.split(' '));
        ns.run(&args).unwrap();
    }
    assert_eq!(ns.read_sysctl("net.ipv4.tcp_mtu_probing").unwrap(), "0");
    ns
}

/// Stops the lab's server on `port` in `ns` (started by the lab, detached).
fn stop_server(ns: &NetNs, port: u16) {
    let listen = format!("LISTEN:{port},");
    for pid in netns_pids(ns.name()) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&listen) {
            // SAFETY: kill(2) on a server this test's lab started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let t0 = Instant::now();
    while ns.listening_ports(false).unwrap().contains(&port) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the lab's server on {port} stays"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the sink saw: (time, bytes so far) after every read.
fn sink(listener: TcpListener) -> Vec<(Instant, usize)> {
    let (mut s, _) = listener.accept().expect("the client connects");
    s.set_read_timeout(Some(STALL)).unwrap();
    let mut seen = Vec::new();
    let mut total = 0;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return seen,
            Ok(n) => {
                total += n;
                seen.push((Instant::now(), total));
            }
        }
    }
}

#[test]
fn an_upload_through_a_pmtu_black_hole_runs_at_full_speed_from_the_start() {
    require_root();
    let run = LabRun::up().unwrap();
    let core = run.lab.machine("acme", Role::Core, 0).unwrap();
    let core_ns = core.ns().unwrap();
    // A tunnel device of full Ethernet size: the core announces MSS 1460.
    core_ns.ip(&["link", "set", "dev", "eth0", "mtu", "1550"]).unwrap();
    core_ns.ip(&["link", "set", "dev", "vx0", "mtu", "1500"]).unwrap();
    stop_server(&core_ns, PORT);
    let listener = core_ns.enter(|| TcpListener::bind(("::", PORT))).unwrap().unwrap();
    let client = client_ns(&run);
    let vip = run.lab.tenant("acme").unwrap().vip_v4().unwrap();

    let data = vec![0x5au8; UPLOAD];
    let (t0, sent, seen) = std::thread::scope(|s| {
        let server = s.spawn(|| sink(listener));
        let t0 = Instant::now();
        let sent = client
            .enter(|| -> std::io::Result<usize> {
                let mut c = TcpStream::connect_timeout(&SocketAddr::new(vip.into(), PORT), STALL)?;
                c.set_write_timeout(Some(STALL))?;
                let mut sent = 0;
                for chunk in data.chunks(1 << 20) {
                    if c.write_all(chunk).is_err() {
                        break;
                    }
                    sent += chunk.len();
                }
                let _ = c.shutdown(Shutdown::Write);
                Ok(sent)
            })
            .unwrap();
        (t0, sent, server.join().unwrap())
    });
    let sent = sent.unwrap_or(0);
    let total = seen.last().map_or(0, |&(_, n)| n);
    let elapsed = seen.last().map_or(Duration::ZERO, |&(t, _)| t - t0);
    // Throughput over the first second (or the whole transfer, if it took
    // less) against the whole transfer.
    let window = elapsed.clamp(Duration::from_millis(1), Duration::from_secs(1));
    let early = seen
        .iter()
        .take_while(|(t, _)| *t - t0 <= window)
        .last()
        .map_or(0, |&(_, n)| n);
    let first_rate = early as f64 / window.as_secs_f64();
    let whole_rate = total as f64 / elapsed.as_secs_f64().max(1e-3);
    let icmp_dropped = client
        .run(&["nft", "list", "chain", "inet", "blackhole", "input"])
        .unwrap();
    let report = format!(
        "sent {sent} bytes, {total} arrived in {elapsed:.2?}; {early} bytes in the first {window:.2?} \
         ({:.0} Mbit/s there, {:.0} Mbit/s overall); the client's firewall:\n{icmp_dropped}",
        first_rate * 8e-6,
        whole_rate * 8e-6
    );
    eprintln!("{report}");
    assert_eq!(total, UPLOAD, "the upload did not complete: {report}");
    assert!(
        first_rate >= 0.5 * whole_rate,
        "the first second ran below half the transfer's speed: {report}"
    );
}
