//! The lab as a fleet: N carwash hosts behind the internet namespace, which
//! is their upstream router (BIRD, ECMP with an L4 hash), each host with
//! the real agent (`[cluster]`) and its own BIRD announcing what the agent
//! puts in its routing table.
//!
//! ```text
//!  NAME-inet: clients, partner       NAME-h0 … NAME-h<N-1>            NAME-ul            machines
//!  BIRD, ECMP over the hosts         carwash agent + BIRD             br0 10.200.255.254 ═ eth0 (VTEP)
//!  h<i> 100.64.(10+i).2 ════════════ uplink 100.64.(10+i).1           │
//!                                    fabric 10.210.i.1 + 10.200.0.1 ═ f<i> 10.210.i.2
//!                                                                     10.200.0.1/32: ECMP over 10.210.*.1
//! ```
//!
//! Machines, servers, the narrow path and the far partner are those of the
//! single-host lab. The machines send their tunnels to the anycast VTEP
//! 10.200.0.1 through the underlay namespace, which routes it over every
//! host's own fabric address with an L4 hash (a host whose fabric link is
//! down is left out: `ignore_routes_with_linkdown`). Agents and BIRDs run
//! detached, like the lab's servers, so the fleet outlives `cargo xtask lab
//! up`; [`Lab::down`] kills them with their namespaces and removes their
//! pins.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use carwash_policy::MacAddr;

use crate::bird::{self, BgpLink};
use crate::lab::{BRIDGE, COMMON_SYSCTLS, FABRIC, HOST_VTEP, Lab, LabConfig, MAX_NETNS_NAME, STATE_ROOT, UPLINK};
use crate::netns::{self, NetNs, veth_pair_with};

/// The kernel routing table the agents announce in.
pub const ROUTE_TABLE: u32 = 4242;
/// The underlay namespace's address and MAC on the machines' bridge: the
/// machines reach the anycast VTEP through it.
pub const UNDERLAY_GW: Ipv4Addr = Ipv4Addr::new(10, 200, 255, 254);
pub const UNDERLAY_GW_MAC: MacAddr = MacAddr([0x02, 0x00, 0x0a, 0xc8, 0xff, 0xfe]);
/// Router id of the internet namespace's BIRD.
pub const ROUTER_ID: &str = "100.64.255.1";
/// How long `up` waits for every host to be a next hop of every address.
const WAIT_ANNOUNCED: Duration = Duration::from_secs(90);
const WAIT_AGENT: Duration = Duration::from_secs(60);

// Kept here by name: the fleet's pins are the fleet's business, but the
// lab's teardown removes them too, so the path lives with the lab.
pub use crate::lab::pin_root;

/// One carwash host of the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetHost {
    pub index: usize,
    /// `NAME-h<i>`.
    pub netns: String,
    /// The host's end of its uplink and the router's (`h<i>` in the
    /// internet namespace).
    pub uplink_v4: Ipv4Addr,
    pub uplink_v6: Ipv6Addr,
    pub router_v4: Ipv4Addr,
    pub router_v6: Ipv6Addr,
    pub router_if: String,
    pub uplink_mac: MacAddr,
    pub router_mac: MacAddr,
    /// The host's own fabric address (where the others pass its replies)
    /// and the underlay's end of that link (`f<i>` in the underlay).
    pub fabric_addr: Ipv4Addr,
    pub underlay_addr: Ipv4Addr,
    pub underlay_if: String,
    pub fabric_mac: MacAddr,
    pub underlay_mac: MacAddr,
    pub pin_path: PathBuf,
    pub config: PathBuf,
    pub api_socket: PathBuf,
    pub agent_log: PathBuf,
    pub bird_conf: PathBuf,
    pub bird_socket: PathBuf,
}

impl FleetHost {
    pub fn ns(&self) -> Result<NetNs> {
        NetNs::open(&self.netns)
    }

    fn bgp_link(&self) -> BgpLink {
        BgpLink {
            host_v4: self.uplink_v4.to_string(),
            router_v4: self.router_v4.to_string(),
            host_v6: self.uplink_v6.to_string(),
            router_v6: self.router_v6.to_string(),
        }
    }
}

/// A fleet lab: the lab's tenants, machines and servers, and the hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    pub lab: Lab,
    pub hosts: Vec<FleetHost>,
    /// The `carwash` binary the agents run.
    pub carwash: PathBuf,
    pub bird: PathBuf,
    pub router_bird_socket: PathBuf,
}

impl Fleet {
    /// Computes the fleet without touching the system.
    pub fn plan(cfg: &LabConfig, hosts: usize, carwash: &Path) -> Result<Fleet> {
        if !(2..=9).contains(&hosts) {
            bail!("a fleet lab has 2 to 9 hosts, not {hosts}");
        }
        let lab = Lab::plan(cfg)?;
        let bird = bird::bird_bin().context("no bird (BIRD 2) installed; `cargo xtask setup` installs it")?;
        let pins = pin_root(&lab.name);
        let hosts = (0..hosts)
            .map(|i| {
                let n = i as u8;
                let netns = format!("{}-h{i}", lab.name);
                if netns.len() > MAX_NETNS_NAME {
                    bail!("namespace name {netns:?} is too long; use a shorter lab name");
                }
                let seg = 0x10 + u16::from(n);
                Ok(FleetHost {
                    index: i,
                    netns,
                    uplink_v4: Ipv4Addr::new(100, 64, 10 + n, 1),
                    uplink_v6: Ipv6Addr::new(0xfd00, 0x64, seg, 0, 0, 0, 0, 1),
                    router_v4: Ipv4Addr::new(100, 64, 10 + n, 2),
                    router_v6: Ipv6Addr::new(0xfd00, 0x64, seg, 0, 0, 0, 0, 2),
                    router_if: format!("h{i}"),
                    uplink_mac: MacAddr([0x02, 0x00, 0x64, 0x40, 10 + n, 0x01]),
                    router_mac: MacAddr([0x02, 0x00, 0x64, 0x40, 10 + n, 0x02]),
                    fabric_addr: Ipv4Addr::new(10, 210, n, 1),
                    underlay_addr: Ipv4Addr::new(10, 210, n, 2),
                    underlay_if: format!("f{i}"),
                    fabric_mac: MacAddr([0x02, 0x00, 0x0a, 0xd2, n, 0x01]),
                    underlay_mac: MacAddr([0x02, 0x00, 0x0a, 0xd2, n, 0x02]),
                    pin_path: pins.join(format!("h{i}")),
                    config: lab.state_dir.join(format!("h{i}.toml")),
                    api_socket: lab.state_dir.join(format!("h{i}.sock")),
                    agent_log: lab.state_dir.join("log").join(format!("h{i}-agent.log")),
                    bird_conf: lab.state_dir.join(format!("h{i}-bird.conf")),
                    bird_socket: lab.state_dir.join(format!("h{i}-bird.ctl")),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Fleet {
            router_bird_socket: lab.state_dir.join("router-bird.ctl"),
            lab,
            hosts,
            carwash: carwash.to_path_buf(),
            bird,
        })
    }

    /// Builds the fleet (replacing a lab of the same name), starts every
    /// BIRD and agent, and returns once the router routes every VIP and
    /// egress IP over every host. On failure nothing is left behind.
    pub fn up(cfg: &LabConfig, hosts: usize, carwash: &Path) -> Result<Fleet> {
        let fleet = Fleet::plan(cfg, hosts, carwash)?;
        Lab::down(&fleet.lab.name).context("removing the previous lab of that name")?;
        match fleet.build() {
            Ok(()) => Ok(fleet),
            Err(e) => {
                let _ = Lab::down(&fleet.lab.name);
                Err(e.context(format!("bringing fleet lab {} up", fleet.lab.name)))
            }
        }
    }

    /// Every namespace, in creation order.
    pub fn namespaces(&self) -> Vec<String> {
        let lab = &self.lab;
        let mut v = vec![lab.inet.clone()];
        v.extend(self.hosts.iter().map(|h| h.netns.clone()));
        v.extend([lab.underlay.clone(), lab.router.clone(), lab.far.clone()]);
        v.extend(lab.machines().map(|m| m.netns.clone()));
        v
    }

    /// The addresses the hosts announce: every VIP and egress IP.
    pub fn announced(&self) -> Vec<IpAddr> {
        self.lab.public_addrs()
    }

    pub fn inet_ns(&self) -> Result<NetNs> {
        self.lab.inet_ns()
    }

    fn build(&self) -> Result<()> {
        let lab = &self.lab;
        let mut tries = 0;
        while let Err(e) = std::fs::create_dir_all(&lab.state_dir) {
            tries += 1;
            if e.kind() != std::io::ErrorKind::NotFound || tries == 5 {
                return Err(e).with_context(|| format!("creating {}", lab.state_dir.display()));
            }
        }
        std::fs::write(lab.state_dir.join("namespaces"), self.namespaces().join("\n") + "\n")?;
        lab.write_files()?;
        netns::ensure_bpffs()?;
        std::fs::create_dir_all(pin_root(&lab.name))?;

        let common = COMMON_SYSCTLS;
        let inet = NetNs::named(&lab.inet)?.disown();
        inet.sysctls(&common)?;
        inet.sysctls(&[
            ("net.ipv4.fib_multipath_hash_policy", "1"),
            ("net.ipv6.fib_multipath_hash_policy", "1"),
        ])?;
        let ul = NetNs::named(&lab.underlay)?.disown();
        ul.sysctls(&[
            ("net.ipv6.conf.all.disable_ipv6", "1"),
            ("net.ipv6.conf.default.disable_ipv6", "1"),
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv4.fib_multipath_hash_policy", "1"),
            // A host whose fabric link is down is no next hop of the VTEP.
            ("net.ipv4.conf.all.ignore_routes_with_linkdown", "1"),
            ("net.ipv4.conf.default.ignore_routes_with_linkdown", "1"),
        ])?;
        let mac = UNDERLAY_GW_MAC.to_string();
        ul.ip(&["link", "add", "name", BRIDGE, "address", &mac, "type", "bridge"])?;
        ul.link_up(BRIDGE)?;
        ul.addr(BRIDGE, &format!("{UNDERLAY_GW}/16"))?;

        let peers: Vec<String> = self.hosts.iter().map(|h| format!("\"{}\"", h.fabric_addr)).collect();
        for h in &self.hosts {
            let ns = NetNs::named(&h.netns)?.disown();
            ns.sysctls(&common)?;
            ns.sysctls(&[
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv6.conf.all.forwarding", "1"),
                // A host that comes back keeps its addresses.
                ("net.ipv6.conf.all.keep_addr_on_down", "1"),
                ("net.ipv6.conf.default.keep_addr_on_down", "1"),
            ])?;
            veth_pair_with(
                &inet,
                &h.router_if,
                Some(h.router_mac),
                &ns,
                UPLINK,
                Some(h.uplink_mac),
                lab.veth,
            )?;
            inet.addr(&h.router_if, &format!("{}/30", h.router_v4))?;
            inet.addr(&h.router_if, &format!("{}/64", h.router_v6))?;
            inet.neigh(&h.router_if, &h.uplink_v4.to_string(), h.uplink_mac)?;
            inet.neigh(&h.router_if, &h.uplink_v6.to_string(), h.uplink_mac)?;
            ns.addr(UPLINK, &format!("{}/30", h.uplink_v4))?;
            ns.addr(UPLINK, &format!("{}/64", h.uplink_v6))?;

            veth_pair_with(
                &ns,
                FABRIC,
                Some(h.fabric_mac),
                &ul,
                &h.underlay_if,
                Some(h.underlay_mac),
                lab.veth,
            )?;
            ns.addr(FABRIC, &format!("{}/24", h.fabric_addr))?;
            ns.addr(FABRIC, &format!("{HOST_VTEP}/32"))?;
            ul.addr(&h.underlay_if, &format!("{}/24", h.underlay_addr))?;
            ul.neigh(&h.underlay_if, &h.fabric_addr.to_string(), h.fabric_mac)?;
            self.host_routes(&ns, h)?;

            let cluster = format!(
                "[cluster]\nindex = {}\ncount = {}\npeers = [{}]\nroute_table = {ROUTE_TABLE}\n",
                h.index,
                self.hosts.len(),
                peers.join(", ")
            );
            std::fs::write(
                &h.config,
                lab.host_config_toml(&h.pin_path, &h.api_socket, &lab.policies) + &cluster,
            )?;
            std::fs::write(&h.bird_conf, bird::host_conf(&h.bgp_link(), ROUTE_TABLE))?;
        }
        self.pass_on_underlay_ends()?;
        // The anycast VTEP: every host's own fabric address, by ECMP.
        let mut args: Vec<String> = ["route", "add", &format!("{HOST_VTEP}/32")]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for h in &self.hosts {
            args.extend(["nexthop".into(), "via".into(), h.fabric_addr.to_string()]);
            args.extend(["dev".into(), h.underlay_if.clone()]);
        }
        ul.ip(&args.iter().map(String::as_str).collect::<Vec<_>>())?;

        for m in lab.machines() {
            lab.build_machine(m, &ul, &common, UNDERLAY_GW_MAC)?;
            ul.neigh(BRIDGE, &m.vtep.to_string(), m.underlay_mac)?;
            // A TCP retransmission timeout picks a new flow hash, hence a
            // new tunnel source port, which the underlay's ECMP may send to
            // another host: that host would translate the flow anew and the
            // partner would reset it. Machines keep their hash here (as a
            // tunnel endpoint that hashes the inner 5-tuple only would).
            NetNs::open(&m.netns)?.sysctl("net.core.txrehash", "0")?;
        }
        for a in [
            crate::lab::ALLOWED_CLIENT_V4.into(),
            crate::lab::ALLOWED_CLIENT_V6.into(),
            crate::lab::ALLOWED_CLIENT_V6_B.into(),
            crate::lab::DENIED_CLIENT_V4.into(),
            crate::lab::DENIED_CLIENT_V6.into(),
            crate::lab::PARTNER_V4.into(),
            crate::lab::PARTNER_V6.into(),
        ] {
            let a: IpAddr = a;
            inet.addr("lo", &host_prefix(a))?;
        }
        lab.build_narrow_path(&inet, &common)?;
        lab.start_servers(&inet)?;
        lab.wait_servers(&inet)?;

        let links: Vec<BgpLink> = self.hosts.iter().map(FleetHost::bgp_link).collect();
        let conf = lab.state_dir.join("router-bird.conf");
        std::fs::write(&conf, bird::router_conf(ROUTER_ID, &links))?;
        self.start_bird(&inet, &conf, &self.router_bird_socket, "router-bird")?;
        for h in &self.hosts {
            self.start_bird(&h.ns()?, &h.bird_conf, &h.bird_socket, &format!("h{}-bird", h.index))?;
        }
        for h in &self.hosts {
            self.start_agent(h.index)?;
        }
        for h in &self.hosts {
            self.wait_agent(h.index)?;
        }
        bird::wait_next_hops(&inet, &self.announced(), self.hosts.len(), WAIT_ANNOUNCED)
            .context("waiting for every host's announcements")?;
        Ok(())
    }

    /// A host hands a reply of its port to a machine out of the fabric
    /// link the reply came in on; a veth delivers such frames to its other
    /// end only once something else wakes that end, unless the other end
    /// has an XDP program of its own (seen on 6.18: hand-offs a second or
    /// more late, and held for good when nothing follows them). A physical
    /// NIC has no such quirk: the underlay's ends get a program that
    /// passes everything.
    fn pass_on_underlay_ends(&self) -> Result<()> {
        let pin = pin_root(&self.lab.name).join("underlay-pass");
        load_xdp_pass(&pin)?;
        for h in &self.hosts {
            netns::run_checked(
                std::process::Command::new("nsenter")
                    .arg(format!("--net={}", netns::netns_path(&self.lab.underlay).display()))
                    .args(["ip", "link", "set", "dev", &h.underlay_if, "xdp", "pinned"])
                    .arg(&pin),
            )
            .with_context(|| format!("attaching XDP_PASS to {}", h.underlay_if))?;
        }
        Ok(())
    }

    /// The host's neighbours and routes over its two links (also what a
    /// host that comes back sets again: a link going down takes them).
    fn host_routes(&self, ns: &NetNs, h: &FleetHost) -> Result<()> {
        ns.neigh(UPLINK, &h.router_v4.to_string(), h.router_mac)?;
        ns.neigh(UPLINK, &h.router_v6.to_string(), h.router_mac)?;
        ns.neigh(FABRIC, &h.underlay_addr.to_string(), h.underlay_mac)?;
        let r4 = h.router_v4.to_string();
        let r6 = h.router_v6.to_string();
        let ul = h.underlay_addr.to_string();
        ns.ip(&["-4", "route", "replace", "default", "via", &r4, "dev", UPLINK])?;
        ns.ip(&["-6", "route", "replace", "default", "via", &r6, "dev", UPLINK])?;
        ns.ip(&["route", "replace", "10.200.0.0/16", "via", &ul, "dev", FABRIC])?;
        // The other hosts' own fabric addresses, where replies of their
        // ports are passed.
        ns.ip(&["route", "replace", "10.210.0.0/16", "via", &ul, "dev", FABRIC])?;
        Ok(())
    }

    fn start_bird(&self, ns: &NetNs, conf: &Path, socket: &Path, log: &str) -> Result<()> {
        let _ = std::fs::remove_file(socket);
        let bird = self.bird.display().to_string();
        let (conf, socket) = (conf.display().to_string(), socket.display().to_string());
        self.lab
            .start_server(ns, log, &[&bird, "-f", "-c", &conf, "-s", &socket])
    }

    /// Starts host `i`'s agent, detached (it adopts what an earlier one
    /// pinned).
    pub fn start_agent(&self, i: usize) -> Result<()> {
        let h = &self.hosts[i];
        let _ = std::fs::remove_file(&h.api_socket);
        let log = OpenOptions::new().create(true).append(true).open(&h.agent_log)?;
        let mut cmd = h.ns()?.command("setsid")?;
        cmd.arg("-f")
            .arg(&self.carwash)
            .arg("agent")
            .arg("--config")
            .arg(&h.config)
            .env(
                "RUST_LOG",
                std::env::var("CARWASH_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let st = cmd.status().context("starting an agent")?;
        if !st.success() {
            bail!("starting the agent of {}: {st}", h.netns);
        }
        Ok(())
    }

    /// Waits until host `i`'s agent answers on its socket (bound once its
    /// policy is in force).
    pub fn wait_agent(&self, i: usize) -> Result<()> {
        let h = &self.hosts[i];
        let t0 = Instant::now();
        while !h.api_socket.exists() {
            if t0.elapsed() > WAIT_AGENT {
                let log = std::fs::read_to_string(&h.agent_log).unwrap_or_default();
                bail!("the agent of {} did not come up within {WAIT_AGENT:?}:\n{log}", h.netns);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The pid of host `i`'s agent, if one runs.
    pub fn agent_pid(&self, i: usize) -> Option<i32> {
        netns::netns_pids(&self.hosts[i].netns).into_iter().find(|p| {
            std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e.file_name() == self.carwash.file_name())
        })
    }

    /// Stops host `i`'s agent cleanly (SIGTERM: it withdraws its routes;
    /// its programs stay attached) and waits until it is gone.
    pub fn stop_agent(&self, i: usize) -> Result<()> {
        let Some(pid) = self.agent_pid(i) else {
            bail!("no agent runs on {}", self.hosts[i].netns);
        };
        // SAFETY: kill(2) with a concrete pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let t0 = Instant::now();
        while Path::new(&format!("/proc/{pid}")).exists() {
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("the agent of {} did not stop within 30 s", self.hosts[i].netns);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Host `i` is lost as by a power cut: both its links go down at once,
    /// then its agent and BIRD die (SIGKILL). Returns when the links went
    /// down.
    pub fn lose_host(&self, i: usize) -> Result<Instant> {
        let h = &self.hosts[i];
        let ns = h.ns()?;
        // One `ip -batch` call: the links go down together.
        let batch = format!("link set {UPLINK} down\nlink set {FABRIC} down\n");
        let path = self.lab.state_dir.join(format!("h{i}-down.batch"));
        std::fs::write(&path, batch)?;
        let t0 = Instant::now();
        ns.ip(&["-batch", &path.display().to_string()])?;
        for p in netns::netns_pids(&h.netns) {
            // SAFETY: kill(2) with a concrete pid.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        Ok(t0)
    }

    /// Host `i` comes back: links up, its neighbours and routes, its BIRD
    /// and its agent (which adopts the pins the lost one left).
    pub fn restore_host(&self, i: usize) -> Result<()> {
        let h = &self.hosts[i];
        let ns = h.ns()?;
        netns::kill_netns_processes(&[&h.netns], Duration::from_secs(5));
        ns.link_up(UPLINK)?;
        ns.link_up(FABRIC)?;
        self.host_routes(&ns, h)?;
        self.start_bird(&ns, &h.bird_conf, &h.bird_socket, &format!("h{i}-bird"))?;
        self.start_agent(i)?;
        self.wait_agent(i)
    }

    /// The router's next hops for every announced address.
    pub fn next_hops(&self) -> Result<BTreeMap<IpAddr, BTreeSet<IpAddr>>> {
        Ok(bird::next_hops(&self.inet_ns()?, &self.announced()))
    }

    /// Waits until the router routes every announced address over `want`
    /// hosts; how long that took.
    pub fn wait_next_hops(&self, want: usize, timeout: Duration) -> Result<Duration> {
        bird::wait_next_hops(&self.inet_ns()?, &self.announced(), want, timeout)
    }

    /// `birdc show protocols` on the router.
    pub fn router_protocols(&self) -> Result<String> {
        let birdc = self.bird.with_file_name("birdc");
        self.inet_ns()?.run(&[
            &birdc.display().to_string(),
            "-s",
            &self.router_bird_socket.display().to_string(),
            "show",
            "protocols",
        ])
    }

    /// What `cargo xtask lab status` adds for a fleet: the router's routes
    /// learnt from the hosts.
    pub fn status(name: &str) -> Result<String> {
        let mut out = Lab::status(name)?;
        let inet = format!("{name}-inet");
        if !Path::new(STATE_ROOT).join(name).join("router-bird.ctl").exists() {
            return Ok(out);
        }
        let ns = NetNs::open(&inet)?;
        out.push_str(&format!("\n{inet}: routes learnt over BGP (next hop = host)\n"));
        for fam in ["-4", "-6"] {
            let text = ns.ip(&[fam, "route", "show", "proto", "bird"]).unwrap_or_default();
            for l in text.lines() {
                out.push_str(&format!("  {l}\n"));
            }
        }
        Ok(out)
    }
}

/// Takes the fleet down when dropped, for tests.
#[derive(Debug)]
pub struct FleetGuard(pub Fleet);

impl FleetGuard {
    pub fn up(cfg: &LabConfig, hosts: usize, carwash: &Path) -> Result<FleetGuard> {
        Fleet::up(cfg, hosts, carwash).map(FleetGuard)
    }
}

impl std::ops::Deref for FleetGuard {
    type Target = Fleet;
    fn deref(&self) -> &Fleet {
        &self.0
    }
}

impl Drop for FleetGuard {
    fn drop(&mut self) {
        if let Err(e) = Lab::down(&self.0.lab.name) {
            eprintln!("netlab: {e:#}");
        }
    }
}

/// Loads a program of two instructions (`r0 = XDP_PASS; exit`) and pins
/// it at `pin`.
fn load_xdp_pass(pin: &Path) -> Result<()> {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0, 0, 0, 2, 0, 0, 0]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = c"GPL";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_XDP.to_ne_bytes());
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    // SAFETY: bpf(2) with a zero-padded attribute block whose pointers
    // outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_ptr(), attr.len()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("loading an XDP_PASS program");
    }
    let path = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes())?;
    let mut attr = [0u8; 128];
    attr[0..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&(fd as u32).to_ne_bytes());
    // SAFETY: as above; the fd is ours and closed right after.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, attr.as_ptr(), attr.len()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the fd the load returned.
    unsafe { libc::close(fd as i32) };
    if r < 0 {
        return Err(err).with_context(|| format!("pinning {}", pin.display()));
    }
    Ok(())
}

fn host_prefix(a: IpAddr) -> String {
    match a {
        IpAddr::V4(v) => format!("{v}/32"),
        IpAddr::V6(v) => format!("{v}/128"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_three_hosts() {
        if bird::bird_bin().is_none() {
            return;
        }
        let f = Fleet::plan(&LabConfig::default(), 3, Path::new("/bin/true")).unwrap();
        assert_eq!(f.hosts.len(), 3);
        assert_eq!(f.hosts[2].netns, "cwlab-h2");
        assert_eq!(f.hosts[1].uplink_v4, Ipv4Addr::new(100, 64, 11, 1));
        assert_eq!(f.hosts[1].uplink_v6.to_string(), "fd00:64:11::1");
        assert_eq!(f.hosts[0].pin_path, PathBuf::from("/sys/fs/bpf/carwash-lab-cwlab/h0"));
        let ns = f.namespaces();
        assert!(ns.contains(&"cwlab-h0".to_string()) && !ns.contains(&"cwlab-host".to_string()));
        assert!(Fleet::plan(&LabConfig::default(), 1, Path::new("/bin/true")).is_err());
    }
}
