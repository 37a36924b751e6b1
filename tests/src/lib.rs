//! The kernel test harness of carwash: packet fixtures run through
//! `BPF_PROG_TEST_RUN` (see [`fixture`]) and packet builders on top of
//! etherparse (see [`packets`]). End-to-end tests use the `netlab` crate's
//! namespaces.
pub mod bench;
pub mod bench_events;
pub mod bench_fleet;
pub mod bench_snat;
pub mod cli;
pub mod fabric;
pub mod fixture;
pub mod fleet;
pub mod frames;
pub mod inbound_cases;
pub mod jms;
pub mod labrun;
pub mod layout;
pub mod model;
pub mod modelrun;
pub mod outbound;
pub mod packets;
pub mod synthetic;

/// Kernel tests load BPF programs and create namespaces: they need root.
/// Fails (never skips) so that a run without privileges cannot look green.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "carwash's kernel tests need root (BPF and network namespaces); run them with sudo or as root"
    );
}
