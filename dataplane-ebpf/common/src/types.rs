//! Keys and values of the maps. Addresses and ports are in network byte
//! order as they sit in the packet (`_be` or byte arrays), everything else
//! in host order. No implicit padding: explicit `_pad` fields, sizes tested.

/// The UDP port VXLAN uses (IANA).
pub const VXLAN_PORT: u16 = 4789;

/// Tenant ids index per-tenant arrays; 0 is never a tenant.
pub const MAX_TENANTS: u32 = 16384;
const _: () = assert!(MAX_TENANTS <= 1 << 16);
/// Services (VIP, protocol, port) over all tenants.
pub const MAX_SERVICES: u32 = 262_144;
/// The default capacity of the connection-tracking table
/// (`[conntrack] max_entries`): one entry above a power of two. The kernel
/// gives a hash map the smallest power of two of buckets that is at least
/// its `max_entries`, so 2^18 + 1 entries get 2^19 buckets, and a full
/// table has half an entry per bucket where 2^18 entries would have one:
/// a new flow walks two buckets that are not in cache (its own key, found
/// absent, and the reply key it claims), and each entry on those chains is
/// a cache miss. The price is 4 MiB more of bucket heads.
pub const CT_DEFAULT_ENTRIES: u32 = (1 << 18) + 1;
/// VIPs and egress IPs over all tenants.
pub const MAX_ADDRS: u32 = 65_536;
/// Allowlist slots: two per tenant, so a tenant's new allowlist is built
/// in a free slot and switched to in one update.
pub const MAX_ALLOW_SLOTS: u32 = 2 * MAX_TENANTS;
/// Prefixes per tenant and address family.
pub const MAX_ALLOW_PREFIXES: u32 = 4096;
/// Maglev lookup table size: a prime well above 100× the connectors of a
/// lane (two), which keeps their shares within 1% of each other.
pub const MAGLEV_SIZE: usize = 251;
// The table lives in a 256-byte array of `TenantInfo`.
const _: () = assert!(MAGLEV_SIZE <= 256);

/// Machines per role in a double lane.
pub const MAX_MACHINES: usize = 2;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// Port classes. The numbers index counters and allow masks.
pub const CLASS_HTTPS: u8 = 0;
pub const CLASS_JMS: u8 = 1;
/// Traffic to a VIP whose class is unknown (no service).
pub const CLASS_NONE: u8 = 2;
pub const CLASSES: usize = 3;

/// Which program's counter block (index into `COUNTERS`).
pub const SIDE_UPLINK: u32 = 0;
pub const SIDE_FABRIC: u32 = 1;
pub const SIDES: u32 = 2;

/// `AddrValue::kind`.
pub const ADDR_VIP: u8 = 1;
pub const ADDR_EGRESS: u8 = 2;

/// `TenantInfo::flags`: every map entry of the tenant is in place.
pub const TENANT_READY: u32 = 1;
/// `TenantInfo::flags`: the tenant has an `[egress]` table (IPv4 egress IP).
pub const TENANT_EGRESS_V4: u32 = 2;
/// `TenantInfo::flags`: the tenant has an IPv6 egress IP too.
pub const TENANT_EGRESS_V6: u32 = 4;

/// Allow-mask bits beside the port classes: the prefix lies inside one of
/// the tenant's `vpc_cidrs` (a source it may send from) ...
pub const MASK_VPC: u32 = 1 << 4;
/// ... or inside its egress allowlist (a destination it may reach).
pub const MASK_EGRESS: u32 = 1 << 5;

/// Policy generations. The maps a packet reads to find its tenant and
/// policy (`ADDR_FILTER`, `ADDRS`, `SERVICES`, `VNIS`, `TENANTS`) hold two
/// copies, told apart by a generation in the key; `GENERATION` names the
/// copy in force, and a packet reads it once. The agent writes a new
/// policy set into the other copy and switches: every packet sees one whole
/// set, the old or the new.
pub const GENERATIONS: u32 = 2;

/// `AddrKey` of generation `generation` (in its first padding byte).
#[inline(always)]
pub const fn addr_key_gen(mut k: AddrKey, generation: u32) -> AddrKey {
    k._pad[0] = generation as u8;
    k
}

/// The bit of `ServiceKey::family` that holds the generation.
pub const SERVICE_GEN_BIT: u8 = 0x80;

/// `ServiceKey` of generation `generation`.
#[inline(always)]
pub const fn service_key_gen(mut k: ServiceKey, generation: u32) -> ServiceKey {
    k.family = (k.family & !SERVICE_GEN_BIT) | if generation != 0 { SERVICE_GEN_BIT } else { 0 };
    k
}

/// `VNIS` key of a VNI (24 bits) in generation `generation`.
#[inline(always)]
pub const fn vni_key(vni: u32, generation: u32) -> u32 {
    (vni & 0x00ff_ffff) | generation << 24
}

/// `TENANTS` key of tenant `id` in generation `generation`.
#[inline(always)]
pub const fn tenant_key(id: u32, generation: u32) -> u32 {
    (id & 0xffff) | generation << 16
}

/// An address as carwash keys it: IPv4 in the first four bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKey {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}

/// A VIP or egress IP: whose it is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrValue {
    pub tenant: u32,
    pub kind: u8,
    pub _pad: [u8; 3],
}

/// A service: (VIP, protocol, port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr: [u8; 16],
    pub port_be: [u8; 2],
    pub proto: u8,
    pub family: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    pub tenant: u32,
    pub class: u8,
    pub _pad: [u8; 3],
}

/// A VPC machine: its tunnel endpoint and the MAC its tunnel device answers to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendEntry {
    pub vtep: [u8; 4],
    pub mac: [u8; 6],
    /// 1 when the machine takes traffic.
    pub up: u8,
    pub _pad: u8,
}

/// Everything the fast path needs about a tenant, in one value, so that a
/// packet reads one consistent version of it (hash map updates replace the
/// whole value at once).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TenantInfo {
    /// VNI in the low 24 bits.
    pub vni: u32,
    /// `TENANT_READY` ...
    pub flags: u32,
    /// Slot of the tenant's allowlists in `ALLOW_V4` / `ALLOW_V6`.
    pub allow_slot: u32,
    /// Changes whenever the tenant's tries do (allowlist, `vpc_cidrs`,
    /// egress allowlist): a tracked flow checked against this version need
    /// not be checked against the tries again.
    pub version: u32,
    /// Index into `cores` of the active core.
    pub active_core: u8,
    pub n_connectors: u8,
    pub n_cores: u8,
    pub _pad: u8,
    pub connectors: [BackendEntry; MAX_MACHINES],
    pub cores: [BackendEntry; MAX_MACHINES],
    /// Egress IPs (`TENANT_EGRESS_V4` / `_V6` say which are set), as
    /// addresses are keyed: IPv4 in the first four bytes.
    pub snat_v4: [u8; 16],
    pub snat_v6: [u8; 16],
    /// Maglev table: connector index per bucket (entries past
    /// `MAGLEV_SIZE` are padding).
    pub maglev: [u8; 256],
}

impl Default for TenantInfo {
    fn default() -> Self {
        TenantInfo {
            vni: 0,
            flags: 0,
            allow_slot: 0,
            version: 0,
            active_core: 0,
            n_connectors: 0,
            n_cores: 0,
            _pad: 0,
            connectors: [BackendEntry::default(); MAX_MACHINES],
            cores: [BackendEntry::default(); MAX_MACHINES],
            snat_v4: [0; 16],
            snat_v6: [0; 16],
            maglev: [0; 256],
        }
    }
}

/// Key of the allowlist tries: an LPM key's data part (the prefix length is
/// aya's `Key` wrapper).
pub type Allow4 = [u8; 4];
pub type Allow6 = [u8; 16];
/// Value of an allowlist prefix: the classes it allows, one bit per class
/// (`1 << CLASS_HTTPS` ...), already merged with every shorter prefix that
/// covers it, so the longest match answers for all of them.
pub type AllowMask = u32;

/// Next hops the programs looked up in the kernel's FIB, cached: a FIB and
/// neighbour lookup per packet would cost more than the rest of the path.
pub const MAX_NEXT_HOPS: u32 = 65_536;
/// How long a cached next hop is trusted: a neighbour's new MAC, or a
/// changed route, is followed within this time.
pub const NEXT_HOP_TTL_NS: u64 = 1_000_000_000;

/// A destination as looked up from an interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHopKey {
    pub ifindex: u32,
    pub family: u8,
    pub _pad: [u8; 3],
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHopEntry {
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// carwash's clock (`HostConfig::ns_per_tick`) after which the entry is
    /// looked up anew.
    pub expires_ns: u64,
}

/// The next hop towards a backend's VTEP, cached by the data path in an
/// array slot per tenant and machine (`tenant * 4 + machine`: connectors
/// 0-1, cores 2-3): cheaper than any hash lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendHop {
    /// The VTEP the entry was looked up for: a policy change to another
    /// VTEP makes the entry stale at once.
    pub vtep: [u8; 4],
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub _pad: [u8; 4],
    pub expires_ns: u64,
}

/// Slots of the backend next-hop array per tenant.
pub const HOPS_PER_TENANT: u32 = 4;

/// The agent's health probes travel as ordinary sockets of the host, told
/// apart by their socket mark: `PROBE_MARK_BASE | tenant id << 2 | slot`
/// (slot 0-1 the connectors, 2-3 the cores). The probe program reads the
/// machine to encapsulate to from the mark alone.
///
/// The base keeps the top bit clear: LLVM's BPF backend compares a 32-bit
/// result against a constant with the top bit set as a sign-extended
/// 64-bit immediate, which never matches.
pub const PROBE_MARK_BASE: u32 = 0x6a00_0000;
/// The bits of a mark that say "a carwash probe" (the policy rule's mask).
pub const PROBE_MARK_MASK: u32 = 0xff00_0000;

/// The socket mark of the probes of machine `slot` of tenant `id`.
#[inline(always)]
pub const fn probe_mark(id: u32, slot: u32) -> u32 {
    PROBE_MARK_BASE | (id << 2) | (slot & 3)
}

/// Tenant id and machine slot of a probe's mark; `None` for any other mark.
#[inline(always)]
pub const fn probe_target(mark: u32) -> Option<(u32, u32)> {
    if mark & PROBE_MARK_MASK != PROBE_MARK_BASE {
        return None;
    }
    Some(((mark & !PROBE_MARK_MASK) >> 2, mark & 3))
}

/// Half-open probes: TCP checks whose SYN the agent writes itself, whole
/// (VXLAN, inner Ethernet, IPv4, TCP), and sends from one UDP socket; the
/// machine's SYN-ACK (or reset) never reaches a socket: the fabric program
/// hands it to the agent through `PROBE_REPLIES` and drops it, and the
/// agent answers it with a reset. No socket, no connection, no timer per
/// probe. Their source ports on the probe address are
/// `SYN_PROBE_PORT_BASE..SYN_PROBE_PORT_BASE + SYN_PROBE_PORTS`: below any
/// ephemeral port range, so no socket of the host ever has one (the TLS
/// checks' sockets take ephemeral ports on the same address).
pub const SYN_PROBE_PORT_BASE: u16 = 512;
pub const SYN_PROBE_PORTS: u16 = 512;

/// The source port of round `round` of the half-open probe of machine
/// `slot`: the slot in the top two bits of the range, the round below.
#[inline(always)]
pub const fn syn_probe_port(slot: u32, round: u32) -> u16 {
    SYN_PROBE_PORT_BASE + (((slot & 3) << 7) | (round & 0x7f)) as u16
}

/// Bytes of the ring buffer of probe answers: 64 Ki records, more than a
/// second of 40,000 machines' answers.
pub const PROBE_RING_BYTES: u32 = 2 << 20;

/// One answer to a half-open probe, as the fabric program saw it (after
/// the checks every packet from a VPC passes: a known VNI, from one of
/// that tenant's VTEPs, from the tenant's VIP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynProbeReply {
    /// `bpf_ktime_get_ns` when it arrived (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    pub tenant: u32,
    /// TCP sequence and acknowledgement numbers, host order.
    pub seq: u32,
    pub ack: u32,
    /// The VIP and port that answered.
    pub vip: [u8; 4],
    pub vip_port: u16,
    /// The probe's source port (the answer's destination port).
    pub port: u16,
    /// Which of the tenant's machines' VTEPs it came from (slot 0-3).
    pub origin: u8,
    /// TCP flags.
    pub flags: u8,
    /// 1: the fabric program turned this SYN-ACK into the reset that
    /// answers it and passed it to `carwash_probe_reset`, which sends it
    /// back; 0: the agent sends the reset (or none is due).
    pub reset: u8,
    pub _pad: [u8; 5],
}

/// The metadata word (`bpf_xdp_adjust_meta`) the fabric program puts in
/// front of a reset it wrote in place of a probe's SYN-ACK: the fabric's
/// TC ingress program (`carwash_probe_reset`) sends back out of the fabric
/// what carries it, and nothing else. Only XDP writes metadata, so no
/// packet from the wire can carry it.
pub const PROBE_RESET_META: u32 = 0x6377_7273;

/// Benchmarks only: which tunnel a responder's answer from `addr`, port
/// `port_be` goes back into (`BENCH_TUNNELS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BenchTunnelKey {
    pub addr: [u8; 4],
    pub port_be: [u8; 2],
    pub _pad: [u8; 2],
}

/// Benchmarks only: the VNI and the outer addresses of a responder's
/// answers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BenchTunnel {
    pub vni: u32,
    /// The answering machine's VTEP.
    pub local: [u8; 4],
    /// The host's VTEP.
    pub remote: [u8; 4],
}

/// Where the probes' replies are recognised: one entry, written by the
/// agent that probes (all zero: nothing is taken for a probe reply).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeHost {
    /// The probe sockets' source address (`probe_source`).
    pub addr: [u8; 4],
    /// The fabric interface's own MAC: a decapsulated reply is handed to
    /// the stack as a frame addressed to it.
    pub fabric_mac: [u8; 6],
    /// 1: `carwash_probe_reset` is attached to the fabric's ingress, so the
    /// fabric program answers a probe's SYN-ACK with a reset itself
    /// (`PROBE_RESET_META`); 0: the agent sends the resets.
    pub resets_in_path: u8,
    pub _pad: u8,
}

/// Host-wide settings: one entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostConfig {
    /// The map layout the writer used; see `LAYOUT_VERSION`.
    pub layout_version: u32,
    /// This host's tunnel source address.
    pub vtep: [u8; 4],
    /// Source MAC of the inner frames (what backends route towards).
    pub router_mac: [u8; 6],
    /// MTU of the fabric interface: what an encapsulated packet must fit.
    pub fabric_mtu: u16,
    pub fabric_ifindex: u32,
    pub uplink_ifindex: u32,
    /// 1 once the agent filled this entry.
    pub ready: u32,
    /// The ports (and ICMP echo identifiers) source NAT allocates from,
    /// inclusive.
    pub snat_port_lo: u16,
    pub snat_port_hi: u16,
    /// The length of a kernel tick in nanoseconds (1e9 / `CONFIG_HZ`).
    /// carwash's clock, in nanoseconds, is the kernel's tick counter times
    /// this: one load for the programs (`bpf_jiffies64`), the very timeline
    /// `times(2)` reads in userspace (in steps of 10 ms).
    pub ns_per_tick: u32,
}

/// One machine's health as the agent keeps it in `HEALTH` (userspace only),
/// so that a restarted agent continues from it. `vtep` and `mac` say which
/// machine the record is of: a policy that moves the slot to another
/// machine starts it afresh.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineRecord {
    pub vtep: [u8; 4],
    pub mac: [u8; 6],
    /// `MACHINE_*`.
    pub state: u8,
    pub drained: u8,
    /// Consecutive probe results that disagree with `state` (rise/fall).
    pub streak: u8,
    pub _pad: [u8; 3],
    /// Milliseconds since the Unix epoch when `state` began.
    pub since_ms: u64,
    pub transitions: u32,
    /// Of the last probe; 0 when it failed.
    pub last_latency_us: u32,
}

/// `MachineRecord::state`: no record yet.
pub const MACHINE_UNKNOWN: u8 = 0;
pub const MACHINE_UP: u8 = 1;
pub const MACHINE_DOWN: u8 = 2;

/// A tenant's machines in `HEALTH`: connector/0, connector/1, core/0, core/1.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TenantHealth {
    pub machines: [MachineRecord; 4],
    /// When the active core last changed, for the failback hold-down.
    pub last_switch_ms: u64,
}

/// Hosts a fleet may have: peers the data path knows by port block.
pub const MAX_PEERS: usize = 16;

/// The VNI of a reply passed between hosts of a fleet. Such packets go to
/// a host's own fabric address, never to the VTEP the tenants' machines
/// send to, so a tenant with the same VNI is no confusion.
pub const RELAY_VNI: u32 = 0x00ff_ffff;

/// A host of the fleet: its own fabric address and its source-NAT block.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetPeer {
    pub addr: [u8; 4],
    pub port_lo: u16,
    pub port_hi: u16,
}

/// This host's view of its fleet (`[cluster]`): a reply to an egress IP
/// whose port lies outside this host's block goes to the peer whose block
/// holds it. `n_peers` 0: a host of its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fleet {
    /// This host's own fabric address: where the others pass its replies.
    pub own_addr: [u8; 4],
    pub n_peers: u32,
    /// Every host by index, this one included.
    pub peers: [FleetPeer; MAX_PEERS],
}

/// Replies passed to the owner of their port, and taken from another host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetStats {
    pub sent: u64,
    pub received: u64,
}

/// A tenant's name as the maps keep it, for the CLI and for an agent that
/// adopts pinned state after a restart (`[a-z0-9-]{1,32}`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TenantName {
    pub len: u8,
    pub name: [u8; 32],
    pub _pad: [u8; 3],
}

impl TenantName {
    /// `None` when the name is longer than 32 bytes.
    pub fn new(s: &str) -> Option<TenantName> {
        let b = s.as_bytes();
        if b.len() > 32 {
            return None;
        }
        let mut n = TenantName {
            len: b.len() as u8,
            ..Default::default()
        };
        n.name[..b.len()].copy_from_slice(b);
        Some(n)
    }

    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.name[..(self.len as usize).min(32)]).unwrap_or("?")
    }
}

/// What the agent last applied, for `carwash status` and for adoption.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// `LAYOUT_VERSION` of the agent that created the maps.
    pub layout_version: u32,
    pub _pad: u32,
    /// Generation of the policy set in force (0: none yet).
    pub generation: u64,
    /// Unix time (seconds) the set was applied.
    pub applied_at: u64,
    /// SHA-256 of the policy set in force.
    pub digest: [u8; 32],
}

/// A connection-tracking key. Outbound flows are keyed as they leave the
/// VPC, with their tenant (tenants may use the same private addresses);
/// their replies as they arrive from the internet, with tenant 0 (never a
/// tenant: the egress IP in `dst` is unique). For ICMP echo, `sport` is the
/// identifier of a request and `dport` that of a reply; the other is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub tenant: u32,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport_be: [u8; 2],
    pub dport_be: [u8; 2],
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// What a tracked direction is rewritten to: for an outbound key the egress
/// IP and translated port, for a reply key the VPC machine's own address and
/// port, plus the machine the flow came from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    pub addr: [u8; 16],
    pub port_be: [u8; 2],
    /// Reply keys: the machine that opened the flow, as a backend slot of
    /// its tenant (connectors 0-1, cores 2-3).
    pub origin: u8,
    /// `CT_*` bits: what this direction has seen.
    pub state: u8,
    /// The flow's tenant (both directions).
    pub tenant: u32,
    /// carwash's clock (`HostConfig::ns_per_tick`) after which the entry is dead (data path) and
    /// reclaimed (agent).
    pub expires_ns: u64,
    /// When this direction last pushed out the other direction's expiry.
    pub touched_ns: u64,
    /// Outbound entries: the `TenantInfo::version` the flow was last
    /// checked against (source in `vpc_cidrs`, destination allowed).
    pub version: u32,
    pub _pad: u32,
}

/// A flow a full tracking table may give up: both its keys, and the
/// expiry of each as the agent saw it. The data path evicts it only if
/// neither has moved since (no packet of the flow came by).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvictCandidate {
    pub out: CtKey,
    pub reply: CtKey,
    pub out_expires_ns: u64,
    pub reply_expires_ns: u64,
}

/// The data path's place in the eviction candidates: it takes slot `next`
/// while `next < end`; `base` is the first slot of the half in use (0 or
/// [`CT_EVICT_MAX`]). CPUs share it without a lock: two that take the same
/// slot both find the same flow, and the second finds it gone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvictCursor {
    pub next: u32,
    pub end: u32,
    pub base: u32,
    pub _pad: u32,
}

/// Eviction candidates the agent lists at a time: the least recently used
/// flows of the table, up to this many.
pub const CT_EVICT_MAX: u32 = 8192;
/// Candidates a packet skips (used again since they were listed) before
/// it gives up and is dropped (`conntrack_full`).
pub const CT_EVICT_SKIPS: u32 = 16;

/// The moment a tracked direction last carried a packet (or had its
/// expiry pushed out by the other direction): its expiry less its
/// lifetime.
#[inline(always)]
pub const fn ct_last_use(proto: u8, v: &CtValue) -> u64 {
    v.expires_ns.saturating_sub(ct_lifetime(proto, v.state))
}

/// `CtValue::state` bits.
pub const CT_REPLY: u8 = 1;
pub const CT_SYN: u8 = 2;
pub const CT_FIN: u8 = 4;
pub const CT_RST: u8 = 8;
pub const CT_ESTABLISHED: u8 = 16;

/// Lifetimes of tracked flows, in nanoseconds: half-open and closing TCP
/// flows go quickly, established ones slowly.
pub const CT_TCP_SYN_NS: u64 = 30 * 1_000_000_000;
pub const CT_TCP_ESTABLISHED_NS: u64 = 7200 * 1_000_000_000;
pub const CT_TCP_FIN_NS: u64 = 60 * 1_000_000_000;
pub const CT_TCP_RST_NS: u64 = 10 * 1_000_000_000;
pub const CT_UDP_NS: u64 = 60 * 1_000_000_000;
pub const CT_ICMP_NS: u64 = 30 * 1_000_000_000;
/// How often a busy direction pushes out the other direction's expiry.
pub const CT_TOUCH_NS: u64 = 1_000_000_000;
/// Ports tried for a new flow before it counts as port exhaustion.
pub const SNAT_PROBES: u32 = 32;

/// The largest frame the benchmark-only restore programs write back.
pub const BENCH_FRAME_MAX: usize = 256;

/// The lifetime of a tracked direction in `state`, for protocol `proto`.
#[inline(always)]
pub const fn ct_lifetime(proto: u8, state: u8) -> u64 {
    match proto {
        6 => {
            if state & CT_RST != 0 {
                CT_TCP_RST_NS
            } else if state & CT_FIN != 0 {
                CT_TCP_FIN_NS
            } else if state & CT_ESTABLISHED != 0 {
                CT_TCP_ESTABLISHED_NS
            } else {
                CT_TCP_SYN_NS
            }
        }
        17 => CT_UDP_NS,
        _ => CT_ICMP_NS,
    }
}

/// Interfaces `REDIRECT_ERRORS` counts refused redirects for.
pub const MAX_REDIRECT_TARGETS: u32 = 256;

/// Redirects the kernel refused to deliver into one interface (the key of
/// `REDIRECT_ERRORS` is its ifindex; 0 for a target that is not an
/// interface index), on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedirectErrors {
    /// Frames refused.
    pub frames: u64,
    /// The kernel's reason for the last one, a positive errno
    /// (`EOPNOTSUPP`: the interface cannot take XDP frames now).
    pub last_errno: u32,
    pub _pad: u32,
}

/// Per-tenant counters of one CPU: `[class][slot]`, slots as in
/// `drop::TENANT_STAT_SLOTS`.
pub type TenantStats = [[u64; crate::drop::TENANT_STAT_SLOTS]; CLASSES];

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: repr(C), no padding (checked by the size tests), every bit
    // pattern valid.
    unsafe impl aya::Pod for AddrKey {}
    unsafe impl aya::Pod for AddrValue {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for BackendEntry {}
    unsafe impl aya::Pod for Fleet {}
    unsafe impl aya::Pod for FleetStats {}
    unsafe impl aya::Pod for TenantInfo {}
    unsafe impl aya::Pod for HostConfig {}
    unsafe impl aya::Pod for ProbeHost {}
    unsafe impl aya::Pod for BenchTunnelKey {}
    unsafe impl aya::Pod for BenchTunnel {}
    unsafe impl aya::Pod for NextHopKey {}
    unsafe impl aya::Pod for BackendHop {}
    unsafe impl aya::Pod for NextHopEntry {}
    unsafe impl aya::Pod for TenantName {}
    unsafe impl aya::Pod for MachineRecord {}
    unsafe impl aya::Pod for TenantHealth {}
    unsafe impl aya::Pod for Meta {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for EvictCandidate {}
    unsafe impl aya::Pod for EvictCursor {}
    unsafe impl aya::Pod for RedirectErrors {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn tenant_names_round_trip() {
        assert_eq!(TenantName::new("acme").unwrap().as_str(), "acme");
        assert!(TenantName::new(&"x".repeat(33)).is_none());
    }

    #[test]
    fn sizes_have_no_hidden_padding() {
        assert_eq!(size_of::<AddrKey>(), 20);
        assert_eq!(size_of::<ProbeHost>(), 12);
        assert_eq!(size_of::<BenchTunnelKey>(), 8);
        assert_eq!(size_of::<BenchTunnel>(), 12);
        assert_eq!(probe_target(probe_mark(MAX_TENANTS - 1, 3)), Some((MAX_TENANTS - 1, 3)));
        assert_eq!(probe_target(0x0100_0000 | 7), None);
        assert_eq!(size_of::<AddrValue>(), 8);
        assert_eq!(size_of::<ServiceKey>(), 20);
        assert_eq!(size_of::<ServiceValue>(), 8);
        assert_eq!(size_of::<BackendEntry>(), 12);
        assert_eq!(size_of::<TenantInfo>(), 20 + 4 * 12 + 32 + 256);
        assert_eq!(align_of::<TenantInfo>(), 4);
        assert_eq!(size_of::<HostConfig>(), 36);
        assert_eq!(size_of::<Fleet>(), 8 + 8 * MAX_PEERS);
        assert_eq!(size_of::<FleetStats>(), 16);
        assert_eq!(size_of::<CtKey>(), 44);
        assert_eq!(size_of::<CtValue>(), 48);
        assert_eq!(size_of::<EvictCandidate>(), 104);
        assert_eq!(size_of::<EvictCursor>(), 16);
        assert_eq!(size_of::<TenantName>(), 36);
        assert_eq!(size_of::<MachineRecord>(), 32);
        assert_eq!(size_of::<TenantHealth>(), 136);
        assert_eq!(size_of::<NextHopKey>(), 24);
        assert_eq!(size_of::<NextHopEntry>(), 24);
        assert_eq!(size_of::<BackendHop>(), 32);
        assert_eq!(size_of::<Meta>(), 56);
        assert_eq!(size_of::<RedirectErrors>(), 16);
    }
}
