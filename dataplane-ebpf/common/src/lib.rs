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
pub mod deny;
pub mod drop;
pub mod events;
pub mod hash;
mod indexed;
pub mod types;

pub use counters::{Counter, CounterBlock};
pub use drop::DropReason;

/// Version of the map layout. A new binary refuses to adopt pinned maps of
/// another version instead of misreading them.
pub const LAYOUT_VERSION: u32 = 7;

/// Names of the programs in the eBPF object, as userspace looks them up.
pub mod programs {
    /// XDP on `uplink`: traffic from the internet.
    pub const UPLINK: &str = "carwash_uplink";
    /// XDP on `fabric`: VXLAN from the tenants' machines.
    pub const FABRIC: &str = "carwash_fabric";
    /// The smallest possible XDP program (returns XDP_PASS): the yardstick
    /// every benchmark figure is divided by.
    pub const BENCH_PASS: &str = "carwash_bench_pass";
    /// Returns XDP_DROP: the yardstick of a denied flood.
    pub const BENCH_DROP: &str = "carwash_bench_drop";
    /// Benchmarks only (live frames): writes the frame of `BENCH_FRAME`
    /// back over the packet, then tail-calls the fabric program.
    pub const BENCH_RESTORE_FABRIC: &str = "carwash_bench_restore_fabric";
    /// Benchmarks only (live frames): the same, then XDP_PASS.
    pub const BENCH_RESTORE_PASS: &str = "carwash_bench_restore_pass";
    /// Benchmarks only, TC ingress on a responder's collect-metadata VXLAN
    /// device: the decapsulated frame (addressed to the machine's MAC) is
    /// the responder's own.
    pub const BENCH_TUNNEL_IN: &str = "carwash_bench_tunnel_in";
    /// Benchmarks only, TC egress on that device: an answer goes back into
    /// its tenant's tunnel (`BENCH_TUNNELS`).
    pub const BENCH_TUNNEL_OUT: &str = "carwash_bench_tunnel_out";
    /// Tests only: TC ingress on the fabric ahead of `PROBE_RESET`, drops
    /// the resets the fabric program wrote (as a driver that does not
    /// hand XDP metadata to TC loses them).
    pub const BENCH_LOSE_RESETS: &str = "carwash_bench_lose_resets";
    /// Never attached: writes the kernel's tick counter over the first
    /// eight bytes of the packet, for the agent to learn the tick length.
    pub const CLOCK: &str = "carwash_clock";
    /// Raw tracepoint on `xdp_redirect_err`: counts, per target interface,
    /// the redirects the kernel refused to deliver.
    pub const REDIRECT_ERR: &str = "carwash_redirect_err";
    /// Outbound source NAT (path 3), tail-called by the fabric program.
    pub const SNAT_OUT: &str = "carwash_snat_out";
    /// Replies to egress IPs and ICMP errors about them (path 4),
    /// tail-called by the uplink program.
    pub const SNAT_IN: &str = "carwash_snat_in";
    /// ICMP errors about translated flows, tail-called by the uplink
    /// program.
    pub const SNAT_ICMP: &str = "carwash_snat_icmp";
    /// Encapsulates a translated reply to the machine that opened the flow.
    pub const DELIVER: &str = "carwash_deliver";
    /// Answers a reply to an egress IP that would not fit the fabric.
    pub const TOO_BIG: &str = "carwash_too_big";
    /// ICMP errors to VIPs about steered flows, tail-called by the uplink
    /// program.
    pub const VIP_ICMP: &str = "carwash_vip_icmp";
    /// Replies another host of the fleet passed on, tail-called by the
    /// fabric program.
    pub const FLEET_IN: &str = "carwash_fleet_in";
    /// Reports the event a tail-called program left (through `EVENT_JUMP`).
    pub const EVENT: &str = "carwash_event";
    /// TC egress on the probe device: encapsulates the agent's health
    /// probes to the machine their socket mark names.
    pub const PROBE: &str = "carwash_probe";
    /// TC ingress on the fabric: sends back out of the fabric the resets
    /// the fabric program wrote in place of probes' SYN-ACKs.
    pub const PROBE_RESET: &str = "carwash_probe_reset";
    /// Every program tail-called through `JUMPS`, with its slot.
    pub const JUMPED: &[(&str, u32)] = &[
        (SNAT_OUT, crate::jumps::SNAT_OUT),
        (SNAT_IN, crate::jumps::SNAT_IN),
        (FABRIC, crate::jumps::FABRIC),
        (SNAT_ICMP, crate::jumps::SNAT_ICMP),
        (DELIVER, crate::jumps::DELIVER),
        (TOO_BIG, crate::jumps::TOO_BIG),
        (VIP_ICMP, crate::jumps::VIP_ICMP),
        (FLEET_IN, crate::jumps::FLEET_IN),
    ];
}

/// Slots of the `JUMPS` program array: where a program hands a packet on.
pub mod jumps {
    pub const SNAT_OUT: u32 = 0;
    pub const SNAT_IN: u32 = 1;
    /// The fabric program, for a host whose fabric is its uplink.
    pub const FABRIC: u32 = 2;
    pub const SNAT_ICMP: u32 = 3;
    pub const DELIVER: u32 = 4;
    pub const TOO_BIG: u32 = 5;
    pub const VIP_ICMP: u32 = 6;
    pub const FLEET_IN: u32 = 7;
    pub const COUNT: u32 = 8;
}

/// Names of the maps in the eBPF object; also their file names under the pin
/// path.
pub mod maps {
    /// Per-CPU array of [`crate::CounterBlock`]s, one per program (`SIDE_*`),
    /// indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// [`crate::types::HostConfig`], one entry.
    pub const CONFIG: &str = "CONFIG";
    /// One bit per hash of every VIP and egress IP (`hash::addr_filter_bit`):
    /// the uplink's first, cheap test.
    pub const ADDR_FILTER: &str = "ADDR_FILTER";
    /// VIPs and egress IPs: [`crate::types::AddrKey`] → [`crate::types::AddrValue`].
    pub const ADDRS: &str = "ADDRS";
    /// [`crate::types::ServiceKey`] → [`crate::types::ServiceValue`].
    pub const SERVICES: &str = "SERVICES";
    /// tenant id → [`crate::types::TenantName`] (userspace only).
    pub const TENANT_NAMES: &str = "TENANT_NAMES";
    /// tenant id → [`crate::types::TenantHealth`] (userspace only): machine
    /// health, drains and the last core switch, kept across agent restarts.
    pub const HEALTH: &str = "HEALTH";
    /// [`crate::types::Meta`], one entry (userspace only).
    pub const META: &str = "META";
    /// LRU cache of FIB results: [`crate::types::NextHopKey`] → [`crate::types::NextHopEntry`].
    pub const NEXT_HOPS: &str = "NEXT_HOPS";
    /// Next hops towards backends' VTEPs: [`crate::types::BackendHop`] per
    /// tenant and machine.
    pub const BACKEND_HOPS: &str = "BACKEND_HOPS";
    /// VNI → tenant id.
    pub const VNIS: &str = "VNIS";
    /// tenant id → [`crate::types::TenantInfo`].
    pub const TENANTS: &str = "TENANTS";
    /// Array of LPM tries (one per allow slot), IPv4 sources → allow mask.
    pub const ALLOW_V4: &str = "ALLOW_V4";
    /// Array of LPM tries (one per allow slot), IPv6 sources → allow mask.
    pub const ALLOW_V6: &str = "ALLOW_V6";
    /// Per-CPU [`crate::types::TenantStats`] indexed by tenant id.
    pub const TENANT_STATS: &str = "TENANT_STATS";
    /// Connection tracking of source-NATed flows: hash,
    /// [`crate::types::CtKey`] → [`crate::types::CtValue`].
    pub const CONNTRACK: &str = "CONNTRACK";
    /// The flows a full tracking table gives up first, least recently used
    /// first, as the agent listed them: array of
    /// [`crate::types::EvictCandidate`], two halves of
    /// [`crate::types::CT_EVICT_MAX`] (one in use, one being written).
    pub const CT_EVICT: &str = "CT_EVICT";
    /// Where the data path is in `CT_EVICT`: one [`crate::types::EvictCursor`].
    pub const CT_EVICT_CURSOR: &str = "CT_EVICT_CURSOR";
    /// Program array the programs tail-call through (`crate::jumps`).
    pub const JUMPS: &str = "JUMPS";
    /// Next hops the programs' FIB lookups found unresolved: LRU hash,
    /// [`crate::types::NextHopKey`] → `u64` (unused).
    pub const UNRESOLVED: &str = "UNRESOLVED";
    /// The policy generation in force (`types::GENERATIONS`): the low bit
    /// of one `u32`, whose other bits count the writes that can change a
    /// verdict in force (the uplink's denial cache keeps only verdicts of
    /// the current value).
    pub const GENERATION: &str = "GENERATION";
    /// Per-CPU hand-over of a parsed packet to a tail-called program.
    pub const HANDOFF: &str = "HANDOFF";
    /// [`crate::types::Fleet`], one entry: this host's peers and their
    /// source-NAT port blocks (all zero on a host of its own).
    pub const FLEET: &str = "FLEET";
    /// Per-CPU [`crate::types::FleetStats`]: replies passed to and taken
    /// from the other hosts of the fleet.
    pub const FLEET_STATS: &str = "FLEET_STATS";
    /// Redirects the kernel refused, by target ifindex: per-CPU hash of
    /// `types::RedirectErrors`.
    pub const REDIRECT_ERRORS: &str = "REDIRECT_ERRORS";
    /// Benchmarks only: the frame the `carwash_bench_restore_*` programs
    /// write back (`crate::types::BENCH_FRAME_MAX` bytes); never pinned.
    pub const BENCH_FRAME: &str = "BENCH_FRAME";
    /// Benchmarks only: [`crate::types::BenchTunnel`] by
    /// [`crate::types::BenchTunnelKey`], for the responder of the health
    /// checker's benchmark; never pinned.
    pub const BENCH_TUNNELS: &str = "BENCH_TUNNELS";
    /// Ring buffer of [`crate::events::DataEvent`]s (never pinned: each
    /// agent reads its own).
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU [`crate::events::EventBucket`] indexed by tenant id.
    pub const EVENT_BUCKETS: &str = "EVENT_BUCKETS";
    /// Per-CPU [`crate::events::EventCounts`] indexed by event kind.
    pub const EVENT_STATS: &str = "EVENT_STATS";
    /// [`crate::events::EventConfig`], one entry.
    pub const EVENT_CONFIG: &str = "EVENT_CONFIG";
    /// Program array of one: `programs::EVENT` (never pinned).
    pub const EVENT_JUMP: &str = "EVENT_JUMP";
    /// [`crate::types::ProbeHost`], one entry (never pinned: the agent that
    /// probes writes it).
    pub const PROBE_HOST: &str = "PROBE_HOST";
    /// Ring buffer of [`crate::types::SynProbeReply`]: the answers to the
    /// agent's half-open probes (never pinned: each agent reads its own).
    pub const PROBE_REPLIES: &str = "PROBE_REPLIES";
    /// Per-CPU array of two `u64`: the probe SYN-ACKs the fabric program
    /// turned into resets and passed on, and those `carwash_probe_reset`
    /// sent back (never pinned: each agent compares its own).
    pub const PROBE_RESETS: &str = "PROBE_RESETS";
    /// Per-CPU array of [`crate::deny::DenySlot`]. Pinned for the drop
    /// events its slots hold back (`DenySlot::held`), which an agent's
    /// restart must not lose; its verdicts stay valid across a restart
    /// as long as the pinned `GENERATION` word says so.
    pub const DENY_CACHE: &str = "DENY_CACHE";
    /// The data section holding one `u64`, the tick until which the
    /// uplink's fast path for remembered denials runs on every CPU (a
    /// global the programs read without a map lookup; never pinned: each
    /// load starts with the fast path off).
    pub const DENY_FAST: &str = ".data.deny_fast";
}
