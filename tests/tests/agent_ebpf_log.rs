//! The programs' own log (aya-log): off by default, and then nothing is
//! logged; with `ebpf_log = "debug"` a drop in the data path reaches the
//! agent's log with its reason and tenant.
mod agent_common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use agent_common::AgentSetup;
use aya::programs::{TestRun, TestRunOptions, Xdp};
use aya_obj::programs::XdpAttachType;
use carwash_tests::fixture::XDP_DROP;
use carwash_tests::packets::syn4;
use carwash_tests::require_root;
use dataplane::loader::prog_pin;
use dataplane_common::{DropReason, programs};

/// A SYN from a source acme does not allow, through the agent's own pinned
/// uplink program.
fn denied_syn(setup: &AgentSetup) {
    let prog = Xdp::from_pin(prog_pin(setup.pin_path(), programs::UPLINK), XdpAttachType::Interface).unwrap();
    let frame = syn4(Ipv4Addr::new(192, 0, 2, 66), Ipv4Addr::new(203, 0, 113, 10), 40000, 443);
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(&frame);
    opts.repeat = 1;
    assert_eq!(prog.test_run(opts).unwrap().return_value, XDP_DROP);
}

fn line_of_the_drop() -> String {
    format!("uplink: dropped, reason {}, tenant 1", DropReason::NotAllowed.index())
}

#[test]
fn the_programs_log_only_when_asked() {
    require_root();
    // Asked for: the drop is in the agent's log within moments.
    let setup = AgentSetup::new(&["acme.toml"]).unwrap();
    let mut config = std::fs::read_to_string(&setup.config).unwrap();
    config.push_str("ebpf_log = \"debug\"\n");
    std::fs::write(&setup.config, config).unwrap();
    let agent = setup.start().unwrap();
    assert!(
        agent.log_text().contains("the programs log into this log"),
        "{}",
        agent.log_text()
    );
    denied_syn(&setup);
    let t0 = Instant::now();
    while !agent.log_text().contains(&line_of_the_drop()) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no log line for the drop:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(agent);

    // Not asked for (the default): the same drop logs nothing.
    let quiet = AgentSetup::new(&["acme.toml"]).unwrap();
    let agent = quiet.start().unwrap();
    denied_syn(&quiet);
    std::thread::sleep(Duration::from_millis(300));
    let log = agent.log_text();
    assert!(!log.contains("uplink: dropped"), "{log}");
    assert!(!log.contains("the programs log into this log"), "{log}");
}
