//! carwash's userspace: loading the eBPF object, pinning it, reading and
//! writing its maps. The agent, the CLI and the tests all go through here.
pub mod agent;
pub mod api;
pub mod batch;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod etcd;
pub mod event;
pub mod health;
pub mod loader;
pub mod maglev;
pub mod maps;
pub mod netns;
pub mod pin;
pub mod probes;
pub mod trace;
pub mod xdp_target;

pub use loader::Dataplane;

// The paths of the map families before they lived under `maps/`, for the
// tests and benchmarks that name them.
pub use maps::events as event_maps;
pub use maps::policy::generations as generation;
pub use maps::{conntrack, counters, deny_cache, memory};
pub mod pinned;
pub mod tables;
