//! Route announcements of a host in a fleet: every VIP and egress IP in
//! force becomes a host route (`/32`, `/128`) through the uplink in a kernel
//! routing table of carwash's own (`[cluster] route_table`), marked with
//! carwash's route protocol ([`ROUTE_PROTO`]). The operator's BGP daemon
//! learns that table (BIRD's `protocol kernel` with `learn`, FRR's
//! `redistribute table`) and announces the routes to the upstream routers,
//! which spread flows over the hosts by ECMP.
//!
//! The agent tells the announcer what is in force only once its programs
//! are attached and the policy set applied; a clean stop and `--uninstall`
//! withdraw everything (the daemon then withdraws the routes upstream); a
//! killed agent leaves the routes, since the programs go on forwarding.
//! Routes without the mark are never touched.
use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::{Context, Result, anyhow};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope};
use rtnetlink::{Handle, RouteMessageBuilder};
use tracing::{info, warn};

/// The route protocol (`rtm_protocol`) of carwash's announcements; `ip
/// route` shows it as `proto 202` unless named in `/etc/iproute2/rt_protos`.
pub const ROUTE_PROTO: u8 = 0xca;

/// What the announcer last made true, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Announced {
    /// Policy generation of the set announced (0: nothing yet).
    pub generation: u64,
    pub routes: usize,
}

/// Keeps the announcement table in step with the addresses in force.
#[derive(Debug)]
pub struct Announcer {
    table: u32,
    ifindex: u32,
    pub announced: Announced,
}

fn connect() -> Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening an rtnetlink socket")?;
    tokio::spawn(conn);
    Ok(handle)
}

fn route(ip: IpAddr, table: u32, ifindex: u32) -> RouteMessage {
    let len = if ip.is_ipv4() { 32 } else { 128 };
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(ip, len)
        .expect("a host prefix is valid")
        .table_id(table)
        .protocol(RouteProtocol::Other(ROUTE_PROTO))
        .scope(RouteScope::Link);
    if ifindex != 0 {
        b = b.output_interface(ifindex);
    }
    b.build()
}

fn destination(m: &RouteMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    })
}

fn table_of(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

/// carwash's routes in `table`, both families.
async fn marked(handle: &Handle, table: u32) -> Result<Vec<RouteMessage>> {
    let mut out = Vec::new();
    for family in [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let mut dump = handle.route().get(family).execute();
        while let Some(m) = dump.try_next().await.map_err(|e| anyhow!("listing routes: {e}"))? {
            if m.header.protocol == RouteProtocol::Other(ROUTE_PROTO) && table_of(&m) == table {
                out.push(m);
            }
        }
    }
    Ok(out)
}

/// Makes carwash's routes in `table` exactly `want`. Returns (added,
/// removed).
pub async fn reconcile(table: u32, ifindex: u32, want: &BTreeSet<IpAddr>) -> Result<(usize, usize)> {
    let handle = connect()?;
    let have = marked(&handle, table).await?;
    let mut kept = BTreeSet::new();
    let mut removed = 0;
    for m in have {
        match destination(&m) {
            Some(ip)
                if want.contains(&ip) && m.header.destination_prefix_length == if ip.is_ipv4() { 32 } else { 128 } =>
            {
                kept.insert(ip);
            }
            _ => {
                handle
                    .route()
                    .del(m)
                    .execute()
                    .await
                    .map_err(|e| anyhow!("withdrawing a route from table {table}: {e}"))?;
                removed += 1;
            }
        }
    }
    let mut added = 0;
    for ip in want.difference(&kept) {
        handle
            .route()
            .add(route(*ip, table, ifindex))
            .replace()
            .execute()
            .await
            .map_err(|e| anyhow!("announcing {ip} in table {table}: {e}"))?;
        added += 1;
    }
    Ok((added, removed))
}

impl Announcer {
    pub fn new(table: u32, ifindex: u32) -> Announcer {
        Announcer {
            table,
            ifindex,
            announced: Announced::default(),
        }
    }

    pub fn table(&self) -> u32 {
        self.table
    }

    /// Announces `want` (the addresses of policy generation `generation`),
    /// withdrawing what is no longer in force.
    pub async fn announce(&mut self, generation: u64, want: &BTreeSet<IpAddr>) {
        if self.announced.generation == generation && self.announced.routes == want.len() && generation != 0 {
            return;
        }
        match reconcile(self.table, self.ifindex, want).await {
            Ok((added, removed)) => {
                if added + removed > 0 {
                    info!(
                        table = self.table,
                        generation,
                        added,
                        removed,
                        routes = want.len(),
                        "announcements of the VIPs and egress IPs in force"
                    );
                }
                self.announced = Announced {
                    generation,
                    routes: want.len(),
                };
            }
            Err(e) => warn!(table = self.table, error = %format!("{e:#}"), "announcing the addresses in force"),
        }
    }

    /// Withdraws every announcement (a clean stop).
    pub async fn withdraw(&mut self) {
        match reconcile(self.table, self.ifindex, &BTreeSet::new()).await {
            Ok((_, removed)) => {
                info!(table = self.table, removed, "announcements withdrawn");
                self.announced = Announced::default();
            }
            Err(e) => warn!(table = self.table, error = %format!("{e:#}"), "withdrawing the announcements"),
        }
    }
}

/// `--uninstall`: withdraws carwash's routes from `table`. Returns how many.
pub fn withdraw_all(table: u32) -> Result<usize> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async { Ok(reconcile(table, 0, &BTreeSet::new()).await?.1) })
}
