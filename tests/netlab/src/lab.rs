//! The embedded default lab topology.
//!
//! ```text
//!  NAME-inet              NAME-host               NAME-ul         NAME-<tenant>-conn1 (…core2)
//!  lo: clients, partner   carwash (XDP/TC)        br0             lo: the tenant's VIPs
//!  eth0 ═════════════════ uplink                  │               vx0: VXLAN VNI -> 10.200.0.1
//!  narrow (MTU 1280)      fabric 10.200.0.1 ═════ p-host          eth0: VTEP/16
//!    ║                                            p-acme-conn1 ══ eth0
//!  NAME-rt: narrow, far ═ NAME-far: eth0, lo: the far partner
//! ```
//!
//! The internet namespace routes: towards the far partner it forwards over
//! a narrow link (MTU 1280) to the router `NAME-rt`, behind which the far
//! partner sits on an ordinary link. Neither end of the path sees the
//! narrow link (the far partner announces a full-size MSS), so a large
//! transfer to it only completes through path-MTU discovery: the internet
//! namespace answers oversized packets with ICMP fragmentation needed /
//! packet too big.
//!
//! The lab outlives the process that built it (`cargo xtask lab up` exits),
//! so its namespaces are found again by name and its servers are detached;
//! [`Lab::down`] kills everything inside the lab's namespaces. The host gets
//! neither VIPs nor egress addresses: steering them is carwash's job, and a
//! lab that answered on its own would hide a broken dataplane.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::OpenOptions;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use carwash_policy::{Class, MacAddr, Tenant};
use ipnetwork::IpNetwork;

use crate::netns::{self, NetNs, VethSetup, run_checked, veth_pair_with, vxlan};

/// The lab name used when none is given.
pub const DEFAULT_NAME: &str = "cwlab";
/// Lab state (certificate, doc roots, server scripts and logs) lives in
/// `STATE_ROOT/NAME`.
pub const STATE_ROOT: &str = "/run/carwash-lab";

/// Where a fleet lab's agents pin (`/sys/fs/bpf/carwash-lab-NAME/h<i>`).
pub fn pin_root(name: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/carwash-lab-{name}"))
}

/// Inner MAC the VPC machines send to; also the host's `fabric` MAC, so the
/// agent's default (fabric's MAC) agrees with the configured value.
pub const ROUTER_MAC: MacAddr = MacAddr([0x02, 0x00, 0x0a, 0xc8, 0x00, 0x01]);
/// The host's tunnel source address, on `fabric`.
pub const HOST_VTEP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
/// Prefix length of the underlay (host VTEP and every machine's `eth0`).
pub const UNDERLAY_PREFIX: u8 = 16;

/// Interface names inside the lab namespaces.
pub const UPLINK: &str = "uplink";
pub const FABRIC: &str = "fabric";
pub const INET_IF: &str = "eth0";
pub const MACHINE_UNDERLAY_IF: &str = "eth0";
pub const MACHINE_VXLAN_IF: &str = "vx0";
pub const BRIDGE: &str = "br0";
/// The narrow link's interfaces (in `NAME-inet` and `NAME-rt`) and the
/// router's interface towards the far partner.
pub const NARROW_IF: &str = "narrow";
pub const FAR_IF: &str = "far";
pub const HOST_UNDERLAY_PORT: &str = "p-host";

/// The link between the internet and the host.
pub const HOST_UPLINK_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
pub const HOST_UPLINK_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 1);
pub const INET_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
pub const INET_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 2);
pub const UPLINK_PREFIX_V4: u8 = 30;
pub const UPLINK_PREFIX_V6: u8 = 64;
pub const HOST_UPLINK_MAC: MacAddr = MacAddr([0x02, 0x00, 0x64, 0x40, 0x00, 0x01]);
pub const INET_MAC: MacAddr = MacAddr([0x02, 0x00, 0x64, 0x40, 0x00, 0x02]);

/// Clients on the internet side (on `NAME-inet`'s `lo`). The allowed ones
/// are inside both example tenants' allowlists (the second IPv6 one only
/// in beta's), the denied ones in none.
pub const ALLOWED_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const ALLOWED_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbeef, 0, 0, 0, 0, 0x10);
pub const ALLOWED_CLIENT_V6_B: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbeef, 1, 0, 0, 0, 0x10);
pub const DENIED_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 66);
pub const DENIED_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xdead, 0, 0, 0, 0, 0x66);
/// The partner server tenants reach through egress; it replies with the
/// source address (and port) it saw: `peer=ADDR port=PORT`.
pub const PARTNER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
pub const PARTNER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 0x10);
pub const PARTNER_TCP_PORT: u16 = 8080;
pub const PARTNER_UDP_PORT: u16 = 5353;
/// The far partner, behind the narrow link (inside beta's egress allowlist
/// too). Over TCP it replies `peer=ADDR port=PORT`, then, once the client
/// has closed its side, `sha256=HEX` of everything it received.
pub const FAR_PARTNER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
pub const FAR_PARTNER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 1, 0, 0, 0, 0x10);
pub const FAR_PARTNER_TCP_PORT: u16 = 9090;
/// MTU of the narrow link between the internet namespace and the router.
pub const NARROW_MTU: u16 = 1280;
/// The narrow link: the internet's end and the router's.
pub const NARROW_INET_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 1, 1);
pub const NARROW_INET_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x64, 1, 0, 0, 0, 0, 1);
pub const NARROW_ROUTER_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 1, 2);
pub const NARROW_ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x64, 1, 0, 0, 0, 0, 2);
/// The router's link to the far partner (MTU 1500).
pub const FAR_ROUTER_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 2, 1);
pub const FAR_ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x64, 2, 0, 0, 0, 0, 1);
pub const FAR_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 2, 2);
pub const FAR_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x64, 2, 0, 0, 0, 0, 2);

/// Machines' IPv6 default gateway (on `vx0`, resolved to [`ROUTER_MAC`]).
pub const VPC_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// Host numbers of the machines inside a VPC prefix: connectors count from
/// 10, cores from 20 (IPv6 from 0x10 / 0x20, so `fd10:101::10` mirrors
/// `10.101.0.10`).
pub const CONNECTOR_HOST_BASE: u32 = 10;
pub const CORE_HOST_BASE: u32 = 20;

/// The file every machine's HTTPS doc root holds, 1 MiB of [`one_mib`].
pub const BIG_FILE: &str = "1MiB.bin";

/// Set in every namespace that carries traffic.
pub(crate) const COMMON_SYSCTLS: [(&str, &str); 6] = [
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
    // Router solicitations would be stray tunnel traffic carwash
    // counts as drops; nobody sends RAs here anyway.
    ("net.ipv6.conf.default.router_solicitations", "0"),
    ("net.ipv6.conf.default.accept_ra", "0"),
];

pub(crate) const MAX_NETNS_NAME: usize = 30;
const MAX_IFNAME: usize = 15;
const WAIT_SERVERS: Duration = Duration::from_secs(10);

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabConfig {
    /// Prefix of every namespace and the state directory's name.
    pub name: String,
    /// A policy directory or file (`carwash_policy::read_dir_or_file`).
    pub policies: PathBuf,
    /// How every veth of the lab is set up: NIC-like by default;
    /// [`VethSetup::PLAIN`] shows what carwash reports on plain veths.
    pub veth: VethSetup,
}

impl Default for LabConfig {
    fn default() -> LabConfig {
        LabConfig {
            name: DEFAULT_NAME.to_string(),
            policies: default_policies_dir(),
            veth: VethSetup::NIC_LIKE,
        }
    }
}

impl LabConfig {
    /// The repo's policies under a fresh name (`cwt` + tag), for tests that
    /// must not collide with each other or with a developer's `cwlab`.
    pub fn unique() -> LabConfig {
        LabConfig {
            name: format!("cwt{}", netns::unique_tag()),
            ..LabConfig::default()
        }
    }
}

/// The repository's `policies/` directory.
pub fn default_policies_dir() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    p.canonicalize().unwrap_or(p)
}

/// Which machines of a tenant: connectors get `https`, cores `jms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Connector,
    Core,
}

impl Role {
    /// `connector` / `core`, as in server banners.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Connector => "connector",
            Role::Core => "core",
        }
    }

    /// `conn` / `core`, as in namespace names.
    pub fn short(self) -> &'static str {
        match self {
            Role::Connector => "conn",
            Role::Core => "core",
        }
    }

    /// The port class steered to this role.
    pub fn class(self) -> Class {
        match self {
            Role::Connector => Class::Https,
            Role::Core => Class::Jms,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One VPC machine of the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub tenant: String,
    pub vni: u32,
    pub role: Role,
    /// Position in the policy's `connectors` / `cores` list (0 = the first
    /// connector, the active core). Namespace and port names count from 1.
    pub index: usize,
    /// `NAME-<tenant>-conn1`, `NAME-<tenant>-core2`, …
    pub netns: String,
    /// Underlay address on `eth0` (/16) and VXLAN source.
    pub vtep: Ipv4Addr,
    /// Inner MAC of `vx0`, from the policy.
    pub mac: MacAddr,
    /// Outer MAC of `eth0`: `02:01` + the VTEP's four octets.
    pub underlay_mac: MacAddr,
    /// This machine's port on the underlay bridge (in `NAME-ul`).
    pub underlay_port: String,
    /// Private addresses on `vx0`, from the tenant's first IPv4 (and IPv6)
    /// `vpc_cidrs`.
    pub private_v4: Ipv4Addr,
    pub private_v4_prefix: u8,
    pub private_v6: Option<Ipv6Addr>,
    pub private_v6_prefix: u8,
    /// IPv4 default gateway: the VPC prefix's last usable address.
    pub gateway_v4: Ipv4Addr,
    /// The tenant's VIPs, on this machine's `lo`.
    pub vips: Vec<IpAddr>,
    pub https_ports: Vec<u16>,
    pub jms_ports: Vec<u16>,
    /// HTTPS doc root (`whoami`, `1MiB.bin`).
    pub docroot: PathBuf,
}

impl Machine {
    /// `acme connector 0`: the `whoami` body and the first words of the JMS
    /// banner and of `/peer`.
    pub fn label(&self) -> String {
        format!("{} {} {}", self.tenant, self.role, self.index)
    }

    /// Private addresses on `vx0`.
    pub fn private_ips(&self) -> Vec<IpAddr> {
        let mut v = vec![IpAddr::V4(self.private_v4)];
        v.extend(self.private_v6.map(IpAddr::V6));
        v
    }

    /// A non-owning handle to this machine's namespace.
    pub fn ns(&self) -> Result<NetNs> {
        NetNs::open(&self.netns)
    }
}

/// One tenant as the lab sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabTenant {
    pub name: String,
    pub vni: u32,
    pub vips: Vec<IpAddr>,
    pub egress_v4: Option<Ipv4Addr>,
    pub egress_v6: Option<Ipv6Addr>,
    pub https_ports: Vec<u16>,
    pub jms_ports: Vec<u16>,
    /// Connectors first, then cores, each in policy order.
    pub machines: Vec<Machine>,
    /// The policy this was derived from, and its file.
    pub policy: Tenant,
    pub policy_file: PathBuf,
}

impl LabTenant {
    pub fn connectors(&self) -> impl Iterator<Item = &Machine> {
        self.machines.iter().filter(|m| m.role == Role::Connector)
    }

    pub fn cores(&self) -> impl Iterator<Item = &Machine> {
        self.machines.iter().filter(|m| m.role == Role::Core)
    }

    pub fn machine(&self, role: Role, index: usize) -> Option<&Machine> {
        self.machines.iter().find(|m| m.role == role && m.index == index)
    }

    pub fn vip_v4(&self) -> Option<Ipv4Addr> {
        self.vips.iter().find_map(|a| match a {
            IpAddr::V4(v) => Some(*v),
            IpAddr::V6(_) => None,
        })
    }

    pub fn vip_v6(&self) -> Option<Ipv6Addr> {
        self.vips.iter().find_map(|a| match a {
            IpAddr::V6(v) => Some(*v),
            IpAddr::V4(_) => None,
        })
    }

    /// VIPs and egress addresses: what the internet routes to the host.
    pub fn public_addrs(&self) -> Vec<IpAddr> {
        let mut v = self.vips.clone();
        v.extend(self.egress_v4.map(IpAddr::V4));
        v.extend(self.egress_v6.map(IpAddr::V6));
        v
    }
}

/// A lab: every name and address the tests need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lab {
    pub name: String,
    pub policies: PathBuf,
    /// `/run/carwash-lab/NAME`.
    pub state_dir: PathBuf,
    /// Self-signed certificate (CN and SAN `carwash-lab`, SAN IPs = VIPs)
    /// of every HTTPS server, and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Namespaces: the internet, the carwash host, the underlay bridge,
    /// the router behind the narrow link and the far partner.
    pub inet: String,
    pub host: String,
    pub underlay: String,
    pub router: String,
    pub far: String,
    /// The host's interfaces.
    pub uplink: String,
    pub fabric: String,
    pub host_vtep: Ipv4Addr,
    pub router_mac: MacAddr,
    pub host_uplink_mac: MacAddr,
    pub host_fabric_mac: MacAddr,
    pub inet_mac: MacAddr,
    pub tenants: Vec<LabTenant>,
    pub veth: VethSetup,
}

impl Lab {
    /// Computes the lab for a configuration without touching the system
    /// (also how a test finds out about a lab someone else brought up).
    pub fn plan(cfg: &LabConfig) -> Result<Lab> {
        check_lab_name(&cfg.name)?;
        let set = carwash_policy::read_dir_or_file(&cfg.policies)
            .with_context(|| format!("reading lab policies {}", cfg.policies.display()))?;
        if set.is_empty() {
            bail!("no tenant policies in {}", cfg.policies.display());
        }
        let name = cfg.name.clone();
        let state_dir = Path::new(STATE_ROOT).join(&name);
        let mut tenants = Vec::new();
        let mut vteps = BTreeSet::new();
        for (ti, (file, t)) in set.into_iter().enumerate() {
            let v4net = t
                .vpc_cidrs
                .iter()
                .find_map(|c| match c {
                    IpNetwork::V4(n) => Some(*n),
                    IpNetwork::V6(_) => None,
                })
                .with_context(|| format!("tenant {}: the lab needs an IPv4 vpc_cidr", t.name))?;
            let v6net = t.vpc_cidrs.iter().find_map(|c| match c {
                IpNetwork::V6(n) => Some(*n),
                IpNetwork::V4(_) => None,
            });
            // Machine numbers go up to 0x2f in the last 16 bits.
            if let Some(n) = v6net.filter(|n| n.prefix() > 120) {
                bail!(
                    "tenant {}: vpc_cidr {n} is too small for the lab's machine addresses",
                    t.name
                );
            }
            let net4 = u32::from(v4net.network());
            let size4 = if v4net.prefix() == 0 {
                u64::from(u32::MAX) + 1
            } else {
                1u64 << (32 - v4net.prefix())
            };
            let gateway_v4 = Ipv4Addr::from(u32::from(v4net.broadcast()).wrapping_sub(1));
            let mut machines = Vec::new();
            for (role, list) in [(Role::Connector, &t.connectors), (Role::Core, &t.cores)] {
                for (i, b) in list.iter().enumerate() {
                    let host = match role {
                        Role::Connector => CONNECTOR_HOST_BASE,
                        Role::Core => CORE_HOST_BASE,
                    } + i as u32;
                    // Leave room for the gateway and the broadcast address.
                    if u64::from(host) + 2 >= size4 {
                        bail!(
                            "tenant {}: vpc_cidr {v4net} is too small for the lab's machine addresses",
                            t.name
                        );
                    }
                    let netns = format!("{name}-{}-{}{}", t.name, role.short(), i + 1);
                    if netns.len() > MAX_NETNS_NAME {
                        bail!(
                            "namespace name {netns:?} is longer than {MAX_NETNS_NAME} characters; use a shorter lab name"
                        );
                    }
                    if !vteps.insert(b.vtep) || b.vtep == HOST_VTEP {
                        bail!("VTEP {} is used twice in the lab", b.vtep);
                    }
                    let mut port = format!("p-{}-{}{}", t.name, role.short(), i + 1);
                    if port.len() > MAX_IFNAME {
                        port = format!("p-t{ti}-{}{}", role.short(), i + 1);
                    }
                    let o = b.vtep.octets();
                    machines.push(Machine {
                        tenant: t.name.clone(),
                        vni: t.vni,
                        role,
                        index: i,
                        docroot: state_dir.join("www").join(&netns),
                        netns,
                        vtep: b.vtep,
                        mac: b.mac,
                        underlay_mac: MacAddr([0x02, 0x01, o[0], o[1], o[2], o[3]]),
                        underlay_port: port,
                        private_v4: Ipv4Addr::from(net4 + host),
                        private_v4_prefix: v4net.prefix(),
                        private_v6: v6net.map(|n| {
                            Ipv6Addr::from(u128::from(n.network()) + u128::from((host / 10) * 16 + host % 10))
                        }),
                        private_v6_prefix: v6net.map_or(128, |n| n.prefix()),
                        gateway_v4,
                        vips: t.vips.clone(),
                        https_ports: t.https_ports.clone(),
                        jms_ports: t.jms_ports.clone(),
                    });
                }
            }
            tenants.push(LabTenant {
                name: t.name.clone(),
                vni: t.vni,
                vips: t.vips.clone(),
                egress_v4: t.egress.as_ref().map(|e| e.snat_ipv4),
                egress_v6: t.egress.as_ref().and_then(|e| e.snat_ipv6),
                https_ports: t.https_ports.clone(),
                jms_ports: t.jms_ports.clone(),
                machines,
                policy: t,
                policy_file: file,
            });
        }
        Ok(Lab {
            inet: format!("{name}-inet"),
            host: format!("{name}-host"),
            underlay: format!("{name}-ul"),
            router: format!("{name}-rt"),
            far: format!("{name}-far"),
            cert: state_dir.join("cert.pem"),
            key: state_dir.join("key.pem"),
            state_dir,
            policies: cfg.policies.clone(),
            uplink: UPLINK.to_string(),
            fabric: FABRIC.to_string(),
            host_vtep: HOST_VTEP,
            router_mac: ROUTER_MAC,
            host_uplink_mac: HOST_UPLINK_MAC,
            host_fabric_mac: ROUTER_MAC,
            inet_mac: INET_MAC,
            tenants,
            veth: cfg.veth,
            name,
        })
    }

    /// Builds the lab (replacing one of the same name) and returns once all
    /// its servers listen. On failure nothing of it is left behind.
    pub fn up(cfg: &LabConfig) -> Result<Lab> {
        let lab = Lab::plan(cfg)?;
        Lab::down(&lab.name).context("removing the previous lab of that name")?;
        match lab.build() {
            Ok(()) => Ok(lab),
            Err(e) => {
                let _ = Lab::down(&lab.name);
                Err(e.context(format!("bringing lab {} up", lab.name)))
            }
        }
    }

    /// Removes every namespace of lab `name` (killing what runs inside) and
    /// its state directory. Idempotent.
    pub fn down(name: &str) -> Result<()> {
        check_lab_name(name)?;
        let names = lab_namespaces(name)?;
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        netns::kill_netns_processes(&refs, Duration::from_secs(5));
        let mut errors = Vec::new();
        for n in &names {
            if let Err(e) = netns::delete_netns(n) {
                errors.push(format!("{e:#}"));
            }
        }
        // A fleet's agents pinned outside the namespaces; their programs
        // went with the interfaces.
        let pins = pin_root(name);
        if pins.exists()
            && let Err(e) = netns::remove_tree(&pins)
        {
            errors.push(format!("removing {}: {e}", pins.display()));
        }
        let state_dir = Path::new(STATE_ROOT).join(name);
        match std::fs::remove_dir_all(&state_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("removing {}: {e}", state_dir.display())),
        }
        // Only succeeds once no other lab is up, which is when it should go.
        let _ = std::fs::remove_dir(STATE_ROOT);
        if !errors.is_empty() {
            bail!("tearing down lab {name}: {}", errors.join("; "));
        }
        Ok(())
    }

    /// Human-readable state of lab `name`: namespaces, their addresses and
    /// listening servers.
    pub fn status(name: &str) -> Result<String> {
        check_lab_name(name)?;
        let names = lab_namespaces(name)?;
        if names.is_empty() {
            return Ok(format!("lab {name}: not running\n"));
        }
        let state_dir = Path::new(STATE_ROOT).join(name);
        let mut out = format!(
            "lab {name}: {} namespaces, state in {}{}\n",
            names.len(),
            state_dir.display(),
            if state_dir.exists() { "" } else { " (missing)" }
        );
        for n in &names {
            out.push_str(&format!("\n{n}\n"));
            let ns = NetNs::open(n)?;
            let addrs = ns.ip(&["-br", "addr"]).unwrap_or_else(|e| format!("{e:#}\n"));
            for l in addrs.lines() {
                out.push_str(&format!("  {l}\n"));
            }
            let listening = ns
                .run(&["ss", "-H", "-n", "-l", "-t", "-u"])
                .unwrap_or_else(|e| format!("{e:#}\n"));
            let socks: BTreeSet<String> = listening
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.len() > 4).then(|| format!("{} {}", f[0], f[4]))
                })
                .collect();
            if !socks.is_empty() {
                out.push_str(&format!(
                    "  listening: {}\n",
                    socks.into_iter().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        Ok(out)
    }

    /// A carwash host configuration for an
    /// agent running in this lab's host namespace.
    pub fn host_config_toml(&self, pin_path: &Path, api_socket: &Path, policy_dir: &Path) -> String {
        let q = |s: &str| toml::Value::String(s.to_string()).to_string();
        let mut out = String::new();
        for (k, v) in [
            ("uplink", self.uplink.clone()),
            ("fabric", self.fabric.clone()),
            ("vtep", self.host_vtep.to_string()),
            ("router_mac", self.router_mac.to_string()),
            ("policy_dir", policy_dir.display().to_string()),
            ("pin_path", pin_path.display().to_string()),
            ("api_socket", api_socket.display().to_string()),
            ("metrics", "127.0.0.1:0".to_string()),
        ] {
            out.push_str(&format!("{k} = {}\n", q(&v)));
        }
        out
    }

    /// Every namespace of the lab, in creation order.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![
            self.inet.clone(),
            self.host.clone(),
            self.underlay.clone(),
            self.router.clone(),
            self.far.clone(),
        ];
        v.extend(self.machines().map(|m| m.netns.clone()));
        v
    }

    pub fn machines(&self) -> impl Iterator<Item = &Machine> {
        self.tenants.iter().flat_map(|t| t.machines.iter())
    }

    pub fn tenant(&self, name: &str) -> Option<&LabTenant> {
        self.tenants.iter().find(|t| t.name == name)
    }

    pub fn machine(&self, tenant: &str, role: Role, index: usize) -> Option<&Machine> {
        self.tenant(tenant)?.machine(role, index)
    }

    /// All VIPs and egress addresses (routed from the internet to the host).
    pub fn public_addrs(&self) -> Vec<IpAddr> {
        let set: BTreeSet<IpAddr> = self.tenants.iter().flat_map(LabTenant::public_addrs).collect();
        set.into_iter().collect()
    }

    /// Non-owning handles to the lab's namespaces.
    pub fn inet_ns(&self) -> Result<NetNs> {
        NetNs::open(&self.inet)
    }

    pub fn host_ns(&self) -> Result<NetNs> {
        NetNs::open(&self.host)
    }

    pub fn underlay_ns(&self) -> Result<NetNs> {
        NetNs::open(&self.underlay)
    }

    pub fn router_ns(&self) -> Result<NetNs> {
        NetNs::open(&self.router)
    }

    pub fn far_ns(&self) -> Result<NetNs> {
        NetNs::open(&self.far)
    }

    fn build(&self) -> Result<()> {
        // Another lab going down removes STATE_ROOT when it is empty, which
        // can happen between this call's creating it and creating the lab's
        // own directory in it: try again then.
        let mut tries = 0;
        while let Err(e) = std::fs::create_dir_all(&self.state_dir) {
            tries += 1;
            if e.kind() != std::io::ErrorKind::NotFound || tries == 5 {
                return Err(e).with_context(|| format!("creating {}", self.state_dir.display()));
            }
        }
        // Written first so `down` finds everything even if we die half-way.
        std::fs::write(self.state_dir.join("namespaces"), self.namespaces().join("\n") + "\n")?;
        self.write_files()?;

        let inet = NetNs::named(&self.inet)?.disown();
        let host = NetNs::named(&self.host)?.disown();
        let ul = NetNs::named(&self.underlay)?.disown();
        let common = COMMON_SYSCTLS;
        inet.sysctls(&common)?;
        host.sysctls(&common)?;
        host.sysctls(&[("net.ipv4.ip_forward", "1"), ("net.ipv6.conf.all.forwarding", "1")])?;
        // The bridge only switches frames; keep its ports quiet.
        ul.sysctls(&[
            ("net.ipv6.conf.all.disable_ipv6", "1"),
            ("net.ipv6.conf.default.disable_ipv6", "1"),
        ])?;

        // Internet <-> host.
        veth_pair_with(
            &inet,
            INET_IF,
            Some(self.inet_mac),
            &host,
            &self.uplink,
            Some(self.host_uplink_mac),
            self.veth,
        )?;
        inet.addr(INET_IF, &format!("{INET_V4}/{UPLINK_PREFIX_V4}"))?;
        inet.addr(INET_IF, &format!("{INET_V6}/{UPLINK_PREFIX_V6}"))?;
        host.addr(&self.uplink, &format!("{HOST_UPLINK_V4}/{UPLINK_PREFIX_V4}"))?;
        host.addr(&self.uplink, &format!("{HOST_UPLINK_V6}/{UPLINK_PREFIX_V6}"))?;
        // Static neighbours: an XDP program's FIB lookup must not depend on
        // ARP/ND having happened.
        inet.neigh(INET_IF, &HOST_UPLINK_V4.to_string(), self.host_uplink_mac)?;
        inet.neigh(INET_IF, &HOST_UPLINK_V6.to_string(), self.host_uplink_mac)?;
        host.neigh(&self.uplink, &INET_V4.to_string(), self.inet_mac)?;
        host.neigh(&self.uplink, &INET_V6.to_string(), self.inet_mac)?;
        host.route("default", &INET_V4.to_string(), Some(&self.uplink))?;
        host.route("default", &INET_V6.to_string(), Some(&self.uplink))?;
        for a in [
            IpAddr::V4(ALLOWED_CLIENT_V4),
            IpAddr::V6(ALLOWED_CLIENT_V6),
            IpAddr::V6(ALLOWED_CLIENT_V6_B),
            IpAddr::V4(DENIED_CLIENT_V4),
            IpAddr::V6(DENIED_CLIENT_V6),
            IpAddr::V4(PARTNER_V4),
            IpAddr::V6(PARTNER_V6),
        ] {
            inet.addr("lo", &host_prefix(a))?;
        }
        for a in self.public_addrs() {
            let via = match a {
                IpAddr::V4(_) => HOST_UPLINK_V4.to_string(),
                IpAddr::V6(_) => HOST_UPLINK_V6.to_string(),
            };
            inet.route(&host_prefix(a), &via, Some(INET_IF))?;
        }

        self.build_narrow_path(&inet, &common)?;

        // Underlay: one bridge, the host's fabric and every machine's eth0.
        ul.ip(&["link", "add", "name", BRIDGE, "type", "bridge"])?;
        ul.link_up(BRIDGE)?;
        veth_pair_with(
            &host,
            &self.fabric,
            Some(self.host_fabric_mac),
            &ul,
            HOST_UNDERLAY_PORT,
            None,
            self.veth,
        )?;
        ul.ip(&["link", "set", "dev", HOST_UNDERLAY_PORT, "master", BRIDGE])?;
        host.addr(&self.fabric, &format!("{}/{UNDERLAY_PREFIX}", self.host_vtep))?;

        for m in self.machines() {
            self.build_machine(m, &ul, &common, self.host_fabric_mac)?;
            host.neigh(&self.fabric, &m.vtep.to_string(), m.underlay_mac)?;
        }

        self.start_servers(&inet)?;
        self.wait_servers(&inet)
    }

    /// One VPC machine: its namespace on the underlay bridge, its VXLAN
    /// device towards the host VTEP (reached at `vtep_mac` on the bridge),
    /// its VIPs and gateways.
    pub(crate) fn build_machine(
        &self,
        m: &Machine,
        ul: &NetNs,
        common: &[(&str, &str)],
        vtep_mac: MacAddr,
    ) -> Result<()> {
        let ns = NetNs::named(&m.netns)?.disown();
        ns.sysctls(common)?;
        // VIP traffic arrives on vx0 for an address that lives on lo.
        ns.sysctls(&[
            ("net.ipv4.conf.all.accept_local", "1"),
            ("net.ipv4.conf.default.accept_local", "1"),
        ])?;
        veth_pair_with(
            &ns,
            MACHINE_UNDERLAY_IF,
            Some(m.underlay_mac),
            ul,
            &m.underlay_port,
            None,
            self.veth,
        )?;
        ul.ip(&["link", "set", "dev", &m.underlay_port, "master", BRIDGE])?;
        ns.addr(MACHINE_UNDERLAY_IF, &format!("{}/{UNDERLAY_PREFIX}", m.vtep))?;
        ns.neigh(MACHINE_UNDERLAY_IF, &self.host_vtep.to_string(), vtep_mac)?;
        vxlan(
            &ns,
            MACHINE_VXLAN_IF,
            m.vni,
            m.vtep,
            self.host_vtep,
            m.mac,
            MACHINE_UNDERLAY_IF,
        )?;
        ns.addr(MACHINE_VXLAN_IF, &format!("{}/{}", m.private_v4, m.private_v4_prefix))?;
        if let Some(v6) = m.private_v6 {
            ns.addr(MACHINE_VXLAN_IF, &format!("{v6}/{}", m.private_v6_prefix))?;
        }
        for vip in &m.vips {
            ns.addr("lo", &host_prefix(*vip))?;
        }
        let gw6 = VPC_GATEWAY_V6.to_string();
        ns.neigh(MACHINE_VXLAN_IF, &m.gateway_v4.to_string(), self.router_mac)?;
        ns.neigh(MACHINE_VXLAN_IF, &gw6, self.router_mac)?;
        ns.route("default", &m.gateway_v4.to_string(), Some(MACHINE_VXLAN_IF))?;
        ns.route("default", &gw6, Some(MACHINE_VXLAN_IF))?;
        Ok(())
    }

    /// The router and the far partner behind the narrow link; the internet
    /// namespace forwards towards them.
    pub(crate) fn build_narrow_path(&self, inet: &NetNs, common: &[(&str, &str)]) -> Result<()> {
        let rt = NetNs::named(&self.router)?.disown();
        let far = NetNs::named(&self.far)?.disown();
        rt.sysctls(common)?;
        far.sysctls(common)?;
        let forwarding = [("net.ipv4.ip_forward", "1"), ("net.ipv6.conf.all.forwarding", "1")];
        inet.sysctls(&forwarding)?;
        rt.sysctls(&forwarding)?;

        veth_pair_with(inet, NARROW_IF, None, &rt, NARROW_IF, None, self.veth)?;
        let mtu = NARROW_MTU.to_string();
        for ns in [inet, &rt] {
            ns.ip(&["link", "set", "dev", NARROW_IF, "mtu", &mtu])?;
        }
        inet.addr(NARROW_IF, &format!("{NARROW_INET_V4}/30"))?;
        inet.addr(NARROW_IF, &format!("{NARROW_INET_V6}/64"))?;
        rt.addr(NARROW_IF, &format!("{NARROW_ROUTER_V4}/30"))?;
        rt.addr(NARROW_IF, &format!("{NARROW_ROUTER_V6}/64"))?;
        inet.route(
            &format!("{FAR_PARTNER_V4}/32"),
            &NARROW_ROUTER_V4.to_string(),
            Some(NARROW_IF),
        )?;
        inet.route(
            &format!("{FAR_PARTNER_V6}/128"),
            &NARROW_ROUTER_V6.to_string(),
            Some(NARROW_IF),
        )?;

        veth_pair_with(&rt, FAR_IF, None, &far, INET_IF, None, self.veth)?;
        rt.addr(FAR_IF, &format!("{FAR_ROUTER_V4}/30"))?;
        rt.addr(FAR_IF, &format!("{FAR_ROUTER_V6}/64"))?;
        far.addr(INET_IF, &format!("{FAR_V4}/30"))?;
        far.addr(INET_IF, &format!("{FAR_V6}/64"))?;
        rt.route(&format!("{FAR_PARTNER_V4}/32"), &FAR_V4.to_string(), Some(FAR_IF))?;
        rt.route(&format!("{FAR_PARTNER_V6}/128"), &FAR_V6.to_string(), Some(FAR_IF))?;
        rt.route("default", &NARROW_INET_V4.to_string(), Some(NARROW_IF))?;
        rt.route("default", &NARROW_INET_V6.to_string(), Some(NARROW_IF))?;

        far.addr("lo", &host_prefix(IpAddr::V4(FAR_PARTNER_V4)))?;
        far.addr("lo", &host_prefix(IpAddr::V6(FAR_PARTNER_V6)))?;
        far.route("default", &FAR_ROUTER_V4.to_string(), Some(INET_IF))?;
        far.route("default", &FAR_ROUTER_V6.to_string(), Some(INET_IF))
    }

    pub(crate) fn bin_dir(&self) -> PathBuf {
        self.state_dir.join("bin")
    }

    pub(crate) fn log_dir(&self) -> PathBuf {
        self.state_dir.join("log")
    }

    /// Certificate, server scripts and doc roots.
    pub(crate) fn write_files(&self) -> Result<()> {
        let bin = self.bin_dir();
        std::fs::create_dir_all(&bin)?;
        std::fs::create_dir_all(self.log_dir())?;
        for (file, text) in [
            ("common.sh", COMMON_SH),
            ("http.sh", HTTP_SH),
            ("jms.sh", JMS_SH),
            ("partner.sh", PARTNER_SH),
            ("far.sh", FAR_SH),
        ] {
            std::fs::write(bin.join(file), text)?;
        }

        let mut san = String::from("subjectAltName=DNS:carwash-lab");
        let vips: BTreeSet<IpAddr> = self.tenants.iter().flat_map(|t| t.vips.clone()).collect();
        for v in vips {
            san.push_str(&format!(",IP:{v}"));
        }
        run_checked(
            Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
                .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650"])
                .args(["-subj", "/CN=carwash-lab", "-addext", &san, "-keyout"])
                .arg(&self.key)
                .arg("-out")
                .arg(&self.cert),
        )
        .context("generating the lab's TLS certificate")?;

        let big = self.state_dir.join(BIG_FILE);
        std::fs::write(&big, one_mib())?;
        for m in self.machines() {
            std::fs::create_dir_all(&m.docroot)?;
            std::fs::write(m.docroot.join("whoami"), format!("{}\n", m.label()))?;
            let target = m.docroot.join(BIG_FILE);
            if std::fs::hard_link(&big, &target).is_err() {
                std::fs::copy(&big, &target)?;
            }
        }
        Ok(())
    }

    /// Starts a detached server (`setsid -f`) inside `ns`, logging to the
    /// state dir: it must survive the `lab up` process, and `down` finds it
    /// through its namespace.
    pub(crate) fn start_server(&self, ns: &NetNs, log: &str, args: &[&str]) -> Result<()> {
        let log_path = self.log_dir().join(format!("{log}.log"));
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = ns.command("setsid")?;
        cmd.arg("-f")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let status = cmd
            .status()
            .with_context(|| format!("starting {args:?} in {}", ns.name()))?;
        if !status.success() {
            bail!("starting {args:?} in {}: {status}", ns.name());
        }
        Ok(())
    }

    pub(crate) fn start_servers(&self, inet: &NetNs) -> Result<()> {
        let bin = self.bin_dir();
        let bin = bin.display();
        let (cert, key) = (self.cert.display(), self.key.display());
        for m in self.machines() {
            let ns = m.ns()?;
            let root = m.docroot.display();
            for port in &m.https_ports {
                self.start_server(
                    &ns,
                    &format!("{}-https-{port}", m.netns),
                    &[
                        "socat",
                        // Wait for the client to close after the handler is
                        // done (the default 0.5 s cuts slow readers off).
                        "-t",
                        "60",
                        &format!(
                            "OPENSSL-LISTEN:{port},pf=ip6,ipv6only=0,backlog=128,fork,reuseaddr,cert={cert},key={key},verify=0"
                        ),
                        &format!("EXEC:/bin/sh {bin}/http.sh {root}"),
                    ],
                )?;
            }
            for port in &m.jms_ports {
                self.start_server(
                    &ns,
                    &format!("{}-jms-{port}", m.netns),
                    &[
                        "socat",
                        "-t",
                        "60",
                        &format!("TCP6-LISTEN:{port},ipv6only=0,backlog=128,fork,reuseaddr"),
                        &format!("EXEC:/bin/sh {bin}/jms.sh {root}"),
                    ],
                )?;
            }
        }
        let (tcp, udp) = (PARTNER_TCP_PORT, PARTNER_UDP_PORT);
        self.start_server(
            &NetNs::open(&self.far)?,
            "far-partner",
            &[
                "socat",
                // Once the client is done sending, give the checksum time.
                "-t",
                "30",
                &format!("TCP6-LISTEN:{FAR_PARTNER_TCP_PORT},ipv6only=0,backlog=128,fork,reuseaddr"),
                &format!("EXEC:/bin/sh {bin}/far.sh"),
            ],
        )?;
        self.start_server(
            inet,
            "partner-tcp",
            &[
                "socat",
                &format!("TCP6-LISTEN:{tcp},ipv6only=0,backlog=128,fork,reuseaddr"),
                &format!("EXEC:/bin/sh {bin}/partner.sh"),
            ],
        )?;
        // UDP replies take the bound address as source; a wildcard socket
        // would answer from the uplink address and break NAT matching.
        self.start_server(
            inet,
            "partner-udp4",
            &[
                "socat",
                &format!("UDP4-RECVFROM:{udp},bind={PARTNER_V4},fork,reuseaddr"),
                &format!("EXEC:/bin/sh {bin}/partner.sh udp"),
            ],
        )?;
        self.start_server(
            inet,
            "partner-udp6",
            &[
                "socat",
                &format!("UDP6-RECVFROM:{udp},bind=[{PARTNER_V6}],fork,reuseaddr"),
                &format!("EXEC:/bin/sh {bin}/partner.sh udp"),
            ],
        )
    }

    pub(crate) fn wait_servers(&self, inet: &NetNs) -> Result<()> {
        NetNs::open(&self.far)?.wait_listening(false, FAR_PARTNER_TCP_PORT, WAIT_SERVERS)?;
        for m in self.machines() {
            let ports: Vec<u16> = m.https_ports.iter().chain(&m.jms_ports).copied().collect();
            m.ns()?.wait_listening_all(false, &ports, WAIT_SERVERS)?;
        }
        inet.wait_listening(false, PARTNER_TCP_PORT, WAIT_SERVERS)?;
        inet.wait_listening(true, PARTNER_UDP_PORT, WAIT_SERVERS)?;
        // Both UDP sockets share the port; make sure the second one is there.
        let deadline = std::time::Instant::now() + WAIT_SERVERS;
        loop {
            let out = inet.run(&["ss", "-H", "-n", "-l", "-u"])?;
            let n = out
                .lines()
                .filter(|l| l.contains(&format!(":{PARTNER_UDP_PORT} ")))
                .count();
            if n >= 2 {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                bail!("partner UDP servers did not start in {}", self.inet);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// Tears the lab down when dropped, for tests.
#[derive(Debug)]
pub struct LabGuard(pub Lab);

impl LabGuard {
    pub fn up(cfg: &LabConfig) -> Result<LabGuard> {
        Lab::up(cfg).map(LabGuard)
    }
}

impl std::ops::Deref for LabGuard {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.0
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = Lab::down(&self.0.name) {
            eprintln!("netlab: {e:#}");
        }
    }
}

/// The contents of every machine's `1MiB.bin`: deterministic, incompressible
/// bytes, so a test can compare what it downloaded.
pub fn one_mib() -> Vec<u8> {
    let mut x: u64 = 0x6361_7277_6173_6821;
    let mut v = Vec::with_capacity(1 << 20);
    while v.len() < 1 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

/// The address after `peer=` in a server reply (`acme core 0
/// peer=198.51.100.10`, `peer=203.0.113.200 port=20001`), IPv4-mapped
/// addresses turned into IPv4.
pub fn parse_peer(reply: &str) -> Option<IpAddr> {
    let a = reply.split_whitespace().find_map(|w| w.strip_prefix("peer="))?;
    let a = a.trim_start_matches('[').trim_end_matches(']');
    a.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// The port after `port=` in a partner reply.
pub fn parse_peer_port(reply: &str) -> Option<u16> {
    reply
        .split_whitespace()
        .find_map(|w| w.strip_prefix("port="))?
        .parse()
        .ok()
}

fn host_prefix(a: IpAddr) -> String {
    match a {
        IpAddr::V4(v) => format!("{v}/32"),
        IpAddr::V6(v) => format!("{v}/128"),
    }
}

fn check_lab_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 20
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-');
    if !ok {
        bail!("lab name {name:?} must be 1-20 characters of [a-z0-9-], not starting with '-'");
    }
    Ok(())
}

/// Whether `ns` looks like a namespace of lab `lab`: `NAME-inet`,
/// `NAME-host`, `NAME-ul`, `NAME-rt`, `NAME-far`, a fleet's `NAME-h<n>` or
/// `NAME-<tenant>-(conn|core)<n>`.
fn is_lab_namespace(lab: &str, ns: &str) -> bool {
    let Some(rest) = ns.strip_prefix(lab).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    if matches!(rest, "inet" | "host" | "ul" | "rt" | "far") {
        return true;
    }
    // A fleet's hosts: `NAME-h0`, `NAME-h1`, …
    if rest
        .strip_prefix('h')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    {
        return true;
    }
    let Some((tenant, machine)) = rest.rsplit_once('-') else {
        return false;
    };
    let num = machine.strip_prefix("conn").or_else(|| machine.strip_prefix("core"));
    !tenant.is_empty() && num.is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The lab's existing namespaces: those its manifest lists plus any whose
/// name fits the lab's naming scheme (e.g. from a different policy set).
fn lab_namespaces(name: &str) -> Result<Vec<String>> {
    let existing = netns::list_netns()?;
    let manifest = std::fs::read_to_string(Path::new(STATE_ROOT).join(name).join("namespaces")).unwrap_or_default();
    let listed: BTreeSet<&str> = manifest.lines().map(str::trim).collect();
    Ok(existing
        .into_iter()
        .filter(|n| listed.contains(n.as_str()) || is_lab_namespace(name, n))
        .collect())
}

/// Shared by the servers: socat 1.7 hands over IPv6 peers in full,
/// bracketed form (IPv4 ones as IPv4-mapped on a dual-stack socket); print
/// them as dotted IPv4 / RFC 5952 so replies compare as text.
const COMMON_SH: &str = r#"peer_addr() {
  a=$1; a=${a#[}; a=${a%]}
  case $a in
    *.*) printf '%s' "$a"; return;;
    0000:0000:0000:0000:0000:ffff:*)
      h=${a#0000:0000:0000:0000:0000:ffff:}; hi=${h%:*}; lo=${h#*:}
      printf '%d.%d.%d.%d' 0x$(echo $hi | cut -c1-2) 0x$(echo $hi | cut -c3-4) \
        0x$(echo $lo | cut -c1-2) 0x$(echo $lo | cut -c3-4)
      return;;
  esac
  a=$(printf '%s' "$a" | sed -E 's/(^|:)0{1,3}([0-9a-fA-F])/\1\2/g')
  s=":$a:"
  for pat in :0:0:0:0:0:0:0:0: :0:0:0:0:0:0:0: :0:0:0:0:0:0: :0:0:0:0:0: :0:0:0:0: :0:0:0: :0:0:; do
    case $s in *"$pat"*) s=$(printf '%s' "$s" | sed "s/$pat/::/"); break;; esac
  done
  case $s in ::*) ;; *) s=${s#:};; esac
  case $s in *::) ;; *) s=${s%:};; esac
  printf '%s' "$s"
}
PEER=$(peer_addr "${SOCAT_PEERADDR:-}")
PEERPORT=${SOCAT_PEERPORT:-}
"#;

/// One HTTP/1.0 request per TLS connection: `/peer` answers
/// `<label> peer=<addr>`, other names are files of the doc root ($1).
const HTTP_SH: &str = r#". "$(dirname "$0")/common.sh"
root=$1
label=$(cat "$root/whoami")
cr=$(printf '\r')
set -f
IFS= read -r line || exit 0
line=${line%"$cr"}
set -- $line
method=${1:-GET}
path=${2:-/}
while IFS= read -r h; do
  h=${h%"$cr"}
  [ -z "$h" ] && break
done
name=${path#/}
name=${name%%\?*}
head() {
  printf 'HTTP/1.0 %s\r\nContent-Type: %s\r\nContent-Length: %s\r\nX-Carwash-Machine: %s\r\nX-Carwash-Peer: %s\r\nConnection: close\r\n\r\n' \
    "$1" "$2" "$3" "$label" "$PEER"
}
case $name in
  peer)
    body="$label peer=$PEER"
    head '200 OK' text/plain $((${#body} + 1))
    [ "$method" = HEAD ] || printf '%s\n' "$body"
    exit 0;;
  ''|*/*|.*)
    head '404 Not Found' text/plain 10; [ "$method" = HEAD ] || printf 'not found\n'; exit 0;;
esac
if [ -f "$root/$name" ]; then
  head '200 OK' application/octet-stream "$(wc -c < "$root/$name")"
  [ "$method" = HEAD ] || exec cat "$root/$name"
else
  head '404 Not Found' text/plain 10; [ "$method" = HEAD ] || printf 'not found\n'
fi
"#;

/// The JMS stand-in: a banner naming the machine and the peer, then echo.
const JMS_SH: &str = r#". "$(dirname "$0")/common.sh"
printf '%s peer=%s\n' "$(cat "$1/whoami")" "$PEER"
exec cat
"#;

/// The partner: tells the client which source it saw (that is what SNAT
/// tests check); over TCP it then echoes until the client closes, over UDP
/// (`$1` = `udp`) the one datagram gets the one reply.
const PARTNER_SH: &str = r#". "$(dirname "$0")/common.sh"
printf 'peer=%s port=%s\n' "$PEER" "$PEERPORT"
[ "${1:-}" = udp ] && exit 0
exec cat
"#;

/// The far partner: the source it saw at once, then the SHA-256 of
/// everything the client sent once the client has closed its side.
const FAR_SH: &str = r#". "$(dirname "$0")/common.sh"
printf 'peer=%s port=%s\n' "$PEER" "$PEERPORT"
sum=$(sha256sum)
printf 'sha256=%s\n' "${sum%% *}"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_lab() -> Lab {
        Lab::plan(&LabConfig::default()).unwrap()
    }

    #[test]
    fn plan_names_and_addresses() {
        let lab = repo_lab();
        assert_eq!(lab.inet, "cwlab-inet");
        assert_eq!(lab.host, "cwlab-host");
        assert_eq!(lab.underlay, "cwlab-ul");
        let acme = lab.tenant("acme").unwrap();
        assert_eq!(acme.machines.len(), 4);
        let c2 = lab.machine("acme", Role::Core, 1).unwrap();
        assert_eq!(c2.netns, "cwlab-acme-core2");
        assert_eq!(c2.underlay_port, "p-acme-core2");
        assert_eq!(c2.private_v4, Ipv4Addr::new(10, 101, 0, 21));
        assert_eq!(c2.private_v6, Some("fd10:101::21".parse().unwrap()));
        assert_eq!(c2.gateway_v4, Ipv4Addr::new(10, 101, 255, 254));
        assert_eq!(c2.underlay_mac.to_string(), "02:01:0a:c8:01:15");
        assert_eq!(c2.label(), "acme core 1");
        let conn = lab.machine("beta", Role::Connector, 0).unwrap();
        assert_eq!(conn.private_v4, Ipv4Addr::new(10, 101, 0, 10));
        assert_eq!(conn.https_ports, vec![443, 8443]);
        assert!(lab.public_addrs().contains(&"203.0.113.201".parse().unwrap()));
        assert!(lab.public_addrs().contains(&"2001:db8:10::200".parse().unwrap()));
        for m in lab.machines() {
            assert!(m.netns.len() <= MAX_NETNS_NAME);
            assert!(m.underlay_port.len() <= MAX_IFNAME);
        }
    }

    #[test]
    fn host_config_parses() {
        let lab = repo_lab();
        let text = lab.host_config_toml(Path::new("/sys/fs/bpf/x"), Path::new("/run/x.sock"), Path::new("/p"));
        let v: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(v["uplink"].as_str(), Some("uplink"));
        assert_eq!(v["fabric"].as_str(), Some("fabric"));
        assert_eq!(v["vtep"].as_str(), Some("10.200.0.1"));
        assert_eq!(v["router_mac"].as_str(), Some("02:00:0a:c8:00:01"));
        assert_eq!(v["pin_path"].as_str(), Some("/sys/fs/bpf/x"));
        assert_eq!(v["api_socket"].as_str(), Some("/run/x.sock"));
        assert_eq!(v["policy_dir"].as_str(), Some("/p"));
        assert_eq!(v["metrics"].as_str(), Some("127.0.0.1:0"));
    }

    #[test]
    fn lab_namespace_matching() {
        assert!(is_lab_namespace("cwlab", "cwlab-inet"));
        assert!(is_lab_namespace("cwlab", "cwlab-rt"));
        assert!(is_lab_namespace("cwlab", "cwlab-far"));
        assert!(is_lab_namespace("cwlab", "cwlab-h0"));
        assert!(is_lab_namespace("cwlab", "cwlab-h12"));
        assert!(!is_lab_namespace("cwlab", "cwlab-h"));
        assert!(!is_lab_namespace("cwlab", "cwlab-hx"));
        assert!(is_lab_namespace("cwlab", "cwlab-acme-conn1"));
        assert!(is_lab_namespace("cwlab", "cwlab-my-tenant-core12"));
        assert!(!is_lab_namespace("cwlab", "cwlab2-inet"));
        assert!(!is_lab_namespace("cwlab", "cwlab-acme-web1"));
        assert!(!is_lab_namespace("cwlab", "cwlab-conn1"));
        assert!(!is_lab_namespace("cwlab", "cwlabx-acme-conn1"));
        assert!(check_lab_name("").is_err());
        assert!(check_lab_name("Lab").is_err());
        assert!(check_lab_name("cw-1").is_ok());
    }

    #[test]
    fn peer_parsing() {
        assert_eq!(
            parse_peer("acme core 0 peer=198.51.100.10"),
            Some("198.51.100.10".parse().unwrap())
        );
        assert_eq!(
            parse_peer("peer=[0000:0000:0000:0000:0000:ffff:c633:640a] port=1"),
            Some("198.51.100.10".parse().unwrap())
        );
        assert_eq!(parse_peer_port("peer=2001:db8::1 port=20001"), Some(20001));
        assert_eq!(parse_peer("nothing"), None);
    }

    /// A policy directory of its own, removed on drop.
    struct TempPolicies(PathBuf);

    impl TempPolicies {
        fn new(files: &[(&str, &str)]) -> TempPolicies {
            let dir = std::env::temp_dir().join(format!("netlab-policies-{}", netns::unique_tag()));
            std::fs::create_dir_all(&dir).unwrap();
            for (name, text) in files {
                std::fs::write(dir.join(name), text).unwrap();
            }
            TempPolicies(dir)
        }
    }

    impl Drop for TempPolicies {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const LONG: &str = r#"
name = "verylongtenantname"
vni = 7
lane = "single"
vips = ["203.0.113.77"]
vpc_cidrs = ["fd77::/64", "192.168.7.0/24"]
connectors = [{ vtep = "10.200.7.10", mac = "02:00:0a:c8:07:0a" }]
cores = [{ vtep = "10.200.7.20", mac = "02:00:0a:c8:07:14" }]
"#;

    #[test]
    fn long_tenant_names_get_short_ports() {
        let dir = TempPolicies::new(&[("verylongtenantname.toml", LONG)]);
        let cfg = LabConfig {
            name: "cwlab".into(),
            policies: dir.0.clone(),
            ..LabConfig::default()
        };
        let lab = Lab::plan(&cfg).unwrap();
        let m = lab.machine("verylongtenantname", Role::Core, 0).unwrap();
        assert_eq!(m.netns, "cwlab-verylongtenantname-core1");
        assert_eq!(m.underlay_port, "p-t0-core1");
        assert_eq!(m.private_v4, Ipv4Addr::new(192, 168, 7, 20));
        assert_eq!(m.gateway_v4, Ipv4Addr::new(192, 168, 7, 254));
        assert_eq!(m.private_v6, Some("fd77::20".parse().unwrap()));
        assert_eq!(lab.tenants[0].egress_v4, None);
        assert_eq!(lab.public_addrs(), vec!["203.0.113.77".parse::<IpAddr>().unwrap()]);

        let too_long = LabConfig {
            name: "cwlab-longer".into(),
            policies: dir.0.clone(),
            ..LabConfig::default()
        };
        let err = format!("{:#}", Lab::plan(&too_long).unwrap_err());
        assert!(err.contains("longer than 30"), "{err}");
    }

    #[test]
    fn plan_refuses_what_the_lab_cannot_build() {
        let v6_only = LONG.replace("\"192.168.7.0/24\"", "");
        let dir = TempPolicies::new(&[("verylongtenantname.toml", &v6_only)]);
        let cfg = LabConfig {
            name: "cwlab".into(),
            policies: dir.0.clone(),
            ..LabConfig::default()
        };
        let err = format!("{:#}", Lab::plan(&cfg).unwrap_err());
        assert!(err.contains("IPv4 vpc_cidr"), "{err}");

        let tiny = LONG.replace("192.168.7.0/24", "192.168.7.0/28");
        let dir = TempPolicies::new(&[("verylongtenantname.toml", &tiny)]);
        let cfg = LabConfig {
            name: "cwlab".into(),
            policies: dir.0.clone(),
            ..LabConfig::default()
        };
        let err = format!("{:#}", Lab::plan(&cfg).unwrap_err());
        assert!(err.contains("too small"), "{err}");

        let host_vtep = LONG.replace("10.200.7.20", "10.200.0.1");
        let dir = TempPolicies::new(&[("verylongtenantname.toml", &host_vtep)]);
        let cfg = LabConfig {
            name: "cwlab".into(),
            policies: dir.0.clone(),
            ..LabConfig::default()
        };
        assert!(Lab::plan(&cfg).is_err());
        assert!(
            Lab::plan(&LabConfig {
                name: "Bad Name".into(),
                ..LabConfig::default()
            })
            .is_err()
        );
    }

    #[test]
    fn big_file_is_one_mib() {
        let a = one_mib();
        assert_eq!(a.len(), 1 << 20);
        assert_eq!(a, one_mib());
        assert_ne!(a[..8], a[8..16]);
    }
}
