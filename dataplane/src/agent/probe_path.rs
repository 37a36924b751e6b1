//! The host's side of the health probes' path (`[probes]`): a dummy
//! device of carwash's own, the probe source address on it, a routing
//! table whose default route is that device, and the policy rules that
//! send probe sockets (by socket mark) into that table. The probe program
//! on the device's egress does the rest.
//!
//! Replies come back decapsulated on `fabric`, from a VIP to the probe
//! address. Reverse-path filtering would drop them there in strict mode
//! (the VIP's route is not `fabric`): the agent sets the fabric's
//! `rp_filter` to loose (2) if the effective value is strict, and the rule
//! `from PROBE_SOURCE lookup TABLE` gives the VIP a route for the loose
//! check. Anything unmarked that this rule sends to the device is dropped
//! by the probe program.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result, anyhow};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute};
use rtnetlink::{Handle, LinkDummy, LinkUnspec, RouteMessageBuilder};
use tracing::info;

use crate::config::ProbesConfig;
use dataplane_common::types::{PROBE_MARK_BASE, PROBE_MARK_MASK};

/// Outer IPv4, UDP, VXLAN and inner Ethernet: the probe device's MTU is the
/// fabric's less this, so an encapsulated probe always fits.
const ENCAP_OVERHEAD: u32 = 20 + 8 + 8 + 14;
const EEXIST: i32 = libc::EEXIST;

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn exists_ok(r: std::result::Result<(), rtnetlink::Error>, what: &str) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        Err(e) => Err(anyhow!("{what}: {e}")),
    }
}

async fn ifindex(handle: &Handle, name: &str) -> Result<Option<u32>> {
    let mut s = handle.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(Some(m)) => Ok(Some(m.header.index)),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(anyhow!("looking up {name}: {e}")),
    }
}

/// Makes the probe path exist (idempotent: a restarted agent finds it in
/// place). Returns the device's ifindex.
pub async fn ensure(cfg: &ProbesConfig, fabric: &str, fabric_mtu: u32) -> Result<u32> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening an rtnetlink socket")?;
    let task = tokio::spawn(conn);
    let r = ensure_with(&handle, cfg, fabric, fabric_mtu).await;
    task.abort();
    r
}

async fn ensure_with(handle: &Handle, cfg: &ProbesConfig, fabric: &str, fabric_mtu: u32) -> Result<u32> {
    let dev = cfg.device.as_str();
    let mtu = fabric_mtu.saturating_sub(ENCAP_OVERHEAD).max(576);
    let index = match ifindex(handle, dev).await? {
        Some(i) => i,
        None => {
            exists_ok(
                handle.link().add(LinkDummy::new(dev).mtu(mtu).build()).execute().await,
                &format!("creating the probe device {dev}"),
            )?;
            ifindex(handle, dev)
                .await?
                .ok_or_else(|| anyhow!("the probe device {dev} vanished after its creation"))?
        }
    };
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
        .execute()
        .await
        .map_err(|e| anyhow!("setting {dev} up (mtu {mtu}): {e}"))?;
    // The stack finishes the probes' checksums itself: the packets leave
    // through the fabric inside a tunnel, where nothing would finish a
    // partial one.
    tx_checksum_off(dev)?;
    exists_ok(
        handle
            .address()
            .add(index, IpAddr::V4(cfg.source), 32)
            .execute()
            .await,
        &format!("adding {} to {dev}", cfg.source),
    )?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .table_id(cfg.table)
        .output_interface(index)
        .scope(RouteScope::Link)
        .build();
    handle
        .route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(|e| anyhow!("routing table {} to {dev}: {e}", cfg.table))?;
    let mut by_mark = handle
        .rule()
        .add()
        .v4()
        .fw_mark(PROBE_MARK_BASE)
        .table_id(cfg.table)
        .priority(cfg.rule_priority)
        .action(RuleAction::ToTable);
    by_mark.message_mut().attributes.push(RuleAttribute::FwMask(PROBE_MARK_MASK));
    exists_ok(by_mark.execute().await, "adding the probes' mark rule")?;
    exists_ok(
        handle
            .rule()
            .add()
            .v4()
            .source_prefix(cfg.source, 32)
            .table_id(cfg.table)
            .priority(cfg.rule_priority + 1)
            .action(RuleAction::ToTable)
            .execute()
            .await,
        "adding the probes' source rule",
    )?;
    loose_rp_filter(fabric)?;
    info!(device = dev, source = %cfg.source, table = cfg.table, mtu, "probe path in place");
    Ok(index)
}

fn sysctl(path: &str) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Strict reverse-path filtering on `fabric` (the larger of `all` and the
/// interface's own value) would drop the probes' replies; loose keeps
/// checking that the source is routable at all.
fn loose_rp_filter(fabric: &str) -> Result<()> {
    let own = format!("/proc/sys/net/ipv4/conf/{fabric}/rp_filter");
    let all = sysctl("/proc/sys/net/ipv4/conf/all/rp_filter").unwrap_or(0);
    let dev = sysctl(&own).unwrap_or(0);
    if all.max(dev) == 1 {
        std::fs::write(&own, "2").with_context(|| format!("writing {own} = 2"))?;
        info!(interface = fabric, "rp_filter set to loose (2) for the probes' replies");
    }
    Ok(())
}

/// `ethtool -K DEV tx off` (the legacy ioctl, which every kernel has).
fn tx_checksum_off(dev: &str) -> Result<()> {
    const ETHTOOL_STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    // SAFETY: an all-zero ifreq is valid; the name fits (IFNAMSIZ checked).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = dev.as_bytes();
    if name.len() >= req.ifr_name.len() {
        anyhow::bail!("interface name {dev:?} is too long");
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    // SAFETY: a datagram socket only for the ioctl, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket for SIOCETHTOOL");
    }
    // SAFETY: valid fd, ifreq pointing at a live ethtool_value.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCETHTOOL, &mut req) };
    let err = std::io::Error::last_os_error();
    // SAFETY: our fd.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(err).with_context(|| format!("turning TX checksum offload off on {dev}"));
    }
    Ok(())
}
