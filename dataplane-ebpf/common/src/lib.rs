//! The ABI between carwash's eBPF programs and userspace.
//!
//! Everything a pinned map holds is defined here, once: `#[repr(C)]`, no
//! implicit padding, with a size test per type. Pinned maps outlive the agent
//! that created them, so any change to a type here bumps [`LAYOUT_VERSION`].
//! Pure logic that the programs run (checksums, hashing) lives here too, so
//! that it is unit-tested on the host.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod checksum;
pub mod counters;

pub use counters::{Counter, CounterBlock};

/// Version of the map layout. A new binary refuses to adopt pinned maps of
/// another version instead of misreading them.
pub const LAYOUT_VERSION: u32 = 1;

/// Names of the programs in the eBPF object, as userspace looks them up.
pub mod programs {
    /// XDP on `uplink`: traffic from the internet.
    pub const UPLINK: &str = "carwash_uplink";
    /// The smallest possible XDP program (returns XDP_PASS): the yardstick
    /// every benchmark figure is divided by.
    pub const BENCH_PASS: &str = "carwash_bench_pass";
}

/// Names of the maps in the eBPF object; also their file names under the pin
/// path.
pub mod maps {
    /// Per-CPU array of one [`crate::CounterBlock`], indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
}
