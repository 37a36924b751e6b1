//! The lab topology against the real kernel, without carwash: everything
//! that must work before a dataplane is attached does, and `down` leaves
//! nothing behind.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use netlab::lab::{
    self, ALLOWED_CLIENT_V4, ALLOWED_CLIENT_V6, HOST_UPLINK_V4, HOST_UPLINK_V6, PARTNER_TCP_PORT, PARTNER_UDP_PORT,
    PARTNER_V4, PARTNER_V6, STATE_ROOT,
};
use netlab::netns::list_netns;
use netlab::{Lab, LabConfig, LabGuard, Role};

fn root_or_skip(test: &str) -> bool {
    if netlab::is_root() {
        return true;
    }
    eprintln!("skipping {test}: needs root to create network namespaces");
    false
}

fn url(ip: IpAddr, port: u16, path: &str) -> String {
    match ip {
        IpAddr::V4(v) => format!("https://{v}:{port}/{path}"),
        IpAddr::V6(v) => format!("https://[{v}]:{port}/{path}"),
    }
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn lab_up_works_without_carwash_and_down_cleans_up() {
    if !root_or_skip("lab_up_works_without_carwash_and_down_cleans_up") {
        return;
    }
    let cfg = LabConfig::unique();
    let name = cfg.name.clone();
    let started = Instant::now();
    {
        let lab = LabGuard::up(&cfg).unwrap();
        eprintln!("lab {name} up in {:?}", started.elapsed());
        let existing = list_netns().unwrap();
        for ns in lab.namespaces() {
            assert!(existing.contains(&ns), "{ns} missing");
        }
        assert_eq!(lab.tenants.len(), 2);
        assert_eq!(lab.machines().count(), 6);

        // The internet reaches the host's uplink, both families.
        let inet = lab.inet_ns().unwrap();
        for target in [HOST_UPLINK_V4.to_string(), HOST_UPLINK_V6.to_string()] {
            let out = inet.exec(&["ping", "-c1", "-W2", &target]).unwrap();
            assert!(out.status.success(), "inet -> {target}: {out:?}");
        }

        for m in lab.machines() {
            let ns = m.ns().unwrap();
            // Every machine reaches the host VTEP over the underlay bridge.
            let out = ns.exec(&["ping", "-c1", "-W2", "10.200.0.1"]).unwrap();
            assert!(out.status.success(), "{} -> host VTEP: {out:?}", m.netns);
            let addrs = ns.ip(&["-br", "addr", "show", "dev", "vx0"]).unwrap();
            assert!(addrs.contains(&format!("{}/16", m.private_v4)), "{addrs}");
            let link = ns.ip(&["-d", "link", "show", "dev", "vx0"]).unwrap();
            assert!(link.contains(&m.mac.to_string()), "{link}");
            assert!(link.contains(&format!("vxlan id {}", m.vni)), "{link}");
            assert!(link.contains("dstport 4789"), "{link}");
        }

        // Every server answers locally on the VIPs, both families.
        for m in lab.machines() {
            let ns = m.ns().unwrap();
            for &vip in &m.vips {
                for &port in &m.https_ports {
                    let u = url(vip, port, "whoami");
                    let out = ns.exec(&["curl", "-sSgk", "--max-time", "5", &u]).unwrap();
                    assert!(out.status.success(), "{} {u}: {out:?}", m.netns);
                    assert_eq!(stdout(&out), format!("{}\n", m.label()), "{} {u}", m.netns);
                }
            }
            // The JMS stand-in: banner with the peer, then echo.
            let vip = m.vips[0];
            let port = m.jms_ports[0];
            let (banner, echo) = ns
                .enter(|| {
                    let mut s =
                        TcpStream::connect_timeout(&SocketAddr::new(vip, port), Duration::from_secs(5)).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    let mut banner = String::new();
                    r.read_line(&mut banner).unwrap();
                    s.write_all(b"hello carwash\n").unwrap();
                    let mut echo = String::new();
                    r.read_line(&mut echo).unwrap();
                    (banner, echo)
                })
                .unwrap();
            assert_eq!(banner, format!("{} peer={vip}\n", m.label()), "{}", m.netns);
            assert_eq!(lab::parse_peer(&banner), Some(vip));
            assert_eq!(echo, "hello carwash\n");
        }

        // The big file and /peer on one connector.
        let conn = lab.machine("acme", Role::Connector, 1).unwrap();
        let ns = conn.ns().unwrap();
        let vip6 = lab.tenant("acme").unwrap().vip_v6().unwrap();
        let out = ns
            .exec(&[
                "curl",
                "-sSgk",
                "--max-time",
                "10",
                &url(IpAddr::V6(vip6), 443, lab::BIG_FILE),
            ])
            .unwrap();
        assert!(out.status.success(), "{:?}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout == lab::one_mib(), "1MiB.bin differs");
        let out = ns
            .exec(&["curl", "-sSgk", "--max-time", "5", &url(IpAddr::V6(vip6), 443, "peer")])
            .unwrap();
        assert_eq!(stdout(&out), format!("{} peer={vip6}\n", conn.label()));
        let out = ns
            .exec(&[
                "curl",
                "-sgk",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &url(IpAddr::V6(vip6), 443, "nope"),
            ])
            .unwrap();
        assert_eq!(stdout(&out), "404");

        // The partner reports the source it saw, over TCP and UDP.
        let bind = format!("TCP:{PARTNER_V4}:{PARTNER_TCP_PORT},bind={ALLOWED_CLIENT_V4}");
        let out = inet.exec(&["socat", "-T5", "-", &bind]).unwrap();
        let reply = stdout(&out);
        assert_eq!(
            lab::parse_peer(&reply),
            Some(IpAddr::V4(ALLOWED_CLIENT_V4)),
            "{reply:?}"
        );
        assert!(lab::parse_peer_port(&reply).is_some(), "{reply:?}");
        for (client, partner) in [
            (IpAddr::V4(ALLOWED_CLIENT_V4), IpAddr::V4(PARTNER_V4)),
            (IpAddr::V6(ALLOWED_CLIENT_V6), IpAddr::V6(PARTNER_V6)),
        ] {
            let (reply, from) = inet
                .enter(|| {
                    let s = UdpSocket::bind(SocketAddr::new(client, 0)).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    s.send_to(b"ping\n", SocketAddr::new(partner, PARTNER_UDP_PORT))
                        .unwrap();
                    let mut buf = [0u8; 256];
                    let (n, from) = s.recv_from(&mut buf).unwrap();
                    let port = s.local_addr().unwrap().port();
                    (String::from_utf8_lossy(&buf[..n]).into_owned(), (from, port))
                })
                .unwrap();
            assert_eq!(from.0.ip(), partner, "UDP reply must come from the partner address");
            assert_eq!(lab::parse_peer(&reply), Some(client), "{reply:?}");
            assert_eq!(lab::parse_peer_port(&reply), Some(from.1), "{reply:?}");
        }

        // The far partner, behind the narrow link: 1 MiB from the host
        // (which announces and sends full-size segments) only arrives
        // through path-MTU discovery, the internet namespace answering
        // with fragmentation needed / packet too big.
        let host = lab.host_ns().unwrap();
        let big = lab.state_dir.join(lab::BIG_FILE);
        let sum = std::process::Command::new("sha256sum").arg(&big).output().unwrap();
        let want = format!("sha256={}", stdout(&sum).split_whitespace().next().unwrap());
        let data = lab::one_mib();
        for (far, from) in [
            (IpAddr::V4(lab::FAR_PARTNER_V4), IpAddr::V4(HOST_UPLINK_V4)),
            (IpAddr::V6(lab::FAR_PARTNER_V6), IpAddr::V6(HOST_UPLINK_V6)),
        ] {
            let reply = host
                .enter(|| {
                    let dst = SocketAddr::new(far, lab::FAR_PARTNER_TCP_PORT);
                    let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
                    s.write_all(&data).unwrap();
                    s.shutdown(std::net::Shutdown::Write).unwrap();
                    let mut reply = String::new();
                    std::io::Read::read_to_string(&mut s, &mut reply).unwrap();
                    reply
                })
                .unwrap();
            assert_eq!(lab::parse_peer(&reply), Some(from), "{reply:?}");
            assert!(reply.contains(&want), "{reply:?}");
            let route = host.ip(&["route", "get", &far.to_string()]).unwrap();
            assert!(
                route.contains(&format!("mtu {}", lab::NARROW_MTU)),
                "the host did not learn the narrow link's MTU: {route}"
            );
        }

        // Nothing answers for the VIPs on the host: that is carwash's job.
        let host_addrs = host.ip(&["-br", "addr"]).unwrap();
        for a in lab.public_addrs() {
            assert!(!host_addrs.contains(&a.to_string()), "{a} on the host: {host_addrs}");
        }

        let status = Lab::status(&name).unwrap();
        for ns in lab.namespaces() {
            assert!(status.contains(&ns), "{ns} not in status:\n{status}");
        }
        assert!(status.contains("*:443") || status.contains("[::]:443"), "{status}");

        let cfg_text = lab.host_config_toml(Path::new("/sys/fs/bpf/x"), Path::new("/run/x.sock"), &lab.policies);
        assert!(cfg_text.contains("uplink = \"uplink\""), "{cfg_text}");

        // Bringing the same lab up again replaces it.
        let again = Lab::up(&cfg).unwrap();
        assert_eq!(again.namespaces(), lab.namespaces());
        let m = again.machine("beta", Role::Connector, 0).unwrap();
        let out = m
            .ns()
            .unwrap()
            .exec(&["curl", "-sSk", "--max-time", "5", &url(m.vips[0], 8443, "whoami")])
            .unwrap();
        assert_eq!(stdout(&out), format!("{}\n", m.label()));
    }
    // The guard took it down; doing it again is fine.
    Lab::down(&name).unwrap();
    let left: Vec<String> = list_netns()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{name}-")))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!Path::new(STATE_ROOT).join(&name).exists());
    assert!(Lab::status(&name).unwrap().contains("not running"));
    eprintln!("lab test took {:?}", started.elapsed());
}

#[test]
fn failed_up_leaves_nothing_behind() {
    if !root_or_skip("failed_up_leaves_nothing_behind") {
        return;
    }
    // Parses, but a machine cannot own the same VIP twice: `up` fails
    // half-way, after namespaces exist.
    let dir = std::env::temp_dir().join(format!("netlab-bad-{}", netlab::unique_tag()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("dup.toml"),
        r#"
name = "dup"
vni = 9
lane = "single"
vips = ["203.0.113.99", "203.0.113.99"]
vpc_cidrs = ["10.109.0.0/16"]
connectors = [{ vtep = "10.200.9.10", mac = "02:00:0a:c8:09:0a" }]
cores = [{ vtep = "10.200.9.20", mac = "02:00:0a:c8:09:14" }]
"#,
    )
    .unwrap();
    let cfg = LabConfig {
        policies: dir.clone(),
        ..LabConfig::unique()
    };
    let err = Lab::up(&cfg).unwrap_err();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(format!("{err:#}").contains("203.0.113.99"), "{err:#}");
    let left: Vec<String> = list_netns()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{}-", cfg.name)))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!Path::new(STATE_ROOT).join(&cfg.name).exists());
}
