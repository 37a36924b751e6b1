//! Hitless restart without traffic: a killed agent leaves its programs
//! attached through the pinned links; the next one adopts the pins (same
//! links, programs swapped in, maps not rewritten), checks the layout
//! version, and only `--uninstall` detaches.
mod agent_common;

use std::path::Path;

use agent_common::{AgentSetup, carwash, diff_maps, dump_maps};
use aya::maps::{Array, Map, MapData};
use carwash_tests::require_root;
use dataplane_common::maps;
use dataplane_common::types::Meta;

/// The id of the XDP program attached to `dev`, per `ip link`.
fn xdp_prog(setup: &AgentSetup, dev: &str) -> Option<u32> {
    let out = setup.ns.ip(&["-d", "link", "show", "dev", dev]).unwrap();
    let i = out.find("prog/xdp id ")?;
    out[i + 12..].split_whitespace().next()?.parse().ok()
}

fn set_layout_version(pin: &Path, v: u32) {
    let data = MapData::from_pin(pin.join("maps").join(maps::META)).unwrap();
    let mut meta: Array<MapData, Meta> = Array::try_from(Map::Array(data)).unwrap();
    let m = meta.get(&0, 0).unwrap();
    meta.set(0, Meta { layout_version: v, ..m }, 0).unwrap();
}

#[test]
fn a_killed_agent_leaves_forwarding_attached_and_the_next_adopts_the_pins() {
    require_root();
    let setup = AgentSetup::new(&["acme.toml", "beta.toml"]).unwrap();
    let a1 = setup.start().unwrap();
    let s1 = a1.status();
    assert!(!s1.adopted);
    assert!(s1.attachments.iter().all(|a| a.attach == "new"), "{:?}", s1.attachments);
    let up1 = s1
        .attachments
        .iter()
        .find(|a| a.program == "carwash_uplink")
        .unwrap()
        .clone();
    let fab1 = s1
        .attachments
        .iter()
        .find(|a| a.program == "carwash_fabric")
        .unwrap()
        .clone();
    assert_eq!(xdp_prog(&setup, "uplink"), Some(up1.prog_id));
    assert_eq!(xdp_prog(&setup, "fabric"), Some(fab1.prog_id));
    let dump1 = dump_maps(setup.pin_path()).unwrap();

    // SIGKILL: nothing runs down, the programs stay on the interfaces.
    a1.kill();
    assert_eq!(xdp_prog(&setup, "uplink"), Some(up1.prog_id));
    assert_eq!(xdp_prog(&setup, "fabric"), Some(fab1.prog_id));
    let pinned = dataplane::agent::status::pinned_status(setup.pin_path()).unwrap();
    assert_eq!((pinned.generation, &pinned.digest), (s1.generation, &s1.digest));
    // `carwash status` answers from the pins while no agent runs.
    let out = carwash(&["status", "--config", setup.config.to_str().unwrap(), "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pins"]["generation"], s1.generation);
    assert!(v["agent"].is_null());

    // The next agent adopts: same links, its programs swapped in, the same
    // tenant ids, the maps byte for byte as they were (nothing rewritten).
    let a2 = setup.start().unwrap();
    let s2 = a2.status();
    assert!(s2.adopted);
    for (before, prog) in [(&up1, "carwash_uplink"), (&fab1, "carwash_fabric")] {
        let now = s2.attachments.iter().find(|a| a.program == prog).unwrap();
        assert_eq!(now.attach, "replaced", "{now:?}");
        assert_eq!(now.link_id, before.link_id, "{prog}: the link must be the same one");
        assert_ne!(now.prog_id, before.prog_id, "{prog}: the new agent's program runs");
    }
    assert_eq!(xdp_prog(&setup, "uplink"), Some(s2.attachments[0].prog_id));
    assert_eq!(s2.tenants, s1.tenants);
    assert_eq!((s2.generation, &s2.digest), (s1.generation, &s1.digest));
    // The program array holds the programs the packets are handed on to:
    // like the links, it now names the new agent's programs.
    let (mut dump1, mut dump2) = (dump1, dump_maps(setup.pin_path()).unwrap());
    let (jumps1, jumps2) = (dump1.remove("JUMPS").unwrap(), dump2.remove("JUMPS").unwrap());
    assert_eq!(jumps1.len(), jumps2.len());
    assert_ne!(jumps1, jumps2, "the new agent's programs are handed packets on to");
    assert!(dump1 == dump2, "adoption rewrote maps: {:?}", diff_maps(&dump1, &dump2));

    // Without the state file the agent cannot tell which tenants are
    // unchanged: it re-installs every one, ids kept, as a new generation.
    a2.kill();
    std::fs::remove_file(setup.socket.with_file_name("applied.json")).unwrap();
    let a3 = setup.start().unwrap();
    let s3 = a3.status();
    assert_eq!(s3.tenants, s1.tenants);
    let r = s3.last_apply.unwrap();
    assert_eq!((r.changed.len(), r.generation), (2, s1.generation + 1), "{r:?}");

    // A clean stop (SIGTERM) detaches nothing either.
    let prog3 = xdp_prog(&setup, "uplink");
    assert!(a3.stop().success());
    assert_eq!(xdp_prog(&setup, "uplink"), prog3);

    // Pins of another layout are refused, not misread.
    set_layout_version(setup.pin_path(), 999);
    let err = match setup.start() {
        Ok(_) => panic!("an agent adopted pins of layout version 999"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("layout version 999"), "{err}");
    assert!(err.contains("--uninstall"), "{err}");
    assert_eq!(
        xdp_prog(&setup, "uplink"),
        prog3,
        "a refused start must not touch the attachment"
    );

    // --uninstall detaches and removes the pins.
    let out = carwash(&["agent", "--uninstall", "--config", setup.config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(xdp_prog(&setup, "uplink"), None);
    assert_eq!(xdp_prog(&setup, "fabric"), None);
    assert!(!setup.pin_path().exists());
}

#[test]
fn uninstall_is_refused_while_an_agent_runs() {
    require_root();
    let setup = AgentSetup::new(&["acme.toml"]).unwrap();
    let agent = setup.start().unwrap();
    let out = carwash(&["agent", "--uninstall", "--config", setup.config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another carwash agent is running"), "{stderr}");
    assert!(xdp_prog(&setup, "uplink").is_some());
    // A second agent on the same pins (with a socket of its own) is refused too.
    let sock2 = setup.dir.path().join("run2/api.sock");
    let cfg2 = setup.dir.path().join("second.toml");
    let text = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(
        &cfg2,
        text.replace(setup.socket.to_str().unwrap(), sock2.to_str().unwrap()),
    )
    .unwrap();
    let second = agent_common::AgentProc::start(&setup.ns, &cfg2, &sock2, &setup.dir.path().join("second.log"));
    let err = format!("{:#}", second.err().expect("a second agent started on the same pins"));
    assert!(err.contains("another carwash agent is running"), "{err}");
    assert!(agent.status().attachments.len() == 2);
}
