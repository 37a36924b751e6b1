//! Every map of the programs, in one place, sized by named constants.
use aya_ebpf::{macros::map, maps::PerCpuArray};
use dataplane_common::CounterBlock;

/// Global counters: one block per CPU.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<CounterBlock> = PerCpuArray::with_max_entries(1, 0);
