//! Shell completions and manual pages come from the clap definitions of
//! the real binary: every command is in them.
mod agent_common;

use agent_common::{TempDir, carwash};
use carwash_tests::cli::stdout;

const COMMANDS: &[&str] = &[
    "agent",
    "policy",
    "status",
    "tenant",
    "snat",
    "stats",
    "trace",
    "machine",
    "core",
    "completions",
    "man",
];

#[test]
fn completions_know_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout(&carwash(&["completions", shell])).unwrap();
        for c in COMMANDS {
            assert!(script.contains(c), "{shell} completion has no {c}");
        }
        // Flags of the read commands too.
        for flag in ["pin-path", "watch", "netns", "dport"] {
            assert!(script.contains(flag), "{shell} completion has no --{flag}");
        }
    }
    let out = carwash(&["completions", "tcsh"]);
    assert!(!out.status.success(), "an unknown shell is refused");
}

#[test]
fn man_pages_cover_every_command() {
    let page = stdout(&carwash(&["man"])).unwrap();
    assert!(page.contains(".TH carwash 1"), "{page}");
    for c in COMMANDS {
        assert!(page.contains(c), "carwash(1) does not list {c}");
    }
    let dir = TempDir::new("man");
    stdout(&carwash(&["man", "--dir", dir.path().to_str().unwrap()])).unwrap();
    for page in [
        "carwash.1",
        "carwash-tenant-list.1",
        "carwash-tenant-show.1",
        "carwash-snat-list.1",
        "carwash-trace.1",
        "carwash-stats.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page} is not a manual page"
        );
    }
    let trace = std::fs::read_to_string(dir.path().join("carwash-trace.1")).unwrap();
    assert!(trace.contains("\\-\\-netns"), "the trace page documents its flags");
}
