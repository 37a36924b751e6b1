//! Userspace access to the maps, one module per map family: each owns the
//! typed reads and writes of its maps, on the loaded object ([`Dataplane`])
//! for the agent and the tests, and through the pins ([`pins::Pins`]) for
//! the CLI and the metrics. Adding a field to a map's value touches its
//! family module here, the type in `dataplane-common` and the programs.
//!
//! [`Dataplane`]: crate::Dataplane
pub mod conntrack;
pub mod counters;
pub mod deny_cache;
pub mod events;
pub mod fleet;
pub mod health;
pub mod host;
pub mod memory;
pub mod pins;
pub mod policy;
