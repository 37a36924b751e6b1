//! Data-path events (`dataplane_common::events`): written to the `EVENTS`
//! ring buffer only on the paths that refuse or translate a packet, and
//! only within the tenant's budget on this CPU (a token bucket in a per-CPU
//! array, so no atomics): a flood costs a map lookup and a clock read per
//! packet, and the agent sees at most the budget. What the budget holds
//! back is counted in the bucket, which the agent reports as summaries.
use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
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

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

#[map(name = "EVENT_BUCKETS")]
pub static EVENT_BUCKETS: PerCpuArray<EventBucket> = PerCpuArray::with_max_entries(MAX_TENANTS, 0);

#[map(name = "EVENT_STATS")]
pub static EVENT_STATS: PerCpuArray<EventCounts> = PerCpuArray::with_max_entries(EVENT_KINDS, 0);

#[map(name = "EVENT_CONFIG")]
pub static EVENT_CONFIG: Array<EventConfig> = Array::with_max_entries(1, 0);

/// The addresses and ports an event names.
pub struct Ends<'a> {
    pub src: &'a [u8; 16],
    pub dst: &'a [u8; 16],
    pub sport: u16,
    pub dport: u16,
}

impl<'a> Ends<'a> {
    #[inline(always)]
    pub fn of(flow: &'a Flow) -> Ends<'a> {
        Ends {
            src: &flow.src,
            dst: &flow.dst,
            sport: flow.sport,
            dport: flow.dport,
        }
    }
}

/// Reports a refused packet (`why`: a `DropReason`'s index).
#[inline(always)]
pub fn dropped(ctx: &XdpContext, flow: &Flow, tenant: u32, class: u8, why: u32, generation: u32) {
    let kind = if why == DropReason::PortsExhausted.index() {
        KIND_PORTS_EXHAUSTED
    } else if why == DropReason::ConntrackFull.index() {
        KIND_CONNTRACK_FULL
    } else if why == DropReason::NotReady.index() {
        KIND_FAIL_CLOSED
    } else {
        KIND_DROP
    };
    report(ctx, kind, why as u8, class, flow, &Ends::of(flow), tenant, generation);
}

/// Reports a new source-NAT translation: the machine's address and port,
/// and the egress IP and port it was given.
#[inline(always)]
pub fn translated(ctx: &XdpContext, flow: &Flow, tenant: u32, egress: &[u8; 16], port: u16, generation: u32) {
    let ends = Ends {
        src: &flow.src,
        dst: egress,
        sport: flow.sport,
        dport: port,
    };
    report(ctx, KIND_TRANSLATION, 0, CLASS_NONE, flow, &ends, tenant, generation);
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
    // SAFETY: plain helper call.
    if unsafe { bpf_get_prandom_u32() } % cfg.flow_sample != 0 {
        return;
    }
    report(ctx, KIND_FLOW, 0, class, flow, &Ends::of(flow), tenant, generation);
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn report(ctx: &XdpContext, kind: u8, reason: u8, class: u8, flow: &Flow, ends: &Ends, tenant: u32, generation: u32) {
    let (interval, burst) = match EVENT_CONFIG.get(0) {
        Some(c) if c.ready != 0 => {
            if c.disabled != 0 {
                return;
            }
            (c.interval_ns, c.burst as u64)
        }
        _ => (1_000_000_000 / DEFAULT_EVENT_RATE as u64, DEFAULT_EVENT_BURST as u64),
    };
    let Some(b) = EVENT_BUCKETS.get_ptr_mut(tenant) else {
        return;
    };
    let Some(stats) = EVENT_STATS.get_ptr_mut(kind as u32) else {
        return;
    };
    // SAFETY: this CPU's slots; the program is not preempted while it runs.
    let (b, stats) = unsafe { (&mut *b, &mut *stats) };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
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
        return;
    }
    b.credit_ns = credit - interval;
    let Some(mut entry) = EVENTS.reserve::<DataEvent>(0) else {
        // The agent falls behind: counted as lost, and in the bucket's
        // suppressed count too, so that its summaries still add up.
        b.suppressed += 1;
        stats.lost += 1;
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` is the reserved record, written in full before submit.
    unsafe {
        (*e).kind = kind;
        (*e).reason = reason;
        (*e).class = class;
        (*e).proto = flow.proto;
        (*e).v6 = flow.v6 as u8;
        (*e)._pad = [0; 3];
        (*e).tenant = tenant;
        (*e).generation = generation;
        (*e).ifindex = ctx.ingress_ifindex() as u32;
        (*e).cpu = bpf_get_smp_processor_id();
        (*e).sport = ends.sport;
        (*e).dport = ends.dport;
        (*e)._pad2 = 0;
        (*e).src = *ends.src;
        (*e).dst = *ends.dst;
        (*e).ts_ns = now;
        (*e).suppressed_total = b.suppressed;
    }
    entry.submit(0);
    b.emitted += 1;
    stats.emitted += 1;
}
