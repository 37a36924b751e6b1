//! Data-path events (`dataplane_common::events`): written to the `EVENTS`
//! ring buffer only on the paths that refuse or translate a packet, and
//! only within the tenant's budget on this CPU (a token bucket in a per-CPU
//! array, so no atomics): a flood costs a map lookup and a clock read per
//! packet, and the agent sees at most the budget. What the budget holds
//! back is counted in the bucket, which the agent reports as summaries.
use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, PerCpuArray, ProgramArray, RingBuf},
    programs::XdpContext,
};
use dataplane_common::{
    DropReason,
    events::{
        DEFAULT_EVENT_BURST, DEFAULT_EVENT_RATE, DataEvent, EVENT_KINDS, EVENT_RING_BYTES, EventBucket, EventConfig,
        EventCounts, KIND_CONNTRACK_FULL, KIND_DROP, KIND_FAIL_CLOSED, KIND_FLOW, KIND_PORTS_EXHAUSTED,
        KIND_TRANSLATION,
    },
    types::{CLASS_NONE, MAX_TENANTS},
};

use crate::parse::Flow;
use dataplane_common::deny::DenySlot;

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

#[map(name = "EVENT_BUCKETS")]
pub static EVENT_BUCKETS: PerCpuArray<EventBucket> = PerCpuArray::with_max_entries(MAX_TENANTS, 0);

#[map(name = "EVENT_STATS")]
pub static EVENT_STATS: PerCpuArray<EventCounts> = PerCpuArray::with_max_entries(EVENT_KINDS, 0);

#[map(name = "EVENT_CONFIG")]
pub static EVENT_CONFIG: Array<EventConfig> = Array::with_max_entries(1, 0);

/// Allowed packets until the next sampled one, per CPU.
#[map(name = "FLOW_COUNTDOWN")]
pub static FLOW_COUNTDOWN: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// `carwash_event`, for the tail-called programs: their stacks have no
/// room for another call, so they report last, by a tail call that
/// returns their verdict. Not pinned: each load fills its own.
#[map(name = "EVENT_JUMP")]
pub static EVENT_JUMP: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// What a tail-called program leaves for `carwash_event` (the packet
/// itself is in the hand-off).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    /// `KIND_*`; 0: nothing to report.
    pub kind: u32,
    /// [`class_why`] of a drop; the translated port of a translation.
    pub arg: u32,
    /// The verdict `carwash_event` returns.
    pub action: u32,
    pub _pad: u32,
}

#[map(name = "EVENT_PENDING")]
pub static EVENT_PENDING: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);

/// Marks a new translation to `port`, reported when the program ends
/// ([`report_pending`]).
#[inline(always)]
pub fn pending_translation(port: u16) {
    if let Some(p) = EVENT_PENDING.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe {
            (*p).kind = KIND_TRANSLATION as u32;
            (*p).arg = port as u32;
        }
    }
}

/// `report_pending`'s `why` for a packet not dropped (a plain value, not
/// an `Option`: LLVM leaves a `None`'s payload register unwritten, which
/// the verifier refuses to see read).
pub const NOT_DROPPED: u32 = 0xff;

/// The end of a tail-called program: a drop (`why`, with `action`), or a
/// verdict after a pending translation, is reported by `carwash_event`,
/// which returns `action`. Anything else, or a failed tail call: `action`.
#[inline(always)]
pub fn report_pending(ctx: &XdpContext, why: u32, action: u32) -> u32 {
    let Some(p) = EVENT_PENDING.get_ptr_mut(0) else {
        return action;
    };
    // SAFETY: this CPU's slot.
    let p = unsafe { &mut *p };
    if why != NOT_DROPPED {
        p.kind = drop_kind(why) as u32;
        p.arg = class_why(CLASS_NONE, why);
    } else if p.kind == 0 {
        return action;
    }
    p.action = action;
    // SAFETY: valid context and program array; returns only on failure.
    unsafe { EVENT_JUMP.tail_call(ctx, 0) };
    p.kind = 0;
    action
}

/// `carwash_event`: reports what [`report_pending`] left.
#[inline(always)]
pub fn run_pending(ctx: &XdpContext) -> u32 {
    let (Some(p), Some(h)) = (EVENT_PENDING.get_ptr_mut(0), crate::maps::HANDOFF.get_ptr(0)) else {
        return aya_ebpf::bindings::xdp_action::XDP_DROP;
    };
    // SAFETY: this CPU's slots, written by the program that tail-called.
    let (p, h) = unsafe { (&mut *p, &*h) };
    let (kind, arg, action) = (p.kind as u8, p.arg, p.action);
    p.kind = 0;
    let (flow, tenant, generation) = (&h.flow, h.tenant, h.generation & 1);
    if kind == KIND_TRANSLATION {
        let egress = &h.out.egress;
        report(ctx, kind, 0, CLASS_NONE, tenant, generation, |e| {
            fill_flow(e, flow, egress, arg as u16)
        });
    } else if kind != 0 {
        let (class, why) = split(arg);
        report(ctx, kind, why as u8, class, tenant, generation, |e| {
            fill_flow(e, flow, &flow.dst, flow.dport)
        });
    }
    action
}

/// Reports a refused packet (`why`: a `DropReason`'s index).
///
/// Not inlined, here and below: the programs' own stacks are near the
/// verifier's limit, and a subprogram's frame is counted only on its own
/// call chain (as `encap::fib` is).
#[inline(never)]
pub fn dropped(ctx: &XdpContext, flow: &Flow, tenant: u32, class_why: u32, generation: u32) {
    let (class, why) = split(class_why);
    report(ctx, drop_kind(why), why as u8, class, tenant, generation, |e| {
        fill_flow(e, flow, &flow.dst, flow.dport)
    });
}

/// Reports a refused tunnel packet by its outer addresses (the sending
/// VTEP is what it is known by), read again from the frame straight into
/// the record: the fabric program keeps no parse alive for it, its stack
/// being full. The fabric takes IPv4 VXLAN only; `l3` is the outer IP
/// header's offset.
#[inline(never)]
pub fn dropped_tunnel(ctx: &XdpContext, l3: u32, tenant: u32, class_why: u32, generation: u32) {
    use crate::packet::read;
    let (class, why) = split(class_why);
    let l3 = (l3 & 0x3ff) as usize;
    report(ctx, drop_kind(why), why as u8, class, tenant, generation, |e| {
        e.proto = crate::packet::IPPROTO_UDP;
        e.v6 = 0;
        e.src = [0; 16];
        e.dst = [0; 16];
        e.dport = dataplane_common::types::VXLAN_PORT;
        e.sport = 0;
        if let Some(s) = read::<[u8; 4]>(ctx, l3 + 12) {
            e.src[..4].copy_from_slice(&s);
        }
        if let Some(d) = read::<[u8; 4]>(ctx, l3 + 16) {
            e.dst[..4].copy_from_slice(&d);
        }
        if let Some(ihl) = read::<u8>(ctx, l3) {
            let l4 = (l3 + ((ihl & 0x0f) as usize) * 4) & 0x7ff;
            e.sport = read::<[u8; 2]>(ctx, l4).map(u16::from_be_bytes).unwrap_or(0);
        }
    });
}

#[inline(always)]
fn split(class_why: u32) -> (u8, u32) {
    ((class_why >> 8) as u8, class_why & 0xff)
}

#[inline(always)]
fn drop_kind(why: u32) -> u8 {
    if why == DropReason::PortsExhausted.index() {
        KIND_PORTS_EXHAUSTED
    } else if why == DropReason::ConntrackFull.index() {
        KIND_CONNTRACK_FULL
    } else if why == DropReason::NotReady.index() {
        KIND_FAIL_CLOSED
    } else {
        KIND_DROP
    }
}

#[inline(always)]
fn fill_flow(e: &mut DataEvent, flow: &Flow, dst: &[u8; 16], dport: u16) {
    e.proto = flow.proto;
    e.v6 = flow.v6 as u8;
    e.src = flow.src;
    e.sport = flow.sport;
    e.dst = *dst;
    e.dport = dport;
}

/// The class and reason of [`dropped`], in one argument (a subprogram
/// takes five).
#[inline(always)]
pub fn class_why(class: u8, why: u32) -> u32 {
    (class as u32) << 8 | (why & 0xff)
}

/// Reports one allowed packet in `flow_sample` (none by default: the one
/// cost on the allowed path is the configuration's lookup).
#[inline(always)]
pub fn allowed(ctx: &XdpContext, flow: &Flow, tenant: u32, class: u8, generation: u32) {
    let Some(cfg) = EVENT_CONFIG.get(0) else {
        return;
    };
    if cfg.flow_sample == 0 || cfg.disabled != 0 {
        return;
    }
    // A countdown per CPU rather than a random draw: no helper call and no
    // division on the allowed path.
    let Some(left) = FLOW_COUNTDOWN.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot.
    let left = unsafe { &mut *left };
    if *left > 1 {
        *left -= 1;
        return;
    }
    *left = cfg.flow_sample;
    sampled(ctx, flow, tenant, class as u32, generation);
}

#[inline(never)]
fn sampled(ctx: &XdpContext, flow: &Flow, tenant: u32, class: u32, generation: u32) {
    report(ctx, KIND_FLOW, 0, class as u8, tenant, generation, |e| {
        fill_flow(e, flow, &flow.dst, flow.dport)
    });
}

/// Within the tenant's budget on this CPU, reserves a record, writes what
/// every event has and has `fill` write the rest; counts it either way.
#[inline(always)]
fn report(
    ctx: &XdpContext,
    kind: u8,
    reason: u8,
    class: u8,
    tenant: u32,
    generation: u32,
    fill: impl FnOnce(&mut DataEvent),
) {
    if budget(kind, tenant) {
        write(ctx, kind, reason, class, tenant, generation, fill);
    }
}

/// Reports a drop the uplink's fast path made on a remembered denial
/// (`deny_cache::fast`) in `slot`: the budget is taken here, in line; only
/// an event the budget lets through pays for the call that parses the
/// frame again and writes it. When the budget holds one back, the slot
/// remembers until which tick the bucket stays empty (`quiet_until`,
/// rounded up to a whole tick), and until then the event is counted in the
/// slot's `held`, on the line the fast path has just read: a flood then
/// costs one counter, not the bucket's arithmetic nor its lookups. The
/// first drop after that tick moves `held` into the bucket and the kind's
/// counters, before its own event is written, so that the event's
/// `suppressed_total` covers them.
#[inline(always)]
pub fn dropped_remembered(
    ctx: &XdpContext,
    (tenant, class_why): (u32, u32),
    generation: u32,
    now_tick: u64,
    slot: &mut DenySlot,
) {
    // Only plain denials are remembered (`deny_cache::cacheable`: not
    // allowed, no service): always a `drop` event.
    if now_tick < slot.quiet_until {
        slot.held = slot.held.wrapping_add(1);
        return;
    }
    if slot.held != 0 {
        let held = slot.held;
        slot.held = 0;
        fold_held(tenant, held);
    }
    match budget_wait(KIND_DROP, tenant) {
        0 => write_remembered(ctx, tenant, class_why, generation),
        OFF => {}
        wait => {
            if let Some(c) = crate::maps::CONFIG.get(0)
                && c.ns_per_tick != 0
            {
                slot.quiet_until = now_tick + wait.div_ceil(c.ns_per_tick as u64);
            }
        }
    }
}

/// Moves `held` drop events a denial-cache slot held back into `tenant`'s
/// bucket on this CPU and into the `drop` kind's counters. The caller
/// clears the slot first: a reader that reads the slots, the counters and
/// the slots again sees the count fall whenever a move overlaps its reads,
/// and reads again, so that none is counted twice. Rare (once per quiet spell, or when a
/// slot is replaced): a call of its own.
#[inline(never)]
pub fn fold_held(tenant: u32, held: u32) {
    if let (Some(b), Some(s)) = (
        EVENT_BUCKETS.get_ptr_mut(tenant),
        EVENT_STATS.get_ptr_mut(KIND_DROP as u32),
    ) {
        // SAFETY: this CPU's slots.
        unsafe {
            (*b).suppressed += held as u64;
            (*s).suppressed += held as u64;
        }
    }
}

#[inline(never)]
fn write_remembered(ctx: &XdpContext, tenant: u32, class_why: u32, generation: u32) {
    let (class, why) = split(class_why);
    // The fast path read this frame as IPv4 or IPv6 with TCP or UDP: the
    // full parse reads it too.
    let Ok(flow) = crate::parse::parse(ctx) else {
        return;
    };
    write(ctx, KIND_DROP, why as u8, class, tenant, generation, |e| {
        fill_flow(e, &flow, &flow.dst, flow.dport)
    });
}

/// Takes one event's worth of `tenant`'s budget on this CPU: `true` when an
/// event may be written. `false` when events are off, or when the budget
/// holds this one back (counted as suppressed, in the bucket and by kind).
#[inline(always)]
fn budget(kind: u8, tenant: u32) -> bool {
    budget_wait(kind, tenant) == 0
}

/// [`budget_wait`]: events are off.
const OFF: u64 = u64::MAX;

/// [`budget`], saying more: 0 when an event may be written; [`OFF`] when
/// events are off; else the event is held back (and counted), and the
/// value is how many nanoseconds of carwash's clock pass before the bucket
/// has an event's credit again.
#[inline(always)]
fn budget_wait(kind: u8, tenant: u32) -> u64 {
    let (interval, burst) = match EVENT_CONFIG.get(0) {
        Some(c) if c.ready != 0 => {
            if c.disabled != 0 {
                return OFF;
            }
            (c.interval_ns, c.burst as u64)
        }
        _ => (1_000_000_000 / DEFAULT_EVENT_RATE as u64, DEFAULT_EVENT_BURST as u64),
    };
    let Some(b) = EVENT_BUCKETS.get_ptr_mut(tenant) else {
        return OFF;
    };
    let Some(stats) = EVENT_STATS.get_ptr_mut(kind as u32) else {
        return OFF;
    };
    // SAFETY: this CPU's slots; the program is not preempted while it runs.
    let (b, stats) = unsafe { (&mut *b, &mut *stats) };
    // The bucket runs on carwash's clock (`crate::clock`: the tick counter,
    // one load) rather than `bpf_ktime_get_ns` (a helper call): a flood
    // pays for the clock on every packet, and a tick (1 to 10 ms) is
    // resolution enough for budgets of events per second.
    let now = match crate::maps::CONFIG.get(0) {
        Some(c) if c.ready != 0 && c.ns_per_tick != 0 => crate::clock::now(c),
        // SAFETY: plain helper call.
        _ => unsafe { bpf_ktime_get_ns() },
    };
    // Bounded by the agent (rate >= 1, burst <= 1,000,000): no overflow.
    let cap = interval.wrapping_mul(burst);
    let mut credit = b.credit_ns.saturating_add(now.wrapping_sub(b.last_ns));
    if credit > cap {
        credit = cap;
    }
    b.last_ns = now;
    if credit < interval {
        b.credit_ns = credit;
        b.suppressed += 1;
        stats.suppressed += 1;
        return interval - credit;
    }
    b.credit_ns = credit - interval;
    0
}

/// Reserves a record the budget allowed, writes what every event has and
/// has `fill` write the rest, and counts it (or counts it lost).
#[inline(always)]
fn write(
    ctx: &XdpContext,
    kind: u8,
    reason: u8,
    class: u8,
    tenant: u32,
    generation: u32,
    fill: impl FnOnce(&mut DataEvent),
) {
    let Some(b) = EVENT_BUCKETS.get_ptr_mut(tenant) else {
        return;
    };
    let Some(stats) = EVENT_STATS.get_ptr_mut(kind as u32) else {
        return;
    };
    // SAFETY: this CPU's slots; the program is not preempted while it runs.
    let (b, stats) = unsafe { (&mut *b, &mut *stats) };
    let Some(mut entry) = EVENTS.reserve::<DataEvent>(0) else {
        // The agent falls behind: counted as lost, and in the bucket's
        // suppressed count too, so that its summaries still add up.
        b.suppressed += 1;
        stats.lost += 1;
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` is the reserved record, written in full before submit
    // (`fill` writes the protocol, addresses and ports).
    unsafe {
        (*e).kind = kind;
        (*e).reason = reason;
        (*e).class = class;
        (*e)._pad = [0; 3];
        (*e).tenant = tenant;
        (*e).generation = generation;
        (*e).ifindex = ctx.ingress_ifindex() as u32;
        (*e).cpu = bpf_get_smp_processor_id();
        (*e)._pad2 = 0;
        (*e).ts_ns = bpf_ktime_get_ns();
        (*e).suppressed_total = b.suppressed;
        fill(&mut *e);
    }
    entry.submit(0);
    b.emitted += 1;
    stats.emitted += 1;
}
