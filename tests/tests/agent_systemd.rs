//! The agent as a systemd service: the notify protocol spoken to a
//! `NOTIFY_SOCKET` datagram socket of the test's own (READY=1 only once the
//! programs are attached and the first policy set is in force, STATUS= with
//! the generation, WATCHDOG=1 at the rate WATCHDOG_USEC asks, RELOADING=1 /
//! READY=1 around SIGHUP, STOPPING=1), and a first policy set that is
//! refused: no READY=1, a STATUS= naming the error, exit code 78.
mod agent_common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use agent_common::{AgentSetup, carwash_bin};
use dataplane::api::{self, Request};

/// The test's end of `NOTIFY_SOCKET`.
struct Manager {
    sock: UnixDatagram,
}

impl Manager {
    fn bind(path: &Path) -> Manager {
        let sock = UnixDatagram::bind(path).expect("binding the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        Manager { sock }
    }

    /// The next message, if one comes within `timeout`.
    fn next(&self, timeout: Duration) -> Option<String> {
        let t0 = Instant::now();
        let mut buf = [0u8; 4096];
        while t0.elapsed() < timeout {
            if let Ok(n) = self.sock.recv(&mut buf) {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        None
    }

    /// Messages until one contains `line`; panics after `timeout`.
    fn until(&self, line: &str, timeout: Duration) -> (String, Vec<String>) {
        let t0 = Instant::now();
        let mut before = Vec::new();
        while t0.elapsed() < timeout {
            if let Some(m) = self.next(Duration::from_millis(200)) {
                if m.lines().any(|l| l == line) {
                    return (m, before);
                }
                before.push(m);
            }
        }
        panic!("no {line} within {timeout:?}; got {before:?}");
    }
}

fn spawn(setup: &AgentSetup, notify: &Path, watchdog_usec: Option<u64>) -> Child {
    let log = std::fs::File::create(setup.dir.path().join("agent.log")).unwrap();
    let mut cmd = setup.ns.command(carwash_bin().to_str().unwrap()).unwrap();
    cmd.args(["agent", "--config"])
        .arg(&setup.config)
        .env("NOTIFY_SOCKET", notify)
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    match watchdog_usec {
        Some(u) => cmd.env("WATCHDOG_USEC", u.to_string()),
        None => cmd.env_remove("WATCHDOG_USEC"),
    };
    cmd.spawn().expect("starting the agent")
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
}

fn status_line(msg: &str) -> &str {
    msg.lines().find_map(|l| l.strip_prefix("STATUS=")).unwrap_or("")
}

#[test]
fn ready_only_once_applied_then_watchdog_reload_and_stop() {
    let setup = AgentSetup::new(&["acme.toml", "beta.toml"]).unwrap();
    let path = setup.dir.path().join("notify.sock");
    let sm = Manager::bind(&path);
    // 400 ms: the agent pets every 200 ms.
    let mut agent = Killed(spawn(&setup, &path, Some(400_000)));

    let (ready, before) = sm.until("READY=1", Duration::from_secs(60));
    assert!(
        before.iter().all(|m| !m.contains("READY=1")),
        "nothing before the first READY=1 says ready: {before:?}"
    );
    // What READY=1 promises is already true when it arrives: the programs
    // are attached and the first set is in force.
    let status = *api::call(&setup.socket, &Request::Status, Duration::from_secs(10))
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.generation, 1, "{status:?}");
    assert_eq!(status.tenants.len(), 2, "{status:?}");
    assert!(
        status.attachments.iter().any(|a| a.program == "carwash_uplink"),
        "the uplink program is attached: {:?}",
        status.attachments
    );
    let s = status_line(&ready);
    assert!(
        s.contains("generation 1") && s.contains("2 tenants"),
        "STATUS= says what is in force: {s}"
    );

    // The watchdog: about one pet per 200 ms, from the agent's own loop.
    let t0 = Instant::now();
    let mut pets = 0;
    while t0.elapsed() < Duration::from_secs(2) {
        if let Some(m) = sm.next(Duration::from_millis(100)) {
            pets += m.lines().filter(|l| *l == "WATCHDOG=1").count();
        }
    }
    assert!(
        (6..=14).contains(&pets),
        "{pets} WATCHDOG=1 in 2 s at WatchdogSec 400 ms (every 200 ms)"
    );

    // SIGHUP: RELOADING=1 with the monotonic time systemd matches, then READY=1.
    signal(&agent.0, libc::SIGHUP);
    let (reloading, _) = sm.until("RELOADING=1", Duration::from_secs(10));
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "RELOADING=1 carries MONOTONIC_USEC: {reloading:?}"
    );
    let (ready, _) = sm.until("READY=1", Duration::from_secs(30));
    assert!(status_line(&ready).contains("generation 1"), "{ready:?}");

    // A refused set later on is told in STATUS=, the set in force stays.
    std::fs::write(setup.policy_dir.join("broken.toml"), "name = \"broken\"\nvni = 0\n").unwrap();
    let t0 = Instant::now();
    let refused = loop {
        let m = sm.next(Duration::from_millis(200)).unwrap_or_default();
        let s = status_line(&m);
        if s.contains("refused") {
            break s.to_string();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no STATUS= about the refused set"
        );
    };
    assert!(
        refused.contains("broken.toml") && refused.contains("generation 1"),
        "STATUS= names the file and what stays in force: {refused}"
    );

    signal(&agent.0, libc::SIGTERM);
    sm.until("STOPPING=1", Duration::from_secs(10));
    let rc = agent.0.wait().unwrap();
    assert!(rc.success(), "a clean stop: {rc}");
}

#[test]
fn refused_first_policy_set_is_never_ready() {
    let setup = AgentSetup::new(&["acme.toml"]).unwrap();
    std::fs::write(
        setup.policy_dir.join("beta.toml"),
        std::fs::read_to_string(setup.policy_dir.join("acme.toml"))
            .unwrap()
            .replace("name = \"acme\"", "name = \"beta\""),
    )
    .unwrap();
    let path = setup.dir.path().join("notify.sock");
    let sm = Manager::bind(&path);
    let mut agent = Killed(spawn(&setup, &path, None));

    let t0 = Instant::now();
    let rc = loop {
        if let Some(rc) = agent.0.try_wait().unwrap() {
            break rc;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the agent did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(rc.code(), Some(78), "EX_CONFIG for a refused first set");
    let mut msgs = Vec::new();
    while let Some(m) = sm.next(Duration::from_millis(300)) {
        msgs.push(m);
    }
    assert!(msgs.iter().all(|m| !m.contains("READY=1")), "never ready: {msgs:?}");
    let status = msgs
        .iter()
        .map(|m| status_line(m))
        .find(|s| !s.is_empty())
        .unwrap_or("");
    assert!(
        status.contains("refused") && (status.contains("acme.toml") || status.contains("beta.toml")),
        "STATUS= says why: {status:?} ({msgs:?})"
    );
    let log = std::fs::read_to_string(setup.dir.path().join("agent.log")).unwrap();
    assert!(log.contains("not ready"), "the log says so too:\n{log}");
}
