//! The read commands next to a real `carwash agent`: they find the pins
//! through the agent's host configuration, `status` reports the running
//! agent, and after the agent is killed (SIGKILL) every command still
//! answers from the pins, `trace` included, which then runs the very
//! program the agent attached.
mod agent_common;

use agent_common::{AgentSetup, carwash};
use carwash_policy::MacAddr;
use carwash_tests::cli::{json, stdout};
use carwash_tests::require_root;
use serde_json::Value;

fn run(setup: &AgentSetup, args: &[&str]) -> std::process::Output {
    let mut a = args.to_vec();
    a.extend(["--config", setup.config.to_str().unwrap()]);
    carwash(&a)
}

fn run_json(setup: &AgentSetup, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    json(&run(setup, &a)).unwrap()
}

#[test]
fn read_commands_answer_after_the_agent_was_killed() {
    require_root();
    let setup = AgentSetup::new(&["acme.toml", "beta.toml"]).unwrap();
    // The tunnel endpoints of acme's machines are neighbours of the host's
    // fabric, so that the programs can route to them.
    for (vtep, last) in [("10.200.1.10", 0x0a), ("10.200.1.11", 0x0b), ("10.200.1.20", 0x14)] {
        setup
            .ns
            .neigh("fabric", vtep, MacAddr([0x02, 0x01, 0x0a, 0xc8, 0x01, last]))
            .unwrap();
    }
    let agent = setup.start().unwrap();
    let running = agent.status();

    let s = run_json(&setup, &["status", "--socket", running.api_socket.to_str().unwrap()]);
    assert_eq!(s["agent"]["pid"], agent.child.id());
    assert_eq!(s["pins"]["generation"], running.generation);
    let text = stdout(&run(
        &setup,
        &["status", "--socket", running.api_socket.to_str().unwrap()],
    ))
    .unwrap();
    assert!(text.contains(&format!("running, pid {}", agent.child.id())), "{text}");
    let live: Vec<Value> = [&["tenant", "list"][..], &["tenant", "show", "acme"]]
        .iter()
        .map(|a| run_json(&setup, a))
        .collect();
    assert_eq!(live[0]["tenants"].as_array().unwrap().len(), 2);

    agent.kill();

    let s = run_json(&setup, &["status", "--socket", running.api_socket.to_str().unwrap()]);
    assert_eq!(s["agent"], Value::Null);
    assert_eq!(s["pins"]["generation"], running.generation);
    assert_eq!(s["pins"]["digest"], running.digest);
    let links: Vec<&str> = s["pins"]["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(links, ["uplink", "fabric"], "the programs stay attached: {s:#}");
    // Without the agent, interfaces are named as the agent's namespace
    // names them when asked to.
    let sock = running.api_socket.to_str().unwrap();
    let s = run_json(&setup, &["status", "--socket", sock, "--netns", setup.ns.name()]);
    let ifnames: Vec<&str> = s["pins"]["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap())
        .collect();
    assert_eq!(ifnames, ["uplink", "fabric"], "{s:#}");
    let text = stdout(&run(&setup, &["status", "--socket", sock, "--netns", setup.ns.name()])).unwrap();
    let uplink = running.interfaces.iter().find(|i| i.role == "uplink").unwrap();
    assert!(
        text.contains(&format!("on uplink (ifindex {})", uplink.ifindex)),
        "{text}"
    );
    let text = stdout(&run(&setup, &["status", "--socket", sock])).unwrap();
    assert!(text.contains("add --netns NAME"), "{text}");
    let after: Vec<Value> = [&["tenant", "list"][..], &["tenant", "show", "acme"]]
        .iter()
        .map(|a| run_json(&setup, a))
        .collect();
    assert_eq!(live, after, "the maps say the same with and without the agent");
    let stats = run_json(&setup, &["stats"]);
    assert!(
        stats["programs"]["uplink"]["counters"].get("packets").is_some(),
        "{stats:#}"
    );
    let snat = run_json(&setup, &["snat", "list"]);
    assert_eq!(snat["available"], true, "{snat:#}");
    assert_eq!(snat["entries"], serde_json::json!([]), "no outbound traffic, no flows");

    // The trace runs in the agent's namespace and is the attached program.
    let t = run_json(
        &setup,
        &[
            "trace",
            "--netns",
            setup.ns.name(),
            "--src",
            "198.51.100.10",
            "--dst",
            "203.0.113.10",
            "--dport",
            "61616",
        ],
    );
    assert_eq!(t["action"], "XDP_REDIRECT", "{t:#}");
    assert_eq!(t["tenant"]["name"], "acme");
    assert_eq!(t["class"], "jms");
    assert_eq!(t["backend"]["vtep"], "10.200.1.20");
    assert_eq!(t["program"]["attached_tag"], t["program"]["tag"], "{t:#}");
    assert_eq!(t["program"]["ingress"]["name"], "uplink");
    assert_eq!(t["notes"], serde_json::json!([]), "{t:#}");
}
