//! Three carwash hosts behind an upstream router, through real BIRD 2
//! daemons: each host runs the real agent (`[cluster]`) and its own BIRD,
//! which learns the agent's announcement table and speaks eBGP to the
//! router's BIRD (multipath into the kernel, L4 hashing). The router learns
//! every VIP and egress IP with three next hops; a clean stop withdraws a
//! host's routes (two next hops) while a killed agent's stay; a host whose
//! uplink goes down is dropped from the routes (the convergence time is
//! printed); a host that comes back is a next hop again. Under traffic:
//! VPC machines of two tenants with the same private addresses send to the
//! anycast VTEP through an underlay router that spreads them over the hosts
//! by ECMP; 500 concurrent connections to a partner behind the router all
//! complete with their tenant's egress IP, the router spreading the replies
//! over the hosts, which pass those of another host's port to it.
//!
//! Skipped (with a message) where `bird` is not installed (`cargo xtask
//! setup` installs it).
mod agent_common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use agent_common::{AgentProc, TempDir, repo_policies_dir};
use carwash_tests::require_root;
use netlab::bird::{self, BgpLink};
use netlab::netns::{Daemon, NetNs, PinDir, veth_pair};

const HOSTS: usize = 3;
const TABLE: u32 = 4242;

fn uplink_v4(i: usize) -> String {
    format!("100.64.{i}.1")
}
fn router_v4(i: usize) -> String {
    format!("100.64.{i}.2")
}
fn uplink_v6(i: usize) -> String {
    format!("fd00:64:{i}::1")
}
fn router_v6(i: usize) -> String {
    format!("fd00:64:{i}::2")
}
/// A host's own fabric address (where the others pass its replies).
fn fabric_addr(i: usize) -> String {
    format!("10.210.{i}.1")
}
/// The underlay router's end of host `i`'s fabric link.
fn underlay_addr(i: usize) -> String {
    format!("10.210.{i}.2")
}
/// The VTEP every host answers (anycast).
const ANYCAST_VTEP: &str = "10.200.0.1";
const ROUTER_MAC: &str = "02:00:0a:c8:00:01";
const PARTNER: &str = "198.18.0.10";
const PARTNER_PORT: u16 = 8080;

fn bgp_link(i: usize) -> BgpLink {
    BgpLink {
        host_v4: uplink_v4(i),
        router_v4: router_v4(i),
        host_v6: uplink_v6(i),
        router_v6: router_v6(i),
    }
}

fn start_bird(ns: &NetNs, bin: &Path, dir: &Path, name: &str, conf: &str) -> Daemon {
    let conf_path = dir.join(format!("{name}.conf"));
    std::fs::write(&conf_path, conf).unwrap();
    let mut cmd = ns.command(bin.to_str().unwrap()).unwrap();
    cmd.arg("-f")
        .arg("-c")
        .arg(&conf_path)
        .arg("-s")
        .arg(dir.join(format!("{name}.ctl")))
        .stdout(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
        .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).unwrap());
    Daemon::start(cmd).unwrap()
}

struct Host {
    ns: NetNs,
    pins: PinDir,
    config: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    _bird: Daemon,
}

impl Host {
    fn start(&self) -> AgentProc {
        AgentProc::start(&self.ns, &self.config, &self.socket, &self.log).unwrap()
    }
}

/// The router, the hosts (each with its BIRD, agents not started), the
/// underlay router and a machine per tenant. Dropped, everything goes.
struct Fleet {
    // Field order is drop order: daemons before their namespaces.
    _router_bird: Daemon,
    hosts: Vec<Host>,
    machines: Vec<NetNs>,
    ul: NetNs,
    rt: NetNs,
    _dir: TempDir,
}

/// Acme's first connector and beta's: VNI, VTEP, MAC, link on the underlay.
const MACHINES: [(u32, &str, &str, &str); 2] = [
    (1001, "10.200.1.10", "02:00:0a:c8:01:0a", "10.200.1.1"),
    (1002, "10.200.2.10", "02:00:0a:c8:02:0a", "10.200.2.1"),
];
/// Both tenants' machines use this private address (their VPCs overlap).
const MACHINE_PRIVATE: &str = "10.101.0.10";

impl Fleet {
    fn up(bird: &Path) -> Fleet {
        let dir = TempDir::new("fleet-bgp");
        let rt = NetNs::new("cwrt").unwrap();
        rt.sysctls(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.fib_multipath_hash_policy", "1"),
            ("net.ipv6.fib_multipath_hash_policy", "1"),
        ])
        .unwrap();
        rt.addr("lo", &format!("{PARTNER}/32")).unwrap();
        let ul = NetNs::new("cwul").unwrap();
        ul.sysctls(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.fib_multipath_hash_policy", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ])
        .unwrap();
        let policy_dir = dir.path().join("policies");
        std::fs::create_dir_all(&policy_dir).unwrap();
        for p in ["acme.toml", "beta.toml"] {
            std::fs::copy(repo_policies_dir().join(p), policy_dir.join(p)).unwrap();
        }
        let peers: Vec<String> = (0..HOSTS).map(|i| format!("\"{}\"", fabric_addr(i))).collect();
        let mut hosts = Vec::new();
        for i in 0..HOSTS {
            let ns = NetNs::new(&format!("cwfh{i}")).unwrap();
            veth_pair(&ns, "uplink", None, &rt, &format!("h{i}"), None).unwrap();
            veth_pair(&ns, "fabric", None, &ul, &format!("f{i}"), None).unwrap();
            for dev in ["uplink", "default", "all"] {
                ns.sysctl(&format!("net.ipv6.conf.{dev}.accept_dad"), "0").unwrap();
            }
            rt.sysctl(&format!("net.ipv6.conf.h{i}.accept_dad"), "0").unwrap();
            ns.addr("uplink", &format!("{}/30", uplink_v4(i))).unwrap();
            ns.addr("uplink", &format!("{}/64", uplink_v6(i))).unwrap();
            rt.addr(&format!("h{i}"), &format!("{}/30", router_v4(i))).unwrap();
            rt.addr(&format!("h{i}"), &format!("{}/64", router_v6(i))).unwrap();
            ns.addr("fabric", &format!("{}/24", fabric_addr(i))).unwrap();
            ns.addr("fabric", &format!("{ANYCAST_VTEP}/32")).unwrap();
            ul.addr(&format!("f{i}"), &format!("{}/24", underlay_addr(i))).unwrap();
            ns.route("default", &router_v4(i), Some("uplink")).unwrap();
            ns.route("10.200.0.0/16", &underlay_addr(i), Some("fabric")).unwrap();
            ns.route("10.210.0.0/16", &underlay_addr(i), Some("fabric")).unwrap();
            let pins = PinDir::new().unwrap();
            let socket = dir.path().join(format!("h{i}.sock"));
            let config = dir.path().join(format!("h{i}.toml"));
            std::fs::write(
                &config,
                format!(
                    "uplink = \"uplink\"\nfabric = \"fabric\"\nvtep = \"{ANYCAST_VTEP}\"\nrouter_mac = \"{ROUTER_MAC}\"\n\
                     policy_dir = \"{}\"\npin_path = \"{}\"\napi_socket = \"{}\"\nmetrics = \"off\"\n[cluster]\n\
                     index = {i}\ncount = {HOSTS}\npeers = [{}]\nroute_table = {TABLE}\n",
                    policy_dir.display(),
                    pins.path().display(),
                    socket.display(),
                    peers.join(", "),
                ),
            )
            .unwrap();
            let bird = start_bird(
                &ns,
                bird,
                dir.path(),
                &format!("h{i}"),
                &bird::host_conf(&bgp_link(i), TABLE),
            );
            hosts.push(Host {
                ns,
                pins,
                config,
                socket,
                log: dir.path().join(format!("h{i}.log")),
                _bird: bird,
            });
        }
        // The anycast VTEP: ECMP over the hosts' own fabric addresses.
        let mut args: Vec<String> = ["route", "add", &format!("{ANYCAST_VTEP}/32")]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for i in 0..HOSTS {
            args.extend(["nexthop".into(), "via".into(), fabric_addr(i)]);
        }
        ul.ip(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        let mut machines = Vec::new();
        for (k, (vni, vtep, mac, gw)) in MACHINES.iter().enumerate() {
            let m = NetNs::new(&format!("cwfm{k}")).unwrap();
            veth_pair(&m, "eth0", None, &ul, &format!("m{k}"), None).unwrap();
            m.addr("eth0", &format!("{vtep}/24")).unwrap();
            ul.addr(&format!("m{k}"), &format!("{gw}/24")).unwrap();
            m.route("default", gw, Some("eth0")).unwrap();
            m.ip(&[
                "link",
                "add",
                "vx0",
                "address",
                mac,
                "type",
                "vxlan",
                "id",
                &vni.to_string(),
                "local",
                vtep,
                "remote",
                ANYCAST_VTEP,
                "dstport",
                "4789",
                "dev",
                "eth0",
            ])
            .unwrap();
            m.ip(&["link", "set", "vx0", "mtu", "1400", "up"]).unwrap();
            m.addr("vx0", &format!("{MACHINE_PRIVATE}/16")).unwrap();
            m.ip(&[
                "neigh",
                "replace",
                "10.101.255.254",
                "lladdr",
                ROUTER_MAC,
                "dev",
                "vx0",
                "nud",
                "permanent",
            ])
            .unwrap();
            m.route("198.18.0.0/15", "10.101.255.254", Some("vx0")).unwrap();
            machines.push(m);
        }
        // Next hops resolved before the programs ask the FIB for them.
        for (i, h) in hosts.iter().enumerate() {
            let _ = h.ns.exec(&["ping", "-c", "1", "-W", "1", &router_v4(i)]);
            let _ = h.ns.exec(&["ping", "-c", "1", "-W", "1", &underlay_addr(i)]);
        }
        for (k, m) in machines.iter().enumerate() {
            let _ = m.exec(&["ping", "-c", "1", "-W", "1", MACHINES[k].3]);
            for (i, h) in hosts.iter().enumerate() {
                let _ = ul.exec(&["ping", "-c", "1", "-W", "1", &fabric_addr(i)]);
                let _ = h.ns.exec(&["ping", "-c", "1", "-W", "1", MACHINES[k].1]);
            }
        }
        let router_bird = start_bird(
            &rt,
            bird,
            dir.path(),
            "rt",
            &bird::router_conf("100.64.255.1", &(0..HOSTS).map(bgp_link).collect::<Vec<_>>()),
        );
        Fleet {
            _router_bird: router_bird,
            hosts,
            machines,
            ul,
            rt,
            _dir: dir,
        }
    }
}

fn next_hops(rt: &NetNs, addrs: &[IpAddr]) -> BTreeMap<IpAddr, BTreeSet<IpAddr>> {
    bird::next_hops(rt, addrs)
}

fn wait_hops(rt: &NetNs, addrs: &[IpAddr], want: usize, what: &str, timeout: Duration) -> Duration {
    bird::wait_next_hops(rt, addrs, want, timeout).unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

fn addresses() -> Vec<IpAddr> {
    [
        "203.0.113.10",
        "203.0.113.20",
        "203.0.113.200",
        "203.0.113.201",
        "2001:db8:10::10",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect()
}

fn ip(s: String) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn the_router_spreads_every_address_over_the_hosts() {
    require_root();
    let Some(bird) = bird::bird_bin() else {
        eprintln!("skipped: no bird (BIRD 2) installed; `cargo xtask setup` installs it");
        return;
    };
    let fleet = Fleet::up(&bird);
    let (rt, hosts) = (&fleet.rt, &fleet.hosts);
    let agents: Vec<AgentProc> = hosts.iter().map(Host::start).collect();
    let addrs = addresses();
    wait_hops(rt, &addrs, HOSTS, "every host announcing", Duration::from_secs(60));
    let hops = next_hops(rt, &addrs);
    assert_eq!(
        hops[&ip("203.0.113.10".into())],
        (0..HOSTS).map(|i| ip(uplink_v4(i))).collect::<BTreeSet<_>>(),
        "{hops:?}"
    );
    for (i, a) in agents.iter().enumerate() {
        let c = a.status().cluster.expect("cluster status");
        assert_eq!(c.index as usize, i);
        assert!(c.announced_routes >= addrs.len(), "{c:?}");
    }

    // A clean stop withdraws host 1's routes.
    let mut agents: Vec<Option<AgentProc>> = agents.into_iter().map(Some).collect();
    let st = agents[1].take().unwrap().stop();
    assert!(st.success(), "{st}");
    wait_hops(rt, &addrs, HOSTS - 1, "host 1 stopped", Duration::from_secs(30));
    assert!(next_hops(rt, &addrs).values().all(|h| !h.contains(&ip(uplink_v4(1)))));

    // A killed agent's routes stay: its programs still forward.
    agents[0].take().unwrap().kill();
    std::thread::sleep(Duration::from_secs(2));
    wait_hops(rt, &addrs, HOSTS - 1, "host 0 killed", Duration::from_secs(5));

    // Host 2 is lost: its uplink goes down; the router converges on the
    // others.
    hosts[2].ns.ip(&["link", "set", "uplink", "down"]).unwrap();
    let took = wait_hops(rt, &addrs, 1, "host 2 lost", Duration::from_secs(30));
    eprintln!("convergence after a host's uplink went down: {} ms", took.as_millis());

    // Host 1 comes back and is a next hop again.
    agents[1] = Some(hosts[1].start());
    let took = wait_hops(rt, &addrs, 2, "host 1 back", Duration::from_secs(30));
    eprintln!(
        "a host back in the routes after its agent started: {} ms",
        took.as_millis()
    );
    drop(agents);
}

/// The partner: answers every connection with `peer=ADDR port=PORT` (what
/// it saw), until `stop`.
fn partner(rt: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let rt = rt.to_string();
    std::thread::spawn(move || {
        let ns = NetNs::open(&rt).unwrap();
        ns.enter(|| {
            let l = TcpListener::bind((PARTNER, PARTNER_PORT)).unwrap();
            // std listens with a backlog of 128: too few for 500 handshakes
            // at once (the kernel then drops their last ACK).
            // SAFETY: listen(2) again on our own listening socket.
            unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), 4096) };
            // Accepting blocks (a poll loop lets the backlog of 128
            // overflow under 500 connections at once); a last connection of
            // the test's own ends it.
            for c in l.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(mut c) = c {
                    std::thread::spawn(move || {
                        if let Ok(peer) = c.peer_addr() {
                            let _ = writeln!(c, "peer={} port={}", peer.ip(), peer.port());
                        }
                    });
                }
            }
        })
        .unwrap();
    })
}

#[test]
fn outbound_connections_of_two_tenants_complete_across_the_hosts() {
    require_root();
    let Some(bird) = bird::bird_bin() else {
        eprintln!("skipped: no bird (BIRD 2) installed; `cargo xtask setup` installs it");
        return;
    };
    let per_tenant: usize = std::env::var("FLEET_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250);
    let fleet = Fleet::up(&bird);
    let agents: Vec<AgentProc> = fleet.hosts.iter().map(Host::start).collect();
    let egress: Vec<IpAddr> = ["203.0.113.200", "203.0.113.201"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    wait_hops(
        &fleet.rt,
        &egress,
        HOSTS,
        "every host announcing",
        Duration::from_secs(60),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let server = partner(fleet.rt.name(), stop.clone());
    fleet
        .rt
        .wait_listening(false, PARTNER_PORT, Duration::from_secs(10))
        .unwrap();

    // Every connection of both tenants open at once, each reading what the
    // partner saw.
    let barrier = Arc::new(Barrier::new(2 * per_tenant));
    let results: Vec<Vec<Result<String, String>>> = std::thread::scope(|s| {
        let handles: Vec<_> = fleet
            .machines
            .iter()
            .map(|m| {
                let barrier = barrier.clone();
                s.spawn(move || {
                    m.enter(|| {
                        let conns: Vec<_> = (0..per_tenant)
                            .map(|_| {
                                let barrier = barrier.clone();
                                std::thread::spawn(move || {
                                    let addr: SocketAddr = format!("{PARTNER}:{PARTNER_PORT}").parse().unwrap();
                                    let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(10));
                                    // Every thread waits exactly once, connected
                                    // or not, so that none waits forever.
                                    barrier.wait();
                                    let mut c = conn.map_err(|e| format!("connect: {e}"))?;
                                    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                                    let mut text = String::new();
                                    c.read_to_string(&mut text).map_err(|e| format!("read: {e}"))?;
                                    Ok::<String, String>(text)
                                })
                            })
                            .collect();
                        conns.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
                    })
                    .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    stop.store(true, Ordering::Relaxed);
    fleet
        .rt
        .enter(|| TcpStream::connect((PARTNER, PARTNER_PORT)))
        .unwrap()
        .unwrap();
    server.join().unwrap();

    for h in &fleet.hosts {
        let pins = dataplane::pinned::Pins::open(h.pins.path()).unwrap();
        for side in [
            dataplane_common::types::SIDE_UPLINK,
            dataplane_common::types::SIDE_FABRIC,
        ] {
            let c = pins.counters(side).unwrap();
            let drops: Vec<_> = dataplane_common::DropReason::ALL
                .iter()
                .filter(|r| c.dropped(**r) > 0)
                .map(|r| (r.name(), c.dropped(*r)))
                .collect();
            eprintln!("{} side {side}: drops {drops:?}", h.ns.name());
        }
    }
    for (k, (want, got)) in ["203.0.113.200", "203.0.113.201"].iter().zip(&results).enumerate() {
        let bad: Vec<_> = got
            .iter()
            .filter(|r| !matches!(r, Ok(t) if t.starts_with(&format!("peer={want} "))))
            .collect();
        assert!(
            bad.is_empty(),
            "tenant {k}: {} of {per_tenant} wrong: {:?}",
            bad.len(),
            &bad[..bad.len().min(5)]
        );
    }
    let stats: Vec<_> = agents.iter().map(|a| a.status().cluster.unwrap()).collect();
    let sent: u64 = stats.iter().map(|c| c.handoffs_sent).sum();
    let received: u64 = stats.iter().map(|c| c.handoffs_received).sum();
    eprintln!(
        "hand-offs by host (sent, received): {:?}",
        stats
            .iter()
            .map(|c| (c.handoffs_sent, c.handoffs_received))
            .collect::<Vec<_>>()
    );
    assert!(sent > 0 && received > 0, "no hand-offs: {stats:?}");
    assert_eq!(sent, received, "{stats:?}");
    let _ = &fleet.ul;
}
