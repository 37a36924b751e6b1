//! Random policies and frames for the differential and fuzz tests: a small
//! seeded generator (runs are reproducible from the seed they print), a
//! frame builder that gets lengths and checksums right unless told
//! otherwise, and the mutations the fuzzer applies.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use carwash_policy::{Allow, Backend, Class, Egress, Lane, MacAddr, Tenant};
use ipnetwork::IpNetwork;

use crate::model::checksum;

/// SplitMix64: small, fast, and good enough to pick test cases.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }

    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn u16(&mut self) -> u16 {
        self.u64() as u16
    }

    pub fn u8(&mut self) -> u8 {
        self.u64() as u8
    }

    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }
}

/// VTEPs of the fixture namespace's fabric that have a neighbour entry.
pub fn vtep_pool() -> Vec<Ipv4Addr> {
    (1..=48).map(|i| Ipv4Addr::new(10, 200, 1, i)).collect()
}

/// A VTEP inside the fabric's network that nothing answers for.
pub const UNRESOLVED_VTEP: Ipv4Addr = Ipv4Addr::new(10, 200, 9, 9);

/// A random public IPv4 unicast address (the fixture routes it out of
/// the uplink).
pub fn public4(r: &mut Rng) -> Ipv4Addr {
    loop {
        let a = Ipv4Addr::from(r.u64() as u32);
        let o = a.octets();
        if (1..=223).contains(&o[0]) && ![10, 100, 127, 169, 172, 192].contains(&o[0]) {
            return a;
        }
    }
}

pub fn public6(r: &mut Rng) -> Ipv6Addr {
    let mut o = [0u8; 16];
    for b in o.iter_mut() {
        *b = r.u8();
    }
    o[0] = 0x20;
    o[1] = 0x01;
    o[2] = 0x0d;
    o[3] = 0xb8;
    Ipv6Addr::from(o)
}

/// An address inside `net` (any host bits).
pub fn inside(r: &mut Rng, net: &IpNetwork) -> IpAddr {
    match net {
        IpNetwork::V4(n) => {
            let host_bits = 32 - n.prefix() as u32;
            let mask = if host_bits == 32 {
                u32::MAX
            } else {
                (1u32 << host_bits) - 1
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | (r.u64() as u32 & mask)))
        }
        IpNetwork::V6(n) => {
            let host_bits = 128 - n.prefix() as u32;
            let mask = if host_bits == 128 {
                u128::MAX
            } else {
                (1u128 << host_bits) - 1
            };
            let rnd = (r.u64() as u128) << 64 | r.u64() as u128;
            IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | (rnd & mask)))
        }
    }
}

/// A random set of tenants that would pass validation: unique names, VNIs,
/// VIPs, VTEPs and egress IPs; prefixes that overlap within a tenant and
/// between tenants (and VPCs that overlap between tenants); both families
/// and both lanes.
pub fn policy(r: &mut Rng, n: usize) -> Vec<Tenant> {
    let mut vteps = vtep_pool();
    // Shuffle, so that machines land on different pool addresses.
    for i in (1..vteps.len()).rev() {
        vteps.swap(i, r.below(i + 1));
    }
    let mut vteps = vteps.into_iter();
    let shared_vpc: IpNetwork = "10.50.0.0/16".parse().unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let lane = if r.chance(50) { Lane::Double } else { Lane::Single };
        let mut machine = |k: u8| {
            let vtep = if r.chance(3) {
                UNRESOLVED_VTEP
            } else {
                vteps.next().unwrap()
            };
            let o = vtep.octets();
            Backend {
                vtep,
                mac: MacAddr([0x02, k, o[0], o[1], o[2], o[3]]),
            }
        };
        let per = lane.machines();
        let connectors: Vec<Backend> = (0..per).map(|_| machine(0x0c)).collect();
        let cores: Vec<Backend> = (0..per).map(|_| machine(0x0e)).collect();
        let i8 = i as u8;
        let mut vips = vec![IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10 + i8))];
        if r.chance(70) {
            vips.push(IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                0x10 + i as u16,
                0,
                0,
                0,
                0,
                0x10,
            )));
        }
        if r.chance(30) {
            vips.push(IpAddr::V4(Ipv4Addr::new(203, 0, 114, 10 + i8)));
        }
        let https_ports = if r.chance(80) { vec![443] } else { vec![443, 8443] };
        let jms_ports = if r.chance(70) { vec![61616] } else { vec![61616, 61617] };
        let vpc_cidrs = vec![if r.chance(50) {
            shared_vpc
        } else {
            format!("10.{}.0.0/16", 101 + i).parse().unwrap()
        }];
        let mut allow = Vec::new();
        let clients4 = [
            "198.51.100.0/24",
            "198.51.100.128/25",
            "198.51.100.192/26",
            "192.0.2.0/24",
            "0.0.0.0/0",
        ];
        let clients6 = [
            "2001:db8:beef::/48",
            "2001:db8:beef:8000::/49",
            "2001:db8:cafe::/48",
            "::/0",
        ];
        for _ in 0..r.below(5) {
            let cidr: IpNetwork = if r.chance(60) {
                {
                    let n = if r.chance(10) { 5 } else { 4 };
                    r.pick(&clients4[..n]).parse().unwrap()
                }
            } else {
                {
                    let n = if r.chance(10) { 4 } else { 3 };
                    r.pick(&clients6[..n]).parse().unwrap()
                }
            };
            let classes = match r.below(3) {
                0 => vec![Class::Https],
                1 => vec![Class::Jms],
                _ => vec![Class::Https, Class::Jms],
            };
            allow.push(Allow { cidr, classes });
        }
        let egress = r.chance(70).then(|| Egress {
            snat_ipv4: Ipv4Addr::new(203, 0, 113, 200 + i8),
            snat_ipv6: r
                .chance(60)
                .then(|| Ipv6Addr::new(0x2001, 0xdb8, 0x10 + i as u16, 0, 0, 0, 0, 0x200)),
            allow: match r.below(4) {
                0 => vec!["0.0.0.0/0".parse().unwrap()],
                1 => vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
                2 => vec!["128.0.0.0/1".parse().unwrap(), "2001:db8::/33".parse().unwrap()],
                _ => vec!["64.0.0.0/2".parse().unwrap(), "::/0".parse().unwrap()],
            },
        });
        out.push(Tenant {
            name: format!("t{i}"),
            vni: 1000 + i as u32 * 7 + r.below(7) as u32,
            lane,
            vips,
            https_ports,
            jms_ports,
            vpc_cidrs,
            connectors,
            cores,
            allow,
            egress,
            health: Default::default(),
        });
    }
    out
}

/// The transport part of a frame.
#[derive(Debug, Clone)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        /// TCP options (padded to a multiple of 4).
        options: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        zero_checksum: bool,
    },
    /// ICMP or ICMPv6 (by the family): type, code, the 4 bytes after the
    /// checksum, and the body.
    Icmp { ty: u8, code: u8, rest: [u8; 4] },
    /// Another protocol number.
    Other(u8),
}

/// A frame to build.
#[derive(Debug, Clone)]
pub struct Spec {
    pub vlans: Vec<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    pub payload: Vec<u8>,
    /// IPv4 options bytes (a multiple of 4, at most 40).
    pub ipv4_options: usize,
    pub df: bool,
    /// IPv6 extension headers before the transport header: 0 (hop-by-hop),
    /// 60 (destination options), 44 (fragment, offset 0 unless
    /// `later_fragment`).
    pub v6_ext: Vec<u8>,
    /// IPv4: MF set (a first fragment) when not a later one.
    pub first_fragment: bool,
    pub later_fragment: bool,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

impl Spec {
    pub fn new(src: IpAddr, dst: IpAddr, l4: L4) -> Spec {
        Spec {
            vlans: vec![],
            src,
            dst,
            l4,
            payload: vec![],
            ipv4_options: 0,
            df: true,
            v6_ext: vec![],
            first_fragment: false,
            later_fragment: false,
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
        }
    }

    fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Icmp { .. } => {
                if self.src.is_ipv6() {
                    58
                } else {
                    1
                }
            }
            L4::Other(p) => p,
        }
    }

    /// The transport header and payload, checksummed.
    fn transport(&self) -> Vec<u8> {
        let pseudo = |len: usize, proto: u8| -> Vec<u8> {
            let mut p = Vec::new();
            match (self.src, self.dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    p.extend_from_slice(&s.octets());
                    p.extend_from_slice(&d.octets());
                    p.extend_from_slice(&[0, proto]);
                    p.extend_from_slice(&(len as u16).to_be_bytes());
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    p.extend_from_slice(&s.octets());
                    p.extend_from_slice(&d.octets());
                    p.extend_from_slice(&(len as u32).to_be_bytes());
                    p.extend_from_slice(&[0, 0, 0, proto]);
                }
                _ => panic!("mixed families"),
            }
            p
        };
        let mut t = Vec::new();
        let ck_at = match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
                options,
            } => {
                let mut opts = options.clone();
                while opts.len() % 4 != 0 {
                    opts.push(0);
                }
                t.extend_from_slice(&sport.to_be_bytes());
                t.extend_from_slice(&dport.to_be_bytes());
                t.extend_from_slice(&1000u32.to_be_bytes());
                t.extend_from_slice(&(if flags & 0x10 != 0 { 1u32 } else { 0 }).to_be_bytes());
                t.push((((20 + opts.len()) / 4) << 4) as u8);
                t.push(*flags);
                t.extend_from_slice(&64240u16.to_be_bytes());
                t.extend_from_slice(&[0, 0, 0, 0]);
                t.extend_from_slice(&opts);
                Some((16, true))
            }
            L4::Udp {
                sport,
                dport,
                zero_checksum,
            } => {
                t.extend_from_slice(&sport.to_be_bytes());
                t.extend_from_slice(&dport.to_be_bytes());
                t.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                t.extend_from_slice(&[0, 0]);
                if *zero_checksum && self.src.is_ipv4() {
                    None
                } else {
                    Some((6, true))
                }
            }
            L4::Icmp { ty, code, rest } => {
                t.extend_from_slice(&[*ty, *code, 0, 0]);
                t.extend_from_slice(rest);
                Some((2, self.src.is_ipv6()))
            }
            L4::Other(_) => None,
        };
        t.extend_from_slice(&self.payload);
        if let Some((at, with_pseudo)) = ck_at {
            let mut data = if with_pseudo {
                pseudo(t.len(), self.proto())
            } else {
                vec![]
            };
            data.extend_from_slice(&t);
            let mut c = checksum(&data);
            if c == 0 && matches!(self.l4, L4::Udp { .. }) {
                c = 0xffff;
            }
            t[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        t
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(128 + self.payload.len());
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        for (i, tag) in self.vlans.iter().enumerate() {
            f.extend_from_slice(
                &(if i == 0 && self.vlans.len() == 2 {
                    0x88a8u16
                } else {
                    0x8100
                })
                .to_be_bytes(),
            );
            f.extend_from_slice(&tag.to_be_bytes());
        }
        // A later fragment carries payload only (what the transport header
        // would be is just bytes there).
        let body = self.transport();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&[0x08, 0x00]);
                let hl = 20 + self.ipv4_options;
                let mut h = vec![0u8; hl];
                h[0] = 0x40 | (hl / 4) as u8;
                h[2..4].copy_from_slice(&((hl + body.len()) as u16).to_be_bytes());
                h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
                let mut frag = if self.df { 0x4000u16 } else { 0 };
                if self.later_fragment {
                    frag |= 0x00b9;
                } else if self.first_fragment {
                    frag |= 0x2000;
                }
                h[6..8].copy_from_slice(&frag.to_be_bytes());
                h[8] = 64;
                h[9] = self.proto();
                h[12..16].copy_from_slice(&s.octets());
                h[16..20].copy_from_slice(&d.octets());
                // Options: NOPs, then an end-of-list.
                for b in h[20..].iter_mut() {
                    *b = 1;
                }
                if hl > 20 {
                    h[hl - 1] = 0;
                }
                let c = checksum(&h);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&h);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&[0x86, 0xdd]);
                let mut exts = Vec::new();
                let mut kinds = self.v6_ext.clone();
                if self.later_fragment && !kinds.contains(&44) {
                    kinds.push(44);
                }
                for (i, k) in kinds.iter().enumerate() {
                    let next = kinds.get(i + 1).copied().unwrap_or(self.proto());
                    match k {
                        44 => {
                            let off: u16 = if self.later_fragment { 0x0b90 } else { 1 };
                            exts.extend_from_slice(&[next, 0]);
                            exts.extend_from_slice(&off.to_be_bytes());
                            exts.extend_from_slice(&[0, 0, 0x12, 0x34]);
                        }
                        _ => exts.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]),
                    }
                }
                let first = kinds.first().copied().unwrap_or(self.proto());
                let mut h = vec![0x60, 0, 0, 0];
                h.extend_from_slice(&((exts.len() + body.len()) as u16).to_be_bytes());
                h.extend_from_slice(&[first, 64]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                f.extend_from_slice(&h);
                f.extend_from_slice(&exts);
            }
            _ => panic!("mixed families"),
        }
        f.extend_from_slice(&body);
        f
    }
}

/// A VXLAN frame as a machine sends it to the host: outer IPv4/UDP from
/// `from` to `to`, VNI `vni`, around `inner` (an Ethernet frame).
pub fn vxlan(from: Ipv4Addr, to: Ipv4Addr, vni: u32, flags: u8, inner: &[u8], sport: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(64 + inner.len());
    f.extend_from_slice(&[0x02, 0xfa, 0xb0, 0, 0, 0x01]);
    f.extend_from_slice(&[0x02, 0x01, 10, 200, 1, 1]);
    f.extend_from_slice(&[0x08, 0x00]);
    let tot = (20 + 8 + 8 + inner.len()) as u16;
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&tot.to_be_bytes());
    h[8] = 64;
    h[9] = 17;
    h[12..16].copy_from_slice(&from.octets());
    h[16..20].copy_from_slice(&to.octets());
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&h);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&4789u16.to_be_bytes());
    f.extend_from_slice(&(tot - 20).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&[flags, 0, 0, 0]);
    f.extend_from_slice(&vni.to_be_bytes()[1..4]);
    f.push(0);
    f.extend_from_slice(inner);
    f
}

/// A TCP SYN's options: MSS `mss` after `nops` NOPs, then SACK-permitted.
pub fn syn_options(mss: u16, nops: usize) -> Vec<u8> {
    let mut o = vec![1; nops];
    o.extend_from_slice(&[2, 4]);
    o.extend_from_slice(&mss.to_be_bytes());
    o.extend_from_slice(&[4, 2]);
    o
}

/// One random change to a frame: bytes flipped, cut, grown, a length or
/// header field broken, a VLAN tag pushed, the frame wrapped in VXLAN.
pub fn mutate(r: &mut Rng, f: &mut Vec<u8>) {
    if f.is_empty() {
        let n = 1 + r.below(64);
        f.extend(r.bytes(n));
        return;
    }
    match r.below(10) {
        0 | 1 => {
            for _ in 0..1 + r.below(4) {
                let i = r.below(f.len());
                f[i] ^= 1 << r.below(8);
            }
        }
        2 => {
            let i = r.below(f.len());
            f[i] = r.u8();
        }
        3 => {
            let n = r.below(f.len() + 1);
            f.truncate(n);
        }
        4 => {
            let n = r.below(64);
            f.extend(r.bytes(n));
        }
        // A header byte where the parsers look: ethertype, version/IHL,
        // lengths, protocol, flags, next-header, data offset.
        5 => {
            // Outer: ethertype, version/IHL, IPv4 total length, IPv6 payload
            // length and next header, flags, protocol, UDP length; inner
            // (behind VXLAN): the same.
            let spots = [
                12, 13, 14, 16, 17, 18, 19, 20, 23, 26, 38, 39, 46, 47, 54, 58, 60, 64, 66, 67, 68, 73, 88, 89,
            ];
            let i = *r.pick(&spots);
            if i < f.len() {
                f[i] = r.u8();
            }
        }
        6 => {
            // Push a VLAN tag (or a third one).
            if f.len() >= 12 {
                let tag = [0x81, 0x00, 0, r.u8()];
                f.splice(12..12, tag);
            }
        }
        7 => {
            // VXLAN inside VXLAN: the frame wrapped once more.
            let vni = r.u64() as u32 & 0xff_ffff;
            let from = Ipv4Addr::new(10, 200, 1, 1 + r.below(48) as u8);
            *f = vxlan(from, Ipv4Addr::new(10, 200, 0, 1), vni, 0x08, f, r.u16());
        }
        8 => {
            // Swap two bytes far apart.
            let (a, b) = (r.below(f.len()), r.below(f.len()));
            f.swap(a, b);
        }
        _ => {
            let i = r.below(f.len());
            let n = r.below(f.len() - i + 1).min(16);
            f.drain(i..i + n);
        }
    }
}

/// A client address: inside one of the allow prefixes the policies use
/// (so some are allowed for one class, some for both, some for none), or
/// anywhere.
fn client(r: &mut Rng, v6: bool) -> IpAddr {
    let nets4 = [
        "198.51.100.0/24",
        "198.51.100.128/25",
        "198.51.100.192/26",
        "192.0.2.0/24",
    ];
    let nets6 = ["2001:db8:beef::/48", "2001:db8:beef:8000::/49", "2001:db8:cafe::/48"];
    if r.chance(80) {
        let n: IpNetwork = if v6 { r.pick(&nets6) } else { r.pick(&nets4) }.parse().unwrap();
        inside(r, &n)
    } else if v6 {
        IpAddr::V6(public6(r))
    } else {
        IpAddr::V4(public4(r))
    }
}

/// Random transport for a packet to `dport` (TCP mostly).
fn transport(r: &mut Rng, sport: u16, dport: u16) -> L4 {
    match r.below(20) {
        0..=13 => {
            let flags = *r.pick(&[0x18u8, 0x10, 0x02, 0x12, 0x11, 0x04, 0x02]);
            let options = if flags & 0x02 != 0 {
                match r.below(4) {
                    0 => vec![],
                    1 => vec![4, 2, 2, 4, 0x05, 0xb4],
                    _ => syn_options(*r.pick(&[1460u16, 1440, 1380, 1200, 9000, 1410, 1411, 536]), r.below(4)),
                }
            } else {
                vec![]
            };
            L4::Tcp {
                sport,
                dport,
                flags,
                options,
            }
        }
        14..=15 => L4::Udp {
            sport,
            dport,
            zero_checksum: r.chance(20),
        },
        16..=17 => L4::Icmp {
            ty: 8,
            code: 0,
            rest: [sport as u8, (sport >> 8) as u8, 0, 1],
        },
        _ => L4::Other(*r.pick(&[47u8, 50, 132])),
    }
}

/// Random shape: VLAN tags, IPv4 options, IPv6 extension headers,
/// fragments, sizes around the fabric's limit.
fn shape(r: &mut Rng, s: &mut Spec) {
    if r.chance(10) {
        s.vlans = (0..1 + r.below(2)).map(|_| r.u16() & 0x0fff).collect();
    }
    if s.src.is_ipv4() {
        if r.chance(8) {
            s.ipv4_options = 4 * (1 + r.below(10));
        }
        s.df = !r.chance(15);
    } else if r.chance(10) {
        s.v6_ext = (0..1 + r.below(4)).map(|_| *r.pick(&[0u8, 60, 60, 44])).collect();
        // One fragment header at most.
        let mut seen = false;
        s.v6_ext.retain(|k| *k != 44 || !std::mem::replace(&mut seen, true));
    }
    match r.below(40) {
        0 => s.later_fragment = true,
        1 => s.first_fragment = true,
        _ => {}
    }
    let len = match r.below(10) {
        0 => 1360 + r.below(120),
        1 => r.below(1600),
        _ => r.below(64),
    };
    s.payload = r.bytes(len);
}

/// A frame from the internet: to a VIP (a service port or not), an egress
/// IP (a reply to a flow in `replies` or a stray one), or elsewhere.
pub fn uplink_frame(r: &mut Rng, tenants: &[Tenant], replies: &[(IpAddr, IpAddr, u16, u16, u8)]) -> Vec<u8> {
    let t = r.pick(tenants);
    if !replies.is_empty() && r.chance(10) {
        let (peer, egress, pport, port, proto) = *r.pick(replies);
        if r.chance(30) {
            // An ICMP error about the translated packet, as the peer (or a
            // router on the way) sends it.
            let ql4 = match proto {
                6 => L4::Tcp {
                    sport: port,
                    dport: pport,
                    flags: 0x18,
                    options: vec![],
                },
                17 => L4::Udp {
                    sport: port,
                    dport: pport,
                    zero_checksum: r.chance(20),
                },
                _ => L4::Icmp {
                    ty: if egress.is_ipv6() { 128 } else { 8 },
                    code: 0,
                    rest: [(port >> 8) as u8, port as u8, 0, 1],
                },
            };
            let mut quoted = Spec::new(egress, peer, ql4);
            let n = r.below(40);
            quoted.payload = r.bytes(n);
            let q = quoted.build()[14..].to_vec();
            let ip_hdr = if egress.is_ipv6() { 40 } else { 20 };
            let keep = match r.below(4) {
                0 => ip_hdr + 8,
                1 => q.len().min(ip_hdr + 8 + r.below(40)),
                _ => q.len(),
            };
            let (ty, code, rest) = if egress.is_ipv6() {
                *r.pick(&[(1u8, 4u8, [0u8; 4]), (2, 0, [0, 0, 5, 0x00]), (3, 0, [0; 4])])
            } else {
                *r.pick(&[(3u8, 3u8, [0u8; 4]), (3, 4, [0, 0, 5, 0x00]), (11, 0, [0; 4])])
            };
            let mut s = Spec::new(peer, egress, L4::Icmp { ty, code, rest });
            s.payload = q[..keep].to_vec();
            if r.chance(5) {
                s.payload.extend(r.bytes(1400));
            }
            return s.build();
        }
        let l4 = match proto {
            6 => L4::Tcp {
                sport: pport,
                dport: port,
                flags: *r.pick(&[0x12u8, 0x10, 0x18]),
                options: vec![],
            },
            17 => L4::Udp {
                sport: pport,
                dport: port,
                zero_checksum: false,
            },
            _ => L4::Icmp {
                ty: if egress.is_ipv6() { 129 } else { 0 },
                code: 0,
                rest: [(port >> 8) as u8, port as u8, 0, 1],
            },
        };
        let mut s = Spec::new(peer, egress, l4);
        let len = if r.chance(10) {
            1400 + r.below(100)
        } else {
            r.below(200)
        };
        s.payload = r.bytes(len);
        return s.build();
    }
    let v6 = r.chance(35);
    let dst = match r.below(10) {
        0..=6 => t
            .vips
            .iter()
            .find(|a| a.is_ipv6() == v6)
            .copied()
            .unwrap_or_else(|| *r.pick(&t.vips)),
        7 | 8 => match &t.egress {
            Some(e) if v6 && e.snat_ipv6.is_some() => IpAddr::V6(e.snat_ipv6.unwrap()),
            Some(e) => IpAddr::V4(e.snat_ipv4),
            None => t.vips[0],
        },
        _ => {
            if v6 {
                IpAddr::V6(public6(r))
            } else {
                IpAddr::V4(public4(r))
            }
        }
    };
    let src = client(r, dst.is_ipv6());
    let dport = match r.below(10) {
        0..=3 => *r.pick(&t.https_ports),
        4..=6 => *r.pick(&t.jms_ports),
        7 => *r.pick(&[443u16, 8443, 61616, 61617]),
        _ => r.u16(),
    };
    let sport = 1024 + r.u16() % 60000;
    let mut l4 = transport(r, sport, dport);
    if r.chance(5) {
        // An ICMP error quoting a packet that left dst for the client.
        let quoted = Spec::new(
            dst,
            src,
            L4::Tcp {
                sport: dport,
                dport: sport,
                flags: 0x12,
                options: vec![],
            },
        )
        .build();
        let ip_start = 14;
        let q = quoted[ip_start..].to_vec();
        let (ty, code) = if dst.is_ipv6() {
            (*r.pick(&[1u8, 2, 3]), 0)
        } else {
            (*r.pick(&[3u8, 11]), 4)
        };
        let mut s = Spec::new(
            src,
            dst,
            L4::Icmp {
                ty,
                code,
                rest: [0, 0, 5, 0xdc],
            },
        );
        let keep = if r.chance(20) { r.below(q.len()) } else { q.len() };
        s.payload = q[..keep].to_vec();
        return s.build();
    }
    if let L4::Icmp { .. } = l4
        && r.chance(30)
    {
        l4 = L4::Icmp {
            ty: if dst.is_ipv6() { 129 } else { 0 },
            code: 0,
            rest: [0, 7, 0, 1],
        };
    }
    let mut s = Spec::new(src, dst, l4);
    shape(r, &mut s);
    s.build()
}

/// A frame from the tunnel side: mostly VXLAN to the host from a machine
/// (or a pretender), carrying a reply from a VIP, outbound traffic from
/// the VPC, or something else; `serial` keeps outbound flows apart.
pub fn fabric_frame(r: &mut Rng, tenants: &[Tenant], host_vtep: Ipv4Addr, serial: u64) -> Vec<u8> {
    let t = r.pick(tenants);
    let other = r.pick(tenants);
    let machines: Vec<&Backend> = t.connectors.iter().chain(&t.cores).collect();
    let from = match r.below(20) {
        0 => *r.pick(&vtep_pool()),
        1 => other.cores[0].vtep,
        _ => r.pick(&machines).vtep,
    };
    let vni = match r.below(30) {
        0 => r.u64() as u32 & 0xff_ffff,
        1 => other.vni,
        _ => t.vni,
    };
    let to = if r.chance(3) {
        Ipv4Addr::new(10, 200, 0, 2)
    } else {
        host_vtep
    };
    let flags = if r.chance(2) { 0 } else { 0x08 };
    let v6 = r.chance(30);
    let peer = |r: &mut Rng| -> IpAddr {
        match r.below(20) {
            // Another tenant's machine, as if it were on the internet.
            0 | 1 => IpAddr::V4(r.pick(&other.connectors).vtep),
            2 => IpAddr::V4(*r.pick(&vtep_pool())),
            _ => {
                if v6 {
                    IpAddr::V6(public6(r))
                } else {
                    IpAddr::V4(public4(r))
                }
            }
        }
    };
    let inner_src = match r.below(10) {
        0..=3 => t.vips.iter().find(|a| a.is_ipv6() == v6).copied().unwrap_or(t.vips[0]),
        4..=7 => {
            let nets: Vec<&IpNetwork> = t.vpc_cidrs.iter().chain(&other.vpc_cidrs).collect();
            let n = r.pick(&nets);
            if v6 && n.is_ipv4() {
                "fd00:101::5".parse().unwrap()
            } else {
                inside(r, n)
            }
        }
        8 => *r.pick(&other.vips),
        _ => {
            if v6 {
                IpAddr::V6(public6(r))
            } else {
                IpAddr::V4(Ipv4Addr::new(10, r.u8(), r.u8(), r.u8()))
            }
        }
    };
    let mut dst = peer(r);
    if dst.is_ipv6() != inner_src.is_ipv6() {
        dst = if inner_src.is_ipv6() {
            IpAddr::V6(public6(r))
        } else {
            IpAddr::V4(public4(r))
        };
    }
    let sport = (serial % 40000) as u16 + 20000;
    let dport = if r.chance(10) { 4789 } else { r.u16() };
    let mut l4 = transport(r, sport, dport);
    if let L4::Icmp { rest, .. } = &mut l4 {
        rest[0..2].copy_from_slice(&sport.to_be_bytes());
        if r.chance(20) {
            l4 = L4::Icmp {
                ty: if v6 { 1 } else { 3 },
                code: 3,
                rest: [0; 4],
            };
        }
    }
    let mut s = Spec::new(inner_src, dst, l4);
    if inner_src.is_ipv4() && dst.is_ipv4() && dport == 4789 {
        // Traffic that looks like a tunnel of its own.
        s.payload = vec![0x08, 0, 0, 0, 0, 0x03, 0xe9, 0];
        s.payload.extend(
            Spec::new(
                dst,
                inner_src,
                L4::Udp {
                    sport: 1,
                    dport: 2,
                    zero_checksum: false,
                },
            )
            .build(),
        );
    } else {
        shape(r, &mut s);
        s.vlans.clear();
        if r.chance(2) {
            s.vlans = vec![5];
        }
    }
    // Unique flows: the destination port too depends on the serial.
    if let L4::Tcp { dport, .. } | L4::Udp { dport, .. } = &mut s.l4
        && *dport != 4789
    {
        *dport ^= (serial / 40000) as u16;
    }
    let mut inner = s.build();
    inner[0..6].copy_from_slice(&[0x02, 0x00, 0x0a, 0xc8, 0x00, 0x01]);
    if r.chance(2) {
        inner[12..14].copy_from_slice(&[0x08, 0x06]);
    }
    vxlan(from, to, vni, flags, &inner, r.u16())
}
