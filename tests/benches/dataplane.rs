//! `cargo xtask bench`: ns/packet of carwash's programs against the minimal
//! XDP_PASS program measured in the same run (BPF_PROG_TEST_RUN, JIT; see
//! `carwash_tests::bench` for the method), at 10 and at 10,000 tenants with
//! ten allow prefixes each, and the maps' kernel memory; then source NAT
//! (`carwash_tests::bench_snat`); then the agent itself (the real `carwash
//! agent` binary) at 10,000 tenants from files: time to apply them, time
//! from one tenant's file change to the maps, and its resident memory; then
//! three agents following one etcd (`fleet`): from a push's commit of
//! 10,000 tenants to all three applied, and one-tenant changes.
#[path = "../tests/agent_common/mod.rs"]
mod agent_common;
#[path = "../tests/fleet_common/mod.rs"]
mod fleet_common;
#[path = "../tests/probe_scale/mod.rs"]
mod probe_scale;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use carwash_tests::bench::{Row, ns_per_packet, ns_per_packet_loop, print_table};
use carwash_tests::fabric::FabricNs;
use carwash_tests::fixture::{XDP_DROP, XDP_PASS, XDP_REDIRECT};
use carwash_tests::packets::*;
use carwash_tests::synthetic;
use dataplane::Dataplane;
use dataplane::config::ProbeResets;
use dataplane::tables::Health;
use dataplane_common::programs;
use netlab::netns::PinDir;

const RUNS: u32 = 100_000;
const ROUNDS: usize = 5;
const LOOP_REPEAT: u32 = 1_000_000;
const SCALES: [u32; 2] = [10, 10_000];

struct Scenario {
    name: &'static str,
    packet: Vec<u8>,
    verdict: u32,
    target: f64,
}

fn scenarios(i: u32) -> Vec<Scenario> {
    let (v4, v6) = (synthetic::vip4(i), synthetic::vip6(i));
    vec![
        Scenario {
            name: "allowed https, IPv4",
            packet: tcp4(synthetic::allowed4(i), v4, 40000, 443, &[0u8; 10]),
            verdict: XDP_REDIRECT,
            target: 4.0,
        },
        Scenario {
            name: "allowed jms, IPv6",
            packet: tcp6(synthetic::allowed6(i), v6, 40000, 61616, &[0u8; 10]),
            verdict: XDP_REDIRECT,
            target: 4.0,
        },
        Scenario {
            name: "denied source, IPv4",
            packet: tcp4(Ipv4Addr::new(192, 0, 2, 66), v4, 40000, 443, &[0u8; 10]),
            verdict: XDP_DROP,
            target: 3.0,
        },
        Scenario {
            name: "not a VIP (pass-through), IPv4",
            packet: tcp4(
                synthetic::allowed4(i),
                Ipv4Addr::new(192, 0, 2, 80),
                40000,
                443,
                &[0u8; 10],
            ),
            verdict: XDP_PASS,
            target: 1.5,
        },
    ]
}

/// `cargo xtask bench [packets|events|handoff|snat|agent|fleet|health]`: every part, or the ones
/// named (`packets` includes `handoff`, the reply hand-off between the hosts of a fleet).
fn main() -> anyhow::Result<()> {
    carwash_tests::require_root();
    let _stats = carwash_tests::bench::BpfStatsOff::new();
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wants = |part: &str| only.is_empty() || only.iter().any(|a| a == part);
    if wants("packets") {
        packets()?;
    }
    if wants("events") {
        carwash_tests::bench_events::run()?;
    }
    // Part of `packets`, or alone as `handoff`.
    if wants("packets") || only.iter().any(|a| a == "handoff") {
        carwash_tests::bench_fleet::run()?;
    }
    if wants("snat") {
        carwash_tests::bench_snat::run()?;
    }
    if wants("agent") {
        agent_at_scale(AGENT_TENANTS, AGENT_CHANGES)?;
    }
    if wants("fleet") {
        fleet_at_scale(FLEET_TENANTS, FLEET_CHANGES)?;
    }
    if wants("health") {
        health_at_scale(HEALTH_TENANTS)?;
    }
    Ok(())
}

const HEALTH_TENANTS: u32 = 10_000;

/// The health checker at `n` tenants × 4 machines probed every second
/// (TCP checks) against responders that answer through the tunnels: the
/// agent's CPU and memory over a steady window once every machine is up,
/// with the machines' SYN-ACKs reset by the fabric's programs (the
/// default) and by the agent, against the same agent and tenants with the
/// probes off. Fails if a machine flaps or the probes fall behind.
/// `CARWASH_HEALTH_TENANTS` and `CARWASH_HEALTH_WINDOW_S` change the size
/// and the window.
fn health_at_scale(n: u32) -> anyhow::Result<()> {
    let n = std::env::var("CARWASH_HEALTH_TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    let window = Duration::from_secs(
        std::env::var("CARWASH_HEALTH_WINDOW_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30),
    );
    // CARWASH_HEALTH_RESETS: `both` (the default), `fabric` or `agent`.
    let modes = match std::env::var("CARWASH_HEALTH_RESETS").as_deref() {
        Ok("fabric") => vec![ProbeResets::Fabric],
        Ok("agent") => vec![ProbeResets::Agent],
        _ => vec![ProbeResets::Agent, ProbeResets::Fabric],
    };
    let off = probe_scale::run(n, None, window / 3, false)?;
    let mut on = Vec::new();
    for m in &modes {
        on.push(probe_scale::run(n, Some(*m), window, false)?);
    }
    println!("\n### The health checker at {n} tenants × 4 machines, interval 1 s, TCP checks\n");
    let names: Vec<&str> = modes
        .iter()
        .map(|m| match m {
            ProbeResets::Agent => "probes on, resets by the agent",
            ProbeResets::Fabric => "probes on, resets by the fabric (default)",
        })
        .collect();
    println!("| measurement | probes off | {} | target |", names.join(" | "));
    println!("| --- | ---: |{} --- |", " ---: |".repeat(modes.len()));
    let row = |what: &str, off: String, f: &dyn Fn(&probe_scale::Figures) -> String, target: &str| {
        let cells: Vec<String> = on.iter().map(f).collect();
        println!("| {what} | {off} | {} | {target} |", cells.join(" | "));
    };
    row(
        "agent CPU over the window (utime + stime, % of one core)",
        format!("{:.1} %", off.cpu_pct),
        &|f| format!("{:.1} %", f.cpu_pct),
        "≤ 25 %",
    );
    row(
        "host kernel thread receiving on the fabric (threaded NAPI), % of one core",
        format!("{:.1} %", off.host_rx_pct),
        &|f| format!("{:.1} %", f.host_rx_pct),
        "",
    );
    row(
        "(the responders' receive thread: the machines' side, not the host's)",
        String::new(),
        &|f| format!("{:.1} %", f.responder_rx_pct),
        "",
    );
    row(
        "agent resident memory (VmRSS)",
        format!("{} MiB", off.rss_kib / 1024),
        &|f| format!("{} MiB", f.rss_kib / 1024),
        "",
    );
    row(
        "… added by the probes",
        String::new(),
        &|f| format!("{:.1} MiB", (f.rss_kib as f64 - off.rss_kib as f64) / 1024.0),
        "≤ 64 MiB",
    );
    row(
        &format!(
            "probes answered a second (SYN-ACKs the responders sent), of {} due",
            4 * n
        ),
        String::new(),
        &|f| format!("{:.0}", f.probes_per_s()),
        "",
    );
    row(
        "segments the responders sent again a second (probes left half open)",
        String::new(),
        &|f| format!("{:.0}", f.retransmitted_per_s),
        "0",
    );
    row(
        "checker since start: half-open sent / stale answers / resets by the agent / by the fabric / send errors / results skipped",
        String::new(),
        &|f| match &f.probe_status {
            Some(p) => format!(
                "{} / {} / {} / {} / {} / {}",
                p.half_open_sent, p.stale_answers, p.resets_sent, p.resets_in_path, p.send_errors, p.results_skipped
            ),
            None => "-".into(),
        },
        "",
    );
    row(
        "machines up at the end / transitions in the window",
        String::new(),
        &|f| {
            format!(
                "{} of {} / {}",
                4 * n as usize - f.not_up,
                4 * n,
                f.transitions_in_window
            )
        },
        "all / 0",
    );
    row(
        "binary started → every machine up with a passing probe",
        String::new(),
        &|f| {
            if f.all_up {
                format!("{:.1} s", f.ready.as_secs_f64())
            } else {
                format!("not within {:.0} s (measured from then on)", f.ready.as_secs_f64())
            }
        },
        "",
    );
    println!(
        "\n(windows: {:.0} s with probes, {:.0} s without; each agent started afresh on its own namespaces and pins)",
        window.as_secs_f64(),
        off.window.as_secs_f64()
    );
    for f in &on {
        probe_scale::check(f)?;
    }
    Ok(())
}

fn packets() -> anyhow::Result<()> {
    let measured: Vec<u32> = SCALES.iter().map(|s| s / 2).collect();
    let fab = FabricNs::new(&measured.iter().map(|&i| synthetic::tenant(i)).collect::<Vec<_>>())?;

    let mut per_scale = Vec::new();
    for (&scale, &m) in SCALES.iter().zip(&measured) {
        let pins = PinDir::new()?;
        let mut dp = Dataplane::load(Some(pins.path()))?;
        dp.set_host(&fab.host_params())?;
        let tenants: Vec<_> = (1..=scale).map(synthetic::tenant).collect();
        let batch: Vec<_> = tenants
            .iter()
            .enumerate()
            .map(|(i, t)| (i as u32 + 1, t, Health::default()))
            .collect();
        let t0 = Instant::now();
        dp.install_tenants(&batch)?;
        let install = t0.elapsed();
        let (baseline, (figures, base_loop, looped)) = fab.ns.enter(|| -> anyhow::Result<_> {
            let base_pkt = tcp4(synthetic::allowed4(m), synthetic::vip4(m), 40000, 443, &[0u8; 10]);
            let baseline = ns_per_packet(&dp, programs::BENCH_PASS, &base_pkt, XDP_PASS, RUNS, ROUNDS)?;
            let mut figures = Vec::new();
            for s in scenarios(m) {
                // Traffic outside a flood: the denial fast path off (the
                // denied scenario before turns it on).
                if s.verdict != XDP_DROP {
                    dp.disarm_deny_fast()?;
                }
                figures.push((
                    s.name,
                    ns_per_packet(&dp, programs::UPLINK, &s.packet, s.verdict, RUNS, ROUNDS)?,
                    s.target,
                ));
            }
            // The kernel's own loop, for the verdicts that leave the frame
            // as it came: the hot-cache figure, where the single-run one
            // includes the cold start of every run.
            let base_loop = ns_per_packet_loop(&dp, programs::BENCH_PASS, &base_pkt, XDP_PASS, LOOP_REPEAT, ROUNDS)?;
            let mut looped = Vec::new();
            for s in scenarios(m).into_iter().filter(|s| s.verdict != XDP_REDIRECT) {
                if s.verdict != XDP_DROP {
                    dp.disarm_deny_fast()?;
                }
                let ns = ns_per_packet_loop(&dp, programs::UPLINK, &s.packet, s.verdict, LOOP_REPEAT, ROUNDS)?;
                looped.push((s.name, ns, ns / base_loop));
            }
            Ok((baseline, (figures, base_loop, looped)))
        })??;
        let memory = dataplane::memory::map_memory(pins.path())?;
        let total: u64 = memory.iter().map(|(_, b)| b).sum();
        println!("\n### kernel loop (1,000,000 repetitions, frames left unchanged only), {scale} tenants\n");
        println!("| scenario | ns/packet | × minimal |\n| --- | ---: | ---: |");
        println!("| minimal XDP_PASS program | {base_loop:.1} | 1.00 |");
        for (name, ns, ratio) in looped {
            println!("| {name} | {ns:.1} | {ratio:.2} |");
        }
        per_scale.push((scale, baseline, figures, memory, total, install));
    }

    let mut rows = Vec::new();
    for (scale, baseline, figures, _, _, _) in &per_scale {
        for (name, ns, target) in figures {
            rows.push(Row {
                scenario: format!("{name}, {scale} tenants"),
                ns: *ns,
                ratio: ns / baseline,
                target: Some(format!("≤ {target}×")),
            });
        }
    }
    let (small, large) = (&per_scale[0], &per_scale[1]);
    print_table(
        "uplink program (path 1): mean of 100,000 single runs, each on a fresh copy of the frame",
        small.1,
        &rows,
    );
    println!(
        "(minimal program in the {}-tenant run: {:.1} ns/packet)",
        large.0, large.1
    );

    println!(
        "\n### 10,000 tenants against 10 (same scenario, each against its own run's minimal program; target ≤ 1.25×)\n"
    );
    println!("| scenario | 10 tenants | 10,000 tenants | ratio |");
    println!("| --- | ---: | ---: | ---: |");
    for ((name, a, _), (_, b, _)) in small.2.iter().zip(&large.2) {
        let (ra, rb) = (a / small.1, b / large.1);
        println!("| {name} | {ra:.2}× | {rb:.2}× | {:.2} |", rb / ra);
    }

    println!("\n### Map memory (kernel accounting, memlock)\n");
    println!("| map | {} tenants | {} tenants |", small.0, large.0);
    println!("| --- | ---: | ---: |");
    for ((name, a), (_, b)) in small.3.iter().zip(&large.3) {
        println!("| {name} | {} KiB | {} KiB |", a / 1024, b / 1024);
    }
    println!(
        "| total | {:.1} MiB | {:.1} MiB |",
        small.4 as f64 / 1048576.0,
        large.4 as f64 / 1048576.0
    );
    println!(
        "\ninstalling the tenants through the library: {} in {:.2?}, {} in {:.2?}",
        small.0, small.5, large.0, large.5
    );
    Ok(())
}

const AGENT_TENANTS: u32 = 10_000;
const AGENT_CHANGES: u32 = 100;

fn rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Waits until `done` holds (polled every 200 µs); the time since `t0`.
fn wait_for(t0: Instant, what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<Duration> {
    while !done() {
        if t0.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("{what}: not in the maps after 30 s");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(t0.elapsed())
}

/// The agent at `n` synthetic tenants (ten allow prefixes each), one JSON
/// file per tenant: the time from starting the binary to its API answering
/// with every tenant applied; then `changes` single-file changes of a port
/// (each a different tenant), timed from the write to the service being in
/// the pinned map; a few allowlist changes the same way (these swap the
/// tenant's tries, so they wait for an RCU grace period); the agent's
/// resident memory after all of them.
fn agent_at_scale(n: u32, changes: u32) -> anyhow::Result<()> {
    use aya::maps::{HashMap, Map, MapData};
    use dataplane::tables::addr_key;
    use dataplane_common::maps;
    use dataplane_common::types::{ServiceKey, ServiceValue, TenantInfo};

    let setup = agent_common::AgentSetup::new(&[])?;
    for i in 1..=n {
        let t = synthetic::tenant(i);
        std::fs::write(
            setup.policy_dir.join(format!("{}.json", t.name)),
            serde_json::to_string_pretty(&t)?,
        )?;
    }
    agent_common::carwash_bin(); // built before the clock starts
    let t0 = Instant::now();
    let agent = setup.start()?;
    let started = t0.elapsed();
    let status = agent.status();
    if status.tenants.len() != n as usize {
        anyhow::bail!(
            "the agent applied {} of {n} tenants: {:?}",
            status.tenants.len(),
            status.last_error
        );
    }
    let writes = Duration::from_micros(status.last_apply.as_ref().map_or(0, |a| a.micros));
    // The agent's one-off start-up work in the kernel: making the uplink
    // answer for every VIP and egress IP (adding 10,000 IPv6 addresses
    // takes the kernel tens of seconds). Changes are timed after it, as
    // they come in operation.
    let t_addrs = Instant::now();
    while agent.status().uplink_addresses_generation < status.generation {
        if t_addrs.elapsed() > Duration::from_secs(300) {
            anyhow::bail!("the uplink's addresses were not in place after 300 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let addrs_ready = started + t_addrs.elapsed();
    let rss_started = rss_kib(agent.child.id());
    let ids: std::collections::BTreeMap<String, u32> = status.tenants.iter().map(|t| (t.name.clone(), t.id)).collect();

    let pin = |name: &str| MapData::from_pin(setup.pin_path().join("maps").join(name));
    let svcs: HashMap<MapData, ServiceKey, ServiceValue> = HashMap::try_from(Map::HashMap(pin(maps::SERVICES)?))?;
    let records: HashMap<MapData, u32, TenantInfo> = HashMap::try_from(Map::HashMap(pin(maps::TENANTS)?))?;
    let generation: aya::maps::Array<MapData, u32> = aya::maps::Array::try_from(Map::Array(pin(maps::GENERATION)?))?;
    // Keys in the policy generation in force: what packets read.
    let active = || generation.get(&0, 0).map(|g| g & 1).unwrap_or(0);
    let key = |i: u32, port: u16| {
        let vip = addr_key(std::net::IpAddr::V4(synthetic::vip4(i)));
        let k = ServiceKey {
            addr: vip.addr,
            port_be: port.to_be_bytes(),
            proto: 6,
            family: vip.family,
        };
        dataplane_common::types::service_key_gen(k, active())
    };
    let record_key = |id: u32| dataplane_common::types::tenant_key(id, active());
    let write = |t: &carwash_policy::Tenant| -> anyhow::Result<Instant> {
        let file = setup.policy_dir.join(format!("{}.json", t.name));
        let text = serde_json::to_string_pretty(t)?;
        let t0 = Instant::now();
        std::fs::write(file, text)?;
        Ok(t0)
    };
    let mut port_lat = Vec::new();
    for round in 0..changes {
        let i = 1 + (round * 7919) % n;
        let mut t = synthetic::tenant(i);
        let port = 1000 + round as u16;
        t.https_ports = vec![port];
        let t0 = write(&t)?;
        port_lat.push(wait_for(t0, &t.name, || svcs.get(&key(i, port), 0).is_ok())?);
        // Changes apart, as an operator's or a control plane's are.
        std::thread::sleep(Duration::from_millis(30));
    }
    let mut allow_lat = Vec::new();
    for round in 0..changes / 5 {
        let i = 1 + (round * 4099 + 17) % n;
        let mut t = synthetic::tenant(i);
        t.allow.push(carwash_policy::Allow {
            cidr: format!("198.18.{}.0/24", round).parse()?,
            classes: vec![carwash_policy::Class::Https],
        });
        let id = ids[&t.name];
        let slot = records.get(&record_key(id), 0)?.allow_slot;
        let t0 = write(&t)?;
        allow_lat.push(wait_for(t0, &t.name, || {
            records.get(&record_key(id), 0).is_ok_and(|r| r.allow_slot != slot)
        })?);
        std::thread::sleep(Duration::from_millis(30));
    }
    let rss_after = rss_kib(agent.child.id());
    let status = agent.status();
    if let Some(e) = status.last_error {
        anyhow::bail!("the agent refused a change: {e:?}");
    }
    // What it holds is what the directory says.
    let digest = carwash_policy::load_path(&setup.policy_dir)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .digest();
    if status.digest != digest {
        anyhow::bail!("the agent's digest {} is not the directory's {digest}", status.digest);
    }
    port_lat.sort();
    allow_lat.sort();
    let pct = agent_common::percentile;
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    println!("\n### The agent at {n} tenants × 10 allow prefixes, one JSON file each\n");
    println!("| measurement | figure | target |");
    println!("| --- | ---: | --- |");
    println!(
        "| start and apply the directory (binary started → API answers, every tenant in the maps) | {:.2} s | ≤ 2 s |",
        started.as_secs_f64()
    );
    println!("| … of which writing the maps | {:.2} s | |", writes.as_secs_f64());
    println!(
        "| binary started → the uplink answers ARP/NDP for all {} VIPs and egress IPs (kernel work, in the background) | {:.1} s | |",
        2 * n,
        addrs_ready.as_secs_f64()
    );
    println!(
        "| one tenant's file changed (a port) → in the maps, p50 / p99 ({} changes) | {} / {} | p99 ≤ 50 ms |",
        port_lat.len(),
        ms(pct(&port_lat, 50)),
        ms(pct(&port_lat, 99))
    );
    println!(
        "| one tenant's allowlist changed → its new tries in force, p50 / p99 ({} changes) | {} / {} | |",
        allow_lat.len(),
        ms(pct(&allow_lat, 50)),
        ms(pct(&allow_lat, 99))
    );
    println!(
        "| agent resident memory after the start / after the {} changes | {} / {} MiB | ≤ 64 MiB |",
        port_lat.len() + allow_lat.len(),
        rss_started / 1024,
        rss_after / 1024
    );
    println!(
        "\n(the change figures include the agent's 20 ms debounce of policy_dir events; the set digest the agent reports equals `carwash policy check` of the directory after the changes)"
    );
    Ok(())
}

const FLEET_TENANTS: u32 = 10_000;
const FLEET_CHANGES: u32 = 40;

/// Three agents (each in its own namespace, with its own pins) following
/// one etcd: the time from the commit of a push of `n` tenants to all three
/// having applied it (the digest of the pushed set in each agent's status),
/// then `changes` one-tenant changes (a port, each a different tenant),
/// each timed from its commit to the service being in all three agents'
/// pinned maps.
fn fleet_at_scale(n: u32, changes: u32) -> anyhow::Result<()> {
    use aya::maps::{HashMap, Map, MapData};
    use dataplane::tables::addr_key;
    use dataplane_common::maps;
    use dataplane_common::types::{ServiceKey, ServiceValue};

    let mut etcd = fleet_common::Etcd::new(1);
    let prefix = fleet_common::prefix();
    let setups: Vec<agent_common::AgentSetup> = (0..3).map(|i| etcd.agent(&prefix, &format!("h{i}"))).collect();
    let agents = setups.iter().map(|s| s.start()).collect::<anyhow::Result<Vec<_>>>()?;
    let src = agent_common::TempDir::new("fleet-bench");
    fleet_common::write_tenants(src.path(), n);
    let mut docs = dataplane::etcd::documents_of_path(src.path())?;
    let digest_of = |docs: &std::collections::BTreeMap<String, String>| -> anyhow::Result<String> {
        let d: Vec<_> = docs
            .iter()
            .map(|(k, v)| dataplane::etcd::document(k, v.as_bytes()))
            .collect();
        Ok(dataplane::agent::validate_documents(&d)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .digest())
    };
    let cfg = dataplane::etcd::EtcdConfig::new(vec![fleet_common::Etcd::url(0)], &prefix);
    // The push from inside etcd's namespace; the clock starts when the
    // transaction has committed.
    let commit = |docs: &std::collections::BTreeMap<String, String>| -> anyhow::Result<Instant> {
        etcd.ns.enter(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(dataplane::etcd::push(&cfg, docs))?;
            anyhow::Ok(Instant::now())
        })?
    };

    let digest = digest_of(&docs)?;
    let t0 = commit(&docs)?;
    let mut done = [false; 3];
    while !done.iter().all(|d| *d) {
        for (k, a) in agents.iter().enumerate() {
            done[k] = done[k] || a.status().digest == digest;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("not every agent applied the {n} tenants within 600 s: {done:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let full = t0.elapsed();

    let svcs = setups
        .iter()
        .map(|s| {
            let pin = MapData::from_pin(s.pin_path().join("maps").join(maps::SERVICES))?;
            let gen_pin = MapData::from_pin(s.pin_path().join("maps").join(maps::GENERATION))?;
            let svcs: HashMap<MapData, ServiceKey, ServiceValue> = HashMap::try_from(Map::HashMap(pin))?;
            let generation: aya::maps::Array<MapData, u32> = aya::maps::Array::try_from(Map::Array(gen_pin))?;
            anyhow::Ok((svcs, generation))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let present = |i: u32, port: u16| {
        svcs.iter().all(|(svcs, generation)| {
            let active = generation.get(&0, 0).map(|g| g & 1).unwrap_or(0);
            let vip = addr_key(std::net::IpAddr::V4(synthetic::vip4(i)));
            let k = ServiceKey {
                addr: vip.addr,
                port_be: port.to_be_bytes(),
                proto: 6,
                family: vip.family,
            };
            svcs.get(&dataplane_common::types::service_key_gen(k, active), 0)
                .is_ok()
        })
    };
    let mut lat = Vec::new();
    for round in 0..changes {
        let i = 1 + (round * 7919) % n;
        let mut t = synthetic::tenant(i);
        let port = 1000 + round as u16;
        t.https_ports = vec![port];
        docs.insert(t.name.clone(), serde_json::to_string_pretty(&t)?);
        let t0 = commit(&docs)?;
        lat.push(wait_for(t0, &t.name, || present(i, port))?);
    }
    let digest = digest_of(&docs)?;
    for a in &agents {
        let st = a.status();
        if st.digest != digest {
            anyhow::bail!("an agent's digest {} is not the pushed set's {digest}", st.digest);
        }
    }
    lat.sort();
    let pct = agent_common::percentile;
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    println!("\n### Three agents following one etcd, {n} tenants\n");
    println!("| measurement | figure |");
    println!("| --- | ---: |");
    println!(
        "| push of {n} tenants (one transaction): commit → all three hosts applied | {} |",
        ms(full)
    );
    println!(
        "| one-tenant change: commit → in all three hosts' maps, p50 / p99 ({changes} changes) | {} / {} |",
        ms(pct(&lat, 50)),
        ms(pct(&lat, 99))
    );
    Ok(())
}
