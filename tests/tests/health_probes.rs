//! The health probes end to end, in the lab with its real servers: the
//! agent probes every machine through its tunnel (the probe device, the
//! probe program, the fabric program handing the replies to the stack),
//! declares machines down and up by itself, and the data path follows: a
//! dead active core's JMS goes to the standby, a dead connector gets no new
//! flows, another tenant with the same private addresses failing moves
//! nothing of this one.
mod agent_common;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use agent_common::{LabAgent, carwash};
use carwash_tests::require_root;
use netlab::lab::{ALLOWED_CLIENT_V4, Lab, LabConfig, LabGuard, Role};
use netlab::netns::{Daemon, NetNs};
use serde_json::Value;

/// The machines of `tenant` as `carwash health -o json` shows them.
fn health(pins: &std::path::Path, tenant: &str) -> Vec<Value> {
    let pin = pins.to_str().unwrap();
    let out = carwash(&["health", "--tenant", tenant, "--pin-path", pin, "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["machines"].as_array().unwrap().clone()
}

fn machine<'a>(h: &'a [Value], name: &str) -> &'a Value {
    h.iter()
        .find(|m| m["machine"] == name)
        .unwrap_or_else(|| panic!("no {name} in {h:?}"))
}

/// Polls `cond` every 50 ms for up to `timeout`; the time it took.
fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    t0.elapsed()
}

/// Stops the servers of `machine` listening on `port` (the lab's socat
/// processes), returning their command line to start them again with.
fn stop_server(lab: &Lab, tenant: &str, role: Role, index: usize, port: u16) -> Vec<String> {
    let m = lab.machine(tenant, role, index).unwrap();
    let ns = m.ns().unwrap();
    let needle = format!("LISTEN:{port},");
    let mut argv = Vec::new();
    for _ in 0..50 {
        let mut found = false;
        for pid in ns.pids() {
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if args.first().is_some_and(|a| a.ends_with("socat")) && args.iter().any(|a| a.contains(&needle)) {
                // SAFETY: plain kill(2) of a process of the lab's.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                argv = args;
                found = true;
            }
        }
        if !found && !ns.listening_ports(false).unwrap().contains(&port) {
            return argv;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the server on port {port} of {} would not stop", m.label());
}

fn start_server(lab: &Lab, tenant: &str, role: Role, index: usize, port: u16, argv: &[String]) -> Daemon {
    let m = lab.machine(tenant, role, index).unwrap();
    let ns = m.ns().unwrap();
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    let d = ns.spawn(&args).unwrap();
    ns.wait_listening(false, port, Duration::from_secs(10)).unwrap();
    d
}

/// The first line a JMS connection to `vip:port` gets: `acme core N peer=..`.
fn jms_banner(inet: &NetNs, vip: IpAddr, port: u16) -> Result<String, String> {
    inet.enter(move || {
        let src = SocketAddr::new(IpAddr::V4(ALLOWED_CLIENT_V4), 0);
        let sock = connect_from(src, SocketAddr::new(vip, port))?;
        sock.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(sock).read_line(&mut line).map_err(|e| e.to_string())?;
        Ok(line)
    })
    .unwrap()
}

/// A TCP connection from `src` (the lab's client addresses live on the
/// internet namespace's `lo`).
fn connect_from(src: SocketAddr, dst: SocketAddr) -> Result<TcpStream, String> {
    // SAFETY: plain socket calls with valid arguments; the fd is owned by
    // the stream returned.
    unsafe {
        use std::os::fd::FromRawFd;
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err("socket".into());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let to_sa = |a: SocketAddr| {
            let SocketAddr::V4(a) = a else { unreachable!() };
            libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            }
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        let s = to_sa(src);
        if libc::bind(fd, &s as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(format!("bind: {}", std::io::Error::last_os_error()));
        }
        let d = to_sa(dst);
        if libc::connect(fd, &d as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(format!("connect: {}", std::io::Error::last_os_error()));
        }
        Ok(stream)
    }
}

/// Who answers `https://vip/whoami`, `n` times (each a new connection, a
/// new source port, so a new Maglev choice).
fn whoami(inet: &NetNs, vip: IpAddr, n: usize) -> Vec<String> {
    let url = format!("https://{vip}/whoami");
    let src = ALLOWED_CLIENT_V4.to_string();
    (0..n)
        .map(|_| {
            let out = inet
                .exec(&["curl", "-sk", "--max-time", "5", "--interface", &src, &url])
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .collect()
}

fn events(agent: &LabAgent) -> Vec<Value> {
    let text = std::fs::read_to_string(agent.dir.path().join("log/events.jsonl")).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// interval 1 s, fall 3 (the policy's defaults).
const INTERVAL: Duration = Duration::from_secs(1);
const FALL: u32 = 3;

#[test]
fn probes_through_the_tunnels_fail_over_the_core_and_drain_a_dead_connector() {
    require_root();
    let lab = LabGuard::up(&LabConfig::unique()).unwrap();
    let host = lab.host_ns().unwrap();
    let inet = lab.inet_ns().unwrap();
    let agent = LabAgent::new(&lab, "probes", "\n[probes]\nenabled = true\n").unwrap();
    let a = agent.start(&host).unwrap();
    let pins = agent.pin_path().to_path_buf();
    let acme = lab.tenant("acme").unwrap();
    let vip = IpAddr::V4(acme.vip_v4().unwrap());

    // Every machine of both tenants answers its probes through its tunnel
    // (the TLS handshake for connectors, a TCP connect for cores).
    for t in ["acme", "beta"] {
        let t0 = Instant::now();
        while !health(&pins, t)
            .iter()
            .all(|m| m["last_latency_us"].as_u64().unwrap_or(0) > 0 && m["state"] == "up")
        {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{t}'s machines not probed: {:#?}\n{}\n{}",
                health(&pins, t),
                a.log_text(),
                host.run(&[
                    "sh",
                    "-c",
                    "ip -s link; ip rule; ip route show table all | head -40; ip addr"
                ])
                .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert!(jms_banner(&inet, vip, 61616).unwrap().starts_with("acme core 0"));

    // The active core's JMS servers stop: the standby takes over within
    // interval x fall plus one interval (plus this poll's own slack).
    let jms0 = stop_server(&lab, "acme", Role::Core, 0, 61616);
    let jms0b = stop_server(&lab, "acme", Role::Core, 0, 61617);
    let took = wait_for("core/1 active", Duration::from_secs(20), || {
        machine(&health(&pins, "acme"), "core/1")["core"] == "active"
    });
    eprintln!("core failover after the server stopped: {took:?}");
    assert!(
        took <= INTERVAL * (FALL + 1) + Duration::from_millis(1500),
        "failover took {took:?}"
    );
    let h = health(&pins, "acme");
    assert_eq!(machine(&h, "core/0")["state"], "down");
    assert_eq!(machine(&h, "core/0")["core"], "standby");
    for port in [61616, 61617] {
        let b = jms_banner(&inet, vip, port).unwrap();
        assert!(b.starts_with("acme core 1"), "JMS on {port} reached {b:?}");
    }

    // The first core comes back: it is declared up, and JMS stays on the
    // standby (failback = false).
    let _d0 = start_server(&lab, "acme", Role::Core, 0, 61616, &jms0);
    let _d0b = start_server(&lab, "acme", Role::Core, 0, 61617, &jms0b);
    wait_for("core/0 up again", Duration::from_secs(20), || {
        machine(&health(&pins, "acme"), "core/0")["state"] == "up"
    });
    std::thread::sleep(INTERVAL * 3);
    assert_eq!(machine(&health(&pins, "acme"), "core/1")["core"], "active");
    assert!(jms_banner(&inet, vip, 61616).unwrap().starts_with("acme core 1"));

    // With `failback = true` the first core takes over again, once it has
    // been up for the hold-down (10 intervals).
    let policy = agent.dir.path().join("policies/acme.toml");
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(&policy, text + "\n[health]\nfailback = true\n").unwrap();
    let took = wait_for("core/0 active again", Duration::from_secs(30), || {
        machine(&health(&pins, "acme"), "core/0")["core"] == "active"
    });
    eprintln!("failback after failback = true was applied: {took:?}");
    assert!(jms_banner(&inet, vip, 61616).unwrap().starts_with("acme core 0"));

    // A connector's HTTPS server stops: once it is declared down, every new
    // flow goes to the other connector.
    let before = whoami(&inet, vip, 16);
    assert!(before.iter().any(|w| w == "acme connector 0"), "{before:?}");
    assert!(before.iter().any(|w| w == "acme connector 1"), "{before:?}");
    let https0 = stop_server(&lab, "acme", Role::Connector, 0, 443);
    wait_for("connector/0 down", Duration::from_secs(20), || {
        machine(&health(&pins, "acme"), "connector/0")["state"] == "down"
    });
    let during = whoami(&inet, vip, 16);
    assert!(during.iter().all(|w| w == "acme connector 1"), "{during:?}");
    // Back up: it takes flows again.
    let _h0 = start_server(&lab, "acme", Role::Connector, 0, 443, &https0);
    wait_for("connector/0 up again", Duration::from_secs(20), || {
        machine(&health(&pins, "acme"), "connector/0")["state"] == "up"
    });
    let after = whoami(&inet, vip, 16);
    assert!(after.iter().any(|w| w == "acme connector 0"), "{after:?}");

    // beta's connector (the same private addresses as acme's) fails: beta's
    // record says so, nothing of acme moves.
    let acme_before = health(&pins, "acme");
    let beta0 = stop_server(&lab, "beta", Role::Connector, 0, 443);
    wait_for("beta's connector/0 down", Duration::from_secs(20), || {
        machine(&health(&pins, "beta"), "connector/0")["state"] == "down"
    });
    std::thread::sleep(INTERVAL * 2);
    let acme_after = health(&pins, "acme");
    for m in ["connector/0", "connector/1", "core/0", "core/1"] {
        let (b, a) = (machine(&acme_before, m), machine(&acme_after, m));
        assert_eq!(b["state"], a["state"], "{m}");
        assert_eq!(b["core"], a["core"], "{m}");
        assert_eq!(b["transitions"], a["transitions"], "{m}");
        assert_eq!(b["takes_traffic"], a["takes_traffic"], "{m}");
    }
    let still = whoami(&inet, vip, 16);
    assert!(still.iter().any(|w| w == "acme connector 0"), "{still:?}");
    assert!(still.iter().any(|w| w == "acme connector 1"), "{still:?}");
    let _b0 = start_server(&lab, "beta", Role::Connector, 0, 443, &beta0);

    // What operators saw: the transitions and the switch as events.
    let ev = events(&agent);
    let down = ev
        .iter()
        .find(|e| e["type"] == "health" && e["tenant"] == "acme" && e["machine"] == "core/0" && e["state"] == "down")
        .unwrap_or_else(|| panic!("no health event of core/0 going down in {ev:?}"));
    assert_eq!(down["result"], "fail");
    assert!(down["why"].as_str().is_some_and(|w| !w.is_empty()));
    let sw = ev
        .iter()
        .find(|e| e["type"] == "core_switch" && e["tenant"] == "acme")
        .unwrap_or_else(|| panic!("no core_switch event in {ev:?}"));
    assert_eq!(sw["from"], "core/0");
    assert_eq!(sw["to"], "core/1");
    assert_eq!(sw["why"], "probe");
    assert!(
        ev.iter()
            .any(|e| e["type"] == "core_switch" && e["tenant"] == "acme" && e["to"] == "core/0"),
        "no failback switch in {ev:?}"
    );
    assert!(ev.iter().any(|e| e["type"] == "health"
        && e["tenant"] == "acme"
        && e["machine"] == "connector/0"
        && e["state"] == "up"
        && e["result"] == "pass"));
    a.kill();
}
