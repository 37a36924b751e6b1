//! The host's side of the health probes' path (`[probes]`): the probe
//! source address on `lo`, a routing table of carwash's whose default route
//! is `lo`, and the policy rules that send probe sockets (by socket mark)
//! into that table. The probe program on `lo`'s egress does the rest.
//!
//! Why `lo` and not a device of its own: routes through `lo` are what
//! a host has anyway, and a packet on its egress is the host's own. The
//! agent puts the VIPs on the uplink, so the `local` table (rule 0) would
//! deliver a connection to a VIP to the host itself, never through any
//! device's egress: the agent moves that rule after its own
//! ([`local_after_probes`]). The program takes only marked IPv4 packets;
//! everything else on `lo` passes untouched.
//!
//! Replies come back decapsulated on `fabric`, from a VIP to the probe
//! address; see [`replies_accepted`] for the two settings that needs. The
//! rule `from PROBE_SOURCE lookup TABLE` gives a VIP that is not local a
//! route for the loose reverse-path check.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result, anyhow};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};
use tracing::info;

use crate::config::ProbesConfig;
use dataplane_common::types::{PROBE_MARK_BASE, PROBE_MARK_MASK};

/// Where the probe program sits (egress).
pub const PROBE_DEVICE: &str = "lo";
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
/// place).
pub async fn ensure(cfg: &ProbesConfig, fabric: &str) -> Result<()> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening an rtnetlink socket")?;
    let task = tokio::spawn(conn);
    let r = ensure_with(&handle, cfg, fabric).await;
    task.abort();
    r
}

async fn ensure_with(handle: &Handle, cfg: &ProbesConfig, fabric: &str) -> Result<()> {
    let lo = ifindex(handle, PROBE_DEVICE)
        .await?
        .ok_or_else(|| anyhow!("no {PROBE_DEVICE} device"))?;
    exists_ok(
        handle.address().add(lo, IpAddr::V4(cfg.source), 32).execute().await,
        &format!("adding {} to {PROBE_DEVICE}", cfg.source),
    )?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .table_id(cfg.table)
        .output_interface(lo)
        .scope(RouteScope::Link)
        .build();
    handle
        .route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(|e| anyhow!("routing table {} to {PROBE_DEVICE}: {e}", cfg.table))?;
    let mut by_mark = handle
        .rule()
        .add()
        .v4()
        .fw_mark(PROBE_MARK_BASE)
        .table_id(cfg.table)
        .priority(cfg.rule_priority)
        .action(RuleAction::ToTable);
    by_mark
        .message_mut()
        .attributes
        .push(RuleAttribute::FwMask(PROBE_MARK_MASK));
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
    local_after_probes(handle, cfg.rule_priority + 2).await?;
    replies_accepted(fabric)?;
    info!(source = %cfg.source, table = cfg.table, rule_priority = cfg.rule_priority, "probe path in place");
    Ok(())
}

const RT_TABLE_LOCAL: u32 = 255;

fn rule_table(m: &RuleMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

fn rule_priority(m: &RuleMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Priority(p) => Some(*p),
            _ => None,
        })
        .unwrap_or(0)
}

/// Moves the IPv4 `local` table's rule from priority 0 to `pref`, after
/// the probes' rules: a VIP on the uplink is a local address, and without
/// this a probe to it would be delivered to the host itself, not sent to
/// the machine. The `local` rule is added at its new place before it is
/// removed from the old one, so no lookup ever misses it.
async fn local_after_probes(handle: &Handle, pref: u32) -> Result<()> {
    let rules: Vec<RuleMessage> = handle
        .rule()
        .get(IpVersion::V4)
        .execute()
        .try_collect()
        .await
        .map_err(|e| anyhow!("listing the policy rules: {e}"))?;
    let plain_local = |m: &RuleMessage| {
        rule_table(m) == RT_TABLE_LOCAL
            && m.header.src_len == 0
            && m.header.dst_len == 0
            && !m.attributes.iter().any(|a| {
                matches!(
                    a,
                    RuleAttribute::Destination(_)
                        | RuleAttribute::Source(_)
                        | RuleAttribute::Iifname(_)
                        | RuleAttribute::Oifname(_)
                        | RuleAttribute::FwMark(_)
                        | RuleAttribute::Goto(_)
                        | RuleAttribute::TunId(_)
                        | RuleAttribute::L3MDev(_)
                        | RuleAttribute::UidRange(_)
                        | RuleAttribute::IpProtocol(_)
                        | RuleAttribute::SourcePortRange(_)
                        | RuleAttribute::DestinationPortRange(_)
                )
            })
    };
    if !rules.iter().any(|m| plain_local(m) && rule_priority(m) == pref) {
        exists_ok(
            handle
                .rule()
                .add()
                .v4()
                .table_id(RT_TABLE_LOCAL)
                .priority(pref)
                .action(RuleAction::ToTable)
                .execute()
                .await,
            "adding the local table's rule after the probes' rules",
        )?;
    }
    for m in rules.into_iter().filter(|m| plain_local(m) && rule_priority(m) == 0) {
        handle
            .rule()
            .del(m)
            .execute()
            .await
            .map_err(|e| anyhow!("removing the local table's rule at priority 0: {e}"))?;
        info!(priority = pref, "the local table's rule moved after the probes' rules");
    }
    Ok(())
}

fn sysctl(path: &str) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// What the stack needs to take the probes' replies from `fabric`: their
/// source is a VIP, which is a local address when the agent puts the VIPs
/// on the uplink (`accept_local`), and not routed through `fabric`, which
/// strict reverse-path filtering (the larger of `all` and the interface's
/// own value) would refuse; loose still checks that the source is
/// routable at all.
fn replies_accepted(fabric: &str) -> Result<()> {
    let accept = format!("/proc/sys/net/ipv4/conf/{fabric}/accept_local");
    if sysctl(&accept) != Some(1) {
        std::fs::write(&accept, "1").with_context(|| format!("writing {accept} = 1"))?;
        info!(interface = fabric, "accept_local set (1) for the probes' replies");
    }
    let own = format!("/proc/sys/net/ipv4/conf/{fabric}/rp_filter");
    let all = sysctl("/proc/sys/net/ipv4/conf/all/rp_filter").unwrap_or(0);
    let dev = sysctl(&own).unwrap_or(0);
    if all.max(dev) == 1 {
        std::fs::write(&own, "2").with_context(|| format!("writing {own} = 2"))?;
        info!(interface = fabric, "rp_filter set to loose (2) for the probes' replies");
    }
    Ok(())
}
