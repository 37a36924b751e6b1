//! BIRD 2 for the fleet set-ups: a carwash host's configuration (its kernel
//! protocols learn the agent's announcement table, BGP exports it to the
//! upstream router), the router's (one session per host and family, ECMP
//! into the kernel), and reading the router's next hops back.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::netns::NetNs;

/// The router's AS and the hosts' (one AS for all hosts, so that the router
/// sees equal paths and merges them).
pub const ROUTER_AS: u32 = 65000;
pub const HOSTS_AS: u32 = 65001;

/// The installed `bird` (Debian's `bird2`, `cargo xtask setup`), if any.
pub fn bird_bin() -> Option<PathBuf> {
    ["/usr/sbin/bird", "/usr/bin/bird"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// One eBGP link between a host and the router: the host's end and the
/// router's, in both families.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpLink {
    pub host_v4: String,
    pub router_v4: String,
    pub host_v6: String,
    pub router_v6: String,
}

/// A host's BIRD: its kernel protocols learn carwash's `table`, its BGP
/// sessions export what they learnt (and take nothing). Sessions are tried
/// again a second after an error (BIRD waits a minute by default), so that
/// a host that comes back is a next hop again at once.
pub fn host_conf(link: &BgpLink, table: u32) -> String {
    format!(
        r#"router id {up4};
protocol device {{ scan time 1; }}
ipv4 table carwash4;
ipv6 table carwash6;
protocol kernel carwash_v4 {{
  kernel table {table};
  learn;
  scan time 1;
  ipv4 {{ table carwash4; import all; export none; }};
}}
protocol kernel carwash_v6 {{
  kernel table {table};
  learn;
  scan time 1;
  ipv6 {{ table carwash6; import all; export none; }};
}}
protocol bgp upstream_v4 {{
  local {up4} as {HOSTS_AS};
  neighbor {rt4} as {ROUTER_AS};
  hold time 3;
  connect retry time 1;
  error wait time 1, 5;
  ipv4 {{ table carwash4; import none; export all; next hop self; }};
}}
protocol bgp upstream_v6 {{
  local {up6} as {HOSTS_AS};
  neighbor {rt6} as {ROUTER_AS};
  hold time 3;
  connect retry time 1;
  error wait time 1, 5;
  ipv6 {{ table carwash6; import none; export all; next hop self; }};
}}
"#,
        up4 = link.host_v4,
        rt4 = link.router_v4,
        up6 = link.host_v6,
        rt6 = link.router_v6,
    )
}

/// The router's BIRD: sessions `host<i>_v4` / `host<i>_v6` per link, every
/// path merged into one multipath kernel route.
pub fn router_conf(router_id: &str, links: &[BgpLink]) -> String {
    let mut s = format!(
        r#"router id {router_id};
protocol device {{ scan time 1; }}
protocol kernel {{ merge paths on; ipv4 {{ import none; export all; }}; }}
protocol kernel {{ merge paths on; ipv6 {{ import none; export all; }}; }}
"#
    );
    for (i, l) in links.iter().enumerate() {
        s += &format!(
            r#"protocol bgp host{i}_v4 {{
  local {rt4} as {ROUTER_AS};
  neighbor {up4} as {HOSTS_AS};
  hold time 3;
  connect retry time 1;
  error wait time 1, 5;
  ipv4 {{ import all; export none; }};
}}
protocol bgp host{i}_v6 {{
  local {rt6} as {ROUTER_AS};
  neighbor {up6} as {HOSTS_AS};
  hold time 3;
  connect retry time 1;
  error wait time 1, 5;
  ipv6 {{ import all; export none; }};
}}
"#,
            rt4 = l.router_v4,
            up4 = l.host_v4,
            rt6 = l.router_v6,
            up6 = l.host_v6,
        );
    }
    s
}

/// The next hops (gateway addresses) the kernel of `ns` has for each of
/// `addrs`.
pub fn next_hops<'a>(ns: &NetNs, addrs: impl IntoIterator<Item = &'a IpAddr>) -> BTreeMap<IpAddr, BTreeSet<IpAddr>> {
    let mut out = BTreeMap::new();
    for a in addrs {
        let fam = if a.is_ipv6() { "-6" } else { "-4" };
        let text = ns.ip(&[fam, "route", "show", &a.to_string()]).unwrap_or_default();
        let hops: BTreeSet<IpAddr> = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .filter_map(|w| w[1].parse().ok())
            .collect();
        out.insert(*a, hops);
    }
    out
}

/// Waits until `ns` routes every one of `addrs` over exactly `want` next
/// hops; how long that took.
pub fn wait_next_hops(ns: &NetNs, addrs: &[IpAddr], want: usize, timeout: Duration) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        let now = next_hops(ns, addrs);
        if now.values().all(|h| h.len() == want) {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > timeout {
            bail!(
                "{} did not route every address over {want} next hops within {timeout:?}: {now:?}",
                ns.name()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
