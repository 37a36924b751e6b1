//! The agent's metrics endpoint, scraped from a real `carwash agent` on a
//! loopback port of its namespace: the counters move with packets run
//! through the pinned uplink program (BPF_PROG_TEST_RUN on the live maps),
//! a known tenant's series carry its labels, policy changes show, other
//! paths are 404, garbage is 400, a silent client 408, connections beyond
//! the endpoint's 64 closed at once, none of which stops the agent; `metrics =
//! "off"` serves nothing and a port in use stops the start with an error.
mod agent_common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::Duration;

use agent_common::AgentSetup;
use carwash_tests::fixture::XDP_DROP;
use carwash_tests::packets::syn4;
use carwash_tests::require_root;
use dataplane::Dataplane;
use dataplane::api::{Document, Request};
use dataplane_common::programs;
use netlab::netns::NetNs;

/// A port nobody listens on in `ns`'s loopback.
fn free_port(ns: &NetNs) -> u16 {
    ns.enter(|| {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("binding a loopback port")
            .port()
    })
    .unwrap()
}

/// Appends `metrics = "..."` to the setup's host configuration.
fn set_metrics(setup: &AgentSetup, value: &str) {
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text.push_str(&format!("metrics = \"{value}\"\n"));
    std::fs::write(&setup.config, text).unwrap();
}

/// Sends `request` raw to 127.0.0.1:`port` in `ns` and returns the whole answer.
fn raw(ns: &NetNs, port: u16, request: &[u8]) -> std::io::Result<String> {
    ns.enter(|| {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.write_all(request)?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    })
    .unwrap()
}

struct Answer {
    status: u16,
    headers: String,
    body: String,
}

fn get(ns: &NetNs, port: u16, method: &str, path: &str, extra: &str) -> Answer {
    let text = raw(
        ns,
        port,
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n").as_bytes(),
    )
    .expect("HTTP request");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    Answer {
        status,
        headers: head.to_string(),
        body: body.to_string(),
    }
}

/// Series (`name{labels}`) → value, from the Prometheus text format.
fn parse(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {l:?}"));
            (
                series.to_string(),
                value.parse().unwrap_or_else(|_| panic!("bad value in {l:?}")),
            )
        })
        .collect()
}

fn scrape(ns: &NetNs, port: u16) -> BTreeMap<String, f64> {
    let a = get(ns, port, "GET", "/metrics", "");
    assert_eq!(a.status, 200, "{}\n{}", a.headers, a.body);
    assert!(
        a.headers.contains("Content-Type: text/plain; version=0.0.4"),
        "{}",
        a.headers
    );
    parse(&a.body)
}

fn value(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    *m.get(series).unwrap_or_else(|| {
        panic!(
            "no series {series}; have:\n{}",
            m.keys().cloned().collect::<Vec<_>>().join("\n")
        )
    })
}

#[test]
fn scrapes_counters_tenants_and_policy_and_survives_bad_requests() {
    require_root();
    let setup = AgentSetup::new(&["acme.toml", "beta.toml"]).unwrap();
    let port = free_port(&setup.ns);
    set_metrics(&setup, &format!("127.0.0.1:{port}"));
    let agent = setup.start().unwrap();
    let ns = &setup.ns;
    let status = agent.status();

    let before = scrape(ns, port);
    assert_eq!(value(&before, "carwash_tenants"), 2.0);
    assert_eq!(value(&before, "carwash_policy_generation"), status.generation as f64);
    assert_eq!(value(&before, "carwash_tenant_ready{tenant=\"acme\"}"), 1.0);
    assert_eq!(value(&before, "carwash_tenant_ready{tenant=\"beta\"}"), 1.0);
    assert!(value(&before, "carwash_map_memory_bytes{map=\"ADDRS\"}") > 0.0);
    assert!(value(&before, "carwash_map_memory_bytes{map=\"ALLOW_V4\"}") > 0.0);
    assert!(before.contains_key("carwash_policy_last_apply_duration_seconds"));
    assert!(value(&before, "carwash_policy_apply_attempts_total") >= 1.0);
    for program in ["uplink", "fabric"] {
        assert!(before.contains_key(&format!("carwash_program_packets_total{{program=\"{program}\"}}")));
        assert!(before.contains_key(&format!(
            "carwash_program_dropped_total{{program=\"{program}\",reason=\"not_allowed\"}}"
        )));
    }
    for class in ["https", "jms"] {
        assert!(before.contains_key(&format!(
            "carwash_tenant_steered_packets_total{{tenant=\"acme\",class=\"{class}\"}}"
        )));
    }

    // Three SYNs from a source acme does not allow, through the pinned
    // program on the live maps, in the agent's namespace.
    let runner = Dataplane::load(Some(setup.pin_path())).unwrap();
    let denied = Ipv4Addr::new(192, 0, 2, 66);
    let vip = Ipv4Addr::new(203, 0, 113, 10);
    let frames: Vec<Vec<u8>> = (0..3).map(|i| syn4(denied, vip, 40000 + i, 443)).collect();
    let bytes: usize = frames.iter().map(Vec::len).sum();
    ns.enter(|| {
        for f in &frames {
            let (verdict, _) = runner.run(programs::UPLINK, f).unwrap();
            assert_eq!(verdict, XDP_DROP);
        }
    })
    .unwrap();

    let after = scrape(ns, port);
    let delta = |s: &str| value(&after, s) - before.get(s).copied().unwrap_or(0.0);
    assert_eq!(
        delta("carwash_tenant_dropped_packets_total{tenant=\"acme\",class=\"https\",reason=\"not_allowed\"}"),
        3.0
    );
    assert_eq!(
        delta("carwash_tenant_dropped_bytes_total{tenant=\"acme\",class=\"https\"}"),
        bytes as f64
    );
    assert_eq!(
        delta("carwash_program_dropped_total{program=\"uplink\",reason=\"not_allowed\"}"),
        3.0
    );
    assert!(delta("carwash_program_packets_total{program=\"uplink\"}") >= 3.0);
    assert!(delta("carwash_program_action_drop_total{program=\"uplink\"}") >= 3.0);
    assert_eq!(
        delta("carwash_tenant_steered_packets_total{tenant=\"acme\",class=\"https\"}"),
        0.0
    );
    assert!(
        !after
            .keys()
            .any(|k| k.contains("tenant=\"beta\"") && k.contains("reason=")),
        "beta dropped nothing"
    );

    // A policy change shows: beta removed, generation + 1.
    let acme = std::fs::read_to_string(agent_common::repo_policies_dir().join("acme.toml")).unwrap();
    let r = agent.call(&Request::Apply {
        documents: vec![Document {
            name: "acme.toml".into(),
            content: acme,
        }],
        tenants: vec![],
        dry_run: false,
    });
    assert!(r.ok, "{r:?}");
    let changed = scrape(ns, port);
    assert_eq!(value(&changed, "carwash_tenants"), 1.0);
    assert_eq!(
        value(&changed, "carwash_policy_generation"),
        status.generation as f64 + 1.0
    );
    assert!(!changed.keys().any(|k| k.contains("tenant=\"beta\"")));
    assert_eq!(
        value(
            &changed,
            "carwash_tenant_dropped_packets_total{tenant=\"acme\",class=\"https\",reason=\"not_allowed\"}"
        ),
        value(
            &after,
            "carwash_tenant_dropped_packets_total{tenant=\"acme\",class=\"https\",reason=\"not_allowed\"}"
        )
    );

    // OpenMetrics when asked for; HEAD gives the head only.
    let om = get(
        ns,
        port,
        "GET",
        "/metrics",
        "Accept: application/openmetrics-text; version=1.0.0\r\n",
    );
    assert_eq!(om.status, 200);
    assert!(om.headers.contains("application/openmetrics-text"), "{}", om.headers);
    assert!(om.body.ends_with("# EOF\n"));
    let head = get(ns, port, "HEAD", "/metrics", "");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());

    // Other paths, other methods, garbage, an endless head, a silent client.
    assert_eq!(get(ns, port, "GET", "/", "").status, 404);
    assert_eq!(get(ns, port, "GET", "/metrics/x", "").status, 404);
    assert_eq!(get(ns, port, "GET", "/favicon.ico", "").status, 404);
    let post = get(ns, port, "POST", "/metrics", "Content-Length: 0\r\n");
    assert_eq!(post.status, 405);
    assert!(post.headers.contains("Allow: GET, HEAD"));
    let garbage = raw(
        ns,
        port,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 garbage\r\n\r\n",
    )
    .unwrap();
    assert!(garbage.starts_with("HTTP/1.1 400 "), "{garbage:?}");
    let huge = raw(
        ns,
        port,
        format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000)).as_bytes(),
    );
    if let Ok(h) = huge {
        // The agent may close while the client is still writing.
        assert!(h.is_empty() || h.starts_with("HTTP/1.1 431 "), "{h:?}");
    }
    let silent = ns
        .enter(|| TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap())
        .unwrap();
    ns.enter(|| drop(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap()))
        .unwrap();
    // Served while a silent client holds a connection open.
    let still = scrape(ns, port);
    assert_eq!(value(&still, "carwash_tenants"), 1.0);
    // The silent client is told off after the agent's 10 s and closed.
    let mut silent = silent;
    silent.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut told = String::new();
    silent.read_to_string(&mut told).unwrap();
    assert!(told.starts_with("HTTP/1.1 408 "), "{told:?}");

    let mut agent = agent;
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent died:\n{}",
        agent.log_text()
    );
    assert!(agent.status().pid > 0);
}

#[test]
fn metrics_off_serves_nothing_and_a_port_in_use_stops_the_start() {
    require_root();
    let setup = AgentSetup::new(&["acme.toml"]).unwrap();
    // Taken in the agent's namespace and held for the whole test.
    let taken = setup.ns.enter(|| TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
    let port = taken.local_addr().unwrap().port();
    let base = std::fs::read_to_string(&setup.config).unwrap();

    set_metrics(&setup, &format!("127.0.0.1:{port}"));
    let err = format!("{:#}", setup.start().err().expect("the agent started on a port in use"));
    assert!(
        err.contains(&format!("binding the metrics endpoint 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.contains("Address already in use"), "{err}");

    std::fs::write(&setup.config, &base).unwrap();
    set_metrics(&setup, "off");
    let agent = setup.start().unwrap();
    assert!(
        agent.log_text().contains("metrics endpoint off"),
        "{}",
        agent.log_text()
    );
    // Nothing listens on the default port in the agent's namespace.
    let refused = setup
        .ns
        .enter(|| TcpStream::connect((Ipv4Addr::LOCALHOST, 9464)).map(|_| ()))
        .unwrap();
    assert!(refused.is_err(), "something answers on 127.0.0.1:9464 with metrics off");
    drop(taken);
}

#[test]
fn connections_beyond_the_bound_are_closed_at_once_and_the_agent_goes_on() {
    require_root();
    let setup = AgentSetup::new(&["acme.toml"]).unwrap();
    let port = free_port(&setup.ns);
    set_metrics(&setup, &format!("127.0.0.1:{port}"));
    let agent = setup.start().unwrap();
    let ns = &setup.ns;
    let connect = || {
        ns.enter(|| TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap())
            .unwrap()
    };
    // 64 silent clients take every slot the endpoint has.
    let held: Vec<TcpStream> = (0..64).map(|_| connect()).collect();
    std::thread::sleep(Duration::from_millis(300));
    // The next one is closed without a word, at once.
    let mut extra = connect();
    extra.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t0 = std::time::Instant::now();
    let mut buf = Vec::new();
    let n = extra.read_to_end(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf));
    assert!(t0.elapsed() < Duration::from_secs(3), "closed after {:?}", t0.elapsed());
    // The agent's loop and its API are not held up meanwhile.
    let t0 = std::time::Instant::now();
    assert!(agent.status().pid > 0);
    assert!(t0.elapsed() < Duration::from_secs(2), "status took {:?}", t0.elapsed());
    // Slots come back as clients go: then scrapes are served again.
    drop(held);
    let t0 = std::time::Instant::now();
    loop {
        if let Ok(text) = raw(ns, port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            && text.starts_with("HTTP/1.1 200 ")
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no scrape served after the clients left"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
