//! Redirects the kernel cannot deliver are visible: on a lab whose veths
//! have GRO off (so their peers run no NAPI, and XDP frames redirected
//! into them are dropped by the kernel after the program returned
//! XDP_REDIRECT), the agent warns at attach time, naming each interface
//! and what to change, and the frames a client's connection attempts lose
//! show up per interface in `carwash stats`, `carwash status` and the
//! metrics, next to the `steered` count that alone would have looked fine.
mod agent_common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use agent_common::{LabAgent, carwash};
use carwash_tests::require_root;
use netlab::lab::{ALLOWED_CLIENT_V4, HOST_UNDERLAY_PORT, INET_IF, LabConfig, LabGuard};
use netlab::netns::{NetNs, VethSetup};
use serde_json::Value;

fn json(args: &[&str]) -> Value {
    let out = carwash(args);
    assert!(
        out.status.success(),
        "carwash {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("carwash {args:?}: {e}"))
}

fn metrics(ns: &NetNs, port: u16) -> String {
    ns.enter(|| {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("metrics endpoint");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .unwrap()
}

/// Frames refused into the interface of role `role`, as `carwash stats`
/// reports them.
fn refused(stats: &Value, role: &str) -> u64 {
    stats["redirect_failures"]
        .as_array()
        .expect("redirect_failures in carwash stats")
        .iter()
        .filter(|f| f["role"] == role)
        .map(|f| f["frames"].as_u64().unwrap())
        .sum()
}

#[test]
fn refused_redirects_are_warned_about_and_counted() {
    require_root();
    let lab = LabGuard::up(&LabConfig {
        veth: VethSetup {
            complete_checksums: true,
            gro: false,
        },
        ..LabConfig::unique()
    })
    .unwrap();
    let host = NetNs::open(&lab.host).unwrap();
    let inet = NetNs::open(&lab.inet).unwrap();
    let la = LabAgent::new(&lab, "redirect", "").unwrap();
    let port = host
        .enter(|| TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
        .unwrap();
    let config = std::fs::read_to_string(&la.config).unwrap();
    let config = config.replace("\"127.0.0.1:0\"", &format!("\"127.0.0.1:{port}\""));
    std::fs::write(&la.config, config).unwrap();
    let agent = la.start(&host).unwrap();
    let pin = la.pin_path().to_str().unwrap().to_string();

    // The warnings at attach time name the interface and what to change.
    let log = agent.log_text();
    for dev in ["uplink", "fabric"] {
        assert!(
            log.lines()
                .any(|l| l.contains("WARN") && l.contains(&format!("{dev} is a veth whose peer runs no NAPI"))),
            "no warning about {dev}:\n{log}"
        );
    }
    assert!(log.contains("ethtool -K PEER gro on"), "{log}");

    // A client tries the core's JMS port: its SYNs are steered into the
    // fabric, where the kernel drops them.
    let vip = lab.tenant("acme").unwrap().vip_v4().unwrap();
    let before = json(&["stats", "--pin-path", &pin, "-o", "json"]);
    assert_eq!(refused(&before, "fabric"), 0, "{before:#}");
    let out = inet
        .exec(&[
            "socat",
            "-T",
            "2",
            "-",
            &format!("TCP4:{vip}:61616,bind={ALLOWED_CLIENT_V4},connect-timeout=2"),
        ])
        .unwrap();
    assert!(!out.status.success(), "the connection cannot succeed");

    let t0 = Instant::now();
    let stats = loop {
        let s = json(&["stats", "--pin-path", &pin, "-o", "json"]);
        if refused(&s, "fabric") > 0 || t0.elapsed() > Duration::from_secs(10) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let frames = refused(&stats, "fabric");
    let steered = stats["programs"]["uplink"]["counters"]["steered"].as_u64().unwrap();
    assert!(frames > 0, "no refused redirect into fabric counted: {stats:#}");
    assert!(steered >= frames, "each refused frame was counted steered: {stats:#}");
    let f = stats["redirect_failures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["role"] == "fabric")
        .unwrap();
    assert!(
        f["last_error"].as_str().unwrap().contains("EOPNOTSUPP"),
        "the kernel's reason: {f:#}"
    );
    // Named as the agent's namespace names them.
    let table = carwash(&["stats", "--pin-path", &pin, "--netns", &lab.host]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.to_lowercase().contains("redirect refused by the kernel into") && text.contains("fabric (fabric, ifindex"),
        "{text}"
    );

    // carwash status: the count, and the agent's warnings.
    let socket = la.socket.to_str().unwrap();
    let st = json(&[
        "status",
        "--pin-path",
        &pin,
        "--socket",
        socket,
        "--netns",
        &lab.host,
        "-o",
        "json",
    ]);
    let failures = st["pins"]["redirect_failures"].as_array().unwrap();
    assert!(
        failures
            .iter()
            .any(|f| f["role"] == "fabric" && f["interface"] == "fabric" && f["frames"].as_u64().unwrap() > 0),
        "{st:#}"
    );
    let interfaces = st["agent"]["interfaces"].as_array().unwrap();
    for i in interfaces {
        let w = i["warnings"].as_array().unwrap();
        assert!(
            w.iter().any(|w| w.as_str().unwrap().contains("GRO")),
            "no warning on {}: {st:#}",
            i["name"]
        );
    }
    let table = carwash(&["status", "--pin-path", &pin, "--socket", socket, "--netns", &lab.host]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("redirects refused") && text.contains("into fabric (fabric, ifindex"),
        "{text}"
    );
    assert!(text.contains("warning (fabric)"), "{text}");

    // The metrics endpoint.
    let m = metrics(&host, port);
    let line = m
        .lines()
        .find(|l| l.starts_with("carwash_redirect_refused_frames_total{") && l.contains("role=\"fabric\""))
        .unwrap_or_else(|| panic!("no refused-redirect series for fabric:\n{m}"));
    assert!(line.contains("interface=\"fabric\""), "{line}");
    let n: f64 = line.rsplit_once(' ').unwrap().1.parse().unwrap();
    assert!(n > 0.0, "{line}");

    // And the agent's log says so as it happens.
    let t0 = Instant::now();
    while !agent
        .log_text()
        .contains("the kernel refused frames redirected into this interface")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the agent did not report the refusals:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Doing what the warning says fixes it: GRO on on both peers. The
    // running agent notices within its housekeeping tick, a restarted one
    // finds nothing to warn about; the session goes through and no further
    // frame is refused.
    inet.run(&["ethtool", "-K", INET_IF, "gro", "on"]).unwrap();
    NetNs::open(&lab.underlay)
        .unwrap()
        .run(&["ethtool", "-K", HOST_UNDERLAY_PORT, "gro", "on"])
        .unwrap();
    let t0 = Instant::now();
    loop {
        let st = json(&["status", "--pin-path", &pin, "--socket", socket, "-o", "json"]);
        let warnings: usize = st["agent"]["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["warnings"].as_array().unwrap().len())
            .sum();
        if warnings == 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the running agent still warns: {st:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = agent.log_text();
    for dev in ["uplink", "fabric"] {
        assert!(
            log.lines()
                .any(|l| l.contains("takes redirected XDP frames now") && l.contains(&format!("interface={dev}"))),
            "{log}"
        );
    }
    agent.kill();
    let log_len = std::fs::read_to_string(&la.log).unwrap().len();
    let agent = la.start(&host).unwrap();
    let log = agent.log_text()[log_len..].to_string();
    assert!(!log.contains("runs no NAPI"), "{log}");
    let st = json(&["status", "--pin-path", &pin, "--socket", socket, "-o", "json"]);
    for i in st["agent"]["interfaces"].as_array().unwrap() {
        assert_eq!(i["warnings"], serde_json::json!([]), "{st:#}");
    }
    let out = inet
        .exec(&[
            "sh",
            "-c",
            &format!("printf 'hello\\n' | socat -t 2 - TCP4:{vip}:61616,bind={ALLOWED_CLIENT_V4}"),
        ])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hello"), "the echo: {text}");
    let after = json(&["stats", "--pin-path", &pin, "-o", "json"]);
    assert_eq!(refused(&after, "fabric"), frames, "{after:#}");
    drop(agent);
}
