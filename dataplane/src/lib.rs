//! carwash's userspace: loading the eBPF object, pinning it, reading and
//! writing its maps. The agent, the CLI and the tests all go through here.
pub mod agent;
pub mod api;
pub mod batch;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod conntrack;
pub mod counters;
pub mod deny_cache;
pub mod etcd;
pub mod event;
pub mod event_maps;
pub mod generation;
pub mod health;
pub mod loader;
pub mod maglev;
pub mod memory;
pub mod netns;
pub mod pin;
pub mod pinned;
pub mod probes;
pub mod tables;
pub mod trace;
pub mod xdp_target;

pub use loader::Dataplane;
