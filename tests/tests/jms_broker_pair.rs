//! A real JMS broker pair behind the double lane: acme's two cores run
//! Apache ActiveMQ 5.x as a shared-store master/slave pair, a producer sends
//! persistent messages to the VIP through the client's `failover:`
//! transport, the master is SIGKILLed, carwash moves the core, and a
//! consumer through the same VIP receives every message. The run prints
//! the time from the kill to the first message consumed, broken down.
mod agent_common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use agent_common::{AgentProc, LabAgent, TempDir, carwash, repo_policies_dir};
use carwash_tests::jms::{self, Broker, Client, SharedStore, mono_ns};
use carwash_tests::require_root;
use dataplane::Dataplane;
use netlab::lab::{ALLOWED_CLIENT_V4, HOST_UPLINK_V4, INET_IF, LabConfig, LabGuard, Role};
use netlab::netns::NetNs;

/// Persistent messages sent before the kill and expected after it.
const MESSAGES: usize = 200;
const QUEUE: &str = "acme.orders";
/// Brokers, clients and the failover itself on a loaded two-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// Probes fast enough that an automatic failover stays short (inert when
/// the core is moved by hand: that agent does not probe).
const HEALTH: &str = "\n[health]\ninterval = \"200ms\"\ntimeout = \"200ms\"\nrise = 1\nfall = 2\n";

/// Who moves the core once the master is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Switch {
    /// `carwash core activate` the moment the test sees the master gone.
    ByHand,
    /// The agent's probes: the master's core down, the slave's up.
    ByHealthCheck,
}

/// What happened after the kill, in nanoseconds from it.
#[derive(Debug, Default)]
struct Timeline {
    master_gone: u64,
    client_interrupted: Option<u64>,
    slave_listening: Option<u64>,
    switched: Option<u64>,
    client_resumed: Option<u64>,
    first_message: Option<u64>,
    last_message: Option<u64>,
}

fn ms(ns: Option<u64>) -> String {
    ns.map_or("-".into(), |n| format!("{:.0} ms", n as f64 / 1e6))
}

fn body(i: usize) -> String {
    // Distinct, ordered, and long enough that a truncated or mixed-up
    // message cannot pass for another.
    format!(
        "acme order {i:04} of {MESSAGES} {}",
        format!("{:08x}", i * 2_654_435_761).repeat(16)
    )
}

fn active_core(dp: &Dataplane, id: u32) -> usize {
    dp.tenant_info(id).unwrap().expect("acme's record").active_core.into()
}

/// Waits until one broker of the pair is master; its index.
fn wait_master(brokers: &mut [Broker]) -> usize {
    let t0 = Instant::now();
    loop {
        if let Some(i) = brokers.iter().position(Broker::listening) {
            return i;
        }
        for b in brokers.iter_mut() {
            assert!(!b.exited(), "broker {} exited:\n{}", b.name, b.log_text());
        }
        assert!(
            t0.elapsed() < START_TIMEOUT,
            "no broker became master within {START_TIMEOUT:?}:\n{}",
            brokers.iter().map(Broker::log_text).collect::<Vec<_>>().join("\n---\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn activate(agent: &AgentProc, core: usize) {
    let sock = agent.socket.to_str().unwrap();
    // A slave of a shared store does not listen until it is master, so a
    // checker sees its core down: an operator moving JMS to it forces.
    let machine = format!("core/{core}");
    let out = carwash(&["core", "activate", "acme", &machine, "--force", "--socket", sock]);
    assert!(
        out.status.success(),
        "carwash core activate acme {machine}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn failover(switch: Switch) {
    require_root();
    jms::require_activemq();
    let work = TempDir::new("jms");

    // acme alone (the double-lane tenant), its JMS port the brokers' port.
    let policies = work.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    let acme = std::fs::read_to_string(repo_policies_dir().join("acme.toml")).unwrap();
    std::fs::write(policies.join("acme.toml"), acme + HEALTH).unwrap();
    let lab = LabGuard::up(&LabConfig {
        policies,
        ..LabConfig::unique()
    })
    .unwrap();
    let tenant = lab.tenant("acme").unwrap();
    assert!(tenant.jms_ports.contains(&jms::OPENWIRE_PORT));
    let cores: Vec<NetNs> = (0..2)
        .map(|i| lab.machine("acme", Role::Core, i).unwrap().ns().unwrap())
        .collect();
    // The lab's stand-in JMS servers make way for the brokers.
    for ns in &cores {
        assert!(ns.kill_all(), "stand-in servers left in {}", ns.name());
    }

    // JVM start-up is the cost: both brokers, the client build and both
    // client JVMs start before anything waits for another.
    let store = SharedStore::new(work.path()).unwrap();
    let mut brokers = vec![
        store.start_broker(&cores[0], "core0").unwrap(),
        store.start_broker(&cores[1], "core1").unwrap(),
    ];
    let classes = jms::compile_client(work.path()).unwrap();
    let inet = lab.inet_ns().unwrap();
    // Clients connect from an allowed source; the internet namespace
    // would otherwise use its uplink address.
    let vip = tenant.vip_v4().unwrap();
    inet.ip(&[
        "route",
        "replace",
        &format!("{vip}/32"),
        "via",
        &HOST_UPLINK_V4.to_string(),
        "dev",
        INET_IF,
        "src",
        &ALLOWED_CLIENT_V4.to_string(),
    ])
    .unwrap();
    let url = jms::failover_url(IpAddr::V4(vip), jms::OPENWIRE_PORT);
    let mut producer = Client::start(&inet, &classes, "producer", &url, QUEUE).unwrap();
    let mut consumer = Client::start(&inet, &classes, "consumer", &url, QUEUE).unwrap();

    let host = lab.host_ns().unwrap();
    let probes = match switch {
        Switch::ByHand => "",
        Switch::ByHealthCheck => "\n[probes]\nenabled = true\n",
    };
    let la = LabAgent::new(&lab, "jms", probes).unwrap();
    let agent = la.start(&host).unwrap();
    let id = agent.status().tenants.iter().find(|t| t.name == "acme").unwrap().id;
    let dp = Dataplane::load(Some(la.pin_path())).unwrap();

    let master = wait_master(&mut brokers);
    let slave = 1 - master;
    assert!(
        !brokers[slave].listening(),
        "both brokers listen: the store is not shared"
    );
    match switch {
        Switch::ByHand if active_core(&dp, id) != master => activate(&agent, master),
        Switch::ByHand => {}
        // The slave does not listen: its core is declared down, and the
        // master's core is (or becomes) the active one by itself.
        Switch::ByHealthCheck => {
            let t0 = Instant::now();
            while active_core(&dp, id) != master {
                assert!(
                    t0.elapsed() < START_TIMEOUT,
                    "the probes did not make the master's core active:\n{}",
                    agent.log_text()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    assert_eq!(active_core(&dp, id), master);
    for c in [&mut producer, &mut consumer] {
        c.expect("ready", START_TIMEOUT).unwrap();
        c.send_line("connect").unwrap();
        c.expect("connected", START_TIMEOUT).unwrap();
    }

    // N persistent messages through the VIP to the master.
    producer.send_line(&format!("send {MESSAGES}")).unwrap();
    for i in 0..MESSAGES {
        producer.send_line(&body(i)).unwrap();
    }
    producer.expect("sent", START_TIMEOUT).unwrap();

    // The master dies; the consumer asks for the messages at once (its
    // failover transport holds the request until it is connected again).
    let kill_ns = mono_ns();
    brokers[master].kill();
    let mut t = Timeline {
        master_gone: mono_ns() - kill_ns,
        ..Timeline::default()
    };
    consumer.send_line(&format!("consume {MESSAGES} 60000")).unwrap();
    let asked = mono_ns() - kill_ns;
    if switch == Switch::ByHand {
        activate(&agent, slave);
        t.switched = Some(mono_ns() - kill_ns);
    }
    let since_kill = |said: &jms::Said| said.at_ns.map(|n| n.saturating_sub(kill_ns));
    let mut bodies = Vec::new();
    let deadline = Instant::now() + FAILOVER_TIMEOUT;
    loop {
        if t.slave_listening.is_none() && brokers[slave].listening() {
            t.slave_listening = Some(mono_ns() - kill_ns);
        }
        if t.switched.is_none() && active_core(&dp, id) == slave {
            t.switched = Some(mono_ns() - kill_ns);
        }
        let said = consumer.next(Duration::from_millis(5)).unwrap();
        match said {
            Some(s) if s.word == "interrupted" => t.client_interrupted = since_kill(&s),
            Some(s) if s.word == "resumed" => t.client_resumed = since_kill(&s),
            Some(s) if s.word == "received" => {
                t.first_message = t.first_message.or(since_kill(&s));
                t.last_message = since_kill(&s);
                bodies.push(s.body().unwrap().to_string());
            }
            Some(s) if s.word == "consumed" => break,
            Some(_) | None => {}
        }
        assert!(
            Instant::now() < deadline,
            "no failover within {FAILOVER_TIMEOUT:?} ({switch:?}): {t:?}, {} of {MESSAGES} received\nslave's log:\n{}\nagent's log:\n{}",
            bodies.len(),
            brokers[slave].log_text(),
            agent.log_text()
        );
    }
    let (_, after) = consumer.expect("checked", START_TIMEOUT).unwrap();
    let extra: Vec<&str> = after
        .iter()
        .filter(|s| s.word == "extra")
        .map(|s| s.line.as_str())
        .collect();

    eprintln!(
        "jms failover ({switch:?}, lockAcquireSleepInterval {} ms, {MESSAGES} messages): from the kill: \
         master gone {}, client interrupted {}, switch {}, slave listening (took the lock) {}, \
         client reconnected {}, first message {}, last message {}",
        jms::LOCK_ACQUIRE_SLEEP_MS,
        ms(Some(t.master_gone)),
        ms(t.client_interrupted),
        ms(t.switched),
        ms(t.slave_listening),
        ms(t.client_resumed),
        ms(t.first_message),
        ms(t.last_message),
    );

    // Every message, once, in order, as sent.
    let want: Vec<String> = (0..MESSAGES).map(body).collect();
    assert_eq!(bodies.len(), MESSAGES, "{t:?}");
    assert!(bodies == want, "the messages differ from those sent");
    assert!(extra.is_empty(), "delivered more than once: {extra:?}");
    // Through carwash to the slave: the core moved, and the client came
    // back only once both the path and the broker were there.
    assert_eq!(active_core(&dp, id), slave);
    assert!(t.slave_listening.is_some(), "the slave took over: {t:?}");
    assert!(t.client_interrupted.is_some(), "the client saw the master go: {t:?}");
    let resumed = t.client_resumed.expect("the client reconnected");
    assert!(resumed > asked, "{t:?}");
    assert!(!brokers[master].listening());

    producer.quit();
    consumer.quit();
    drop(brokers);
    agent.stop();
}

#[test]
fn broker_pair_fails_over_when_the_core_is_moved_by_hand() {
    failover(Switch::ByHand);
}

#[test]
fn broker_pair_fails_over_when_the_probes_declare_the_master_down() {
    failover(Switch::ByHealthCheck);
}
