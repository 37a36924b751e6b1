//! The read side of the pinned maps, for the operator's commands: every map
//! is opened read-only from its pin under `pin_path/maps`, so the commands
//! answer while the agent is down and can never change what the programs
//! see. Opening checks, before anything is read, that there is something
//! pinned, that the caller may read it, and that it has this binary's
//! layout; each failure says which path and what to do.
//!
//! Maps hold numbers; this module turns them into what an operator reads:
//! tenant names, addresses, classes and prefixes.
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{Array, ArrayOfMaps, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuHashMap, lpm_trie::Key};
use carwash_policy::MacAddr;
use dataplane_common::{
    CounterBlock, DropReason, LAYOUT_VERSION,
    drop::{DROPPED_BYTES, STEERED_BYTES, STEERED_PACKETS, TENANT_STAT_SLOTS},
    maps,
    types::{
        ADDR_EGRESS, ADDR_VIP, AddrKey, AddrValue, Allow4, Allow6, AllowMask, BackendEntry, CLASS_HTTPS, CLASS_JMS,
        CLASS_NONE, CLASSES, FAMILY_V4, FAMILY_V6, HostConfig, MAGLEV_SIZE, Meta, RedirectErrors, ServiceKey,
        ServiceValue, TENANT_READY, TenantInfo, TenantName, TenantStats,
    },
};
use ipnetwork::IpNetwork;
use serde::Serialize;

use crate::counters::Counters;
use crate::loader::{expected_shapes, map_pin};

const BPF_OBJ_GET: libc::c_long = 7;
/// `file_flags` of `BPF_OBJ_GET`: a descriptor that can look up but never
/// update or delete.
const BPF_F_RDONLY: u32 = 1 << 3;

/// Opens a pinned map read-only. aya's `MapData::from_pin` asks for a
/// read-write descriptor; the read commands must not hold one.
fn obj_get_rdonly(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // union bpf_attr { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; }
    let mut attr = [0u8; 16];
    attr[..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
    attr[12..16].copy_from_slice(&BPF_F_RDONLY.to_ne_bytes());
    // SAFETY: attr is a valid bpf_attr prefix of the length passed; the path
    // outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

fn permission_denied(path: &Path) -> anyhow::Error {
    anyhow!(
        "permission denied reading {}: carwash reads BPF maps, which needs root (CAP_BPF and CAP_SYS_ADMIN){}; run it with sudo",
        path.display(),
        if euid() == 0 { "" } else { ", and this is not root" }
    )
}

fn is_permission(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

fn nothing_pinned(dir: &Path) -> anyhow::Error {
    let meta = map_pin(dir, maps::META);
    let bpffs = if crate::pin::on_bpffs(dir) {
        String::new()
    } else {
        format!(
            " ({} is not on a mounted bpffs: no agent has pinned anything there since boot)",
            dir.display()
        )
    };
    anyhow!(
        "nothing is pinned under {}: no map {}{bpffs}. Is the agent running on this host? Start it with `carwash agent` \
         (it pins its maps at its pin_path), or point this command at that pin path with --pin-path DIR or --config FILE",
        dir.display(),
        meta.display()
    )
}

/// The pinned maps of a running (or stopped) dataplane, checked to be of
/// this binary's layout.
pub struct Pins {
    dir: PathBuf,
    meta: Meta,
    /// The policy generation in force (`GENERATION`): what the readers
    /// show of the two copies the policy maps hold.
    generation: u32,
}

impl Pins {
    /// Opens the pins under `dir` (the agent's `pin_path`) and checks them:
    /// something is pinned, this process may read it, the layout version
    /// in `META` (or, before an agent wrote `META`, in `CONFIG`) is this
    /// binary's, and every map has the key size, value size and capacity this binary
    /// reads.
    pub fn open(dir: &Path) -> Result<Pins> {
        let meta_path = map_pin(dir, maps::META);
        match std::fs::symlink_metadata(&meta_path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Err(permission_denied(dir)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let others = std::fs::read_dir(dir.join("maps")).map(|rd| rd.count()).unwrap_or(0);
                if others > 0 {
                    bail!(
                        "{} holds pinned maps but no {}: they were made by a carwash of another layout, which this \
                         one cannot read; use the carwash binary the agent runs",
                        dir.join("maps").display(),
                        maps::META
                    );
                }
                return Err(nothing_pinned(dir));
            }
            Err(e) => return Err(e).with_context(|| format!("looking for {}", meta_path.display())),
        }
        let mut pins = Pins {
            dir: dir.to_path_buf(),
            meta: Meta::default(),
            generation: 0,
        };
        pins.meta = Array::<_, Meta>::try_from(Map::Array(pins.map(maps::META)?))?
            .get(&0, 0)
            .context("reading META")?;
        let layout = match pins.meta.layout_version {
            // Loaded, but no agent has written META yet (a library user, or
            // an agent that stopped right after loading): CONFIG carries
            // the version of whoever wrote the host settings.
            0 => pins.host()?.layout_version,
            v => v,
        };
        if layout != 0 && layout != LAYOUT_VERSION {
            bail!(
                "pinned maps under {} have layout version {layout}, this carwash has {LAYOUT_VERSION}: it cannot read \
                 them. Use the carwash binary the agent runs (`ls -l /proc/$(pidof -s carwash)/exe`), or upgrade the \
                 agent (`carwash agent --uninstall` first: the agent refuses to adopt another layout)",
                dir.display()
            );
        }
        pins.generation = Array::<_, u32>::try_from(Map::Array(pins.map(maps::GENERATION)?))?
            .get(&0, 0)
            .context("reading GENERATION")?
            & 1;
        for (name, key, value, max) in expected_shapes() {
            let info = pins
                .map(name)?
                .info()
                .with_context(|| format!("inspecting pinned map {name}"))?;
            if info.key_size() as usize != key
                || info.value_size() as usize != value
                || (max != 0 && info.max_entries() != max)
            {
                bail!(
                    "pinned map {} has key size {}, value size {}, {} entries where this carwash expects {key}, \
                     {value}, {max}: it was made by a carwash of another layout (same version {layout}: was it not \
                     bumped?); use the carwash binary the agent runs",
                    map_pin(dir, name).display(),
                    info.key_size(),
                    info.value_size(),
                    info.max_entries()
                );
            }
        }
        Ok(pins)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Whether map `name` is pinned.
    pub fn has(&self, name: &str) -> bool {
        map_pin(&self.dir, name).exists()
    }

    /// Map `name`, opened read-only from its pin.
    pub fn map(&self, name: &str) -> Result<MapData> {
        let path = map_pin(&self.dir, name);
        let fd = match obj_get_rdonly(&path) {
            Ok(fd) => fd,
            Err(e) if is_permission(&e) => return Err(permission_denied(&path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
                "pinned map {} is missing: the pins under {} are incomplete (an agent stopped half-way through \
                 loading, or someone removed it); restart the agent",
                path.display(),
                self.dir.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("opening pinned map {}", path.display())),
        };
        MapData::from_fd(fd).with_context(|| format!("opening pinned map {}", path.display()))
    }

    /// The host settings the agent wrote (`ready` 0 before it did).
    pub fn host(&self) -> Result<HostConfig> {
        Array::<_, HostConfig>::try_from(Map::Array(self.map(maps::CONFIG)?))?
            .get(&0, 0)
            .context("reading CONFIG")
    }

    /// Every tenant the maps know, by id: those with a record and those
    /// with only a name (a record being installed or removed).
    pub fn tenants(&self) -> Result<Vec<TenantRecord>> {
        let mut out: BTreeMap<u32, TenantRecord> = BTreeMap::new();
        let names: HashMap<_, u32, TenantName> = HashMap::try_from(Map::HashMap(self.map(maps::TENANT_NAMES)?))?;
        for kv in names.iter() {
            let (id, n) = kv.context("reading TENANT_NAMES")?;
            out.entry(id).or_insert_with(|| TenantRecord::new(id)).name = Some(n.as_str().to_string());
        }
        let infos: HashMap<_, u32, TenantInfo> = HashMap::try_from(Map::HashMap(self.map(maps::TENANTS)?))?;
        for kv in infos.iter() {
            let (k, info) = kv.context("reading TENANTS")?;
            let (g, id) = crate::generation::split_tenant(k);
            if g != self.generation {
                continue;
            }
            out.entry(id).or_insert_with(|| TenantRecord::new(id)).info = Some(info);
        }
        Ok(out.into_values().collect())
    }

    /// The tenant called `name`; an error lists the names there are.
    pub fn tenant(&self, name: &str) -> Result<TenantRecord> {
        let all = self.tenants()?;
        if let Some(t) = all.iter().find(|t| t.name.as_deref() == Some(name)) {
            return Ok(t.clone());
        }
        let known: Vec<String> = all.iter().map(TenantRecord::display_name).collect();
        bail!(
            "no tenant {name:?} in the pinned maps under {}; tenants: {}",
            self.dir.display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )
    }

    /// `ADDRS`: VIPs and egress IPs with their tenant, sorted by tenant and address.
    pub fn addresses(&self) -> Result<Vec<AddrEntry>> {
        let m: HashMap<_, AddrKey, AddrValue> = HashMap::try_from(Map::HashMap(self.map(maps::ADDRS)?))?;
        let mut out = Vec::new();
        for kv in m.iter() {
            let (k, v) = kv.context("reading ADDRS")?;
            let (g, k) = crate::generation::split_addr(k);
            if g != self.generation {
                continue;
            }
            out.push(AddrEntry {
                ip: addr_of(&k.addr, k.family),
                kind: addr_kind(v.kind),
                tenant: v.tenant,
            });
        }
        out.sort_by_key(|a| (a.tenant, a.ip.is_ipv6(), a.ip));
        Ok(out)
    }

    /// The owner of `ip` in `ADDRS`, if any.
    pub fn address(&self, ip: IpAddr) -> Result<Option<AddrValue>> {
        let m: HashMap<_, AddrKey, AddrValue> = HashMap::try_from(Map::HashMap(self.map(maps::ADDRS)?))?;
        not_found_is_none(m.get(
            &dataplane_common::types::addr_key_gen(crate::tables::addr_key(ip), self.generation),
            0,
        ))
    }

    /// `SERVICES`, sorted by tenant, VIP, protocol and port.
    pub fn services(&self) -> Result<Vec<ServiceEntry>> {
        let m: HashMap<_, ServiceKey, ServiceValue> = HashMap::try_from(Map::HashMap(self.map(maps::SERVICES)?))?;
        let mut out = Vec::new();
        for kv in m.iter() {
            let (k, v) = kv.context("reading SERVICES")?;
            let (g, k) = crate::generation::split_service(k);
            if g != self.generation {
                continue;
            }
            out.push(ServiceEntry {
                vip: addr_of(&k.addr, k.family),
                proto: k.proto,
                port: u16::from_be_bytes(k.port_be),
                tenant: v.tenant,
                class: v.class,
            });
        }
        out.sort_by_key(|s| (s.tenant, s.vip.is_ipv6(), s.vip, s.proto, s.port));
        Ok(out)
    }

    /// The service (VIP, protocol, port), if any.
    pub fn service(&self, vip: IpAddr, proto: u8, port: u16) -> Result<Option<ServiceValue>> {
        let m: HashMap<_, ServiceKey, ServiceValue> = HashMap::try_from(Map::HashMap(self.map(maps::SERVICES)?))?;
        let a = crate::tables::addr_key(vip);
        let key = ServiceKey {
            addr: a.addr,
            port_be: port.to_be_bytes(),
            proto,
            family: a.family,
        };
        not_found_is_none(m.get(&dataplane_common::types::service_key_gen(key, self.generation), 0))
    }

    /// `VNIS`: VNI → tenant id.
    pub fn vnis(&self) -> Result<BTreeMap<u32, u32>> {
        let m: HashMap<_, u32, u32> = HashMap::try_from(Map::HashMap(self.map(maps::VNIS)?))?;
        let mut out = BTreeMap::new();
        for kv in m.iter() {
            let (k, id) = kv.context("reading VNIS")?;
            let (g, vni) = crate::generation::split_vni(k);
            if g == self.generation {
                out.insert(vni, id);
            }
        }
        Ok(out)
    }

    /// The allow prefixes of allow slot `slot` (what `TenantInfo::allow_slot`
    /// names), IPv4 and IPv6, each with its class mask as stored: already
    /// merged with the masks of every shorter prefix covering it. An empty
    /// slot gives no prefixes.
    pub fn allow(&self, slot: u32) -> Result<AllowList> {
        Ok(AllowList {
            slot,
            v4: self.allow_family::<Allow4>(maps::ALLOW_V4, slot, |d| IpAddr::V4(Ipv4Addr::from(d)))?,
            v6: self.allow_family::<Allow6>(maps::ALLOW_V6, slot, |d| IpAddr::V6(Ipv6Addr::from(d)))?,
        })
    }

    fn allow_family<K: aya::Pod>(&self, name: &str, slot: u32, ip: impl Fn(K) -> IpAddr) -> Result<Vec<AllowEntry>> {
        let outer: ArrayOfMaps<MapData, MapData> = ArrayOfMaps::try_from(Map::ArrayOfMaps(self.map(name)?))?;
        let inner = match outer.get(&slot, 0) {
            Ok(inner) => inner,
            Err(aya::maps::MapError::KeyNotFound) => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading slot {slot} of {name}")),
        };
        let trie: LpmTrie<MapData, K, AllowMask> = LpmTrie::try_from(Map::LpmTrie(inner))?;
        let mut out = Vec::new();
        for kv in trie.iter() {
            let (k, mask): (Key<K>, AllowMask) = kv.with_context(|| format!("reading slot {slot} of {name}"))?;
            let prefix = IpNetwork::new(ip(k.data()), k.prefix_len() as u8)
                .with_context(|| format!("slot {slot} of {name}: bad prefix length {}", k.prefix_len()))?;
            out.push(AllowEntry { prefix, mask });
        }
        out.sort_by_key(|e| (e.prefix.network(), e.prefix.prefix()));
        Ok(out)
    }

    /// Tenant `id`'s counters, summed over CPUs: `[class][slot]`.
    pub fn tenant_stats(&self, id: u32) -> Result<TenantStats> {
        let m: PerCpuArray<_, TenantStats> = PerCpuArray::try_from(Map::PerCpuArray(self.map(maps::TENANT_STATS)?))?;
        Ok(sum_tenant_stats(&m, id)?)
    }

    /// The counters of each tenant of `ids`, in that order, through one
    /// descriptor of `TENANT_STATS` (for many tenants at once).
    pub fn tenant_stats_of(&self, ids: &[u32]) -> Result<Vec<TenantStats>> {
        let m: PerCpuArray<_, TenantStats> = PerCpuArray::try_from(Map::PerCpuArray(self.map(maps::TENANT_STATS)?))?;
        ids.iter()
            .map(|&id| sum_tenant_stats(&m, id).with_context(|| format!("reading TENANT_STATS[{id}]")))
            .collect()
    }

    /// The global counters of program `side` (`SIDE_UPLINK`, `SIDE_FABRIC`).
    pub fn counters(&self, side: u32) -> Result<Counters> {
        let m = PerCpuArray::<_, CounterBlock>::try_from(Map::PerCpuArray(self.map(maps::COUNTERS)?))?;
        Counters::read(&m, side)
    }

    /// The redirects the kernel refused, by target ifindex (none when the
    /// pins were made before they were counted).
    pub fn redirect_errors(&self) -> Result<BTreeMap<u32, RedirectErrors>> {
        if !self.has(maps::REDIRECT_ERRORS) {
            return Ok(BTreeMap::new());
        }
        let m =
            PerCpuHashMap::<_, u32, RedirectErrors>::try_from(Map::PerCpuHashMap(self.map(maps::REDIRECT_ERRORS)?))?;
        crate::loader::sum_redirect_errors(&m)
    }

    /// [`Pins::redirect_errors`] as an operator reads them: which of the
    /// host's interfaces, its name in the calling thread's namespace, the
    /// kernel's reason.
    pub fn redirect_failures(&self) -> Result<Vec<RedirectFailure>> {
        let host = self.host()?;
        Ok(self
            .redirect_errors()?
            .into_iter()
            .map(|(ifindex, e)| RedirectFailure {
                ifindex,
                role: if ifindex == 0 {
                    None
                } else if ifindex == host.uplink_ifindex {
                    Some("uplink")
                } else if ifindex == host.fabric_ifindex {
                    Some("fabric")
                } else {
                    None
                },
                interface: crate::agent::sys::ifname(ifindex),
                frames: e.frames,
                last_error: errno_text(e.last_errno),
            })
            .collect())
    }

    /// The SNAT / connection-tracking table, as flows.
    pub fn snat(&self) -> Result<SnatTable> {
        if !map_pin(&self.dir, maps::CONNTRACK).exists() {
            return Ok(SnatTable::Absent {
                reason: format!(
                    "no {} map is pinned under {}: the dataplane there was loaded without source NAT",
                    maps::CONNTRACK,
                    self.dir.display()
                ),
            });
        }
        let flows = crate::conntrack::flows_of(&Map::HashMap(self.map(maps::CONNTRACK)?))?;
        let names: BTreeMap<u32, String> = self.tenants()?.into_iter().map(|t| (t.id, t.display_name())).collect();
        let now = crate::conntrack::now_ns();
        let mut entries: Vec<SnatEntry> = flows.iter().map(|f| SnatEntry::of(f, &names, now)).collect();
        entries.sort_by(|a, b| (&a.tenant, &a.inside, &a.remote).cmp(&(&b.tenant, &b.inside, &b.remote)));
        Ok(SnatTable::Entries(entries))
    }
}

fn not_found_is_none<V>(r: Result<V, aya::maps::MapError>) -> Result<Option<V>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Frames the kernel refused to deliver into one interface after a
/// program redirected them there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RedirectFailure {
    /// 0: a target that is not an interface index (a device map).
    pub ifindex: u32,
    /// `uplink` or `fabric` when it is one of the host's interfaces.
    pub role: Option<&'static str>,
    /// Its name in the reader's network namespace.
    pub interface: Option<String>,
    pub frames: u64,
    /// The kernel's reason for the last one.
    pub last_error: String,
}

impl RedirectFailure {
    /// `fabric (eth1, ifindex 3)`, with what is known.
    pub fn label(&self) -> String {
        let name = self.interface.as_deref().unwrap_or("?");
        match self.role {
            Some(r) => format!("{r} ({name}, ifindex {})", self.ifindex),
            None => format!("{name} (ifindex {})", self.ifindex),
        }
    }
}

/// An errno as its symbol and text: `EOPNOTSUPP: Operation not supported`.
pub fn errno_text(errno: u32) -> String {
    let sym = match errno as i32 {
        0 => return String::new(),
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENETDOWN => "ENETDOWN",
        libc::EINVAL => "EINVAL",
        libc::ENXIO => "ENXIO",
        libc::ENOSPC => "ENOSPC",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::ENODEV => "ENODEV",
        _ => "",
    };
    let text = io::Error::from_raw_os_error(errno as i32).to_string();
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    if sym.is_empty() { text } else { format!("{sym}: {text}") }
}

/// Sums a tenant's per-CPU counters (live map or a private copy).
pub fn sum_tenant_stats<T: std::borrow::Borrow<MapData>>(
    m: &PerCpuArray<T, TenantStats>,
    id: u32,
) -> Result<TenantStats, aya::maps::MapError> {
    let mut out = [[0u64; TENANT_STAT_SLOTS]; CLASSES];
    for block in m.get(&id, 0)?.iter() {
        for (c, row) in block.iter().enumerate() {
            for (s, v) in row.iter().enumerate() {
                out[c][s] += v;
            }
        }
    }
    Ok(out)
}

/// A tenant as the maps know it.
#[derive(Debug, Clone)]
pub struct TenantRecord {
    pub id: u32,
    /// From `TENANT_NAMES`.
    pub name: Option<String>,
    /// From `TENANTS`.
    pub info: Option<TenantInfo>,
}

impl TenantRecord {
    fn new(id: u32) -> TenantRecord {
        TenantRecord {
            id,
            name: None,
            info: None,
        }
    }

    /// The name, or `#ID` for a record without one.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| format!("#{}", self.id))
    }

    pub fn ready(&self) -> bool {
        self.info.is_some_and(|i| i.flags & TENANT_READY != 0)
    }
}

/// `single` or `double`, from the number of machines.
pub fn lane(info: &TenantInfo) -> &'static str {
    if info.n_connectors > 1 || info.n_cores > 1 {
        "double"
    } else {
        "single"
    }
}

/// A machine of a tenant, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Machine {
    pub index: usize,
    pub vtep: Ipv4Addr,
    pub mac: String,
    pub up: bool,
}

pub fn machine(index: usize, b: &BackendEntry) -> Machine {
    Machine {
        index,
        vtep: Ipv4Addr::from(b.vtep),
        mac: MacAddr(b.mac).to_string(),
        up: b.up != 0,
    }
}

pub fn connectors(info: &TenantInfo) -> Vec<Machine> {
    let n = (info.n_connectors as usize).min(info.connectors.len());
    info.connectors[..n]
        .iter()
        .enumerate()
        .map(|(i, b)| machine(i, b))
        .collect()
}

pub fn cores(info: &TenantInfo) -> Vec<Machine> {
    let n = (info.n_cores as usize).min(info.cores.len());
    info.cores[..n].iter().enumerate().map(|(i, b)| machine(i, b)).collect()
}

/// Maglev buckets per connector (of `MAGLEV_SIZE`).
pub fn maglev_buckets(info: &TenantInfo) -> Vec<usize> {
    let mut n = vec![0usize; info.connectors.len()];
    for &c in &info.maglev[..MAGLEV_SIZE] {
        if let Some(x) = n.get_mut(c as usize) {
            *x += 1;
        }
    }
    n.truncate((info.n_connectors as usize).min(info.connectors.len()));
    n
}

/// An entry of `ADDRS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddrEntry {
    pub ip: IpAddr,
    /// `vip`, `egress`.
    pub kind: &'static str,
    pub tenant: u32,
}

fn addr_kind(k: u8) -> &'static str {
    match k {
        ADDR_VIP => "vip",
        ADDR_EGRESS => "egress",
        _ => "unknown",
    }
}

/// An address as the maps key it (IPv4 in the first four bytes).
pub fn addr_of(addr: &[u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_V6 {
        IpAddr::V6(Ipv6Addr::from(*addr))
    } else {
        debug_assert_eq!(family, FAMILY_V4);
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    }
}

/// An entry of `SERVICES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub vip: IpAddr,
    pub proto: u8,
    pub port: u16,
    pub tenant: u32,
    pub class: u8,
}

/// `tcp`, `udp`, `icmp`, `icmpv6`, or the number.
pub fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

/// The word for a port class (`CLASS_*`). `none` counts traffic the
/// programs could not give a class: to a VIP port without a service, and
/// tunnel traffic from the VPC.
pub fn class_name(c: u8) -> &'static str {
    match c {
        CLASS_HTTPS => "https",
        CLASS_JMS => "jms",
        CLASS_NONE => "none",
        _ => "unknown",
    }
}

/// The classes an allow mask lets through.
pub fn mask_classes(mask: AllowMask) -> Vec<&'static str> {
    [CLASS_HTTPS, CLASS_JMS]
        .into_iter()
        .filter(|c| mask & (1 << c) != 0)
        .map(class_name)
        .collect()
}

/// An allow prefix and the classes it lets through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    pub prefix: IpNetwork,
    pub mask: AllowMask,
}

/// A tenant's allowlists: one allow slot of `ALLOW_V4` and `ALLOW_V6`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList {
    pub slot: u32,
    pub v4: Vec<AllowEntry>,
    pub v6: Vec<AllowEntry>,
}

impl AllowList {
    /// The entry the trie answers for `ip` with: the longest prefix that
    /// contains it.
    pub fn longest_match(&self, ip: IpAddr) -> Option<&AllowEntry> {
        let family = if ip.is_ipv6() { &self.v6 } else { &self.v4 };
        family
            .iter()
            .filter(|e| e.prefix.contains(ip))
            .max_by_key(|e| e.prefix.prefix())
    }
}

/// One class's counters of a tenant, decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClassStats {
    pub steered_packets: u64,
    pub steered_bytes: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
    /// Drop reason word → packets; only reasons that counted.
    pub dropped: BTreeMap<&'static str, u64>,
}

/// A tenant's counters by class word (`https`, `jms`, `none`).
pub fn class_stats(s: &TenantStats) -> BTreeMap<&'static str, ClassStats> {
    (0..CLASSES as u8)
        .map(|c| {
            let row = &s[c as usize];
            let dropped: BTreeMap<&'static str, u64> = DropReason::ALL
                .iter()
                .filter(|r| row[r.slot()] != 0)
                .map(|r| (r.name(), row[r.slot()]))
                .collect();
            (
                class_name(c),
                ClassStats {
                    steered_packets: row[STEERED_PACKETS],
                    steered_bytes: row[STEERED_BYTES],
                    dropped_packets: dropped.values().sum(),
                    dropped_bytes: row[DROPPED_BYTES],
                    dropped,
                },
            )
        })
        .collect()
}

/// What `carwash snat list` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnatTable {
    /// There is no table to read; `reason` says why, for the operator.
    Absent { reason: String },
    /// The tracked connections.
    Entries(Vec<SnatEntry>),
}

/// One tracked outbound connection, in the terms of path 3 (outbound):
/// a VPC machine's flow, source-NATed to the tenant's egress IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnatEntry {
    pub tenant: String,
    pub proto: String,
    /// The machine's address and port (ICMP: echo identifier) inside the VPC.
    pub inside: String,
    /// The egress IP and the port allocated for the flow.
    pub egress: String,
    /// The external party.
    pub remote: String,
    /// The machine the flow came from (and replies go to), as a backend
    /// slot: `connector[0]`, `core[1]`, ...
    pub machine: String,
    /// TCP: `syn_sent`, `established`, `closing`, `reset`; others:
    /// `replied` or `unreplied`.
    pub state: String,
    /// Seconds until the flow expires unless more packets come (0: expired,
    /// awaiting reclaim).
    pub expires_in_s: u64,
    /// `both`, or which direction alone is left (the other was evicted;
    /// the next packet writes it back).
    pub directions: String,
}

fn endpoint(addr: &[u8; 16], family: u8, port_be: [u8; 2]) -> String {
    match crate::conntrack::ip(addr, family) {
        std::net::IpAddr::V4(a) => format!("{a}:{}", u16::from_be_bytes(port_be)),
        std::net::IpAddr::V6(a) => format!("[{a}]:{}", u16::from_be_bytes(port_be)),
    }
}

impl SnatEntry {
    fn of(f: &crate::conntrack::Flow, names: &BTreeMap<u32, String>, now: u64) -> SnatEntry {
        let tenant = f.tenant();
        let name = names.get(&tenant).cloned().unwrap_or_else(|| format!("#{tenant}"));
        let (inside, egress, remote, proto, origin) = match (f.out, f.reply) {
            (Some((k, v)), r) => (
                endpoint(&k.src, k.family, k.sport_be),
                endpoint(&v.addr, k.family, v.port_be),
                endpoint(&k.dst, k.family, r.map(|(rk, _)| rk.sport_be).unwrap_or(k.dport_be)),
                k.proto,
                r.map(|(_, rv)| rv.origin).unwrap_or(v.origin),
            ),
            (None, Some((k, v))) => (
                endpoint(&v.addr, k.family, v.port_be),
                endpoint(&k.dst, k.family, k.dport_be),
                endpoint(&k.src, k.family, k.sport_be),
                k.proto,
                v.origin,
            ),
            (None, None) => (String::new(), String::new(), String::new(), 0, 0),
        };
        let machine = match origin {
            0 | 1 => format!("connector[{origin}]"),
            _ => format!("core[{}]", origin & 1),
        };
        SnatEntry {
            tenant: name,
            proto: proto_name(proto),
            inside,
            egress,
            remote,
            machine,
            state: f.state(proto).to_string(),
            expires_in_s: f.expires_ns().saturating_sub(now) / 1_000_000_000,
            directions: match (f.out.is_some(), f.reply.is_some()) {
                (true, true) => "both",
                (true, false) => "outbound",
                _ => "reply",
            }
            .to_string(),
        }
    }
}

/// Tenant ids any policy map refers to (for sizing a private copy of the
/// per-tenant counters).
pub fn max_tenant_id(pins: &Pins) -> Result<u32> {
    let mut ids: BTreeSet<u32> = pins.tenants()?.iter().map(|t| t.id).collect();
    ids.extend(pins.addresses()?.iter().map(|a| a.tenant));
    ids.extend(pins.services()?.iter().map(|s| s.tenant));
    ids.extend(pins.vnis()?.values().copied());
    Ok(ids.into_iter().max().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(p: &str, mask: AllowMask) -> AllowEntry {
        AllowEntry {
            prefix: p.parse().unwrap(),
            mask,
        }
    }

    #[test]
    fn the_longest_prefix_answers() {
        let l = AllowList {
            slot: 2,
            v4: vec![entry("198.51.100.0/24", 1), entry("198.51.100.128/25", 3)],
            v6: vec![entry("2001:db8:beef::/48", 3)],
        };
        let hit = |ip: &str| l.longest_match(ip.parse().unwrap()).map(|e| e.prefix.to_string());
        assert_eq!(hit("198.51.100.10").as_deref(), Some("198.51.100.0/24"));
        assert_eq!(hit("198.51.100.200").as_deref(), Some("198.51.100.128/25"));
        assert_eq!(hit("192.0.2.1"), None);
        assert_eq!(hit("2001:db8:beef::10").as_deref(), Some("2001:db8:beef::/48"));
        assert_eq!(hit("2001:db8:dead::10"), None);
    }

    #[test]
    fn masks_and_classes_read_as_words() {
        assert_eq!(mask_classes(3), vec!["https", "jms"]);
        assert_eq!(mask_classes(1 << CLASS_JMS), vec!["jms"]);
        assert!(mask_classes(0).is_empty());
        assert_eq!(class_name(CLASS_NONE), "none");
        assert_eq!(proto_name(6), "tcp");
    }

    #[test]
    fn class_stats_name_the_reasons_that_counted() {
        let mut s = [[0u64; TENANT_STAT_SLOTS]; CLASSES];
        s[CLASS_HTTPS as usize][STEERED_PACKETS] = 3;
        s[CLASS_HTTPS as usize][DropReason::NotAllowed.slot()] = 2;
        s[CLASS_HTTPS as usize][DROPPED_BYTES] = 120;
        let c = class_stats(&s);
        assert_eq!(c["https"].steered_packets, 3);
        assert_eq!(c["https"].dropped_packets, 2);
        assert_eq!(c["https"].dropped.get("not_allowed"), Some(&2));
        assert_eq!(c["jms"], ClassStats::default());
    }

    #[test]
    fn v4_addresses_sit_in_the_first_four_bytes() {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[203, 0, 113, 10]);
        assert_eq!(addr_of(&a, FAMILY_V4), "203.0.113.10".parse::<IpAddr>().unwrap());
    }
}
