//! `cargo xtask demo` is itself tested: on a lab of its own it must find
//! inbound and outbound traffic, allowed and denied, and the counters, as
//! the repository's policies say (it exits non-zero otherwise), and leave
//! neither the lab nor the agent's pins behind.
use std::path::Path;
use std::process::Command;

/// Takes the lab down should the demo die half-way.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        if Path::new(&format!("/run/netns/{}-host", self.0)).exists() {
            let _ = netlab::lab::Lab::down(&self.0);
        }
    }
}

#[test]
fn the_demo_finds_what_the_policies_say() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the demo needs root (namespaces, BPF)");
    let name = format!("cwd{}", netlab::netns::unique_tag());
    let _down = Down(name.clone());
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["demo", "--name", &name])
        .output()
        .expect("running cargo xtask demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the demo failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "demo: everything went as the policies say",
        "ok         reply    allowed client 198.51.100.10 → acme VIP 203.0.113.10:443 (policy: allow): acme connector",
        "ok         no reply denied client 192.0.2.66 → acme VIP 203.0.113.10:443 (policy: deny)",
        "ok         reply    beta connector 0 → 198.18.0.10:8080 (egress: allow): peer=203.0.113.201",
        "ok         no reply beta connector 0 → 198.51.100.10:8080 (egress: deny)",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    assert!(!text.contains("UNEXPECTED"), "{text}");
    assert!(
        !Path::new(&format!("/run/netns/{name}-host")).exists(),
        "the lab is still up"
    );
    assert!(
        !Path::new(&format!("/sys/fs/bpf/carwash-{name}")).exists(),
        "the agent's pins are still there"
    );
}
