//! A reference model of the XDP programs, written from the product contract and the
//! documented choices (docs/) rather than from the programs' code: given
//! the policy the maps hold (tenants, which machines take traffic, the
//! active core, whether a tenant is ready) and a frame, it says what the
//! `uplink` or `fabric` program must do: the action, the counters that
//! move (drop reason included), the output frame, and the tenant, class
//! and backend. `tests/differential.rs` runs it against the real programs.
//!
//! What the model takes from the shared ABI crate rather than deriving:
//! the flow hash and the VXLAN source port it gives (functions of the
//! packet the contract leaves to the implementation), and the Maglev table
//! as the maps hold it (the model checks the table instead: every bucket
//! names a connector that takes traffic). Everything else — parsing,
//! lookups, allowlists with overlapping prefixes, the order of the checks,
//! the bytes of every output frame and its checksums — is its own.
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use carwash_policy::{Class, Tenant};
use dataplane_common::hash::{flow_hash, vxlan_source_port};
use dataplane_common::{Counter, DropReason};
use ipnetwork::IpNetwork;

use crate::fixture::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX};

/// Path 5 of the contract: an ICMP error sent to a VIP about a steered flow goes to
/// the backend of the flow it quotes (only a flow the client may open: the
/// quoted destination must be allowed for the class). While false the
/// model drops it as `no_service`, as the programs did before.
pub const MODEL_ICMP_TO_VIP_STEERED: bool = true;

/// Path 5 of the contract / MSS clamping both ways: a SYN-ACK a machine sends back
/// through the fabric has its MSS clamped to what the tunnel carries.
/// While false the model leaves it untouched, as the programs did before.
pub const MODEL_SYNACK_CLAMPED: bool = true;

/// Path 5 of the contract asks for fragmentation-needed for every IPv4 packet with
/// DF that does not fit; the programs answer only headers without options
/// and drop the others as `too_big` (docs/architecture.md, "Too big"). While false the
/// model does the same; set to true, the model answers those too.
pub const MODEL_FRAG_NEEDED_WITH_IPV4_OPTIONS: bool = false;

/// How many IPv6 extension headers the parser follows before the transport
/// header (docs/architecture.md: "up to four").
pub const MODEL_IPV6_EXT_HEADERS: usize = 4;

/// VXLAN encapsulation: outer IPv4 + UDP + VXLAN + inner Ethernet.
pub const ENCAP: usize = 50;

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMP6: u8 = 58;

/// The host side of the model: addresses, MACs and the routes the
/// fixture namespace's FIB holds.
#[derive(Debug, Clone)]
pub struct Host {
    pub vtep: Ipv4Addr,
    pub router_mac: [u8; 6],
    pub fabric_mac: [u8; 6],
    pub fabric_mtu: u16,
    pub uplink_mac: [u8; 6],
    pub internet_mac: [u8; 6],
    pub snat_ports: (u16, u16),
    /// The fabric's network and the host's address in it.
    pub fabric_net: ipnetwork::Ipv4Network,
    /// Resolved neighbours on the fabric (VTEPs), with their MACs.
    pub fabric_neighbours: HashMap<Ipv4Addr, [u8; 6]>,
    /// The uplink's own networks: only the router in them is resolved.
    pub uplink_net4: ipnetwork::Ipv4Network,
    pub uplink_router4: Ipv4Addr,
    pub uplink_net6: ipnetwork::Ipv6Network,
    pub uplink_router6: Ipv6Addr,
}

/// A tenant as the maps hold it.
#[derive(Debug, Clone)]
pub struct MTenant {
    pub id: u32,
    pub policy: Tenant,
    /// Whether the policy is fully in place (else: fail closed).
    pub ready: bool,
    /// Connectors that take traffic (up and not drained).
    pub connectors_up: [bool; 2],
    pub active_core: usize,
    /// The Maglev table the maps hold: connector index per bucket.
    pub maglev: Vec<u8>,
}

impl MTenant {
    fn classes_allowed(&self, src: IpAddr) -> (bool, bool) {
        let mut https = false;
        let mut jms = false;
        for a in &self.policy.allow {
            if a.cidr.is_ipv4() == src.is_ipv4() && a.cidr.contains(src) {
                https |= a.classes.contains(&Class::Https);
                jms |= a.classes.contains(&Class::Jms);
            }
        }
        (https, jms)
    }

    fn in_vpc(&self, a: IpAddr) -> bool {
        contains(&self.policy.vpc_cidrs, a)
    }

    fn egress_allowed(&self, a: IpAddr) -> bool {
        self.policy.egress.as_ref().is_some_and(|e| contains(&e.allow, a))
    }

    fn egress_ip(&self, v6: bool) -> Option<IpAddr> {
        let e = self.policy.egress.as_ref()?;
        if v6 {
            e.snat_ipv6.map(IpAddr::V6)
        } else {
            Some(IpAddr::V4(e.snat_ipv4))
        }
    }

    fn egress_ips(&self) -> Vec<IpAddr> {
        [self.egress_ip(false), self.egress_ip(true)]
            .into_iter()
            .flatten()
            .collect()
    }

    fn machine_vteps(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.policy.connectors.iter().chain(&self.policy.cores).map(|b| b.vtep)
    }

    /// The machine of slot `s` (connectors 0-1, cores 2-3).
    fn slot(&self, s: usize) -> &carwash_policy::Backend {
        if s < 2 {
            &self.policy.connectors[s]
        } else {
            &self.policy.cores[s - 2]
        }
    }

    /// Checks the Maglev table against the machines' state: every bucket
    /// names a connector that takes traffic, and each of those holds a fair
    /// share. The program trusts the table; this is where it is judged.
    pub fn check_maglev(&self) -> Result<(), String> {
        let n = self.policy.connectors.len();
        let live: Vec<usize> = (0..n).filter(|&i| self.connectors_up[i]).collect();
        if live.is_empty() {
            return Ok(());
        }
        let mut held = [0usize; 2];
        for (b, &i) in self.maglev.iter().take(251).enumerate() {
            let i = i as usize;
            if i >= n || !self.connectors_up[i] {
                return Err(format!(
                    "tenant {}: Maglev bucket {b} names connector {i}, which takes no traffic",
                    self.policy.name
                ));
            }
            held[i] += 1;
        }
        for &i in &live {
            if held[i] < 251 / live.len() - 20 {
                return Err(format!(
                    "tenant {}: connector {i} holds {} of 251 buckets",
                    self.policy.name, held[i]
                ));
            }
        }
        Ok(())
    }
}

fn contains(nets: &[IpNetwork], a: IpAddr) -> bool {
    nets.iter().any(|n| n.is_ipv4() == a.is_ipv4() && n.contains(a))
}

/// What a frame is, as far as carwash looks.
#[derive(Debug, Clone)]
pub struct Ip {
    pub l3: usize,
    pub vlans: usize,
    pub v6: bool,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// Offset of the transport header (meaningless for later fragments).
    pub l4: usize,
    pub later_fragment: bool,
    pub df: bool,
    /// IPv4: the header length; IPv6: 40.
    pub ip_hdr: usize,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
}

impl Ip {
    /// The flow hash of the packet's five-tuple (ICMP: identifier and
    /// type/code in the port fields).
    pub fn hash(&self) -> u32 {
        let (s, d) = (addr16(self.src), addr16(self.dst));
        flow_hash(&s, &d, self.sport, self.dport, self.proto)
    }

    fn is_icmp_error(&self) -> bool {
        match (self.proto, self.v6) {
            (ICMP, false) => matches!(self.icmp_type, 3 | 11 | 12),
            (ICMP6, true) => (1..=4).contains(&self.icmp_type),
            _ => false,
        }
    }

    fn is_echo(&self, request: bool) -> bool {
        match (self.proto, self.v6, request) {
            (ICMP, false, true) => self.icmp_type == 8,
            (ICMP, false, false) => self.icmp_type == 0,
            (ICMP6, true, true) => self.icmp_type == 128,
            (ICMP6, true, false) => self.icmp_type == 129,
            _ => false,
        }
    }
}

pub fn addr16(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => {
            let mut o = [0; 16];
            o[..4].copy_from_slice(&a.octets());
            o
        }
        IpAddr::V6(a) => a.octets(),
    }
}

#[derive(Debug, Clone)]
pub enum Parsed {
    Ip(Ip),
    NotIp,
    Malformed(Counter),
}

fn be16(f: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([f[off], f[off + 1]])
}

/// Parses the frame whose Ethernet header starts at `eth` (docs/architecture.md: up to
/// two VLAN tags, IPv4 with options, IPv6 behind up to four hop-by-hop,
/// routing, destination-options, fragment or AH headers).
pub fn parse(f: &[u8], eth: usize) -> Parsed {
    let have = |off: usize, n: usize| off + n <= f.len();
    let trunc = Parsed::Malformed(Counter::MalformedTruncated);
    if !have(eth, 14) {
        return trunc;
    }
    let mut ethertype = be16(f, eth + 12);
    let mut off = eth + 14;
    let mut vlans = 0;
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        if vlans == 2 {
            return Parsed::Malformed(Counter::MalformedVlanDepth);
        }
        if !have(off, 4) {
            return trunc;
        }
        ethertype = be16(f, off + 2);
        off += 4;
        vlans += 1;
    }
    let l3 = off;
    let mut ip = Ip {
        l3,
        vlans,
        v6: false,
        src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        proto: 0,
        l4: 0,
        later_fragment: false,
        df: true,
        ip_hdr: 0,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
    };
    match ethertype {
        0x0800 => {
            if !have(l3, 20) {
                return trunc;
            }
            let ihl = (f[l3] & 0x0f) as usize * 4;
            if f[l3] >> 4 != 4 || ihl < 20 || (be16(f, l3 + 2) as usize) < ihl {
                return Parsed::Malformed(Counter::MalformedIpHeader);
            }
            if !have(l3, ihl) {
                return trunc;
            }
            ip.ip_hdr = ihl;
            ip.l4 = l3 + ihl;
            ip.proto = f[l3 + 9];
            ip.src = IpAddr::V4(Ipv4Addr::new(f[l3 + 12], f[l3 + 13], f[l3 + 14], f[l3 + 15]));
            ip.dst = IpAddr::V4(Ipv4Addr::new(f[l3 + 16], f[l3 + 17], f[l3 + 18], f[l3 + 19]));
            let frag = be16(f, l3 + 6);
            ip.later_fragment = frag & 0x1fff != 0;
            ip.df = frag & 0x4000 != 0;
        }
        0x86dd => {
            if !have(l3, 40) {
                return trunc;
            }
            if f[l3] >> 4 != 6 {
                return Parsed::Malformed(Counter::MalformedIpHeader);
            }
            ip.v6 = true;
            ip.ip_hdr = 40;
            let a = |o: usize| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&f[o..o + 16]).unwrap()));
            ip.src = a(l3 + 8);
            ip.dst = a(l3 + 24);
            let mut next = f[l3 + 6];
            let mut off = l3 + 40;
            let mut exts = 0;
            loop {
                match next {
                    0 | 43 | 60 | 51 | 44 => {
                        if exts == MODEL_IPV6_EXT_HEADERS {
                            return Parsed::Malformed(Counter::MalformedIpv6ExtHeaders);
                        }
                        exts += 1;
                        let n = if next == 44 { 8 } else { 2 };
                        if !have(off, n) {
                            return trunc;
                        }
                        let this = next;
                        next = f[off];
                        off += match this {
                            44 => {
                                if be16(f, off + 2) & 0xfff8 != 0 {
                                    ip.later_fragment = true;
                                }
                                8
                            }
                            51 => (f[off + 1] as usize + 2) * 4,
                            _ => (f[off + 1] as usize + 1) * 8,
                        };
                    }
                    p => {
                        ip.proto = p;
                        ip.l4 = off;
                        break;
                    }
                }
            }
        }
        _ => return Parsed::NotIp,
    }
    if ip.later_fragment {
        return Parsed::Ip(ip);
    }
    let l4 = ip.l4;
    match ip.proto {
        TCP => {
            if !have(l4, 20) {
                return trunc;
            }
            if f[l4 + 12] >> 4 < 5 {
                return Parsed::Malformed(Counter::MalformedTcpHeader);
            }
            ip.sport = be16(f, l4);
            ip.dport = be16(f, l4 + 2);
            ip.tcp_flags = f[l4 + 13];
        }
        UDP => {
            if !have(l4, 8) {
                return trunc;
            }
            ip.sport = be16(f, l4);
            ip.dport = be16(f, l4 + 2);
        }
        ICMP | ICMP6 => {
            if !have(l4, 8) {
                return trunc;
            }
            ip.icmp_type = f[l4];
            ip.icmp_code = f[l4 + 1];
            ip.sport = be16(f, l4 + 4);
            ip.dport = (f[l4] as u16) << 8 | f[l4 + 1] as u16;
        }
        _ => {}
    }
    Parsed::Ip(ip)
}

/// What the program must leave in the frame.
#[derive(Debug, Clone)]
pub enum Out {
    Unchanged,
    Exact(Vec<u8>),
    /// A source-NATed frame whose port the program chooses: the model
    /// checks it lies in the range and builds the rest around it.
    Snat(SnatFrame),
}

/// A translated outbound frame, complete but for the port.
#[derive(Debug, Clone)]
pub struct SnatFrame {
    /// The frame with the new source address and MACs; port and transport
    /// checksum as they came in.
    pub frame: Vec<u8>,
    pub ip: Ip,
    pub tenant: u32,
    pub origin: usize,
    /// Where the port (ICMP: the echo identifier) lies.
    pub port_off: usize,
    pub old_port: u16,
    pub egress: IpAddr,
}

impl SnatFrame {
    /// The frame with `port` written, checksums updated.
    pub fn with_port(&self, port: u16) -> Vec<u8> {
        let mut f = self.frame.clone();
        f[self.port_off..self.port_off + 2].copy_from_slice(&port.to_be_bytes());
        let ck = match self.ip.proto {
            TCP => Some(self.ip.l4 + 16),
            UDP => Some(self.ip.l4 + 6),
            ICMP | ICMP6 => Some(self.ip.l4 + 2),
            _ => None,
        };
        if let Some(ck) = ck {
            let old = be16(&f, ck);
            if !(self.ip.proto == UDP && !self.ip.v6 && old == 0) {
                let mut new = csum_update(old, &self.old_port.to_be_bytes(), &port.to_be_bytes());
                if self.ip.proto == UDP && !self.ip.v6 && new == 0 {
                    new = 0xffff;
                }
                f[ck..ck + 2].copy_from_slice(&new.to_be_bytes());
            }
        }
        f
    }
}

#[derive(Debug, Clone)]
pub struct Verdict {
    pub action: u32,
    /// Every global counter that moves, by how much (the side's block).
    pub counters: Vec<(Counter, u64)>,
    pub drops: Vec<DropReason>,
    pub output: Out,
    /// Whose packet it is, when carwash knows.
    pub tenant: Option<u32>,
    /// A steered packet's machine: tenant id and slot (connectors 0-1,
    /// cores 2-3).
    pub backend: Option<(u32, usize)>,
    /// The port class the tenant's counters file it under: 0 https, 1
    /// jms, 2 none (not a service's traffic).
    pub class: u8,
}

impl Verdict {
    fn new(len: usize) -> Verdict {
        Verdict {
            action: XDP_PASS,
            counters: vec![(Counter::Packets, 1), (Counter::Bytes, len as u64)],
            drops: vec![],
            output: Out::Unchanged,
            tenant: None,
            backend: None,
            class: 2,
        }
    }

    fn count(&mut self, c: Counter) {
        self.counters.push((c, 1));
    }

    fn finish(mut self, action: u32) -> Verdict {
        self.action = action;
        self.count(match action {
            XDP_DROP => Counter::ActionDrop,
            XDP_TX => Counter::ActionTx,
            XDP_REDIRECT => Counter::ActionRedirect,
            _ => Counter::ActionPass,
        });
        self
    }

    fn drop(mut self, why: DropReason) -> Verdict {
        self.drops.push(why);
        self.finish(XDP_DROP)
    }

    fn protocols(&mut self, ip: &Ip) {
        if ip.vlans > 0 {
            self.count(Counter::Vlan);
        }
        self.count(if ip.v6 { Counter::Ipv6 } else { Counter::Ipv4 });
        self.count(if ip.later_fragment {
            Counter::Fragment
        } else {
            match ip.proto {
                TCP => Counter::Tcp,
                UDP => Counter::Udp,
                ICMP => Counter::Icmp,
                ICMP6 => Counter::Icmpv6,
                _ => Counter::OtherL4,
            }
        });
    }
}

/// A flow the model saw translated: what a reply to it goes back to.
#[derive(Debug, Clone)]
pub struct Tracked {
    pub tenant: u32,
    pub addr: IpAddr,
    pub port: u16,
    pub origin: usize,
}

/// Reply key: (remote, egress IP, remote port, translated port, protocol).
pub type ReplyKey = (IpAddr, IpAddr, u16, u16, u8);

#[derive(Debug, Clone)]
pub struct Model {
    pub host: Host,
    pub tenants: Vec<MTenant>,
    /// Translations the model saw made, by reply key.
    pub replies: BTreeMap<ReplyKey, Tracked>,
}

enum Owner<'a> {
    Vip(&'a MTenant),
    Egress(&'a MTenant),
}

impl Model {
    pub fn tenant(&self, id: u32) -> Option<&MTenant> {
        self.tenants.iter().find(|t| t.id == id)
    }

    fn owner(&self, a: IpAddr) -> Option<Owner<'_>> {
        for t in &self.tenants {
            if t.policy.vips.contains(&a) {
                return Some(Owner::Vip(t));
            }
            if t.egress_ips().contains(&a) {
                return Some(Owner::Egress(t));
            }
        }
        None
    }

    /// The tenant that owns address `a` (VIP or egress IP).
    pub fn owner_of(&self, a: IpAddr) -> Option<&MTenant> {
        match self.owner(a)? {
            Owner::Vip(t) | Owner::Egress(t) => Some(t),
        }
    }

    pub fn tenant_of_vni(&self, vni: u32) -> Option<&MTenant> {
        self.tenants.iter().find(|t| t.policy.vni == vni)
    }

    /// The next hop to `dst` out of the uplink, as the fixture namespace's
    /// FIB answers: (source MAC, destination MAC), or none.
    fn route(&self, dst: IpAddr) -> Option<([u8; 6], [u8; 6])> {
        let h = &self.host;
        match dst {
            IpAddr::V4(d) => {
                // Out of the uplink only (the contract: "forward to the
                // internet"): the fabric's network is no way out.
                if h.fabric_net.contains(d) {
                    None
                } else if h.uplink_net4.contains(d) {
                    (d == h.uplink_router4).then_some((h.uplink_mac, h.internet_mac))
                } else {
                    Some((h.uplink_mac, h.internet_mac))
                }
            }
            IpAddr::V6(d) => {
                if h.uplink_net6.contains(d) {
                    (d == h.uplink_router6).then_some((h.uplink_mac, h.internet_mac))
                } else {
                    Some((h.uplink_mac, h.internet_mac))
                }
            }
        }
    }

    fn usable(&self) -> usize {
        self.host.fabric_mtu as usize - ENCAP
    }

    fn mss_for(&self, v6: bool) -> u16 {
        (self.usable() - if v6 { 40 } else { 20 } - 20) as u16
    }

    /// The `uplink` program on a frame from the internet.
    pub fn uplink(&self, f: &[u8]) -> Verdict {
        let (ip, mut v) = match parsed(f) {
            Ok(x) => x,
            Err(v) => return *v,
        };
        let owner = match self.owner(ip.dst) {
            None => return v.finish(XDP_PASS),
            Some(o) => o,
        };
        match owner {
            Owner::Vip(t) => {
                v.tenant = Some(t.id);
                if ip.later_fragment {
                    return v.drop(DropReason::Fragment);
                }
                if ip.is_icmp_error() && MODEL_ICMP_TO_VIP_STEERED {
                    return self.icmp_to_vip(f, &ip, t, v);
                }
                let class = if ip.proto != TCP {
                    None
                } else if t.policy.https_ports.contains(&ip.dport) {
                    Some(Class::Https)
                } else if t.policy.jms_ports.contains(&ip.dport) {
                    Some(Class::Jms)
                } else {
                    None
                };
                match class {
                    None => v.drop(DropReason::NoService),
                    Some(c) => self.steer(f, &ip, t, c, v),
                }
            }
            Owner::Egress(t) => {
                v.tenant = Some(t.id);
                self.to_egress(f, &ip, t, v)
            }
        }
    }

    /// Path 1 for a packet to a service of tenant `t`.
    fn steer(&self, f: &[u8], ip: &Ip, t: &MTenant, class: Class, mut v: Verdict) -> Verdict {
        v.class = match class {
            Class::Https => 0,
            Class::Jms => 1,
        };
        if !t.ready {
            return v.drop(DropReason::NotReady);
        }
        let (https, jms) = t.classes_allowed(ip.src);
        if !match class {
            Class::Https => https,
            Class::Jms => jms,
        } {
            return v.drop(DropReason::NotAllowed);
        }
        let hash = ip.hash();
        let slot = match class {
            Class::Https => {
                let i = t.maglev[(hash % 251) as usize] as usize;
                if i >= t.policy.connectors.len() || !t.connectors_up[i] {
                    return v.drop(DropReason::NoBackend);
                }
                i
            }
            Class::Jms => 2 + t.active_core,
        };
        self.encapsulate_out(f, ip, t, slot, hash, v)
    }

    /// Clamp, size check and encapsulation towards machine `slot` of `t`.
    fn encapsulate_out(&self, f: &[u8], ip: &Ip, t: &MTenant, slot: usize, hash: u32, mut v: Verdict) -> Verdict {
        let mut frame = f.to_vec();
        clamp_mss(&mut frame, ip, self.mss_for(ip.v6));
        if frame.len() - ip.l3 > self.usable() {
            return self.too_big(&frame, ip, v);
        }
        let machine = t.slot(slot);
        let Some(&dmac) = self.host.fabric_neighbours.get(&machine.vtep) else {
            return v.drop(DropReason::NoRoute);
        };
        v.backend = Some((t.id, slot));
        v.count(Counter::Steered);
        v.output = Out::Exact(self.vxlan(&frame[ip.l3..], ip.v6, t.policy.vni, machine, dmac, hash));
        v.finish(XDP_REDIRECT)
    }

    /// The VXLAN frame carrying `inner_ip` to `machine`.
    fn vxlan(
        &self,
        inner_ip: &[u8],
        v6: bool,
        vni: u32,
        machine: &carwash_policy::Backend,
        dmac: [u8; 6],
        hash: u32,
    ) -> Vec<u8> {
        let h = &self.host;
        let mut o = Vec::with_capacity(64 + inner_ip.len());
        o.extend_from_slice(&dmac);
        o.extend_from_slice(&h.fabric_mac);
        o.extend_from_slice(&[0x08, 0x00]);
        let tot = (ENCAP + inner_ip.len()) as u16;
        let mut iph = [0u8; 20];
        iph[0] = 0x45;
        iph[2..4].copy_from_slice(&tot.to_be_bytes());
        iph[6] = 0x40;
        iph[8] = 64;
        iph[9] = UDP;
        iph[12..16].copy_from_slice(&h.vtep.octets());
        iph[16..20].copy_from_slice(&machine.vtep.octets());
        let c = checksum(&iph);
        iph[10..12].copy_from_slice(&c.to_be_bytes());
        o.extend_from_slice(&iph);
        o.extend_from_slice(&vxlan_source_port(hash).to_be_bytes());
        o.extend_from_slice(&4789u16.to_be_bytes());
        o.extend_from_slice(&(tot - 20).to_be_bytes());
        o.extend_from_slice(&[0, 0]);
        o.extend_from_slice(&[0x08, 0, 0, 0]);
        o.extend_from_slice(&vni.to_be_bytes()[1..4]);
        o.push(0);
        o.extend_from_slice(&machine.mac.0);
        o.extend_from_slice(&h.router_mac);
        o.extend_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
        o.extend_from_slice(inner_ip);
        o
    }

    /// A packet too big for the fabric: answered, or dropped.
    fn too_big(&self, f: &[u8], ip: &Ip, mut v: Verdict) -> Verdict {
        let mtu = self.usable() as u16;
        let l3 = ip.l3;
        let answer = if ip.v6 {
            let quote = &f[l3..l3 + 48];
            let mut m = vec![2, 0, 0, 0, 0, 0];
            m.extend_from_slice(&mtu.to_be_bytes());
            m.extend_from_slice(quote);
            let mut ph = Vec::new();
            ph.extend_from_slice(&addr16(ip.dst));
            ph.extend_from_slice(&addr16(ip.src));
            ph.extend_from_slice(&(m.len() as u32).to_be_bytes());
            ph.extend_from_slice(&[0, 0, 0, ICMP6]);
            ph.extend_from_slice(&m);
            let c = checksum(&ph);
            m[2..4].copy_from_slice(&c.to_be_bytes());
            let mut h = vec![0x60, 0, 0, 0];
            h.extend_from_slice(&(m.len() as u16).to_be_bytes());
            h.extend_from_slice(&[ICMP6, 64]);
            h.extend_from_slice(&addr16(ip.dst));
            h.extend_from_slice(&addr16(ip.src));
            h.extend_from_slice(&m);
            Some(h)
        } else if ip.df && (ip.ip_hdr == 20 || MODEL_FRAG_NEEDED_WITH_IPV4_OPTIONS) {
            let quote = &f[l3..l3 + ip.ip_hdr + 8];
            let mut m = vec![3, 4, 0, 0, 0, 0];
            m.extend_from_slice(&mtu.to_be_bytes());
            m.extend_from_slice(quote);
            let c = checksum(&m);
            m[2..4].copy_from_slice(&c.to_be_bytes());
            let mut h = vec![0x45, 0];
            h.extend_from_slice(&((20 + m.len()) as u16).to_be_bytes());
            h.extend_from_slice(&[0, 0, 0, 0, 64, ICMP, 0, 0]);
            h.extend_from_slice(&addr16(ip.dst)[..4]);
            h.extend_from_slice(&addr16(ip.src)[..4]);
            let c = checksum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            h.extend_from_slice(&m);
            Some(h)
        } else {
            None
        };
        match answer {
            Some(a) => {
                let mut o = Vec::new();
                o.extend_from_slice(&f[6..12]);
                o.extend_from_slice(&f[0..6]);
                o.extend_from_slice(&f[12..l3]);
                o.extend_from_slice(&a);
                v.output = Out::Exact(o);
                v.drops.push(DropReason::TooBigIcmpSent);
                v.finish(XDP_TX)
            }
            None => v.drop(DropReason::TooBig),
        }
    }

    /// Path 5 of the contract for an ICMP error to a VIP: the quoted packet left the
    /// VIP towards the client; the error goes where that flow goes.
    fn icmp_to_vip(&self, f: &[u8], ip: &Ip, t: &MTenant, mut v: Verdict) -> Verdict {
        let e = ip.l4 + 8;
        // The quote must hold a whole IP header without options and the
        // first 8 bytes after it, as RFC 792 and 4443 ask of a router.
        let qlen = if ip.v6 { 40 } else { 20 };
        if f.len() < e + qlen + 8 || (!ip.v6 && f[e] != 0x45) {
            return v.drop(DropReason::Malformed);
        }
        let q = match parse_quote(f, e, ip.v6) {
            Some(q) if q.src == ip.dst && q.proto == TCP => q,
            _ => return v.drop(DropReason::NoService),
        };
        let class = if t.policy.https_ports.contains(&q.sport) {
            Class::Https
        } else if t.policy.jms_ports.contains(&q.sport) {
            Class::Jms
        } else {
            return v.drop(DropReason::NoService);
        };
        // Counted for the tenant under no class: the error is not a packet
        // of the service's port (docs/operating.md, the per-tenant classes).
        v.class = 2;
        if !t.ready {
            return v.drop(DropReason::NotReady);
        }
        // The quoted packet went to the client: the client must be one
        // that may open a flow of this class.
        let (https, jms) = t.classes_allowed(q.dst);
        if !match class {
            Class::Https => https,
            Class::Jms => jms,
        } {
            return v.drop(DropReason::NotAllowed);
        }
        // An error about an error is never sent: one too big is dropped.
        if f.len() - ip.l3 > self.usable() {
            return v.drop(DropReason::TooBig);
        }
        let hash = flow_hash(&addr16(q.dst), &addr16(q.src), q.dport, q.sport, TCP);
        let slot = match class {
            Class::Https => {
                let i = t.maglev[(hash % 251) as usize] as usize;
                if i >= t.policy.connectors.len() || !t.connectors_up[i] {
                    return v.drop(DropReason::NoBackend);
                }
                i
            }
            Class::Jms => 2 + t.active_core,
        };
        self.encapsulate_out(f, ip, t, slot, hash, v)
    }

    /// Path 4 (and 5) for a packet to tenant `t`'s egress IP.
    fn to_egress(&self, f: &[u8], ip: &Ip, t: &MTenant, v: Verdict) -> Verdict {
        if ip.later_fragment {
            return v.drop(DropReason::Fragment);
        }
        if ip.is_icmp_error() {
            let e = ip.l4 + 8;
            // The quote must be readable as far as the lookup needs it.
            let (qlen, v4_ok) = if ip.v6 {
                (40, true)
            } else {
                (20, f.len() > e && f[e] == 0x45)
            };
            if f.len() < e + qlen || !v4_ok {
                return v.drop(DropReason::Malformed);
            }
            let q = parse_quote(f, e, ip.v6).expect("length checked");
            if q.src != ip.dst {
                return v.drop(DropReason::NoConntrack);
            }
            if f.len() < e + qlen + 8 {
                return v.drop(DropReason::Malformed);
            }
            let qport = match q.proto {
                TCP | UDP => q.sport,
                ICMP | ICMP6 => be16(f, e + qlen + 4),
                _ => return v.drop(DropReason::NoConntrack),
            };
            let rport = if matches!(q.proto, TCP | UDP) { q.dport } else { 0 };
            let Some(tr) = self.replies.get(&(q.dst, q.src, rport, qport, q.proto)) else {
                return v.drop(DropReason::NoConntrack);
            };
            if tr.tenant != t.id {
                return v.drop(DropReason::NoConntrack);
            }
            if f.len() - ip.l3 > self.usable() {
                return v.drop(DropReason::TooBig);
            }
            let mut v = v;
            v.count(Counter::SnatIcmpError);
            if !t.ready {
                return v.drop(DropReason::NotReady);
            }
            let frame = self.translate_error(f, ip, e, qlen, q.proto, tr);
            let machine = t.slot(tr.origin);
            let Some(&dmac) = self.host.fabric_neighbours.get(&machine.vtep) else {
                return v.drop(DropReason::NoRoute);
            };
            v.backend = Some((t.id, tr.origin));
            v.output = Out::Exact(self.vxlan(&frame[ip.l3..], ip.v6, t.policy.vni, machine, dmac, ip.hash()));
            return v.finish(XDP_REDIRECT);
        }
        let (sport, dport) = match ip.proto {
            TCP | UDP => (ip.sport, ip.dport),
            _ if ip.is_echo(false) => (0, ip.sport),
            _ => return v.drop(DropReason::NoConntrack),
        };
        let Some(tr) = self.replies.get(&(ip.src, ip.dst, sport, dport, ip.proto)) else {
            return v.drop(DropReason::NoConntrack);
        };
        if tr.tenant != t.id {
            return v.drop(DropReason::NoConntrack);
        }
        if f.len() - ip.l3 > self.usable() {
            return self.too_big(f, ip, v);
        }
        let mut v = v;
        v.count(Counter::SnatReply);
        if !t.ready {
            return v.drop(DropReason::NotReady);
        }
        // Back to the machine's address and port, then to the machine.
        let mut frame = f.to_vec();
        let port_off = match ip.proto {
            TCP | UDP => ip.l4 + 2,
            _ => ip.l4 + 4,
        };
        rewrite_addr_port(&mut frame, ip, false, tr.addr, port_off, tr.port);
        let machine = t.slot(tr.origin);
        let Some(&dmac) = self.host.fabric_neighbours.get(&machine.vtep) else {
            return v.drop(DropReason::NoRoute);
        };
        v.backend = Some((t.id, tr.origin));
        v.output = Out::Exact(self.vxlan(&frame[ip.l3..], ip.v6, t.policy.vni, machine, dmac, ip.hash()));
        v.finish(XDP_REDIRECT)
    }

    /// Path 5 of the contract: an ICMP error about a translated flow, back to the
    /// machine's address and port: the outer destination, the quoted
    /// source address and port, the quoted IP header's checksum (computed
    /// whole), the quoted transport checksum where the quote reaches it
    /// (updated: the quote lacks the data it covers) and the ICMP checksum
    /// (computed whole).
    fn translate_error(&self, f: &[u8], ip: &Ip, e: usize, qlen: usize, qproto: u8, tr: &Tracked) -> Vec<u8> {
        let mut o = f.to_vec();
        let n = if ip.v6 { 16 } else { 4 };
        let new = addr16(tr.addr);
        let (qsrc, odst) = if ip.v6 {
            (e + 8, ip.l3 + 24)
        } else {
            (e + 12, ip.l3 + 16)
        };
        let old_addr = o[qsrc..qsrc + n].to_vec();
        o[qsrc..qsrc + n].copy_from_slice(&new[..n]);
        o[odst..odst + n].copy_from_slice(&new[..n]);
        if !ip.v6 {
            o[e + 10..e + 12].copy_from_slice(&[0, 0]);
            let c = checksum(&o[e..e + 20]);
            o[e + 10..e + 12].copy_from_slice(&c.to_be_bytes());
            o[ip.l3 + 10..ip.l3 + 12].copy_from_slice(&[0, 0]);
            let c = checksum(&o[ip.l3..ip.l3 + ip.ip_hdr]);
            o[ip.l3 + 10..ip.l3 + 12].copy_from_slice(&c.to_be_bytes());
        }
        let q4 = e + qlen;
        let (port_off, ck_off) = match qproto {
            TCP => (q4, q4 + 16),
            UDP => (q4, q4 + 6),
            _ => (q4 + 4, q4 + 2),
        };
        let old_port = [o[port_off], o[port_off + 1]];
        o[port_off..port_off + 2].copy_from_slice(&tr.port.to_be_bytes());
        if ck_off + 2 <= o.len() {
            let old = be16(&o, ck_off);
            if !(qproto == UDP && !ip.v6 && old == 0) {
                let mut from = Vec::new();
                let mut to = Vec::new();
                if qproto != ICMP {
                    from.extend_from_slice(&old_addr);
                    to.extend_from_slice(&new[..n]);
                }
                from.extend_from_slice(&old_port);
                to.extend_from_slice(&tr.port.to_be_bytes());
                let mut c = csum_update(old, &from, &to);
                if qproto == UDP && !ip.v6 && c == 0 {
                    c = 0xffff;
                }
                o[ck_off..ck_off + 2].copy_from_slice(&c.to_be_bytes());
            }
        }
        let l4 = ip.l4;
        o[l4 + 2..l4 + 4].copy_from_slice(&[0, 0]);
        let c = if ip.v6 {
            let mut ph = Vec::new();
            ph.extend_from_slice(&addr16(ip.src));
            ph.extend_from_slice(&new);
            ph.extend_from_slice(&((o.len() - l4) as u32).to_be_bytes());
            ph.extend_from_slice(&[0, 0, 0, ICMP6]);
            ph.extend_from_slice(&o[l4..]);
            checksum(&ph)
        } else {
            checksum(&o[l4..])
        };
        o[l4 + 2..l4 + 4].copy_from_slice(&c.to_be_bytes());
        o
    }

    /// The `fabric` program on a frame from the tunnel side.
    pub fn fabric(&self, f: &[u8]) -> Verdict {
        let (outer, mut v) = match parsed(f) {
            Ok(x) => x,
            Err(v) => return *v,
        };
        if outer.v6
            || outer.proto != UDP
            || outer.dport != 4789
            || outer.later_fragment
            || outer.dst != IpAddr::V4(self.host.vtep)
        {
            return v.finish(XDP_PASS);
        }
        let vx = outer.l4 + 8;
        if f.len() < vx + 8 || f[vx] & 0x08 == 0 {
            return v.drop(DropReason::Malformed);
        }
        let vni = u32::from_be_bytes([0, f[vx + 4], f[vx + 5], f[vx + 6]]);
        let Some(t) = self.tenant_of_vni(vni) else {
            return v.drop(DropReason::UnknownVni);
        };
        v.tenant = Some(t.id);
        if !t.ready {
            return v.drop(DropReason::NotReady);
        }
        let IpAddr::V4(osrc) = outer.src else { unreachable!() };
        let Some(origin) = (0..4).find(|&s| {
            let list = if s < 2 { &t.policy.connectors } else { &t.policy.cores };
            list.get(s & 1).is_some_and(|b| b.vtep == osrc)
        }) else {
            return v.drop(DropReason::VtepNotOfTenant);
        };
        let inner_eth = vx + 8;
        let inner = match parse(f, inner_eth) {
            Parsed::Ip(i) if i.vlans == 0 => i,
            Parsed::Ip(_) | Parsed::Malformed(_) => return v.drop(DropReason::Malformed),
            Parsed::NotIp => return v.drop(DropReason::InnerNotIp),
        };
        if t.policy.vips.contains(&inner.src) {
            // Path 2: a reply from one of the tenant's VIPs.
            let Some((smac, dmac)) = self.route(inner.dst) else {
                return v.drop(DropReason::NoRoute);
            };
            let mut o = f[inner_eth..].to_vec();
            if MODEL_SYNACK_CLAMPED {
                let mut shifted = inner.clone();
                shifted.l3 -= inner_eth;
                shifted.l4 -= inner_eth;
                clamp_mss(&mut o, &shifted, self.mss_for(inner.v6));
            }
            o[0..6].copy_from_slice(&dmac);
            o[6..12].copy_from_slice(&smac);
            v.count(Counter::Decapsulated);
            v.output = Out::Exact(o);
            return v.finish(XDP_REDIRECT);
        }
        self.outbound(f, &inner, inner_eth, t, origin, v)
    }

    /// Path 3: the checks, then the translation (single packets).
    fn outbound(&self, f: &[u8], ip: &Ip, inner_eth: usize, t: &MTenant, origin: usize, mut v: Verdict) -> Verdict {
        let sport = match ip.proto {
            TCP | UDP => ip.sport,
            _ if ip.is_echo(true) => ip.sport,
            _ if ip.later_fragment => 0,
            _ => return v.drop(DropReason::SnatProtocol),
        };
        if !t.in_vpc(ip.src) {
            return v.drop(DropReason::InnerSourceNotAllowed);
        }
        let Some(egress) = t.egress_ip(ip.v6) else {
            return v.drop(DropReason::NoEgress);
        };
        if !t.egress_allowed(ip.dst) {
            return v.drop(DropReason::EgressNotAllowed);
        }
        let Some((smac, dmac)) = self.route(ip.dst) else {
            return v.drop(DropReason::NoRoute);
        };
        let mut frame = f[inner_eth..].to_vec();
        frame[0..6].copy_from_slice(&dmac);
        frame[6..12].copy_from_slice(&smac);
        let mut ip = ip.clone();
        ip.l3 -= inner_eth;
        ip.l4 -= inner_eth;
        v.count(Counter::SnatOut);
        v.count(Counter::Decapsulated);
        if ip.later_fragment {
            rewrite_addr_port(&mut frame, &ip, true, egress, usize::MAX, 0);
            v.output = Out::Exact(frame);
            return v.finish(XDP_REDIRECT);
        }
        v.count(Counter::SnatNewFlow);
        rewrite_addr_port(&mut frame, &ip, true, egress, usize::MAX, 0);
        clamp_mss(&mut frame, &ip, self.mss_for(ip.v6));
        let port_off = match ip.proto {
            TCP | UDP => ip.l4,
            _ => ip.l4 + 4,
        };
        v.output = Out::Snat(SnatFrame {
            frame,
            ip,
            tenant: t.id,
            origin,
            port_off,
            old_port: sport,
            egress,
        });
        v.finish(XDP_REDIRECT)
    }

    /// Remembers a translation the program made (port read from its
    /// output), so that replies to it are modelled.
    pub fn track(&mut self, s: &SnatFrame, port: u16) {
        let (rsport, orig_port) = match s.ip.proto {
            TCP | UDP => (s.ip.dport, s.ip.sport),
            _ => (0, s.ip.sport),
        };
        self.replies.insert(
            (s.ip.dst, s.egress, rsport, port, s.ip.proto),
            Tracked {
                tenant: s.tenant,
                // The frame's parse, taken before the translation.
                addr: s.ip.src,
                port: orig_port,
                origin: s.origin,
            },
        );
    }
}

/// The quoted packet's addresses, protocol and ports.
struct Quote {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
}

/// Parses a frame as both programs do first, counting what it is: a frame
/// that is not IP, or is malformed, passes to the host stack.
fn parsed(f: &[u8]) -> Result<(Ip, Verdict), Box<Verdict>> {
    let mut v = Verdict::new(f.len());
    match parse(f, 0) {
        Parsed::NotIp => {
            v.count(Counter::NonIp);
            Err(Box::new(v.finish(XDP_PASS)))
        }
        Parsed::Malformed(c) => {
            v.count(c);
            Err(Box::new(v.finish(XDP_PASS)))
        }
        Parsed::Ip(ip) => {
            v.protocols(&ip);
            Ok((ip, v))
        }
    }
}

fn parse_quote(f: &[u8], e: usize, v6: bool) -> Option<Quote> {
    let (src, dst, proto, l4) = if v6 {
        if f.len() < e + 40 {
            return None;
        }
        let a = |o: usize| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&f[o..o + 16]).unwrap()));
        (a(e + 8), a(e + 24), f[e + 6], e + 40)
    } else {
        if f.len() < e + 20 {
            return None;
        }
        let a = |o: usize| IpAddr::V4(Ipv4Addr::new(f[o], f[o + 1], f[o + 2], f[o + 3]));
        (a(e + 12), a(e + 16), f[e + 9], e + (f[e] & 0x0f) as usize * 4)
    };
    let (sport, dport) = if f.len() >= l4 + 4 {
        (be16(f, l4), be16(f, l4 + 2))
    } else {
        (0, 0)
    };
    Some(Quote {
        src,
        dst,
        proto,
        sport,
        dport,
    })
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in data.chunks(2) {
        s += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// RFC 1624 eqn. 3: the checksum `old` after the bytes `from` became `to`
/// (both of even length).
pub fn csum_update(old: u16, from: &[u8], to: &[u8]) -> u16 {
    let mut s: u32 = (!old) as u32;
    for (a, b) in from.chunks(2).zip(to.chunks(2)) {
        s += (!u16::from_be_bytes([a[0], a[1]])) as u32;
        s += u16::from_be_bytes([b[0], b[1]]) as u32;
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Rewrites the source (`src`) or destination address to `addr`, and the
/// 16-bit port at `port_off` (`usize::MAX`: none) to `port`, with every
/// checksum that covers them (IPv4 header, TCP/UDP/ICMPv6 pseudo-header,
/// the port's own). A later fragment has no transport header to update.
fn rewrite_addr_port(f: &mut [u8], ip: &Ip, src: bool, addr: IpAddr, port_off: usize, port: u16) {
    let aoff = match (ip.v6, src) {
        (false, true) => ip.l3 + 12,
        (false, false) => ip.l3 + 16,
        (true, true) => ip.l3 + 8,
        (true, false) => ip.l3 + 24,
    };
    let n = if ip.v6 { 16 } else { 4 };
    let new = addr16(addr);
    let old: Vec<u8> = f[aoff..aoff + n].to_vec();
    f[aoff..aoff + n].copy_from_slice(&new[..n]);
    if !ip.v6 {
        let c = csum_update(be16(f, ip.l3 + 10), &old, &new[..4]);
        f[ip.l3 + 10..ip.l3 + 12].copy_from_slice(&c.to_be_bytes());
    }
    if ip.later_fragment {
        return;
    }
    let (ck, pseudo) = match ip.proto {
        TCP => (ip.l4 + 16, true),
        UDP => (ip.l4 + 6, true),
        ICMP => (ip.l4 + 2, false),
        ICMP6 => (ip.l4 + 2, true),
        _ => return,
    };
    let mut from = Vec::new();
    let mut to = Vec::new();
    if pseudo {
        from.extend_from_slice(&old);
        to.extend_from_slice(&new[..n]);
    }
    if port_off != usize::MAX {
        from.extend_from_slice(&f[port_off..port_off + 2]);
        to.extend_from_slice(&port.to_be_bytes());
        f[port_off..port_off + 2].copy_from_slice(&port.to_be_bytes());
    }
    let old_ck = be16(f, ck);
    if ip.proto == UDP && !ip.v6 && old_ck == 0 {
        return;
    }
    let mut c = csum_update(old_ck, &from, &to);
    if ip.proto == UDP && !ip.v6 && c == 0 {
        c = 0xffff;
    }
    f[ck..ck + 2].copy_from_slice(&c.to_be_bytes());
}

/// Lowers a SYN's MSS option to `max` (docs/architecture.md: the option is looked for as
/// the first, after at most three NOPs; option length 4).
pub fn clamp_mss(f: &mut [u8], ip: &Ip, max: u16) {
    if ip.proto != TCP || ip.later_fragment || ip.tcp_flags & 0x02 == 0 {
        return;
    }
    let l4 = ip.l4;
    let end = l4 + (f[l4 + 12] >> 4) as usize * 4;
    let mut off = l4 + 20;
    for _ in 0..4 {
        if off >= end || off + 2 > f.len() {
            return;
        }
        match f[off] {
            1 => off += 1,
            2 => {
                if off + 4 > f.len() || f[off + 1] != 4 {
                    return;
                }
                let mss = be16(f, off + 2);
                if mss <= max {
                    return;
                }
                let c = csum_update(be16(f, l4 + 16), &mss.to_be_bytes(), &max.to_be_bytes());
                f[off + 2..off + 4].copy_from_slice(&max.to_be_bytes());
                f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
                return;
            }
            _ => return,
        }
    }
}

/// The outer view of a VXLAN frame: (outer source, outer destination, VNI,
/// offset of the inner Ethernet header).
pub fn vxlan_of(f: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, u32, usize)> {
    match parse(f, 0) {
        Parsed::Ip(ip) if !ip.v6 && ip.proto == UDP && ip.dport == 4789 && !ip.later_fragment => {
            let vx = ip.l4 + 8;
            if f.len() < vx + 8 {
                return None;
            }
            let (IpAddr::V4(s), IpAddr::V4(d)) = (ip.src, ip.dst) else {
                return None;
            };
            Some((s, d, u32::from_be_bytes([0, f[vx + 4], f[vx + 5], f[vx + 6]]), vx + 8))
        }
        _ => None,
    }
}

impl Model {
    /// The contract's isolation invariants for one frame and what a program did
    /// with it, judged from the frames alone (so that they hold for any
    /// input, however broken): `Err` names the invariant broken.
    pub fn isolation(&self, fabric: bool, input: &[u8], action: u32, output: &[u8]) -> Result<(), String> {
        let forwarded = action == XDP_REDIRECT || action == XDP_TX;
        if action == XDP_PASS && output != input {
            return Err("a frame passed to the host stack was changed".into());
        }
        let parsed = match parse(input, 0) {
            Parsed::Ip(ip) => Some(ip),
            _ => None,
        };
        if !fabric {
            if let Some(ip) = &parsed
                && action == XDP_PASS
                && self.owner_of(ip.dst).is_some()
            {
                return Err(format!(
                    "a packet to {} (an address in force) passed to the host stack",
                    ip.dst
                ));
            }
            if forwarded && let Some((_, to, vni, _)) = vxlan_of(output) {
                let Some(t) = self.tenant_of_vni(vni) else {
                    return Err(format!("encapsulated with VNI {vni}, which is no tenant's"));
                };
                if !t.ready {
                    return Err(format!(
                        "tenant {} is not ready, yet its VNI carried a packet",
                        t.policy.name
                    ));
                }
                if !t.machine_vteps().any(|v| v == to) {
                    return Err(format!(
                        "VNI {vni} of {} sent to VTEP {to}, not one of its machines",
                        t.policy.name
                    ));
                }
                let dst = parsed.as_ref().map(|p| p.dst);
                if dst.and_then(|d| self.owner_of(d)).map(|o| o.id) != Some(t.id) {
                    return Err(format!(
                        "a packet to {dst:?} went into the tunnel of {}, which does not own that address",
                        t.policy.name
                    ));
                }
            }
            return Ok(());
        }
        let claim = vxlan_of(input).filter(|(_, to, _, _)| *to == self.host.vtep);
        let sender = claim.and_then(|(from, _, vni, _)| self.tenant_of_vni(vni).map(|t| (from, t)));
        if let Some((from, t)) = sender
            && (!t.machine_vteps().any(|v| v == from) || !t.ready)
            && action != XDP_DROP
        {
            return Err(format!(
                "VNI {} claimed from {from} (not ready, or not a VTEP of {}) was not dropped",
                t.policy.vni, t.policy.name
            ));
        }
        if !forwarded {
            return Ok(());
        }
        let Some((_, t)) = sender else {
            return Err("forwarded a frame that was no tunnel traffic of a known tenant".into());
        };
        if let Parsed::Ip(out) = parse(output, 0) {
            let own = t.policy.vips.contains(&out.src) || t.egress_ips().contains(&out.src);
            if !own {
                return Err(format!(
                    "{} sent a packet from {}, not its own address",
                    t.policy.name, out.src
                ));
            }
        } else {
            return Err("forwarded a frame that is not IP".into());
        }
        if let Some((_, to, vni, _)) = vxlan_of(output)
            && let Some(b) = self
                .tenants
                .iter()
                .find(|b| b.id != t.id && b.machine_vteps().any(|v| v == to))
        {
            return Err(format!(
                "a packet from {}'s tunnel went to VTEP {to} of {} (VNI {vni})",
                t.policy.name, b.policy.name
            ));
        }
        Ok(())
    }
}
