//! Network-namespace test harness (`netns`) and the embedded lab topology
//! (`lab`) that `cargo xtask lab up` and the end-to-end tests build on.
//!
//! Everything here creates its own namespaces and sends traffic only inside
//! them (or on loopback): nothing touches the root namespace's addresses or
//! routes, so it is safe on a shared machine.

pub mod bird;
pub mod fleet;
pub mod lab;
pub mod netns;

pub use fleet::{Fleet, FleetGuard, FleetHost};
pub use lab::{Lab, LabConfig, LabGuard, LabTenant, Machine, Role};
pub use netns::{Daemon, NetNs, PinDir, ensure_bpffs, is_root, unique_tag, veth, vxlan};
