//! The host side of the agent: the interfaces (through rtnetlink), the
//! forwarding settings `bpf_fib_lookup` needs, and the VIPs and egress IPs
//! the uplink must answer ARP and neighbour solicitations for.
//!
//! **Addresses.** After each apply the agent puts every VIP and egress IP
//! in force on the uplink as a host address (`/32`, `/128`), so that the
//! kernel answers ARP and NDP for it, and removes the ones no longer in
//! force. Its addresses carry their own address protocol
//! ([`ADDR_PROTO`], `IFA_PROTO`), by which it tells them from the
//! operator's: it never removes or changes an address without that mark,
//! and an address the operator already has on the uplink is left as it is.
//! They are added with `noprefixroute` (no route besides the local one)
//! and, for IPv6, `nodad` (answering at once; the control plane claims each
//! address once). The XDP program sees every packet to them first, so the
//! host stack never serves them; ARP and neighbour solicitations (to the
//! solicited-node multicast group) are no packets to a VIP and pass.
//! Stopping the agent leaves them (the programs stay attached too); a new
//! agent reconciles them with the set in force; `--uninstall` removes them.
//! The reconciliation runs on a thread of its own ([`UplinkAddrs`]), so
//! the addresses follow an apply shortly after it, never delaying it.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{StreamExt, TryStreamExt};
use rtnetlink::Handle;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressProtocol};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage, LinkXdp};
use serde::Serialize;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::api::InterfaceStatus;
use crate::config::HostConfig;

impl InterfaceStatus {
    pub fn new(role: &str, i: &Interface) -> InterfaceStatus {
        InterfaceStatus {
            role: role.to_string(),
            name: i.name.clone(),
            ifindex: i.ifindex,
            mac: i.mac_string(),
            mtu: i.mtu,
            warnings: Vec::new(),
        }
    }
}

/// An interface as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// Id of the XDP program attached to it, if any.
    pub xdp_prog_id: Option<u32>,
}

impl Interface {
    pub fn mac_string(&self) -> String {
        carwash_policy::MacAddr(self.mac).to_string()
    }
}

fn from_message(name: &str, msg: &LinkMessage) -> Result<Interface> {
    let mut iface = Interface {
        name: name.to_string(),
        ifindex: msg.header.index,
        mac: [0; 6],
        mtu: 0,
        xdp_prog_id: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::Address(a) if a.len() == 6 => iface.mac.copy_from_slice(a),
            LinkAttribute::Mtu(m) => iface.mtu = *m,
            LinkAttribute::Xdp(x) => {
                for a in x {
                    if let LinkXdp::ProgId(id) = a
                        && *id != 0
                    {
                        iface.xdp_prog_id = Some(*id);
                    }
                }
            }
            _ => {}
        }
    }
    if iface.mtu == 0 {
        bail!("interface {name}: the kernel reported no MTU");
    }
    Ok(iface)
}

/// Looks interfaces up by name in the calling thread's network namespace.
pub async fn interfaces(names: &[&str]) -> Result<Vec<Interface>> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening an rtnetlink socket")?;
    let task = tokio::spawn(conn);
    let mut out = Vec::new();
    for name in names {
        let mut stream = handle.link().get().match_name(name.to_string()).execute();
        let msg = match stream.try_next().await {
            Ok(Some(msg)) => msg,
            Ok(None) => bail!("no interface {name}"),
            Err(e) => return Err(anyhow!("interface {name}: {e}")),
        };
        out.push(from_message(name, &msg)?);
    }
    task.abort();
    Ok(out)
}

fn read_sysctl(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn write_sysctl(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {} = {value}", path.display()))
}

/// Turns on IPv4 and IPv6 forwarding on `dev` if it is off: the programs'
/// `bpf_fib_lookup` answers "forwarding disabled" for packets that arrived
/// on an interface that does not forward. Only this interface is changed,
/// and where it accepted router advertisements (`accept_ra` = 1, which
/// forwarding would turn off) it keeps doing so (`accept_ra` = 2). Returns
/// what was changed.
pub fn enable_forwarding(dev: &str) -> Result<Vec<String>> {
    let mut changed = Vec::new();
    let v4 = Path::new("/proc/sys/net/ipv4/conf").join(dev).join("forwarding");
    if read_sysctl(&v4).as_deref() != Some("1") {
        write_sysctl(&v4, "1")?;
        changed.push(format!("net.ipv4.conf.{dev}.forwarding=1"));
    }
    let v6dir = Path::new("/proc/sys/net/ipv6/conf").join(dev);
    if v6dir.exists() {
        let fwd = v6dir.join("forwarding");
        if read_sysctl(&fwd).as_deref() != Some("1") {
            let ra = v6dir.join("accept_ra");
            if read_sysctl(&ra).as_deref() == Some("1") {
                write_sysctl(&ra, "2")?;
                changed.push(format!("net.ipv6.conf.{dev}.accept_ra=2"));
            }
            write_sysctl(&fwd, "1")?;
            changed.push(format!("net.ipv6.conf.{dev}.forwarding=1"));
        }
    } else {
        warn!(
            dev,
            "IPv6 is disabled on this interface: IPv6 traffic cannot be forwarded"
        );
    }
    if !changed.is_empty() {
        info!(dev, changed = %changed.join(" "), "enabled forwarding");
    }
    Ok(changed)
}

/// The address protocol (`IFA_PROTO`, 202) that marks the addresses carwash
/// put on the uplink.
pub const ADDR_PROTO: u8 = 0xca;

/// Requests to the kernel in flight at once while addresses change.
const NETLINK_CONCURRENCY: usize = 32;

/// An address of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAddr {
    pub ip: IpAddr,
    pub prefix_len: u8,
    /// `IFA_PROTO`, 0 when the kernel reported none.
    pub proto: u8,
    msg: AddressMessage,
}

impl HostAddr {
    /// Whether carwash added it.
    pub fn is_carwash(&self) -> bool {
        self.proto == ADDR_PROTO
    }
}

fn host_addr(msg: AddressMessage) -> Option<HostAddr> {
    let mut local = None;
    let mut address = None;
    let mut proto = 0;
    for a in &msg.attributes {
        match a {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Protocol(p) => proto = u8::from(*p),
            _ => {}
        }
    }
    Some(HostAddr {
        ip: local.or(address)?,
        prefix_len: msg.header.prefix_len,
        proto,
        msg,
    })
}

fn connect() -> Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening an rtnetlink socket")?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn dump_addresses(handle: &Handle, ifindex: u32) -> Result<Vec<HostAddr>> {
    let msgs: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(ifindex)
        .execute()
        .try_collect()
        .await
        .map_err(|e| anyhow!("listing the addresses of ifindex {ifindex}: {e}"))?;
    Ok(msgs.into_iter().filter_map(host_addr).collect())
}

/// The addresses of interface `ifindex` (in the calling thread's network
/// namespace; needs a tokio runtime).
pub async fn addresses(ifindex: u32) -> Result<Vec<HostAddr>> {
    dump_addresses(&connect()?, ifindex).await
}

fn netlink_errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// What a reconciliation of the uplink's addresses did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AddrChanges {
    /// Added by carwash now.
    pub added: Vec<IpAddr>,
    /// Carwash's, no longer in force: removed.
    pub removed: Vec<IpAddr>,
    /// Carwash's already, still in force.
    pub kept: usize,
    /// In force, but the operator has them on the uplink already: left alone.
    pub operators: Vec<IpAddr>,
    /// What the kernel refused, one line each.
    pub failed: Vec<String>,
}

async fn add_address(handle: Handle, ifindex: u32, ip: IpAddr) -> Result<(), String> {
    let plen = if ip.is_ipv4() { 32 } else { 128 };
    let mut req = handle.address().add(ifindex, ip, plen);
    let m = req.message_mut();
    m.attributes
        .push(AddressAttribute::Protocol(AddressProtocol::from(ADDR_PROTO)));
    let mut flags = AddressFlags::Noprefixroute;
    if ip.is_ipv6() {
        flags |= AddressFlags::Nodad;
    }
    m.attributes.push(AddressAttribute::Flags(flags));
    req.execute().await.map_err(|e| format!("adding {ip}/{plen}: {e}"))
}

async fn del_address(handle: Handle, a: HostAddr) -> Result<(), String> {
    match handle.address().del(a.msg).execute().await {
        Ok(()) => Ok(()),
        // Gone already.
        Err(e) if netlink_errno(&e) == Some(libc::EADDRNOTAVAIL) => Ok(()),
        Err(e) => Err(format!("removing {}/{}: {e}", a.ip, a.prefix_len)),
    }
}

/// Makes carwash's addresses on `ifindex` exactly `want` (see the module
/// documentation): adds what is missing, removes its own addresses that
/// are not wanted, and leaves every address without its mark alone.
pub async fn sync_addresses(ifindex: u32, want: &BTreeSet<IpAddr>) -> Result<AddrChanges> {
    let handle = connect()?;
    let present = dump_addresses(&handle, ifindex).await?;
    let mut ours: BTreeMap<IpAddr, Vec<HostAddr>> = BTreeMap::new();
    let mut theirs: BTreeSet<IpAddr> = BTreeSet::new();
    for a in present {
        if a.is_carwash() {
            ours.entry(a.ip).or_default().push(a);
        } else {
            theirs.insert(a.ip);
        }
    }
    let mut ch = AddrChanges::default();
    let mut to_add = Vec::new();
    for ip in want {
        let full = if ip.is_ipv4() { 32 } else { 128 };
        if ours.get(ip).is_some_and(|v| v.iter().any(|a| a.prefix_len == full)) {
            ch.kept += 1;
        } else if theirs.contains(ip) {
            ch.operators.push(*ip);
        } else {
            to_add.push(*ip);
        }
    }
    // Ours that are not wanted, or not host addresses (never added so).
    let to_del: Vec<HostAddr> = ours
        .into_values()
        .flatten()
        .filter(|a| !want.contains(&a.ip) || a.prefix_len != if a.ip.is_ipv4() { 32 } else { 128 })
        .collect();

    let results: Vec<(IpAddr, Result<(), String>)> = futures_util::stream::iter(to_add)
        .map(|ip| {
            let h = handle.clone();
            async move { (ip, add_address(h, ifindex, ip).await) }
        })
        .buffer_unordered(NETLINK_CONCURRENCY)
        .collect()
        .await;
    for (ip, r) in results {
        match r {
            Ok(()) => ch.added.push(ip),
            Err(e) => ch.failed.push(e),
        }
    }
    let results: Vec<(HostAddr, Result<(), String>)> = futures_util::stream::iter(to_del)
        .map(|a| {
            let h = handle.clone();
            async move { (a.clone(), del_address(h, a).await) }
        })
        .buffer_unordered(NETLINK_CONCURRENCY)
        .collect()
        .await;
    for (a, r) in results {
        match r {
            Ok(()) if !want.contains(&a.ip) => ch.removed.push(a.ip),
            Ok(()) => {}
            Err(e) => ch.failed.push(e),
        }
    }
    ch.added.sort();
    ch.removed.sort();
    ch.failed.sort();
    Ok(ch)
}

/// The addresses one reconciliation is to make true: those of policy
/// generation `.0`.
type Wanted = Option<(u64, Arc<BTreeSet<IpAddr>>)>;

/// Reconciles the uplink's addresses on a thread of its own, so that the
/// agent's loop never waits for the kernel: adding an IPv6 address joins
/// its solicited-node multicast group, which costs the kernel time that
/// grows with the number of groups (about 40 s for 10,000 fresh IPv6
/// addresses on one interface). A newer set replaces one not yet started.
#[derive(Debug, Default)]
pub struct UplinkAddrs {
    tx: Option<watch::Sender<Wanted>>,
    /// The policy generation last handed over.
    sent: Option<u64>,
    /// The policy generation last made true on the uplink.
    pub done: Arc<std::sync::atomic::AtomicU64>,
}

impl UplinkAddrs {
    /// Whether the uplink already has (or is being given) the addresses of
    /// policy generation `generation`.
    pub fn is_current(&self, generation: u64) -> bool {
        self.sent == Some(generation)
    }

    /// Hands the addresses of `generation` to the reconciler's thread
    /// (started on first use). Returns at once.
    pub fn hand_over(&mut self, generation: u64, ifindex: u32, name: &str, want: Arc<BTreeSet<IpAddr>>) {
        if self.tx.is_none() {
            match spawn_reconciler(ifindex, name.to_string(), self.done.clone()) {
                Ok(tx) => self.tx = Some(tx),
                Err(e) => {
                    error!(error = %format!("{e:#}"), "the uplink's addresses cannot be kept");
                    return;
                }
            }
        }
        if let Some(tx) = &self.tx
            && tx.send(Some((generation, want))).is_ok()
        {
            self.sent = Some(generation);
        }
    }
}

/// How long a failed reconciliation (the addresses could not even be
/// listed) waits before it tries again, unless a newer set comes first.
const RETRY: Duration = Duration::from_secs(5);

async fn reconcile(ifindex: u32, dev: &str, generation: u64, want: &BTreeSet<IpAddr>) -> bool {
    let t0 = std::time::Instant::now();
    match sync_addresses(ifindex, want).await {
        Ok(ch) => {
            if !ch.added.is_empty() || !ch.removed.is_empty() || !ch.operators.is_empty() {
                info!(
                    interface = dev,
                    generation,
                    added = ch.added.len(),
                    removed = ch.removed.len(),
                    kept = ch.kept,
                    operators = %few_ips(&ch.operators),
                    millis = t0.elapsed().as_millis() as u64,
                    "uplink addresses for the VIPs and egress IPs in force"
                );
            }
            if !ch.failed.is_empty() {
                // Not retried until the set changes: the same request
                // would fail again (e.g. IPv6 off on the uplink).
                error!(
                    interface = dev,
                    failed = ch.failed.len(),
                    "the uplink will not answer ARP/NDP for some addresses in force: {}",
                    ch.failed.join("; ")
                );
            }
            true
        }
        Err(e) => {
            warn!(
                interface = dev,
                error = %format!("{e:#}"),
                "reconciling the uplink's addresses failed; trying again in {RETRY:?}"
            );
            false
        }
    }
}

/// Adds `new` (addresses that were not in force at the last full
/// reconciliation); `false` if any could not be added, so that the next set
/// is reconciled in full. An address the operator has already is left alone
/// (`EEXIST`).
async fn add_only(ifindex: u32, dev: &str, generation: u64, new: &[IpAddr]) -> bool {
    let handle = match connect() {
        Ok(h) => h,
        Err(e) => {
            warn!(interface = dev, error = %format!("{e:#}"), "adding uplink addresses");
            return false;
        }
    };
    let results: Vec<Result<(), String>> = futures_util::stream::iter(new.iter().copied())
        .map(|ip| {
            let h = handle.clone();
            async move { add_address(h, ifindex, ip).await }
        })
        .buffer_unordered(NETLINK_CONCURRENCY)
        .collect()
        .await;
    let failed: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err())
        .filter(|e| !e.contains("File exists"))
        .collect();
    if !new.is_empty() {
        info!(
            interface = dev,
            generation,
            added = new.len() - failed.len(),
            "uplink addresses for the VIPs and egress IPs in force"
        );
    }
    if !failed.is_empty() {
        error!(
            interface = dev,
            failed = failed.len(),
            "the uplink will not answer ARP/NDP for some addresses in force: {}",
            failed.join("; ")
        );
    }
    failed.is_empty()
}

fn spawn_reconciler(
    ifindex: u32,
    dev: String,
    done_gen: Arc<std::sync::atomic::AtomicU64>,
) -> Result<watch::Sender<Wanted>> {
    let (tx, mut rx) = watch::channel::<Wanted>(None);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new()
        .name("carwash-addrs".into())
        .spawn(move || {
            rt.block_on(async move {
                // The set the uplink was last made to answer for, in full
                // and without failures: a newer set then only needs the
                // difference (nothing at all for, say, a port change).
                let mut synced: Option<Arc<BTreeSet<IpAddr>>> = None;
                while rx.changed().await.is_ok() {
                    loop {
                        let Some((generation, want)) = rx.borrow_and_update().clone() else {
                            break;
                        };
                        let done = match &synced {
                            Some(old) if old.is_superset(&want) && want.len() == old.len() => true,
                            // Only additions: added straight away, without
                            // listing every address of the uplink.
                            Some(old) if want.is_superset(old) => {
                                let new: Vec<IpAddr> = want.difference(old).copied().collect();
                                add_only(ifindex, &dev, generation, &new).await
                            }
                            _ => reconcile(ifindex, &dev, generation, &want).await,
                        };
                        synced = done.then(|| want.clone());
                        if done {
                            done_gen.store(generation, std::sync::atomic::Ordering::Relaxed);
                            break;
                        }
                        // Failed: again after a while, or at once with a
                        // newer set; stop with the agent.
                        tokio::select! {
                            _ = tokio::time::sleep(RETRY) => {}
                            r = rx.changed() => if r.is_err() { return },
                        }
                    }
                }
            })
        })
        .context("starting the thread that keeps the uplink's addresses")?;
    Ok(tx)
}

pub(crate) fn few(names: &[String]) -> String {
    let mut s = names.iter().take(10).cloned().collect::<Vec<_>>().join(",");
    if names.len() > 10 {
        s.push_str(&format!(" and {} more", names.len() - 10));
    }
    if s.is_empty() { "none".into() } else { s }
}

fn few_ips(ips: &[IpAddr]) -> String {
    let names: Vec<String> = ips.iter().map(ToString::to_string).collect();
    few(&names)
}

/// `--uninstall`: removes carwash's addresses from the uplink, named by
/// `cfg.uplink` or, when no interface has that name here, by the ifindex
/// the pins recorded. Only marked addresses go. Returns them.
pub fn remove_uplink_addresses(cfg: &HostConfig) -> Result<Vec<IpAddr>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let ifindex = match interfaces(&[cfg.uplink.as_str()]).await {
            Ok(ifs) => ifs[0].ifindex,
            Err(_) => match crate::maps::pins::Pins::open(&cfg.pin_path).and_then(|p| p.host()) {
                Ok(h) if h.uplink_ifindex != 0 => h.uplink_ifindex,
                _ => return Ok(Vec::new()),
            },
        };
        let ch = sync_addresses(ifindex, &BTreeSet::new()).await?;
        if !ch.failed.is_empty() {
            bail!("removing carwash's uplink addresses: {}", ch.failed.join("; "));
        }
        Ok(ch.removed)
    })
}

// ---- Next hops kept resolved (managed neighbours) ----

/// Makes the kernel keep the neighbour `ip` on `ifindex` resolved by
/// itself (a managed neighbour: it resolves it now and again before it goes
/// stale), for a next hop the programs' FIB lookup found unresolved. An
/// entry already managed, or one the operator made permanent, is left as
/// it is.
pub async fn manage_neighbour(ifindex: u32, ip: IpAddr) -> Result<bool> {
    use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourState};
    let handle = connect()?;
    let mut dump = handle.neighbours().get().execute();
    while let Some(n) = dump.try_next().await.map_err(|e| anyhow!("listing neighbours: {e}"))? {
        if n.header.ifindex != ifindex {
            continue;
        }
        let same = n.attributes.iter().any(|a| match (a, ip) {
            (NeighbourAttribute::Destination(NeighbourAddress::Inet(a)), IpAddr::V4(b)) => *a == b,
            (NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)), IpAddr::V6(b)) => *a == b,
            _ => false,
        });
        let managed = n
            .attributes
            .iter()
            .any(|a| matches!(a, NeighbourAttribute::ExtFlags(f) if f.contains(NeighbourExtFlags::Managed)));
        if same && (managed || n.header.state == NeighbourState::Permanent) {
            return Ok(false);
        }
    }
    let mut req = handle
        .neighbours()
        .add(ifindex, ip)
        .state(NeighbourState::None)
        .replace();
    req.message_mut()
        .attributes
        .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
    req.execute()
        .await
        .map_err(|e| anyhow!("keeping neighbour {ip} resolved: {e}"))?;
    Ok(true)
}
