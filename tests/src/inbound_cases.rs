//! The inbound (path 1) fixture cases as data: the flow, the packet's
//! shape and the verdict. `tests/inbound.rs` turns each into a fixture
//! (exact output frame, exact counters); `tests/cli_trace.rs` runs each
//! through `carwash trace` and expects the same verdict. One list, so the
//! two cannot drift apart.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use carwash_policy::Tenant;
use dataplane_common::DropReason;
use dataplane_common::hash::flow_hash;
use dataplane_common::types::{MAGLEV_SIZE, TenantInfo};

use crate::fabric::repo_policies;
use crate::packets::{syn_with_mss, tcp_sized, tcp4, tcp4_sized_df, tcp6};

pub const ALLOWED4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const ALLOWED4_HIGH: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 200);
pub const DENIED4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 66);
pub const ALLOWED6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbeef, 0, 0, 0, 0, 0x10);
pub const DENIED6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xdead, 0, 0, 0, 0, 0x66);
pub const ACME4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const ACME6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x10, 0, 0, 0, 0, 0x10);
pub const BETA4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
pub const GAMMA4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 30);
pub const GAMMA6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x30, 0, 0, 0, 0, 0x30);
/// In the upper half of 2001:db8:beef::/48, where gamma also allows jms.
pub const ALLOWED6_HIGH: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbeef, 0x8000, 0, 0, 0, 0x10);

/// A third tenant with overlapping allow prefixes: the /24 (the /48) may
/// use https, its upper /25 (/49) also jms.
pub const GAMMA: &str = r#"
name = "gamma"
vni = 1003
lane = "single"
vips = ["203.0.113.30", "2001:db8:30::30"]
vpc_cidrs = ["10.103.0.0/16"]
connectors = [{ vtep = "10.200.3.10", mac = "02:00:0a:c8:03:0a" }]
cores = [{ vtep = "10.200.3.20", mac = "02:00:0a:c8:03:14" }]
[[allow]]
cidr = "198.51.100.0/24"
classes = ["https"]
[[allow]]
cidr = "198.51.100.128/25"
classes = ["jms"]
[[allow]]
cidr = "2001:db8:beef::/48"
classes = ["https"]
[[allow]]
cidr = "2001:db8:beef:8000::/49"
classes = ["jms"]
"#;

/// The repository's tenants (acme, beta) and gamma, installed with ids 1, 2, 3.
pub fn tenants() -> Vec<Tenant> {
    let mut t = repo_policies().tenants;
    t.push(Tenant::from_toml(GAMMA).expect("gamma is valid"));
    t
}

/// The IP packet of a case, besides its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A data segment (ACK, PSH) with this payload.
    Data(&'static [u8]),
    /// A SYN announcing this MSS.
    Syn { mss: u16 },
    /// A data segment whose IP packet is `ip_len` bytes, DF as given.
    Sized { ip_len: usize, df: bool },
}

/// The machine a steered packet goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// The connector the tenant's Maglev table gives the flow.
    Connector,
    /// Core `i` (the active one at the time).
    Core(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Encapsulated to a machine of `tenant` (XDP_REDIRECT).
    Steer { tenant: &'static str, to: Machine },
    /// Dropped, counted under this reason.
    Drop(DropReason),
    /// Too big for the fabric: answered with ICMP fragmentation needed /
    /// packet too big carrying `mtu` (XDP_TX, `too_big_icmp_sent`).
    TooBig { mtu: u16 },
    /// Not carwash's business: XDP_PASS, untouched.
    Pass,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundCase {
    pub name: &'static str,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub shape: Shape,
    pub expect: Expect,
}

impl InboundCase {
    /// The frame, as the uplink receives it.
    pub fn packet(&self) -> Vec<u8> {
        match (self.shape, self.src, self.dst) {
            (Shape::Data(p), IpAddr::V4(s), IpAddr::V4(d)) => tcp4(s, d, self.sport, self.dport, p),
            (Shape::Data(p), IpAddr::V6(s), IpAddr::V6(d)) => tcp6(s, d, self.sport, self.dport, p),
            (Shape::Syn { mss }, s, d) => syn_with_mss(s, d, self.sport, self.dport, mss),
            (Shape::Sized { ip_len, df: true }, s, d) => tcp_sized(s, d, self.sport, self.dport, ip_len),
            (Shape::Sized { ip_len, df: false }, IpAddr::V4(s), IpAddr::V4(d)) => {
                tcp4_sized_df(s, d, self.sport, self.dport, ip_len, false)
            }
            _ => panic!("case {:?}: no such packet", self.name),
        }
    }

    /// The `carwash trace` flags that describe the same packet.
    pub fn trace_args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "--src",
            &self.src.to_string(),
            "--dst",
            &self.dst.to_string(),
            "--sport",
            &self.sport.to_string(),
            "--dport",
            &self.dport.to_string(),
            "--proto",
            "tcp",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let ip_hdr = if self.src.is_ipv6() { 40 } else { 20 };
        match self.shape {
            Shape::Data(p) => a.extend(["--len".into(), (ip_hdr + 20 + p.len()).to_string()]),
            Shape::Syn { mss } => a.extend(["--syn".into(), "--mss".into(), mss.to_string()]),
            Shape::Sized { ip_len, df } => {
                a.extend(["--len".into(), ip_len.to_string()]);
                if !df {
                    a.push("--no-df".into());
                }
            }
        }
        a
    }

    /// The index of the machine a steered case goes to, given the tenant's
    /// record as the maps hold it.
    pub fn machine_index(&self, info: &TenantInfo) -> usize {
        match self.expect {
            Expect::Steer {
                to: Machine::Connector, ..
            } => {
                let h = flow_hash(&addr16(self.src), &addr16(self.dst), self.sport, self.dport, 6);
                info.maglev[(h % MAGLEV_SIZE as u32) as usize] as usize
            }
            Expect::Steer {
                to: Machine::Core(i), ..
            } => i,
            _ => panic!("case {:?} is not steered", self.name),
        }
    }
}

pub fn addr16(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => {
            let mut o = [0u8; 16];
            o[..4].copy_from_slice(&a.octets());
            o
        }
        IpAddr::V6(a) => a.octets(),
    }
}

fn case(name: &'static str, src: IpAddr, dst: IpAddr, ports: (u16, u16), shape: Shape, expect: Expect) -> InboundCase {
    InboundCase {
        name,
        src,
        dst,
        sport: ports.0,
        dport: ports.1,
        shape,
        expect,
    }
}

const fn acme(to: Machine) -> Expect {
    Expect::Steer { tenant: "acme", to }
}

/// Every inbound case, with every tenant of [`tenants`] installed and
/// acme's first core active.
pub fn inbound_cases() -> Vec<InboundCase> {
    use Expect::*;
    use Machine::*;
    let (c4, c4h, d4) = (IpAddr::V4(ALLOWED4), IpAddr::V4(ALLOWED4_HIGH), IpAddr::V4(DENIED4));
    let (c6, d6) = (IpAddr::V6(ALLOWED6), IpAddr::V6(DENIED6));
    let (a4, a6) = (IpAddr::V4(ACME4), IpAddr::V6(ACME6));
    let (b4, g4) = (IpAddr::V4(BETA4), IpAddr::V4(GAMMA4));
    let get = Shape::Data(b"GET / HTTP/1.1");
    let x = Shape::Data(b"x");
    let jms = Shape::Data(b"jms");
    vec![
        case("https v4 to a connector", c4, a4, (40000, 443), get, acme(Connector)),
        case("https v6 to a connector", c6, a6, (40001, 443), get, acme(Connector)),
        case("jms v4 to the active core", c4, a4, (40002, 61616), jms, acme(Core(0))),
        case("jms v6 to the active core", c6, a6, (40003, 61617), jms, acme(Core(0))),
        // The SYN's MSS: 1500 fabric MTU - 50 encapsulation - 20 IP - 20 TCP.
        case(
            "SYN MSS clamped to the fabric",
            c4,
            a4,
            (40004, 443),
            Shape::Syn { mss: 1460 },
            acme(Connector),
        ),
        case(
            "SYN v6 MSS clamped",
            c6,
            a6,
            (40005, 443),
            Shape::Syn { mss: 1440 },
            acme(Connector),
        ),
        case(
            "SYN with a small MSS untouched",
            c4,
            a4,
            (40006, 443),
            Shape::Syn { mss: 1200 },
            acme(Connector),
        ),
        // 1450 bytes of IP fit (1500 - 50 usable), 1451 do not.
        case(
            "largest packet that fits",
            c4,
            a4,
            (40010, 443),
            Shape::Sized { ip_len: 1450, df: true },
            acme(Connector),
        ),
        case(
            "unknown port on a VIP",
            c4,
            a4,
            (40000, 80),
            x,
            Drop(DropReason::NoService),
        ),
        case(
            "unknown port on a v6 VIP",
            c6,
            a6,
            (40000, 80),
            x,
            Drop(DropReason::NoService),
        ),
        case(
            "source in no allowlist",
            d4,
            a4,
            (40000, 443),
            x,
            Drop(DropReason::NotAllowed),
        ),
        case(
            "v6 source in no allowlist",
            d6,
            a6,
            (40000, 443),
            x,
            Drop(DropReason::NotAllowed),
        ),
        case(
            "allowed for https, not jms",
            c4,
            b4,
            (40000, 61616),
            x,
            Drop(DropReason::NotAllowed),
        ),
        case(
            "beta's https allow covers only the lower half",
            c4h,
            b4,
            (40000, 443),
            x,
            Drop(DropReason::NotAllowed),
        ),
        case(
            "overlap: jms from the lower /25",
            c4,
            g4,
            (40000, 61616),
            x,
            Drop(DropReason::NotAllowed),
        ),
        case(
            "ipv4 too big with DF: fragmentation needed",
            c4,
            a4,
            (40007, 443),
            Shape::Sized { ip_len: 1451, df: true },
            TooBig { mtu: 1450 },
        ),
        case(
            "ipv4 too big without DF: dropped",
            c4,
            a4,
            (40008, 443),
            Shape::Sized {
                ip_len: 1451,
                df: false,
            },
            Drop(DropReason::TooBig),
        ),
        case(
            "ipv6 too big: packet too big",
            c6,
            a6,
            (40009, 443),
            Shape::Sized { ip_len: 1451, df: true },
            TooBig { mtu: 1450 },
        ),
        case(
            "not a VIP: passes untouched",
            c4,
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, 99)),
            (40000, 443),
            x,
            Pass,
        ),
        case(
            "not a VIP v6: passes untouched",
            c6,
            "2001:db8:10::99".parse().expect("literal"),
            (40000, 443),
            x,
            Pass,
        ),
        case(
            "v6: allowed for https, not jms (overlap: the lower /49)",
            c6,
            IpAddr::V6(GAMMA6),
            (40000, 61616),
            x,
            Drop(DropReason::NotAllowed),
        ),
        case(
            "v6 overlap: jms from the upper /49",
            IpAddr::V6(ALLOWED6_HIGH),
            IpAddr::V6(GAMMA6),
            (40000, 61616),
            x,
            Steer {
                tenant: "gamma",
                to: Core(0),
            },
        ),
        case(
            "v6 overlap: https from the upper /49 (inherited from the /48)",
            IpAddr::V6(ALLOWED6_HIGH),
            IpAddr::V6(GAMMA6),
            (40001, 443),
            x,
            Steer {
                tenant: "gamma",
                to: Connector,
            },
        ),
        case(
            "overlap: jms from the upper /25",
            c4h,
            g4,
            (40000, 61616),
            x,
            Steer {
                tenant: "gamma",
                to: Core(0),
            },
        ),
    ]
}

/// The cases after acme's standby core (1) was made the active one.
pub fn after_core_switch() -> Vec<InboundCase> {
    let (c4, c6) = (IpAddr::V4(ALLOWED4), IpAddr::V6(ALLOWED6));
    let (a4, a6) = (IpAddr::V4(ACME4), IpAddr::V6(ACME6));
    let jms = Shape::Data(b"jms");
    vec![
        case(
            "jms v4 after the switch",
            c4,
            a4,
            (40002, 61616),
            jms,
            acme(Machine::Core(1)),
        ),
        case(
            "jms v6 after the switch",
            c6,
            a6,
            (40003, 61617),
            jms,
            acme(Machine::Core(1)),
        ),
    ]
}
