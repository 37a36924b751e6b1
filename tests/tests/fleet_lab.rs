//! Inbound HTTPS through the fleet lab (`cargo xtask lab up --hosts 3`):
//! three carwash hosts, each with the real agent and its own BIRD, behind
//! the internet namespace's BIRD with ECMP (L4 hash); the lab's clients,
//! TLS servers on the tenants' connectors, the underlay spreading the
//! machines' tunnels to the anycast VTEP over the hosts.
//!
//! One bring-up for everything, in order: the router learns every VIP and
//! egress IP with three next hops; 300 HTTPS connections from distinct
//! source ports all succeed and every host steers its share (the agents'
//! counters); an upload from every machine, each needing path-MTU
//! discovery, completes, the router's ICMP errors passed to the host of
//! their flow; long TLS downloads survive the loss of a host (both its links
//! down, its agent and BIRD killed) byte for byte, and the convergence is
//! measured; the host comes back and takes flows while downloads go on;
//! a clean stop withdraws the host's routes while its programs stay
//! attached and downloads go on, and only `--uninstall` takes them.
//!
//! Skipped (with a message) where `bird` is not installed (`cargo xtask
//! setup` installs it).
mod agent_common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use agent_common::carwash_bin;
use carwash_tests::require_root;
use dataplane_common::Counter;
use dataplane_common::types::SIDE_UPLINK;
use netlab::fleet::{Fleet, FleetGuard};
use netlab::lab::{ALLOWED_CLIENT_V4, BIG_FILE, FAR_PARTNER_TCP_PORT, FAR_PARTNER_V4, LabConfig};
use netlab::netns::NetNs;

const HOSTS: usize = 3;
const CONNECTIONS: u16 = 300;
/// Long downloads per phase, and their pace: 1 MiB at 128 KiB/s takes
/// about 8 s, long enough for a host to go or come back in the middle.
const DOWNLOADS: u16 = 24;
const RATE: &str = "128k";

/// Packets each host's uplink program steered to a machine so far.
fn steered(fleet: &Fleet) -> Vec<u64> {
    fleet
        .hosts
        .iter()
        .map(|h| {
            dataplane::pinned::Pins::open(&h.pin_path)
                .and_then(|p| p.counters(SIDE_UPLINK))
                .map(|c| c.get(Counter::Steered))
                .unwrap_or(0)
        })
        .collect()
}

/// A counter of every host's uplink side, summed.
fn counter_sum(fleet: &Fleet, c: Counter) -> u64 {
    fleet
        .hosts
        .iter()
        .map(|h| {
            dataplane::pinned::Pins::open(&h.pin_path)
                .and_then(|p| p.counters(SIDE_UPLINK))
                .map(|k| k.get(c))
                .unwrap_or(0)
        })
        .sum()
}

/// Replies (and ICMP errors) passed on to their port's host, by every host.
fn handoffs(fleet: &Fleet) -> u64 {
    fleet
        .hosts
        .iter()
        .filter_map(|h| {
            let out = std::process::Command::new(carwash_bin())
                .args(["status", "-o", "json", "--config"])
                .arg(&h.config)
                .output()
                .ok()?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            v["agent"]["cluster"]["handoffs_sent"].as_u64()
        })
        .sum()
}

fn delta(after: &[u64], before: &[u64]) -> Vec<u64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

/// `curl` from the allowed client, bound to `port`: one request for
/// `/peer`, its body.
fn peer_request(inet: &NetNs, vip: &str, port: u16, timeout_s: u32) -> Result<String, String> {
    let out = inet
        .exec(&[
            "curl",
            "-sSk",
            "--max-time",
            &timeout_s.to_string(),
            "--interface",
            &ALLOWED_CLIENT_V4.to_string(),
            "--local-port",
            &port.to_string(),
            &format!("https://{vip}/peer"),
        ])
        .map_err(|e| format!("{e:#}"))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "port {port}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `CONNECTIONS` requests, `parallel` at a time, from source ports `base..`.
fn many_requests(inet: &NetNs, vip: &str, base: u16, n: u16, parallel: usize) -> Vec<Result<String, String>> {
    let next = Arc::new(AtomicU16::new(0));
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..parallel)
            .map(|_| {
                let next = next.clone();
                s.spawn(move || {
                    let mut got = Vec::new();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        if k >= n {
                            return got;
                        }
                        got.push(peer_request(inet, vip, base + k, 20));
                    }
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    })
}

/// A paced download of the machines' 1 MiB file; the SHA-256 of what
/// arrived, or what went wrong.
fn download(inet_name: &str, vip: &str, port: u16) -> Result<String, String> {
    let inet = NetNs::open(inet_name).map_err(|e| format!("{e:#}"))?;
    let script = format!(
        "set -o pipefail; curl -sSk --max-time 90 --limit-rate {RATE} --interface {ALLOWED_CLIENT_V4} \
         --local-port {port} https://{vip}/{BIG_FILE} | sha256sum"
    );
    let out = inet.exec(&["bash", "-c", &script]).map_err(|e| format!("{e:#}"))?;
    if !out.status.success() {
        return Err(format!(
            "port {port}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string())
}

fn start_downloads(fleet: &Fleet, vip: &str, base: u16) -> Vec<std::thread::JoinHandle<Result<String, String>>> {
    (0..DOWNLOADS)
        .map(|k| {
            let (inet, vip) = (fleet.lab.inet.clone(), vip.to_string());
            std::thread::spawn(move || download(&inet, &vip, base + k))
        })
        .collect()
}

fn check_downloads(what: &str, handles: Vec<std::thread::JoinHandle<Result<String, String>>>, want: &str) {
    let got: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let bad: Vec<_> = got.iter().filter(|r| r.as_deref() != Ok(want)).collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} downloads broken or wrong (want sha256 {want}): {bad:?}",
        bad.len(),
        got.len()
    );
}

fn xdp_attached(ns: &NetNs, dev: &str) -> bool {
    ns.ip(&["link", "show", "dev", dev]).is_ok_and(|t| t.contains("xdp"))
}

#[test]
fn inbound_https_across_the_fleet_through_a_host_lost_and_back() {
    require_root();
    if netlab::bird::bird_bin().is_none() {
        eprintln!("skipped: no bird (BIRD 2) installed; `cargo xtask setup` installs it");
        return;
    }
    let t0 = Instant::now();
    let fleet = FleetGuard::up(&LabConfig::unique(), HOSTS, &carwash_bin()).unwrap();
    eprintln!(
        "fleet lab up, every host announcing, in {} ms",
        t0.elapsed().as_millis()
    );
    let inet = fleet.inet_ns().unwrap();
    let acme = fleet.lab.tenant("acme").unwrap();
    let vip = acme.vip_v4().unwrap().to_string();
    let want_sha = {
        let out = std::process::Command::new("sha256sum")
            .arg(fleet.lab.state_dir.join(BIG_FILE))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };

    // Every VIP and egress IP over the three hosts' uplinks.
    let hops = fleet.next_hops().unwrap();
    for (addr, via) in &hops {
        let want: BTreeSet<IpAddr> = fleet
            .hosts
            .iter()
            .map(|h| match addr {
                IpAddr::V4(_) => IpAddr::V4(h.uplink_v4),
                IpAddr::V6(_) => IpAddr::V6(h.uplink_v6),
            })
            .collect();
        assert_eq!(via, &want, "{addr}: {hops:?}");
    }
    assert!(hops.len() >= 7, "{hops:?}");

    // 300 connections from distinct source ports, spread over the hosts.
    let before = steered(&fleet);
    let t0 = Instant::now();
    let got = many_requests(&inet, &vip, 40000, CONNECTIONS, 12);
    let took = t0.elapsed();
    let per_host = delta(&steered(&fleet), &before);
    let bad: Vec<_> = got
        .iter()
        .filter(|r| {
            !matches!(r, Ok(t) if t.starts_with("acme connector ") && t.ends_with(&format!("peer={ALLOWED_CLIENT_V4}")))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {CONNECTIONS} failed: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    let connectors: BTreeMap<&str, usize> = got.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.as_ref().unwrap().split(" peer=").next().unwrap())
            .or_default() += 1;
        m
    });
    let total: u64 = per_host.iter().sum();
    eprintln!(
        "{CONNECTIONS} connections in {} ms; packets steered per host {per_host:?}; per connector {connectors:?}",
        took.as_millis()
    );
    for (i, n) in per_host.iter().enumerate() {
        assert!(
            *n * 10 >= total,
            "host {i} steered {n} of {total} packets: {per_host:?}"
        );
    }

    // Uploads to the far partner behind the narrow link: each completes
    // only through path-MTU discovery, and the router's fragmentation
    // needed reaches any host by ECMP; those about another host's port are
    // passed to it.
    let data: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = fleet.lab.state_dir.join("upload.bin");
    std::fs::write(&file, &data).unwrap();
    let up_sha = {
        let out = std::process::Command::new("sha256sum").arg(&file).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let icmp_before = counter_sum(&fleet, Counter::SnatIcmpError);
    let relays_before = handoffs(&fleet);
    // One upload per machine: a machine learns the path's MTU from the
    // first error and its other connections need none.
    let machines: Vec<_> = fleet.lab.machines().collect();
    let uploads: Vec<_> = machines
        .iter()
        .map(|m| {
            let (ns, file) = (m.netns.clone(), file.clone());
            std::thread::spawn(move || {
                let cmd = format!(
                    "timeout 40 socat -t 20 - TCP4:{FAR_PARTNER_V4}:{FAR_PARTNER_TCP_PORT},connect-timeout=5 < {}",
                    file.display()
                );
                let out = NetNs::open(&ns).unwrap().exec(&["sh", "-c", &cmd]).unwrap();
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .last()
                    .unwrap_or("")
                    .to_string()
            })
        })
        .collect();
    let got: Vec<String> = uploads.into_iter().map(|u| u.join().unwrap()).collect();
    let want_line = format!("sha256={up_sha}");
    assert!(
        got.iter().all(|l| *l == want_line),
        "uploads through the narrow link: {got:?}"
    );
    let icmp = counter_sum(&fleet, Counter::SnatIcmpError) - icmp_before;
    let relays = handoffs(&fleet) - relays_before;
    eprintln!(
        "{} uploads through path-MTU discovery: {icmp} ICMP errors translated, {relays} hand-offs",
        machines.len()
    );
    // Each machine's error reached its flow's host with odds of one in
    // three: every upload completing means those of the others were
    // passed on.
    assert!(
        machines.len() >= 6 && icmp >= machines.len() as u64 && relays > 0,
        "icmp errors {icmp}, hand-offs {relays}"
    );

    // Long downloads; host 2 is lost in the middle of them.
    let before = steered(&fleet);
    let downloads = start_downloads(&fleet, &vip, 41000);
    std::thread::sleep(Duration::from_secs(2));
    let carried = delta(&steered(&fleet), &before);
    assert!(carried[2] > 0, "no download went through host 2: {carried:?}");
    let lost_at = fleet.lose_host(2).unwrap();
    let converged = loop {
        let hops = fleet.next_hops().unwrap();
        if hops.values().all(|h| h.len() == HOSTS - 1) {
            break lost_at.elapsed();
        }
        assert!(lost_at.elapsed() < Duration::from_secs(30), "{hops:?}");
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut port = 43000;
    let first_new = loop {
        port += 1;
        if peer_request(&inet, &vip, port, 2).is_ok() {
            break lost_at.elapsed();
        }
        assert!(
            lost_at.elapsed() < Duration::from_secs(30),
            "no new connection after the loss"
        );
    };
    let protocols = fleet.router_protocols().unwrap();
    for l in protocols.lines().filter(|l| l.starts_with("host2_")) {
        assert!(!l.contains("Established"), "{protocols}");
    }
    for l in protocols
        .lines()
        .filter(|l| l.starts_with("host0_") || l.starts_with("host1_"))
    {
        assert!(l.contains("Established"), "{protocols}");
    }
    eprintln!(
        "host 2 lost: the router had two next hops after {} ms, the first new connection completed after {} ms",
        converged.as_millis(),
        first_new.as_millis()
    );
    check_downloads("through the loss of host 2", downloads, &want_sha);

    // Host 2 comes back in the middle of more downloads; it takes flows.
    let downloads = start_downloads(&fleet, &vip, 44000);
    std::thread::sleep(Duration::from_secs(2));
    let back_at = Instant::now();
    fleet.restore_host(2).unwrap();
    let agent_up = back_at.elapsed();
    fleet.wait_next_hops(HOSTS, Duration::from_secs(60)).unwrap();
    let routed = back_at.elapsed();
    eprintln!(
        "host 2 back: agent answering after {} ms, a next hop of every address after {} ms",
        agent_up.as_millis(),
        routed.as_millis()
    );
    check_downloads("through host 2 coming back", downloads, &want_sha);
    let before = steered(&fleet);
    let got = many_requests(&inet, &vip, 45000, 60, 6);
    assert!(got.iter().all(Result::is_ok), "{got:?}");
    let taken = delta(&steered(&fleet), &before);
    assert!(taken[2] > 0, "host 2 took no new flows: {taken:?}");

    // A clean stop of host 1: routes withdrawn, programs still attached,
    // downloads through it unbroken; `--uninstall` takes the programs.
    let downloads = start_downloads(&fleet, &vip, 46000);
    std::thread::sleep(Duration::from_secs(2));
    let h1 = fleet.hosts[1].ns().unwrap();
    let stop_at = Instant::now();
    fleet.stop_agent(1).unwrap();
    fleet.wait_next_hops(HOSTS - 1, Duration::from_secs(30)).unwrap();
    eprintln!(
        "host 1 stopped: the router had two next hops {} ms after the SIGTERM",
        stop_at.elapsed().as_millis()
    );
    assert!(
        fleet
            .next_hops()
            .unwrap()
            .values()
            .all(|h| !h.contains(&IpAddr::V4(fleet.hosts[1].uplink_v4))
                && !h.contains(&IpAddr::V6(fleet.hosts[1].uplink_v6)))
    );
    assert!(xdp_attached(&h1, "uplink") && xdp_attached(&h1, "fabric"));
    check_downloads("through host 1's clean stop", downloads, &want_sha);
    let out = h1
        .exec(&[
            carwash_bin().to_str().unwrap(),
            "agent",
            "--uninstall",
            "--config",
            fleet.hosts[1].config.to_str().unwrap(),
        ])
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!xdp_attached(&h1, "uplink") && !xdp_attached(&h1, "fabric"));
}
