//! The event stream end to end: a running agent, monitors attached through
//! the API socket (`carwash monitor`), a flood of 100,000 denied SYNs sent
//! into the uplink, policy applied and refused, the flow log, and a log
//! that cannot be written.
mod agent_common;

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use agent_common::{AgentProc, AgentSetup, carwash_bin};
use carwash_tests::inbound_cases::{Expect, inbound_cases};
use carwash_tests::packets::syn4;
use carwash_tests::require_root;
use dataplane::api::{Document, Request};
use dataplane::event::Event;
use dataplane_common::DropReason;
use netlab::netns::NetNs;

/// Sends `frame` `n` times out of `dev` in `ns` (a raw socket): the
/// frames arrive at the other end of the veth, under its XDP program.
fn send_frames(ns: &NetNs, dev: &str, frame: &[u8], n: u32) -> u32 {
    let dev = std::ffi::CString::new(dev).unwrap();
    let frame = frame.to_vec();
    ns.enter(move || {
        // SAFETY: plain socket calls with valid arguments.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "AF_PACKET socket");
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = libc::if_nametoindex(dev.as_ptr()) as i32;
            sll.sll_halen = 6;
            let mut sent = 0;
            let mut tries = 0u64;
            while sent < n && tries < 10 * n as u64 {
                tries += 1;
                let r = libc::sendto(
                    fd,
                    frame.as_ptr() as *const libc::c_void,
                    frame.len(),
                    0,
                    &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                if r > 0 {
                    sent += 1;
                } else {
                    std::thread::yield_now();
                }
            }
            libc::close(fd);
            sent
        }
    })
    .unwrap()
}

/// A running `carwash monitor` and the events it printed (read by a thread).
struct Monitor {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Monitor {
    fn start(agent: &AgentProc, args: &[&str]) -> Monitor {
        let mut child = Command::new(carwash_bin())
            .args(["monitor", "--socket"])
            .arg(&agent.socket)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Monitor { child, lines }
    }

    /// Events until none came for `quiet`.
    fn events(&self, quiet: Duration) -> Vec<Event> {
        let mut v = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(quiet) {
            v.push(serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}")));
        }
        v
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_monitors(agent: &AgentProc, n: u64) -> Duration {
    let t0 = Instant::now();
    loop {
        let got = agent.status().events.map(|e| e.monitors).unwrap_or(0);
        if got == n {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{got} monitors, want {n}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn denied_syn() -> (Vec<u8>, IpAddr) {
    let c = inbound_cases()
        .into_iter()
        .find(|c| matches!(c.expect, Expect::Drop(DropReason::NotAllowed)) && c.src.is_ipv4())
        .unwrap();
    let (IpAddr::V4(s), IpAddr::V4(d)) = (c.src, c.dst) else {
        unreachable!()
    };
    (syn4(s, d, c.sport, c.dport), c.src)
}

#[test]
fn a_flood_reaches_monitors_and_the_log_within_the_budget_and_adds_up() {
    require_root();
    let setup = AgentSetup::new(&["acme.toml", "beta.toml"]).unwrap();
    let (rate, burst) = (100u64, 50u64);
    let mut cfg = std::fs::read_to_string(&setup.config).unwrap();
    cfg.push_str(&format!("[events]\nrate_per_sec = {rate}\nburst = {burst}\n"));
    std::fs::write(&setup.config, cfg).unwrap();
    let agent = setup.start().unwrap();
    let t0 = Instant::now();
    let all = Monitor::start(&agent, &["-o", "json"]);
    let attached = wait_monitors(&agent, 1);
    eprintln!("a monitor attached {:?} after it was started", t0.elapsed());
    assert!(attached < Duration::from_secs(2), "monitor took {attached:?} to attach");
    let drops = Monitor::start(&agent, &["-o", "json", "--type", "drop", "--tenant", "acme"]);
    let policy = Monitor::start(&agent, &["-o", "json", "--type", "policy"]);
    wait_monitors(&agent, 3);

    // 100,000 denied SYNs from one source, while the API is asked for the
    // status over and over: the agent must stay responsive.
    let (frame, src) = denied_syn();
    let flood = 100_000u32;
    let ns = NetNs::open(setup.ns.name()).unwrap();
    let sender = std::thread::spawn(move || send_frames(&ns, "upeer", &frame, flood));
    let t_flood = Instant::now();
    let mut slowest = Duration::ZERO;
    while !sender.is_finished() {
        let t = Instant::now();
        agent.status();
        slowest = slowest.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = sender.join().unwrap();
    let flood_time = t_flood.elapsed();
    assert_eq!(sent, flood);
    eprintln!("{flood} SYNs in {flood_time:?}; slowest status answer during the flood {slowest:?}");
    assert!(
        slowest < Duration::from_secs(2),
        "status took {slowest:?} during the flood"
    );

    // The summaries of what was held back come within a second or two.
    let events = all.events(Duration::from_secs(4));
    let of_flood: Vec<&Event> = events
        .iter()
        .filter(|e| e.str("tenant") == Some("acme") && (e.kind == "drop" || e.kind == "summary"))
        .collect();
    let reported = of_flood.iter().filter(|e| e.kind == "drop").count() as u64;
    let suppressed: u64 = of_flood
        .iter()
        .filter(|e| e.kind == "summary")
        .map(|e| e.fields["suppressed"].as_u64().unwrap())
        .sum();
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    let budget = cpus * (burst + rate * (flood_time.as_secs() + 2));
    eprintln!("{reported} drop events, {suppressed} suppressed (budget {budget})");
    assert_eq!(reported + suppressed, flood as u64, "events and summaries add up");
    assert!(reported <= budget, "{reported} events over the budget {budget}");
    let first = of_flood.iter().find(|e| e.kind == "drop").unwrap();
    assert_eq!(first.str("reason"), Some("not_allowed"));
    assert_eq!(first.str("src"), Some(src.to_string().as_str()));
    assert_eq!(first.str("interface"), Some("uplink"));
    assert_eq!(first.str("class"), Some("https"));
    assert_eq!(first.str("proto"), Some("tcp"));
    // The policy generation in force (the first set applied), not the
    // copy of the maps it lives in.
    assert_eq!(first.fields["generation"].as_u64(), Some(agent.status().generation));

    // The filtered monitor saw the same; the policy monitor none of it.
    let filtered = drops.events(Duration::from_millis(500));
    assert_eq!(filtered.len(), of_flood.len());
    assert!(policy.events(Duration::from_millis(200)).is_empty());

    // The flow log holds them too.
    let log = std::fs::read_to_string(setup.dir.path().join("log/events.jsonl")).unwrap();
    let logged = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Event>(l).ok())
        .filter(|e| e.str("tenant") == Some("acme") && e.kind == "drop")
        .count() as u64;
    assert_eq!(logged, reported);
    let st = agent.status().events.unwrap();
    assert_eq!(st.log_error, None);
    assert_eq!(st.monitor_lost, 0, "{st:#?}");

    // Policy applied, then refused.
    let beta = std::fs::read_to_string(setup.policy_dir.join("beta.toml")).unwrap();
    let beta2 = beta.replace("vips = [", "vips = [\"203.0.113.99\", ");
    assert_ne!(beta, beta2);
    let apply = |content: String| {
        agent.call(&Request::Apply {
            documents: vec![Document {
                name: "beta.toml".into(),
                content,
            }],
            tenants: vec![],
            dry_run: false,
        })
    };
    let r = apply(beta2.clone());
    assert!(r.ok, "{r:?}");
    let report = r.applied.unwrap();
    let r = apply(beta2.replace("vni =", "vni = \"x\"\nold_vni ="));
    assert!(!r.ok);
    let pe = policy.events(Duration::from_millis(500));
    assert_eq!(pe.len(), 2, "{pe:#?}");
    assert_eq!(pe[0].str("result"), Some("applied"));
    assert_eq!(pe[0].fields["generation"].as_u64(), Some(report.generation));
    assert_eq!(pe[0].str("digest"), Some(report.digest.as_str()));
    // The set sent is beta alone: acme goes.
    assert_eq!(pe[0].fields["tenants"], serde_json::json!(["beta", "acme"]));
    assert_eq!(pe[0].fields["changed"], serde_json::json!(["beta"]));
    assert_eq!(pe[0].fields["removed"], serde_json::json!(["acme"]));
    assert_eq!(pe[1].str("result"), Some("refused"));
    assert_eq!(pe[1].fields["generation"].as_u64(), Some(report.generation));
    let errors = pe[1].fields["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e.as_str().unwrap().contains("beta.toml")),
        "{errors:?}"
    );

    // History, from the flow log: the same filters, `--from` a file and
    // `--since` an age (through the host config's `event_log`).
    let log_file = setup.dir.path().join("log/events.jsonl");
    let from = agent_common::carwash(&["monitor", "--from", log_file.to_str().unwrap(), "--type", "policy"]);
    assert!(from.status.success(), "{from:?}");
    let text = String::from_utf8_lossy(&from.stdout).to_string();
    eprintln!("carwash monitor --from {} --type policy:\n{text}", log_file.display());
    // Startup (acme and beta added), beta changed, the refusal.
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.lines().all(|l| l.contains(" policy ")), "{text}");
    let since = agent_common::carwash(&[
        "monitor",
        "--config",
        setup.config.to_str().unwrap(),
        "--since",
        "1h",
        "-o",
        "json",
        "--reason",
        "not_allowed",
    ]);
    assert!(since.status.success(), "{since:?}");
    let n = String::from_utf8_lossy(&since.stdout).lines().count() as u64;
    assert_eq!(n, reported, "--since 1h --reason not_allowed");
    let none = agent_common::carwash(&["monitor", "--from", log_file.to_str().unwrap(), "--addr", "192.0.2.99"]);
    assert!(none.status.success() && none.stdout.is_empty(), "{none:?}");
    for e in events.iter().take(3) {
        eprintln!("{}", serde_json::to_string(e).unwrap());
    }
    for e in events.iter().filter(|e| e.kind == "summary").take(2) {
        eprintln!("{}", e.line());
    }

    // A monitor whose reader goes away (a closed pipe) ends, and so does
    // its stream; so does one stopped by Ctrl-C.
    drop(drops);
    let mut all = all;
    let _ = all.child.kill();
    let _ = all.child.wait();
    apply(beta.clone());
    wait_monitors(&agent, 1);
    let mut policy = policy;
    policy.child.kill().ok();
    let _ = policy.child.wait();
    agent.stop();
}

#[test]
fn a_monitor_that_closes_its_pipe_exits_cleanly() {
    require_root();
    let setup = AgentSetup::new(&["acme.toml"]).unwrap();
    let agent = setup.start().unwrap();
    // `carwash monitor | head -1`, with the shell's pipe.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} monitor --socket {} | head -1",
            carwash_bin().display(),
            agent.socket.display()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_monitors(&agent, 1);
    let (frame, _) = denied_syn();
    let ns = NetNs::open(setup.ns.name()).unwrap();
    let t0 = Instant::now();
    loop {
        send_frames(&ns, "upeer", &frame, 1);
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "{st}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "the monitor did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    eprintln!("carwash monitor | head -1:\n{line}");
    assert!(line.contains(" drop ") && line.contains("reason=not_allowed"), "{line}");
    // The agent lets go of it.
    wait_monitors(&agent, 0);
    agent.stop();
}

#[test]
fn an_unwritable_flow_log_is_reported_and_nothing_stops() {
    require_root();
    let setup = AgentSetup::new(&["acme.toml"]).unwrap();
    // A file where the log's directory should be.
    let blocker = setup.dir.path().join("blocked");
    std::fs::write(&blocker, b"").unwrap();
    let cfg = std::fs::read_to_string(&setup.config).unwrap();
    let cfg = cfg
        .lines()
        .filter(|l| !l.starts_with("event_log"))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        + &format!("event_log = \"{}\"\n", blocker.join("events.jsonl").display());
    std::fs::write(&setup.config, cfg).unwrap();
    let agent = setup.start().unwrap();
    let mon = Monitor::start(&agent, &["-o", "json"]);
    wait_monitors(&agent, 1);
    let (frame, _) = denied_syn();
    let ns = NetNs::open(setup.ns.name()).unwrap();
    assert_eq!(send_frames(&ns, "upeer", &frame, 10), 10);
    let events = mon.events(Duration::from_secs(2));
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert!(kinds.contains(&"drop"), "{kinds:?}");
    let st = agent.status().events.unwrap();
    assert!(st.log_failed > 0, "{st:#?}");
    assert!(
        st.log_error.as_deref().is_some_and(|e| e.contains("blocked")),
        "{st:#?}"
    );
    // `carwash status` says so.
    let st = agent_common::carwash(&[
        "status",
        "--socket",
        agent.socket.to_str().unwrap(),
        "--pin-path",
        setup.pin_path().to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("flow log") && l.contains("CANNOT BE WRITTEN")),
        "{text}"
    );
    // Said once in the agent's log, and the agent goes on answering.
    let log = agent.log_text();
    assert_eq!(log.matches("cannot write the flow log").count(), 1, "{log}");
    assert!(agent.call(&Request::Reload).ok);
    agent.stop();
}
