//! Every map of the programs, in one place, sized by named constants.
use aya_ebpf::{macros::map, maps::PerCpuArray};
use dataplane_common::Counter;

/// Global counters, indexed by [`Counter`].
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);
