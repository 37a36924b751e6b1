//! Every map of the programs, in one place, sized by named constants from
//! the shared ABI crate.
use crate::parse::Flow;
use aya_ebpf::{
    btf_maps::{ArrayOfMaps, LpmTrie},
    macros::{btf_map, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, ProgramArray},
};
use dataplane_common::{
    CounterBlock,
    hash::ADDR_FILTER_WORDS,
    jumps,
    types::{
        AddrKey, AddrValue, Allow4, Allow6, AllowMask, BackendHop, CT_DEFAULT_ENTRIES, CT_EVICT_MAX, CtKey, CtValue,
        EvictCandidate, EvictCursor, GENERATIONS, HOPS_PER_TENANT, HostConfig, MAX_ADDRS, MAX_ALLOW_PREFIXES,
        MAX_ALLOW_SLOTS, MAX_NEXT_HOPS, MAX_REDIRECT_TARGETS, MAX_SERVICES, MAX_TENANTS, Meta, NextHopEntry,
        NextHopKey, RedirectErrors, SIDES, ServiceKey, ServiceValue, TenantHealth, TenantInfo, TenantName, TenantStats,
    },
};

/// Global counters: one block per program and CPU.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<CounterBlock> = PerCpuArray::with_max_entries(SIDES, 0);

/// Hash maps of policy hold two generations but are mostly half full:
/// entries are allocated as they are written.
const NO_PREALLOC: u32 = 1;

/// The policy generation in force (`types::GENERATIONS`); a packet reads
/// it once and keys every policy lookup with it.
#[map(name = "GENERATION")]
pub static GENERATION: Array<u32> = Array::with_max_entries(1, 0);

/// The generation in force.
#[inline(always)]
pub fn active_gen() -> u32 {
    generation_word() & 1
}

/// The whole `GENERATION` word: the generation in force in bit 0, above it
/// a count of the policy writes a packet could see.
#[inline(always)]
pub fn generation_word() -> u32 {
    GENERATION.get(0).copied().unwrap_or(0)
}

/// The host settings, once the agent wrote them (until then traffic that
/// needs them is dropped: `no_config`).
#[inline(always)]
pub fn host_config() -> Result<&'static HostConfig, dataplane_common::DropReason> {
    match CONFIG.get(0) {
        Some(c) if c.ready != 0 => Ok(c),
        _ => Err(dataplane_common::DropReason::NoConfig),
    }
}

/// Host settings written by the agent.
#[map(name = "CONFIG")]
pub static CONFIG: Array<HostConfig> = Array::with_max_entries(1, 0);

/// A bit per hash of every VIP and egress IP: a clear bit means the
/// packet is none of carwash's business, without a hash lookup.
#[map(name = "ADDR_FILTER")]
pub static ADDR_FILTER: Array<u64> = Array::with_max_entries(GENERATIONS * ADDR_FILTER_WORDS, 0);

/// VIPs and egress IPs: the first lookup of every packet from the uplink
/// that passes the filter; a miss means it is none of carwash's business.
#[map(name = "ADDRS")]
pub static ADDRS: HashMap<AddrKey, AddrValue> = HashMap::with_max_entries(GENERATIONS * MAX_ADDRS, NO_PREALLOC);

#[map(name = "SERVICES")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(GENERATIONS * MAX_SERVICES, NO_PREALLOC);

/// Tenant names by id: written and read by userspace only, kept in the
/// object so that they are created and pinned with everything else.
#[map(name = "TENANT_NAMES")]
pub static TENANT_NAMES: HashMap<u32, TenantName> = HashMap::with_max_entries(MAX_TENANTS, 0);

/// Machine health by tenant id: userspace only, like `TENANT_NAMES`.
#[map(name = "HEALTH")]
pub static HEALTH: HashMap<u32, TenantHealth> = HashMap::with_max_entries(MAX_TENANTS, 0);

/// The policy generation in force: userspace only, like `TENANT_NAMES`.
#[map(name = "META")]
pub static META: Array<Meta> = Array::with_max_entries(1, 0);

/// FIB results, cached for `NEXT_HOP_TTL_NS`.
#[map(name = "NEXT_HOPS")]
pub static NEXT_HOPS: LruHashMap<NextHopKey, NextHopEntry> = LruHashMap::with_max_entries(MAX_NEXT_HOPS, 0);

/// Next hops towards backends, cached per tenant and machine.
#[map(name = "BACKEND_HOPS")]
pub static BACKEND_HOPS: Array<BackendHop> = Array::with_max_entries(MAX_TENANTS * HOPS_PER_TENANT, 0);

/// VNI → tenant id, for traffic from the fabric.
#[map(name = "VNIS")]
pub static VNIS: HashMap<u32, u32> = HashMap::with_max_entries(GENERATIONS * MAX_TENANTS, NO_PREALLOC);

#[map(name = "TENANTS")]
pub static TENANTS: HashMap<u32, TenantInfo> = HashMap::with_max_entries(GENERATIONS * MAX_TENANTS, NO_PREALLOC);

/// Per-tenant counters, indexed by tenant id.
#[map(name = "TENANT_STATS")]
pub static TENANT_STATS: PerCpuArray<TenantStats> = PerCpuArray::with_max_entries(MAX_TENANTS, 0);

/// One LPM trie per allow slot: a lookup costs the same whatever the number
/// of tenants, since each trie holds one tenant's prefixes only.
#[btf_map]
pub static ALLOW_V4: ArrayOfMaps<
    LpmTrie<Allow4, AllowMask, { MAX_ALLOW_PREFIXES as usize }>,
    { MAX_ALLOW_SLOTS as usize },
> = ArrayOfMaps::new();

#[btf_map]
pub static ALLOW_V6: ArrayOfMaps<
    LpmTrie<Allow6, AllowMask, { MAX_ALLOW_PREFIXES as usize }>,
    { MAX_ALLOW_SLOTS as usize },
> = ArrayOfMaps::new();

/// Connection tracking of source-NATed flows (both directions). Sized by
/// the agent from `conntrack.max_entries`; preallocated, so an insert takes
/// an element from a per-CPU free list. A full table gives up its least
/// recently used flows (`CT_EVICT`).
#[map(name = "CONNTRACK")]
pub static CONNTRACK: HashMap<CtKey, CtValue> = HashMap::with_max_entries(CT_DEFAULT_ENTRIES, 0);

/// The least recently used flows of the tracking table, oldest first, as
/// the agent last listed them; two halves, one in use (`CT_EVICT_CURSOR`).
#[map(name = "CT_EVICT")]
pub static CT_EVICT: Array<EvictCandidate> = Array::with_max_entries(2 * CT_EVICT_MAX, 0);

#[map(name = "CT_EVICT_CURSOR")]
pub static CT_EVICT_CURSOR: Array<EvictCursor> = Array::with_max_entries(1, 0);

/// Where a program hands a packet on (`dataplane_common::jumps`): a tail
/// call starts the next program with a fresh stack and a fresh verifier
/// budget.
#[map(name = "JUMPS")]
pub static JUMPS: ProgramArray = ProgramArray::with_max_entries(jumps::COUNT, 0);

/// What a program found out about a packet before it handed it on with a
/// tail call: the parse, and who sent it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Handoff {
    /// The packet's (fabric: the inner packet's) parse.
    pub flow: Flow,
    /// The tenant (fabric: of the VNI; uplink: the egress IP's owner).
    pub tenant: u32,
    /// Fabric: the sending machine, as a backend slot of its tenant.
    pub origin: u32,
    /// Fabric: offset of the inner Ethernet header.
    pub inner_off: u32,
    /// The policy generation the packet was looked up in.
    pub generation: u32,
    /// Fabric to `carwash_snat_out` only: what the outbound translation
    /// needs of the tenant's record and the route out, so that the
    /// outbound program looks up neither.
    pub out: Outbound,
}

/// The fabric program's findings for an outbound packet.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Outbound {
    /// The tenant's egress IP of the packet's family, as addresses are
    /// keyed (meaningless unless `flags` has the family's egress bit).
    pub egress: [u8; 16],
    /// The tenant's `TenantInfo::flags`, `allow_slot` and `version`.
    pub flags: u32,
    pub allow_slot: u32,
    pub version: u32,
    /// The next hop to the destination through the uplink; `ifindex` 0:
    /// none (no route, or no egress IP to route from).
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// carwash's clock (`crate::clock`) as the fabric program read it.
    pub now: u64,
}

#[map(name = "HANDOFF")]
pub static HANDOFF: PerCpuArray<Handoff> = PerCpuArray::with_max_entries(1, 0);

/// Where the agent's probe replies are recognised (`crate::send_probe`).
#[map(name = "PROBE_HOST")]
pub static PROBE_HOST: Array<dataplane_common::types::ProbeHost> = Array::with_max_entries(1, 0);

/// The answers to the agent's half-open probes (`crate::send_probe`).
#[map(name = "PROBE_REPLIES")]
pub static PROBE_REPLIES: aya_ebpf::maps::RingBuf =
    aya_ebpf::maps::RingBuf::with_byte_size(dataplane_common::types::PROBE_RING_BYTES, 0);

/// The resets the fabric program wrote (slot 0) and those the fabric's TC
/// ingress sent back (slot 1): where the two part, the metadata does not
/// reach TC, and the agent sends the resets (`crate::send_probe`).
#[map(name = "PROBE_RESETS")]
pub static PROBE_RESETS: aya_ebpf::maps::PerCpuArray<u64> = aya_ebpf::maps::PerCpuArray::with_max_entries(2, 0);

/// This host's peers in a fleet (`crate::send_fleet`).
#[map(name = "FLEET")]
pub static FLEET: Array<dataplane_common::types::Fleet> = Array::with_max_entries(1, 0);

#[map(name = "FLEET_STATS")]
pub static FLEET_STATS: PerCpuArray<dataplane_common::types::FleetStats> = PerCpuArray::with_max_entries(1, 0);

/// The FIB lookup's parameter block, per CPU: 64 bytes the programs' stacks
/// could not spare.
#[map(name = "FIB_PARAMS")]
pub static FIB_PARAMS: PerCpuArray<aya_ebpf::bindings::bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);

/// A tracking key and value built outside the stack: the programs that
/// handle both directions of a flow have no room left for them there.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CtScratch {
    pub key: CtKey,
    pub value: CtValue,
}

#[map(name = "CT_SCRATCH")]
pub static CT_SCRATCH: PerCpuArray<CtScratch> = PerCpuArray::with_max_entries(1, 0);

/// Next hops a FIB lookup found unresolved (no neighbour entry): the agent
/// has the kernel resolve them and keep them resolved, then removes them.
#[map(name = "UNRESOLVED")]
pub static UNRESOLVED: LruHashMap<NextHopKey, u64> = LruHashMap::with_max_entries(1024, 0);

/// Redirects the kernel refused, by target ifindex (`redirect`).
#[map(name = "REDIRECT_ERRORS")]
pub static REDIRECT_ERRORS: PerCpuHashMap<u32, RedirectErrors> =
    PerCpuHashMap::with_max_entries(MAX_REDIRECT_TARGETS, 0);
