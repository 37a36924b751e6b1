//! The health checker at a CI-sized scale (`cargo xtask bench -- health`
//! runs it at 10,000 tenants): the real agent probes 500 tenants × 4
//! machines every second through their tunnels against responders that
//! answer; every machine is declared up with a passing probe, none flaps,
//! and the probes keep pace (4 × 500 answered a second).
mod agent_common;
mod probe_scale;

use std::time::Duration;

use carwash_tests::require_root;
use dataplane::config::ProbeResets;

#[test]
fn five_hundred_tenants_probed_every_second_stay_up_and_keep_pace() {
    require_root();
    // CARWASH_HEALTH_TENANTS: another size, to look into one.
    let n = std::env::var("CARWASH_HEALTH_TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    // The resets as configured by default: the fabric's programs send them.
    let f = probe_scale::run(n, Some(ProbeResets::Fabric), Duration::from_secs(5), false).unwrap();
    eprintln!("{f:?}");
    probe_scale::check(&f).unwrap();
}

/// Where the fabric program's resets never leave (a driver that keeps no
/// XDP metadata for TC would lose them so), the agent notices within
/// seconds, says so, and sends them: the machines keep nothing of the
/// probes all the same, and every machine stays up.
#[test]
fn lost_fabric_resets_are_noticed_and_sent_by_the_agent() {
    require_root();
    let f = probe_scale::run(100, Some(ProbeResets::Fabric), Duration::from_secs(5), true).unwrap();
    eprintln!("{f:?}");
    probe_scale::check(&f).unwrap();
}
