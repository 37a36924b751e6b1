//! The per-CPU counters: global ones (one block per CPU, one map lookup per
//! packet) and per tenant and class. Per-CPU slots need no atomics.
use dataplane_common::{
    Counter, CounterBlock,
    drop::{DROPPED_BYTES, FIRST_DROP_SLOT, STEERED_BYTES, STEERED_PACKETS},
    types::{CLASS_NONE, CLASSES},
};

const _: () =
    assert!(Counter::Ipv6.index() == Counter::Ipv4.index() + 1 && Counter::Udp.index() == Counter::Tcp.index() + 1);

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};

use crate::maps::{COUNTERS, TENANT_STATS};
use crate::packet::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};
use crate::parse::{Flow, NotIp, parse};
use crate::verdict::Refused;

pub struct Counters(*mut CounterBlock);

impl Counters {
    /// This CPU's block of program `side` (`SIDE_*`). The lookup cannot
    /// miss for a valid side; should it, counting is skipped rather than the
    /// packet.
    #[inline(always)]
    pub fn this_cpu(side: u32) -> Option<Counters> {
        COUNTERS.get_ptr_mut(side).map(Counters)
    }

    /// Counts a frame and its verdict around `f`.
    #[inline(always)]
    pub fn around(&self, bytes: usize, f: impl FnOnce() -> u32) -> u32 {
        self.inc(Counter::Packets);
        self.add(Counter::Bytes, bytes as u64);
        let action = f();
        self.action(action);
        action
    }

    /// Counts a verdict (a tail-called program counts its own: the caller's
    /// `around` never sees it).
    #[inline(always)]
    pub fn action(&self, action: u32) {
        self.inc(match action {
            xdp_action::XDP_DROP => Counter::ActionDrop,
            xdp_action::XDP_TX => Counter::ActionTx,
            xdp_action::XDP_REDIRECT => Counter::ActionRedirect,
            _ => Counter::ActionPass,
        });
    }

    /// Parses the frame and counts what it is. `None` for a frame that is
    /// not IP, or is malformed (counted by kind): the programs pass those
    /// to the host stack, which drops what it cannot parse either.
    #[inline(always)]
    pub fn parse(&self, ctx: &XdpContext) -> Option<Flow> {
        match parse(ctx) {
            Ok(flow) => {
                self.protocols(&flow);
                Some(flow)
            }
            Err(NotIp::Other) => {
                self.inc(Counter::NonIp);
                None
            }
            Err(NotIp::Malformed(why)) => {
                self.inc(why);
                None
            }
        }
    }

    /// The protocol counters of a parsed packet.
    #[inline(always)]
    pub fn protocols(&self, flow: &Flow) {
        if flow.vlans > 0 {
            self.inc(Counter::Vlan);
        }
        self.inc(if flow.v6 { Counter::Ipv6 } else { Counter::Ipv4 });
        if flow.later_fragment {
            self.inc(Counter::Fragment);
            return;
        }
        self.inc(match flow.proto {
            IPPROTO_TCP => Counter::Tcp,
            IPPROTO_UDP => Counter::Udp,
            IPPROTO_ICMP => Counter::Icmp,
            IPPROTO_ICMPV6 => Counter::Icmpv6,
            _ => Counter::OtherL4,
        });
    }

    /// Counts a frame the uplink's fast path dropped on a remembered
    /// denial (`deny_cache::fast`: untagged, not a later fragment, TCP or
    /// UDP) as `around`, `parse` and `drop` count one the full path drops.
    #[inline(always)]
    pub fn remembered_drop(&self, v6: bool, udp: bool, why: u32, bytes: usize) {
        self.inc(Counter::Packets);
        self.add(Counter::Bytes, bytes as u64);
        // Neighbours in the block: an index, not a choice.
        self.bump(Counter::Ipv4.index() as usize + v6 as usize, 1);
        self.bump(Counter::Tcp.index() as usize + udp as usize, 1);
        self.drop(why);
        self.inc(Counter::ActionDrop);
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

    /// A drop, by reason (a `DropReason`'s index: the slots after the
    /// [`Counter`]s).
    #[inline(always)]
    pub fn drop(&self, why: u32) {
        self.bump(Counter::COUNT as usize + why as usize, 1)
    }
}

/// The body of a tail-called program of side `side`: runs `f` (which
/// sets the tenant it learns) and counts its outcome with [`finish`].
#[inline(always)]
pub fn run_handed(
    ctx: &XdpContext,
    side: u32,
    f: impl FnOnce(&XdpContext, &Counters, &mut u32) -> Result<u32, Refused>,
) -> u32 {
    let Some(stats) = Counters::this_cpu(side) else {
        return xdp_action::XDP_DROP;
    };
    let bytes = crate::packet::frame_len(ctx) as u64;
    let mut tenant = 0;
    let r = f(ctx, &stats, &mut tenant);
    finish(ctx, &stats, tenant, bytes, r)
}

/// Counts the outcome of a program that handles a packet for `tenant` (0:
/// not known) and returns its action.
#[inline(always)]
pub fn finish(ctx: &XdpContext, stats: &Counters, tenant: u32, bytes: u64, r: Result<u32, Refused>) -> u32 {
    let (action, why) = match r {
        Ok(action) => {
            tenant_steered(tenant, CLASS_NONE, bytes);
            (action, crate::events::NOT_DROPPED)
        }
        Err(r) => {
            stats.drop(r.why);
            if tenant != 0 {
                tenant_dropped(tenant, CLASS_NONE, r.why, bytes);
            }
            (r.action, r.why)
        }
    };
    stats.action(action);
    crate::events::report_pending(ctx, why, action)
}

/// Counts a steered packet for a tenant and class.
#[inline(always)]
pub fn tenant_steered(tenant: u32, class: u8, bytes: u64) {
    tenant_bump(tenant, class, STEERED_PACKETS, 1, STEERED_BYTES, bytes)
}

/// Counts a dropped packet for a tenant and class.
#[inline(always)]
pub fn tenant_dropped(tenant: u32, class: u8, why: u32, bytes: u64) {
    tenant_bump(tenant, class, FIRST_DROP_SLOT + why as usize, 1, DROPPED_BYTES, bytes)
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
