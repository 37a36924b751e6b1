//! Data-path events: what the programs report through the `EVENTS` ring
//! buffer (a drop with its reason, a new translation, a sampled allowed
//! flow), the per-tenant, per-CPU token bucket that limits them, and their
//! counters. One record layout for every kind, so that the agent decodes
//! them without a length field.

/// A packet refused (`reason` says why). Drops for the reasons
/// `snat_ports_exhausted`, `conntrack_full` and `tenant_not_ready` are
/// reported under their own kinds below.
pub const KIND_DROP: u8 = 1;
/// A new source-NAT translation: `src`/`sport` the machine, `dst`/`dport`
/// the egress IP and port it was given.
pub const KIND_TRANSLATION: u8 = 2;
/// A new outbound flow found no free port of its egress IP.
pub const KIND_PORTS_EXHAUSTED: u8 = 3;
/// A new outbound flow found the tracking table full.
pub const KIND_CONNTRACK_FULL: u8 = 4;
/// A packet for a tenant whose policy is not (or no longer) fully in place:
/// the tenant fails closed.
pub const KIND_FAIL_CLOSED: u8 = 5;
/// An allowed packet, sampled (`EventConfig::flow_sample`).
pub const KIND_FLOW: u8 = 6;
/// Kinds, for the counters (index 0 unused).
pub const EVENT_KINDS: u32 = 7;

/// The ring buffer's size: 4 MiB holds about 50,000 records, several
/// seconds of the default budget of every tenant at once.
pub const EVENT_RING_BYTES: u32 = 4 << 20;

/// Events per second per tenant and CPU when the host config says nothing.
pub const DEFAULT_EVENT_RATE: u32 = 100;
/// The bucket's depth when the host config says nothing.
pub const DEFAULT_EVENT_BURST: u32 = 200;

/// One event from the data path. Addresses in network byte order (IPv4 in
/// the first four bytes), ports in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataEvent {
    /// `KIND_*`.
    pub kind: u8,
    /// A `DropReason`'s index (drops only).
    pub reason: u8,
    /// The service class (`types::CLASS_NONE` when none).
    pub class: u8,
    /// IP protocol.
    pub proto: u8,
    /// 1 for IPv6.
    pub v6: u8,
    pub _pad: [u8; 3],
    /// Tenant id (0: not known, e.g. an unknown VNI).
    pub tenant: u32,
    /// The policy generation the packet was looked up in.
    pub generation: u32,
    /// The interface the packet arrived on.
    pub ifindex: u32,
    /// The CPU that reported it (the bucket's).
    pub cpu: u32,
    pub sport: u16,
    pub dport: u16,
    pub _pad2: u32,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// `bpf_ktime_get_ns` when reported.
    pub ts_ns: u64,
    /// The tenant's bucket on this CPU: events suppressed so far, ever
    /// (the agent reports the difference between two as a summary).
    pub suppressed_total: u64,
}

/// A tenant's token bucket on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBucket {
    /// Credit, in nanoseconds of budget (an event costs
    /// `EventConfig::interval_ns`).
    pub credit_ns: u64,
    /// When the credit was last topped up.
    pub last_ns: u64,
    /// Events the bucket suppressed, ever.
    pub suppressed: u64,
    /// Events the bucket let through, ever.
    pub emitted: u64,
}

/// Event limits, written by the agent from the host config (`[events]`);
/// all zero (never written) means the defaults.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventConfig {
    /// Nanoseconds of budget an event costs: 1e9 / events per second.
    pub interval_ns: u64,
    /// The bucket's depth, in events.
    pub burst: u32,
    /// Report one allowed packet in `flow_sample` (0: none).
    pub flow_sample: u32,
    /// Non-zero once written.
    pub ready: u32,
    /// Non-zero: no data-path events at all.
    pub disabled: u32,
}

/// Counters of one event kind on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventCounts {
    /// Written to the ring buffer.
    pub emitted: u64,
    /// Held back by a tenant's budget.
    pub suppressed: u64,
    /// The ring buffer was full.
    pub lost: u64,
}

/// The kind a drop is reported as.
pub fn kind_of_drop(reason: crate::DropReason) -> u8 {
    use crate::DropReason::*;
    match reason {
        PortsExhausted => KIND_PORTS_EXHAUSTED,
        ConntrackFull => KIND_CONNTRACK_FULL,
        NotReady => KIND_FAIL_CLOSED,
        _ => KIND_DROP,
    }
}

/// The kinds' names, as the stream and the metrics say them.
pub fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_DROP => "drop",
        KIND_TRANSLATION => "translation",
        KIND_PORTS_EXHAUSTED => "ports_exhausted",
        KIND_CONNTRACK_FULL => "conntrack_full",
        KIND_FAIL_CLOSED => "fail_closed",
        KIND_FLOW => "flow",
        _ => "unknown",
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), no implicit padding, every bit pattern valid.
    unsafe impl aya::Pod for super::DataEvent {}
    unsafe impl aya::Pod for super::EventBucket {}
    unsafe impl aya::Pod for super::EventConfig {}
    unsafe impl aya::Pod for super::EventCounts {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn sizes_are_the_abi() {
        assert_eq!(size_of::<DataEvent>(), 80);
        assert_eq!(size_of::<EventBucket>(), 32);
        assert_eq!(size_of::<EventConfig>(), 24);
        assert_eq!(size_of::<EventCounts>(), 24);
    }

    #[test]
    fn drops_of_three_reasons_have_kinds_of_their_own() {
        assert_eq!(kind_of_drop(crate::DropReason::NotAllowed), KIND_DROP);
        assert_eq!(kind_of_drop(crate::DropReason::PortsExhausted), KIND_PORTS_EXHAUSTED);
        assert_eq!(kind_of_drop(crate::DropReason::ConntrackFull), KIND_CONNTRACK_FULL);
        assert_eq!(kind_of_drop(crate::DropReason::NotReady), KIND_FAIL_CLOSED);
        for k in 1..EVENT_KINDS as u8 {
            assert_ne!(kind_name(k), "unknown");
        }
    }
}
