//! End to end through the lab: the real agent (`carwash agent` in the lab's
//! host namespace) is killed with SIGKILL in the middle of long TLS
//! transfers through carwash; forwarding goes on without it, a new agent
//! adopts the pins, and the transfers finish byte for byte, without a
//! reset.
mod agent_common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use agent_common::LabAgent;
use carwash_tests::require_root;
use netlab::lab::{ALLOWED_CLIENT_V4, ALLOWED_CLIENT_V6, LabConfig, LabGuard, one_mib};

/// A rate-limited download of the lab's 1 MiB file through carwash, taking
/// about `secs` seconds.
fn slow_download(inet: &netlab::netns::NetNs, src: &str, url: &str, out: &std::path::Path, secs: u64) -> Child {
    let rate = format!("{}", (1u64 << 20) / secs);
    let mut cmd = inet.command("curl").unwrap();
    cmd.args([
        "-sSk",
        "--max-time",
        "90",
        "--limit-rate",
        &rate,
        "--interface",
        src,
        "-o",
    ])
    .arg(out)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    cmd.spawn().unwrap()
}

fn stderr_of(d: &mut Child) -> String {
    let mut err = String::new();
    if let Some(mut e) = d.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    err
}

fn quick(inet: &netlab::netns::NetNs, src: &str, url: &str) -> Result<String, String> {
    let out = inet
        .exec(&["curl", "-sk", "--max-time", "5", "--interface", src, url])
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr)))
    }
}

#[test]
fn transfers_survive_sigkill_of_the_agent_and_a_new_agent_adopts() {
    require_root();
    let lab = LabGuard::up(&LabConfig::unique()).unwrap();
    let host = lab.host_ns().unwrap();
    let inet = lab.inet_ns().unwrap();
    let agent = LabAgent::new(&lab, "hitless", "").unwrap();
    let tmp = &agent.dir;

    let a1 = agent.start(&host).unwrap();
    let s1 = a1.status();
    let acme = lab.tenant("acme").unwrap();
    let (vip4, vip6) = (acme.vip_v4().unwrap(), acme.vip_v6().unwrap());
    let (c4, c6) = (ALLOWED_CLIENT_V4.to_string(), ALLOWED_CLIENT_V6.to_string());
    let whoami4 = format!("https://{vip4}/whoami");
    assert!(
        quick(&inet, &c4, &whoami4).unwrap().contains("acme"),
        "carwash forwards with the agent:\n{}",
        a1.log_text()
    );

    // An interactive TCP session (JMS port, echoed by the active core): a
    // line every 50 ms, each answered, across the kill and the restart.
    let mut session = Echo::start(&inet, &c4, &vip4.to_string(), 61616);
    std::thread::sleep(Duration::from_millis(500));

    // Two rate-limited downloads, IPv4 and IPv6, ~8 s each.
    let (f4, f6) = (tmp.path().join("v4.bin"), tmp.path().join("v6.bin"));
    let mut d4 = slow_download(&inet, &c4, &format!("https://{vip4}/1MiB.bin"), &f4, 20);
    let mut d6 = slow_download(&inet, &c6, &format!("https://[{vip6}]/1MiB.bin"), &f6, 20);
    std::thread::sleep(Duration::from_secs(2));
    a1.kill();
    let killed_at = session.t0.elapsed();

    // No agent: carwash still forwards (new connections too).
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        quick(&inet, &c4, &whoami4).is_ok(),
        "new connections while no agent runs"
    );
    std::thread::sleep(Duration::from_secs(1));
    for (what, d) in [("IPv4", &mut d4), ("IPv6", &mut d6)] {
        if let Some(status) = d.try_wait().unwrap() {
            panic!("the {what} transfer ended early ({status}): {}", stderr_of(d));
        }
    }

    // A new agent adopts the pins: the same links, its programs swapped in.
    let t0 = Instant::now();
    let a2 = agent.start(&host).unwrap();
    let adopt = t0.elapsed();
    let s2 = a2.status();
    assert!(s2.adopted);
    for a in &s2.attachments {
        let before = s1.attachments.iter().find(|b| b.program == a.program).unwrap();
        assert_eq!((a.attach.as_str(), a.link_id), ("replaced", before.link_id), "{a:?}");
    }
    assert_eq!((s2.generation, &s2.digest), (s1.generation, &s1.digest));
    println!("new agent adopted the pins and answered in {adopt:?}");

    for (what, d, f) in [("IPv4", &mut d4, &f4), ("IPv6", &mut d6, &f6)] {
        let out = loop {
            if let Some(status) = d.try_wait().unwrap() {
                break status;
            }
            assert!(t0.elapsed() < Duration::from_secs(90), "{what} transfer did not finish");
            std::thread::sleep(Duration::from_millis(100));
        };
        let err = stderr_of(d);
        assert!(
            out.success(),
            "{what} transfer failed ({out}): {err}\n{}",
            a2.log_text()
        );
        let got = std::fs::read(f).unwrap();
        assert!(
            got == one_mib(),
            "{what}: {} bytes, content differs or short",
            got.len()
        );
    }
    assert!(quick(&inet, &c4, &whoami4).unwrap().contains("acme"));

    // The session: every line echoed, no stall around the kill or the
    // restart, and it closes cleanly (no reset).
    std::thread::sleep(Duration::from_millis(500));
    let (sent, echoes, status) = session.finish();
    assert!(status.success(), "the session ended with {status}");
    assert_eq!(echoes.len(), sent, "lines echoed");
    let gaps: Vec<Duration> = echoes.windows(2).map(|w| w[1] - w[0]).collect();
    let worst = gaps.iter().max().copied().unwrap_or_default();
    println!(
        "echo session: {sent} round trips over {:?}, agent killed at {killed_at:?}, longest gap between echoes {worst:?}",
        echoes.last().copied().unwrap_or_default()
    );
    assert!(worst < Duration::from_millis(500), "the session stalled for {worst:?}");
    assert!(
        echoes.iter().any(|t| *t > killed_at + Duration::from_millis(200)),
        "no echo after the kill"
    );
}

/// `socat` in the internet namespace, connected to a VIP's JMS port; a
/// thread sends a line every 50 ms until told to stop, another records
/// when each echo arrives.
struct Echo {
    child: Child,
    t0: Instant,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    writer: Option<std::thread::JoinHandle<usize>>,
    reader: Option<std::thread::JoinHandle<Vec<Duration>>>,
}

impl Echo {
    fn start(inet: &netlab::netns::NetNs, src: &str, vip: &str, port: u16) -> Echo {
        use std::io::{BufRead, Write};
        let mut cmd = inet.command("socat").unwrap();
        cmd.args(["-t", "5", "-", &format!("TCP4:{vip}:{port},bind={src}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let t0 = Instant::now();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let writer = std::thread::spawn(move || {
            let mut n = 0;
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                if writeln!(stdin, "line {n}").is_err() {
                    break;
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            n // dropping stdin closes the session
        });
        let reader = std::thread::spawn(move || {
            let mut times = Vec::new();
            let mut lines = std::io::BufReader::new(stdout).lines();
            let greeting = lines.next().and_then(|l| l.ok()).unwrap_or_default();
            assert!(greeting.starts_with("acme core 0"), "greeting: {greeting:?}");
            for (i, l) in lines.enumerate() {
                let Ok(l) = l else { break };
                assert_eq!(l, format!("line {i}"));
                times.push(t0.elapsed());
            }
            times
        });
        Echo {
            child,
            t0,
            stop,
            writer: Some(writer),
            reader: Some(reader),
        }
    }

    /// Stops sending; returns the lines sent, the echo times, socat's exit.
    fn finish(&mut self) -> (usize, Vec<Duration>, std::process::ExitStatus) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sent = self.writer.take().unwrap().join().unwrap();
        let status = self.child.wait().unwrap();
        let echoes = self.reader.take().unwrap().join().unwrap();
        (sent, echoes, status)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
