//! The per-CPU counters: global ones (one block per CPU, one map lookup per
//! packet) and per tenant and class. Per-CPU slots need no atomics.
use dataplane_common::{
    Counter, CounterBlock, DropReason,
    drop::{DROPPED_BYTES, STEERED_BYTES, STEERED_PACKETS},
    types::CLASSES,
};

use crate::maps::{COUNTERS, TENANT_STATS};

pub struct Counters(*mut CounterBlock);

impl Counters {
    /// This CPU's block. The map is an array with one slot, so the lookup
    /// cannot miss; should it, counting is skipped rather than the packet.
    #[inline(always)]
    pub fn this_cpu() -> Option<Counters> {
        COUNTERS.get_ptr_mut(0).map(Counters)
    }

    #[inline(always)]
    fn bump(&self, slot: usize, n: u64) {
        // SAFETY: the block belongs to this CPU and the program is not
        // preempted while it runs. `get_mut` rather than indexing: a panic
        // path has no place in a BPF program.
        if let Some(v) = unsafe { (*self.0).get_mut(slot) } {
            *v += n;
        }
    }

    #[inline(always)]
    pub fn add(&self, c: Counter, n: u64) {
        self.bump(c.index() as usize, n)
    }

    #[inline(always)]
    pub fn inc(&self, c: Counter) {
        self.add(c, 1)
    }

    /// A drop, by reason (the slots after the [`Counter`]s).
    #[inline(always)]
    pub fn drop(&self, why: DropReason) {
        self.bump(Counter::COUNT as usize + why.index() as usize, 1)
    }
}

/// Counts a steered packet for a tenant and class.
#[inline(always)]
pub fn tenant_steered(tenant: u32, class: u8, bytes: u64) {
    tenant_bump(tenant, class, STEERED_PACKETS, 1, STEERED_BYTES, bytes)
}

/// Counts a dropped packet for a tenant and class.
#[inline(always)]
pub fn tenant_dropped(tenant: u32, class: u8, why: DropReason, bytes: u64) {
    tenant_bump(tenant, class, why.slot(), 1, DROPPED_BYTES, bytes)
}

#[inline(always)]
fn tenant_bump(tenant: u32, class: u8, a: usize, na: u64, b: usize, nb: u64) {
    let Some(block) = TENANT_STATS.get_ptr_mut(tenant) else {
        return;
    };
    let class = class as usize;
    if class >= CLASSES {
        return;
    }
    // SAFETY: this CPU's slot of the tenant; bounds checked by `get_mut`.
    if let Some(row) = unsafe { (*block).get_mut(class) } {
        if let Some(v) = row.get_mut(a) {
            *v += na;
        }
        if let Some(v) = row.get_mut(b) {
            *v += nb;
        }
    }
}
