//! `carwash trace`: what the dataplane does with one packet, found by
//! running the program itself on it with `BPF_PROG_TEST_RUN`.
//!
//! The packet runs through a second copy of the embedded eBPF object whose
//! policy maps are the live pinned ones ([`SHARED_MAPS`]) and whose other
//! maps (the counters) are fresh and private to the trace: the verdict is
//! the one live traffic gets, and no live counter or table moves. The
//! private counters then say which drop reason, tenant and class the
//! program counted; the output frame says which machine it went to. What
//! the program cannot tell (the allow entry that matched, the backend of a
//! packet dropped after the choice) is computed from the maps the way the
//! program looks them up.
//!
//! `bpf_fib_lookup` answers from the network namespace of the thread that
//! runs the test, so the run happens in the agent's namespace when one is
//! named (`--netns`).
pub mod headers;
pub mod packet;

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    EbpfLoader,
    maps::PerCpuArray,
    programs::{ProgramInfo, TestRun, TestRunOptions, Xdp},
};
use carwash_policy::MacAddr;
use dataplane_common::{
    CounterBlock, DropReason,
    hash::{flow_hash, vxlan_source_port},
    maps, programs,
    types::{
        ADDR_EGRESS, BackendEntry, CLASS_HTTPS, HOPS_PER_TENANT, HostConfig, MAGLEV_SIZE, SIDE_FABRIC, SIDE_UPLINK,
        TenantInfo, TenantStats,
    },
};
use serde::Serialize;

use crate::agent::status::ifname;
use crate::loader::{EBPF_OBJECT, map_pin, prog_pin};
use crate::maps::counters::{Counters, sum_tenant_stats};
use crate::maps::pins::Pins;
use crate::maps::policy::read::{TenantRecord, class_name, mask_classes, max_tenant_id, proto_name};
use crate::netns::in_netns;
use headers::Header;
pub use packet::{Flow, Proto, Tunnel};

/// The maps the trace's copy of the programs shares with the live
/// dataplane: the policy, which the programs only read. Every other map of
/// the object is created fresh for the trace, so that a trace never writes
/// live state: the counters, the next-hop caches (`NEXT_HOPS`,
/// `BACKEND_HOPS`: empty, so the trace asks the FIB itself), and any map a
/// later layout adds until it is listed here.
pub const SHARED_MAPS: &[&str] = &[
    maps::CONFIG,
    maps::GENERATION,
    maps::ADDR_FILTER,
    maps::ADDRS,
    maps::SERVICES,
    maps::VNIS,
    maps::TENANTS,
    maps::ALLOW_V4,
    maps::ALLOW_V6,
    maps::TENANT_NAMES,
    maps::META,
];

/// Entries of the trace's private FIB cache: it holds what one packet
/// looks up.
const TRACE_NEXT_HOPS: u32 = 64;
/// Entries of the trace's private tracking table: one flow's two.
const TRACE_CONNTRACK: u32 = 64;

/// Where the traced packet arrives.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// From the internet, at the uplink program.
    #[default]
    Uplink,
    /// From a VPC machine's tunnel, at the fabric program.
    Fabric,
}

impl Side {
    pub fn word(self) -> &'static str {
        match self {
            Side::Uplink => "uplink",
            Side::Fabric => "fabric",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Side::Uplink => programs::UPLINK,
            Side::Fabric => programs::FABRIC,
        }
    }

    fn counters(self) -> u32 {
        match self {
            Side::Uplink => SIDE_UPLINK,
            Side::Fabric => SIDE_FABRIC,
        }
    }
}

/// What to trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub flow: Flow,
    pub from: Side,
    /// `--from fabric`: the VNI (default: that of the tenant whose VIP the
    /// source is) and the machine's VTEP (default: the machine the forward
    /// flow is steered to).
    pub vni: Option<u32>,
    pub vtep: Option<Ipv4Addr>,
    /// The network namespace to run in: a name under /run/netns, or a path.
    pub netns: Option<String>,
}

/// The verdict and how it came about.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    pub from: Side,
    /// The packet the program ran on.
    pub input: Vec<Header>,
    pub input_len: usize,
    pub program: ProgramRun,
    pub tenant: Option<TenantRef>,
    /// `https`, `jms`, or `none` (counted without a class).
    pub class: Option<&'static str>,
    pub allow: Option<AllowMatch>,
    pub backend: Option<BackendRef>,
    /// The XDP verdict: `XDP_PASS`, `XDP_DROP`, `XDP_TX`, `XDP_REDIRECT`, `XDP_ABORTED`.
    pub action: &'static str,
    pub drop_reason: Option<&'static str>,
    /// The frame the program left behind; `null` when it was dropped.
    pub output: Option<Vec<Header>>,
    pub output_len: Option<usize>,
    /// What else the operator should know about this packet or this run.
    pub notes: Vec<String>,
}

/// Which program ran, and where.
#[derive(Debug, Clone, Serialize)]
pub struct ProgramRun {
    pub name: &'static str,
    /// The kernel's tag of the program: the hash of its instructions.
    pub tag: String,
    /// The tag of the program pinned under `pin_path/progs` (the one the
    /// agent attached), if any.
    pub attached_tag: Option<String>,
    pub netns: Option<String>,
    /// The interface the packet was run as arriving on (`null`: the kernel's
    /// default, the namespace's loopback).
    pub ingress: Option<Interface>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Interface {
    pub ifindex: u32,
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantRef {
    pub name: String,
    pub id: u32,
}

/// The allow entry that matched the source: the longest prefix of the
/// tenant's allowlist containing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AllowMatch {
    pub prefix: String,
    /// The classes the entry lets through (its own and those of shorter
    /// prefixes covering it).
    pub classes: Vec<&'static str>,
}

/// A machine of the tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendRef {
    /// `connector` or `core`; `unknown` for an address that is no machine
    /// of the tenant.
    pub role: &'static str,
    pub index: Option<usize>,
    pub vtep: Ipv4Addr,
    pub mac: String,
    /// How it is known: `output` (the program encapsulated the packet to
    /// it), `maps` (what the maps choose for this flow; the program stopped
    /// before sending), `input` (the machine the tunnel frame came from).
    pub source: &'static str,
}

/// The word for an XDP verdict.
pub fn action_name(a: u32) -> &'static str {
    match a {
        0 => "XDP_ABORTED",
        1 => "XDP_DROP",
        2 => "XDP_PASS",
        3 => "XDP_TX",
        4 => "XDP_REDIRECT",
        _ => "unknown",
    }
}

fn tag_hex(tag: u64) -> String {
    format!("{tag:016x}")
}

fn ip16(ip: IpAddr) -> [u8; 16] {
    crate::maps::policy::tenants::addr_key(ip).addr
}

fn backend_ref(role: &'static str, index: usize, b: &BackendEntry, source: &'static str) -> BackendRef {
    BackendRef {
        role,
        index: Some(index),
        vtep: Ipv4Addr::from(b.vtep),
        mac: MacAddr(b.mac).to_string(),
        source,
    }
}

/// The machine the program picks: a connector by the Maglev table for
/// https, the active core otherwise (`steer::backend`).
fn choose(info: &TenantInfo, class: u8, hash: u32) -> BackendRef {
    if class == CLASS_HTTPS {
        let idx = info.maglev[(hash % MAGLEV_SIZE as u32) as usize] as usize & 1;
        backend_ref("connector", idx, &info.connectors[idx], "maps")
    } else {
        let idx = info.active_core as usize & 1;
        backend_ref("core", idx, &info.cores[idx], "maps")
    }
}

/// The machine of `info` with VTEP `vtep` (and MAC `mac`, when given).
fn machine_at(info: &TenantInfo, vtep: Ipv4Addr, mac: Option<[u8; 6]>, source: &'static str) -> Option<BackendRef> {
    let role = |name, list: &[BackendEntry], n: u8| {
        list.iter()
            .take(n as usize)
            .position(|b| b.vtep == vtep.octets() && mac.is_none_or(|m| m == b.mac))
            .map(|i| backend_ref(name, i, &list[i], source))
    };
    role("connector", &info.connectors, info.n_connectors).or_else(|| role("core", &info.cores, info.n_cores))
}

fn tenant_ref(t: &TenantRecord) -> TenantRef {
    TenantRef {
        name: t.display_name(),
        id: t.id,
    }
}

/// What the program did, from the kernel.
struct Run {
    action: u32,
    output: Vec<u8>,
    drops: Vec<DropReason>,
    /// (tenant id, class) rows of the private per-tenant counters that moved.
    counted: Vec<(u32, u8)>,
    tag: u64,
    ingress: Option<Interface>,
    /// Whether the fabric interface the host settings name exists here.
    fabric_here: bool,
}

/// Loads the trace's copy of the object and runs program `side` once on
/// `frame`; in the calling thread's network namespace.
fn run_program(pins: &Pins, host: &HostConfig, side: Side, frame: &[u8], tenant_ids: &[u32]) -> Result<Run> {
    let mut loader = EbpfLoader::new();
    for name in SHARED_MAPS {
        loader.map_pin_path(name, map_pin(pins.dir(), name));
    }
    // The private per-tenant counters need a slot per tenant id the maps
    // use, not the full MAX_TENANTS × CPUs of the live map.
    let slots = tenant_ids.iter().copied().max().unwrap_or(0) + 1;
    loader.map_max_entries(maps::TENANT_STATS, slots);
    // Likewise the caches: one trace needs a next hop or two.
    loader.map_max_entries(maps::BACKEND_HOPS, slots * HOPS_PER_TENANT);
    loader.map_max_entries(maps::NEXT_HOPS, TRACE_NEXT_HOPS);
    // A private, empty tracking table: a traced flow is always a new one,
    // and the live table is never touched.
    loader.map_max_entries(maps::CONNTRACK, TRACE_CONNTRACK);
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .context("loading the trace's copy of the eBPF object on the pinned policy maps")?;
    let name = side.program();
    // The programs a packet is handed on to, this copy's own (its program
    // array is private too), so that the outbound and egress-IP paths are
    // traced through.
    let mut jumps = Vec::new();
    for (jumped, slot) in programs::JUMPED {
        let prog: &mut Xdp = ebpf
            .program_mut(jumped)
            .ok_or_else(|| anyhow!("program {jumped} missing from the eBPF object"))?
            .try_into()?;
        crate::loader::load_retrying(prog).with_context(|| format!("loading program {jumped} (verifier)"))?;
        jumps.push((*slot, prog.fd()?.try_clone()?));
    }
    {
        let map = ebpf
            .map_mut(maps::JUMPS)
            .ok_or_else(|| anyhow!("no map {}", maps::JUMPS))?;
        let mut array = aya::maps::ProgramArray::try_from(map)?;
        for (slot, fd) in &jumps {
            array.set(*slot, fd, 0)?;
        }
    }
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
        .try_into()?;
    if prog.fd().is_err() {
        crate::loader::load_retrying(prog).with_context(|| format!("loading program {name} (verifier)"))?;
    }
    let tag = prog.info()?.tag();

    let ingress_ifindex = match side {
        Side::Uplink => host.uplink_ifindex,
        Side::Fabric => host.fabric_ifindex,
    };
    let ingress_name = (ingress_ifindex != 0).then(|| ifname(ingress_ifindex)).flatten();
    // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }:
    // the packet arrives on the interface the program is attached to, so
    // that "send back where it came from" (XDP_TX) shows as it would live.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 256];
    let with_ctx = ingress_name.is_some();
    let res = {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        if with_ctx {
            opts.ctx_in = Some(&ctx);
        }
        prog.test_run(opts)
            .with_context(|| format!("BPF_PROG_TEST_RUN of {name}"))?
    };
    out.truncate(res.data_size_out as usize);

    let counters = PerCpuArray::<_, CounterBlock>::try_from(
        ebpf.map(maps::COUNTERS)
            .ok_or_else(|| anyhow!("no map {}", maps::COUNTERS))?,
    )?;
    let moved = Counters::read(&counters, side.counters())?;
    let drops = moved.drops.iter().filter(|(_, n)| **n > 0).map(|(r, _)| *r).collect();
    let stats: PerCpuArray<_, TenantStats> = PerCpuArray::try_from(
        ebpf.map(maps::TENANT_STATS)
            .ok_or_else(|| anyhow!("no map {}", maps::TENANT_STATS))?,
    )?;
    let mut counted = Vec::new();
    for &id in tenant_ids {
        let s: TenantStats = sum_tenant_stats(&stats, id)?;
        for (class, row) in s.iter().enumerate() {
            if row.iter().any(|&v| v != 0) {
                counted.push((id, class as u8));
            }
        }
    }
    Ok(Run {
        action: res.return_value,
        output: out,
        drops,
        counted,
        tag,
        ingress: with_ctx.then_some(Interface {
            ifindex: ingress_ifindex,
            name: ingress_name,
        }),
        fabric_here: ifname(host.fabric_ifindex).is_some(),
    })
}

/// The tunnel frame `--from fabric` sends: from the machine the forward
/// flow goes to, unless `--vtep` names another.
fn tunnel(pins: &Pins, host: &HostConfig, req: &Request, tenants: &[TenantRecord]) -> Result<Tunnel> {
    let f = &req.flow;
    let owner = pins.address(f.src)?;
    let by_vni = |vni: u32| -> Result<Option<&TenantRecord>> {
        let id = pins.vnis()?.get(&vni).copied();
        Ok(id.and_then(|id| tenants.iter().find(|t| t.id == id)))
    };
    let (vni, tenant) = match (req.vni, owner) {
        (Some(vni), _) => (vni, by_vni(vni)?),
        (None, Some(a)) => {
            let t = tenants.iter().find(|t| t.id == a.tenant);
            let vni = t.and_then(|t| t.info).map(|i| i.vni).ok_or_else(|| {
                anyhow!(
                    "--from fabric: {} belongs to tenant id {} which has no record; give --vni",
                    f.src,
                    a.tenant
                )
            })?;
            (vni, t)
        }
        (None, None) => bail!(
            "--from fabric: {} is no tenant's VIP or egress IP, so the VNI to send it with is unknown; give --vni",
            f.src
        ),
    };
    let info = tenant.and_then(|t| t.info);
    // The forward flow (client → VIP) this packet answers.
    let proto = f.proto.number(f.src.is_ipv6());
    let hash = flow_hash(&ip16(f.dst), &ip16(f.src), f.dport, f.sport, proto);
    let machine = match (req.vtep, info) {
        (Some(vtep), Some(i)) => machine_at(&i, vtep, None, "input"),
        (Some(_), None) => None,
        (None, Some(i)) => {
            let class = pins
                .service(f.src, proto, f.sport)?
                .map(|s| s.class)
                .unwrap_or(CLASS_HTTPS);
            Some(choose(&i, class, hash))
        }
        (None, None) => {
            bail!("--from fabric: VNI {vni} names no tenant, so the sending machine is unknown; give --vtep")
        }
    };
    let (vtep, mac) = match (&machine, req.vtep) {
        (Some(m), _) => (m.vtep, m.mac.parse::<MacAddr>().map_err(|e| anyhow!(e))?.0),
        // A VTEP that is no machine of the tenant (the isolation check
        // drops it): any MAC will do.
        (None, Some(v)) => (v, [0x02, 0, 0, 0, 0, 0x03]),
        (None, None) => unreachable!("handled above"),
    };
    Ok(Tunnel {
        vtep,
        mac,
        host_vtep: Ipv4Addr::from(host.vtep),
        router_mac: host.router_mac,
        vni,
        sport: vxlan_source_port(hash),
    })
}

/// Traces `req` against the maps pinned at `pins`.
pub fn trace(pins: &Pins, req: &Request) -> Result<Trace> {
    for name in SHARED_MAPS {
        // Loading would otherwise create and pin an empty map in its place.
        if !pins.has(name) {
            bail!(
                "pinned map {} is missing: the trace needs every policy map of the running dataplane",
                map_pin(pins.dir(), name).display()
            );
        }
    }
    let f = &req.flow;
    let host = pins.host()?;
    let tenants = pins.tenants()?;
    let mut notes = Vec::new();
    if host.ready == 0 {
        notes.push("the agent has not written the host settings (CONFIG) yet: VIP traffic is dropped".into());
    }
    let (frame, tunnel) = match req.from {
        Side::Uplink => (
            packet::frame(f, packet::CLIENT_SIDE_MAC, packet::UPLINK_SIDE_MAC)?,
            None,
        ),
        Side::Fabric => {
            let t = tunnel(pins, &host, req, &tenants)?;
            (packet::vxlan(f, &t)?, Some(t))
        }
    };
    let mut ids: Vec<u32> = tenants.iter().map(|t| t.id).collect();
    ids.push(max_tenant_id(pins)?);
    ids.sort_unstable();
    ids.dedup();
    let side = req.from;
    let run = in_netns(req.netns.as_deref(), || run_program(pins, &host, side, &frame, &ids))?;
    if !run.fabric_here && host.ready != 0 {
        notes.push(format!(
            "the fabric interface (ifindex {}) does not exist in this network namespace: bpf_fib_lookup answers \
             for the namespace the trace runs in, so steered packets show as no_route; give --netns with the \
             agent's namespace",
            host.fabric_ifindex
        ));
    }
    if run.ingress.is_none() {
        let ifindex = match side {
            Side::Uplink => host.uplink_ifindex,
            Side::Fabric => host.fabric_ifindex,
        };
        notes.push(format!(
            "the {} interface (ifindex {ifindex}) does not exist in this network namespace: the packet ran as \
             arriving on loopback, so a packet sent back out of its own interface shows as XDP_REDIRECT, not XDP_TX",
            side.word()
        ));
    }
    if side == Side::Fabric && host.fabric_ifindex == host.uplink_ifindex && host.ready != 0 {
        notes.push(
            "fabric and uplink are one interface, which runs the uplink program only: live, that program gets this \
             frame (trace it with --from uplink to see what it does)"
                .into(),
        );
    }
    let attached_tag = ProgramInfo::from_pin(prog_pin(pins.dir(), side.program()))
        .ok()
        .map(|i| tag_hex(i.tag()));
    if let Some(a) = &attached_tag
        && *a != tag_hex(run.tag)
    {
        notes.push(format!(
            "the attached program (tag {a}) is not this binary's (tag {}): the trace shows what this binary's \
             program does with the live maps",
            tag_hex(run.tag)
        ));
    }

    let find = |id: u32| tenants.iter().find(|t| t.id == id);
    let mut tenant = None;
    let mut class = None;
    let mut allow = None;
    let mut backend = None;
    // What the program counted: the tenant and class it charged.
    if let Some(&(id, c)) = run.counted.first() {
        tenant = Some(find(id).map(tenant_ref).unwrap_or(TenantRef {
            name: format!("#{id}"),
            id,
        }));
        class = Some(class_name(c));
    }
    let proto = f.proto.number(f.dst.is_ipv6());
    match side {
        Side::Uplink => {
            let owner = pins.address(f.dst)?;
            match owner {
                None => notes.push(format!(
                    "{} is neither a VIP nor an egress IP: none of carwash's business, the host stack gets it",
                    f.dst
                )),
                Some(a) if a.kind == ADDR_EGRESS => notes.push(format!(
                    "{} is an egress IP: only replies to tracked outbound connections pass",
                    f.dst
                )),
                Some(a) => {
                    if tenant.is_none() {
                        tenant = find(a.tenant).map(tenant_ref);
                    }
                    if let Some(svc) = pins.service(f.dst, proto, f.dport)? {
                        class = Some(class_name(svc.class));
                        if let Some(info) = find(svc.tenant).and_then(|t| t.info) {
                            let list = pins.allow(info.allow_slot)?;
                            let hit = list.longest_match(f.src);
                            allow = hit.map(|e| AllowMatch {
                                prefix: e.prefix.to_string(),
                                classes: mask_classes(e.mask),
                            });
                            if hit.is_some_and(|e| e.mask & (1 << svc.class) != 0) {
                                let hash = flow_hash(&ip16(f.src), &ip16(f.dst), f.sport, f.dport, proto);
                                backend = Some(choose(&info, svc.class, hash));
                            }
                        }
                    } else {
                        notes.push(format!(
                            "{} has no service on {} port {}",
                            f.dst,
                            proto_name(proto),
                            f.dport
                        ));
                    }
                }
            }
        }
        Side::Fabric => {
            let t = tunnel.as_ref().expect("built for the fabric side");
            let id = pins.vnis()?.get(&t.vni).copied();
            if tenant.is_none() {
                tenant = id.and_then(find).map(tenant_ref);
            }
            backend = id
                .and_then(find)
                .and_then(|r| r.info)
                .and_then(|i| machine_at(&i, t.vtep, Some(t.mac), "input"));
            if id.is_some() && backend.is_none() {
                notes.push(format!("{} is no machine of the tenant VNI {} names", t.vtep, t.vni));
            }
        }
    }
    // The machine the program actually sent the packet to.
    let output = match run.action {
        2..=4 => match headers::describe(&run.output) {
            Ok(h) => Some(h),
            Err(e) => {
                notes.push(format!("the output frame does not parse: {e}"));
                None
            }
        },
        _ => None,
    };
    if let Some(h) = &output
        && let Some(sent) = sent_to(h)
    {
        let info = tenant.as_ref().and_then(|t| find(t.id)).and_then(|r| r.info);
        backend = Some(
            info.and_then(|i| machine_at(&i, sent.0, Some(sent.1), "output"))
                .unwrap_or(BackendRef {
                    role: "unknown",
                    index: None,
                    vtep: sent.0,
                    mac: MacAddr(sent.1).to_string(),
                    source: "output",
                }),
        );
    }
    if run.drops.contains(&DropReason::NoRoute) {
        let towards = match (&backend, side) {
            (Some(b), Side::Uplink) => format!("VTEP {}", b.vtep),
            (_, Side::Uplink) => "the backend's VTEP".to_string(),
            (_, Side::Fabric) => format!("{}", f.dst),
        };
        let ns = req
            .netns
            .as_deref()
            .map(|n| format!("network namespace {n}"))
            .unwrap_or_else(|| "this network namespace".into());
        notes.push(format!(
            "bpf_fib_lookup finds no route or no neighbour entry towards {towards} in {ns}: if that is the agent's \
             namespace, live packets of this flow are dropped the same way; if not, trace with --netns NAME of the \
             agent's namespace"
        ));
    }
    if run.drops.len() > 1 {
        notes.push(format!(
            "more than one drop reason moved: {}",
            run.drops.iter().map(|r| r.name()).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(Trace {
        from: side,
        input: headers::describe(&frame)?,
        input_len: frame.len(),
        program: ProgramRun {
            name: side.program(),
            tag: tag_hex(run.tag),
            attached_tag,
            netns: req.netns.clone(),
            ingress: run.ingress,
        },
        tenant,
        class,
        allow,
        backend,
        action: action_name(run.action),
        drop_reason: run.drops.first().map(|r| r.name()),
        output_len: output.as_ref().map(|_| run.output.len()),
        output,
        notes,
    })
}

/// The VTEP and inner MAC of a VXLAN frame from this host.
fn sent_to(h: &[Header]) -> Option<(Ipv4Addr, [u8; 6])> {
    let outer_dst = h.iter().find_map(|x| match x {
        Header::Ipv4 { dst, .. } => Some(*dst),
        _ => None,
    })?;
    let vx = h.iter().position(|x| matches!(x, Header::Vxlan { .. }))?;
    match h.get(vx + 1) {
        Some(Header::Ethernet { dst, .. }) => Some((outer_dst, dst.parse::<MacAddr>().ok()?.0)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane_common::types::VXLAN_PORT;

    fn info() -> TenantInfo {
        let mut i = TenantInfo {
            n_connectors: 2,
            n_cores: 2,
            active_core: 1,
            ..Default::default()
        };
        for (k, b) in i.connectors.iter_mut().chain(i.cores.iter_mut()).enumerate() {
            *b = BackendEntry {
                vtep: [10, 200, 1, 10 + k as u8],
                mac: [2, 0, 0, 0, 0, k as u8],
                up: 1,
                _pad: 0,
            };
        }
        i.maglev[7] = 1;
        i
    }

    #[test]
    fn https_follows_the_maglev_table_and_jms_the_active_core() {
        let i = info();
        let b = choose(&i, CLASS_HTTPS, 7 + MAGLEV_SIZE as u32);
        assert_eq!((b.role, b.index), ("connector", Some(1)));
        let b = choose(&i, dataplane_common::types::CLASS_JMS, 7);
        assert_eq!(
            (b.role, b.index, b.vtep),
            ("core", Some(1), "10.200.1.13".parse().unwrap())
        );
    }

    #[test]
    fn machines_are_found_by_vtep_and_mac() {
        let i = info();
        let m = machine_at(&i, "10.200.1.12".parse().unwrap(), Some([2, 0, 0, 0, 0, 2]), "output").unwrap();
        assert_eq!((m.role, m.index), ("core", Some(0)));
        assert!(machine_at(&i, "10.200.1.12".parse().unwrap(), Some([2, 0, 0, 0, 0, 9]), "output").is_none());
    }

    #[test]
    fn the_backend_is_read_from_the_tunnel_headers() {
        let h = vec![
            Header::Ethernet {
                src: "02:00:00:00:00:01".into(),
                dst: "02:00:00:00:00:02".into(),
            },
            Header::Ipv4 {
                src: "10.200.0.1".parse().unwrap(),
                dst: "10.200.1.10".parse().unwrap(),
                ttl: 64,
                dont_fragment: true,
                total_len: 100,
            },
            Header::Udp {
                sport: 50000,
                dport: VXLAN_PORT,
                len: 80,
            },
            Header::Vxlan { vni: 1001 },
            Header::Ethernet {
                src: "02:00:0a:c8:00:01".into(),
                dst: "02:00:0a:c8:01:0a".into(),
            },
        ];
        assert_eq!(
            sent_to(&h),
            Some(("10.200.1.10".parse().unwrap(), [2, 0, 0x0a, 0xc8, 1, 0x0a]))
        );
        assert_eq!(sent_to(&h[..2]), None);
    }
}
