//! Address and port rewriting for source NAT, with incremental checksum
//! updates (RFC 1624): only the words that change are summed, never the
//! payload.
use aya_ebpf::programs::XdpContext;
use dataplane_common::{
    DropReason, checksum,
    types::{CtKey, FAMILY_V4, FAMILY_V6},
};

use crate::packet::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Ipv4Hdr, be16, header, read, write};
use crate::parse::Flow;

pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// The 16-bit word changes of a rewrite, summed: `!old + new` per word.
#[derive(Clone, Copy)]
pub struct Delta(u32);

impl Delta {
    #[inline(always)]
    pub fn new() -> Delta {
        Delta(0)
    }

    #[inline(always)]
    pub fn word(&mut self, old: u16, new: u16) {
        self.0 = self.0.wrapping_add((!old) as u32 + new as u32);
    }

    /// An address change (IPv4: the first four bytes). Summed by 32-bit
    /// words: the one's complement sum of the halves folds to the same.
    #[inline(always)]
    pub fn addr(&mut self, old: &[u8; 16], new: &[u8; 16], v6: bool) {
        let words = if v6 { 4 } else { 1 };
        let mut sum: u64 = 0;
        for i in 0..4 {
            if i < words {
                let o = u32::from_be_bytes([old[4 * i], old[4 * i + 1], old[4 * i + 2], old[4 * i + 3]]);
                let n = u32::from_be_bytes([new[4 * i], new[4 * i + 1], new[4 * i + 2], new[4 * i + 3]]);
                sum += (!o) as u64 + n as u64;
            }
        }
        let sum = (sum & 0xffff_ffff) + (sum >> 32);
        let sum = (sum & 0xffff) + (sum >> 16);
        self.0 = self.0.wrapping_add(sum as u32);
    }

    /// Adds another delta (a checksum that covers what another one covers).
    #[inline(always)]
    pub fn add(&mut self, other: Delta) {
        self.0 = self.0.wrapping_add(other.0);
    }

    /// The checksum field `check` after the changes.
    #[inline(always)]
    pub fn apply(self, check: u16) -> u16 {
        // Pre-fold the delta so that the sum below cannot overflow.
        let d = (self.0 & 0xffff) + (self.0 >> 16);
        checksum::fold((!check) as u32 + d)
    }
}

/// Which end of a packet a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    Src,
    Dst,
}

/// Whether the packet is an ICMP or ICMPv6 echo request (`request`) or
/// reply.
#[inline(always)]
pub fn is_echo(flow: &Flow, request: bool) -> bool {
    let ty = (flow.dport >> 8) as u8;
    match (flow.proto, request) {
        (IPPROTO_ICMP, true) => !flow.v6 && ty == ICMP_ECHO_REQUEST,
        (IPPROTO_ICMP, false) => !flow.v6 && ty == ICMP_ECHO_REPLY,
        (IPPROTO_ICMPV6, true) => flow.v6 && ty == ICMPV6_ECHO_REQUEST,
        (IPPROTO_ICMPV6, false) => flow.v6 && ty == ICMPV6_ECHO_REPLY,
        _ => false,
    }
}

/// Whether the packet is an ICMP error (which quotes the packet it is
/// about).
#[inline(always)]
pub fn is_icmp_error(flow: &Flow) -> bool {
    let ty = (flow.dport >> 8) as u8;
    match flow.proto {
        // Destination unreachable, time exceeded, parameter problem.
        IPPROTO_ICMP => !flow.v6 && (ty == 3 || ty == 11 || ty == 12),
        // Destination unreachable, packet too big, time exceeded,
        // parameter problem.
        IPPROTO_ICMPV6 => flow.v6 && (1..=4).contains(&ty),
        _ => false,
    }
}

/// The packet an ICMP error quotes: where its IP and transport headers
/// start, its protocol, and the first eight bytes of its transport header
/// (ports, or the echo type, code, checksum and identifier).
pub struct Quote {
    pub l3: usize,
    pub l4: usize,
    pub proto: u8,
    pub head: [u8; 8],
}

/// Reads the packet the ICMP error `flow` quotes, writing its source and
/// destination addresses to `src` and `dst` (the callers build their keys
/// in place). IPv4 quotes with options and IPv6 quotes with extension
/// headers are not followed: a router quotes what it received, and
/// carwash's flows carry neither.
#[inline(always)]
pub fn read_quote(ctx: &XdpContext, flow: &Flow, src: &mut [u8; 16], dst: &mut [u8; 16]) -> Result<Quote, DropReason> {
    let l3 = flow.l4_off + 8;
    let (proto, l4) = if flow.v6 {
        // The farthest read first: its bounds check covers the others.
        *dst = read(ctx, l3 + 24).ok_or(DropReason::Malformed)?;
        *src = read(ctx, l3 + 8).ok_or(DropReason::Malformed)?;
        (read(ctx, l3 + 6).ok_or(DropReason::Malformed)?, l3 + 40)
    } else {
        let ip: &Ipv4Hdr = header(ctx, l3).ok_or(DropReason::Malformed)?;
        if ip.version_ihl != 0x45 {
            return Err(DropReason::Malformed);
        }
        src[..4].copy_from_slice(&ip.src);
        dst[..4].copy_from_slice(&ip.dst);
        (ip.proto, l3 + 20)
    };
    let head = read(ctx, l4).ok_or(DropReason::Malformed)?;
    Ok(Quote { l3, l4, proto, head })
}

#[inline(always)]
pub fn family(v6: bool) -> u8 {
    if v6 { FAMILY_V6 } else { FAMILY_V4 }
}

/// A tracking key with every field given.
#[inline(always)]
pub fn key(tenant: u32, src: &[u8; 16], dst: &[u8; 16], sport: u16, dport: u16, proto: u8, v6: bool) -> CtKey {
    CtKey {
        tenant,
        src: *src,
        dst: *dst,
        sport_be: sport.to_be_bytes(),
        dport_be: dport.to_be_bytes(),
        proto,
        family: family(v6),
        _pad: [0; 2],
    }
}

/// Offset of the address of `end` in the IP header at `l3`.
#[inline(always)]
pub fn addr_off(l3: usize, v6: bool, end: End) -> usize {
    match (v6, end) {
        (false, End::Src) => l3 + 12,
        (false, End::Dst) => l3 + 16,
        (true, End::Src) => l3 + 8,
        (true, End::Dst) => l3 + 24,
    }
}

/// Writes an address (IPv4: the first four bytes of `a`).
#[inline(always)]
pub fn write_addr(ctx: &XdpContext, off: usize, a: &[u8; 16], v6: bool) -> bool {
    if v6 {
        write(ctx, off, *a)
    } else {
        write(ctx, off, [a[0], a[1], a[2], a[3]])
    }
}

/// Replaces the 16-bit checksum at `off` by its update with `d`. For UDP
/// over IPv4 a zero checksum means "none" and stays so; a computed zero is
/// sent as all ones.
#[inline(always)]
pub fn update_check(ctx: &XdpContext, off: usize, d: Delta, udp4: bool) -> Option<(u16, u16)> {
    let old = be16(read::<[u8; 2]>(ctx, off)?);
    if udp4 && old == 0 {
        return Some((0, 0));
    }
    let mut new = d.apply(old);
    if udp4 && new == 0 {
        new = 0xffff;
    }
    if !write(ctx, off, new.to_be_bytes()) {
        return None;
    }
    Some((old, new))
}

/// Rewrites the address of one end of the packet `flow` describes, with the
/// IPv4 header checksum (a fragment after the first has nothing else to
/// rewrite); the change, for the transport checksum.
#[inline(always)]
pub fn rewrite_ip(ctx: &XdpContext, flow: &Flow, end: End, addr: &[u8; 16]) -> Option<Delta> {
    let old_addr = match end {
        End::Src => &flow.src,
        End::Dst => &flow.dst,
    };
    let mut a = Delta::new();
    a.addr(old_addr, addr, flow.v6);
    if !write_addr(ctx, addr_off(flow.l3_off, flow.v6, end), addr, flow.v6) {
        return None;
    }
    if !flow.v6 {
        update_check(ctx, flow.l3_off + 10, a, false)?;
    }
    Some(a)
}

/// Rewrites the address and port (ICMP echo: identifier) of one end of the
/// packet `flow` describes, with the IP and transport checksums. The old
/// values are the flow's.
#[inline(always)]
pub fn rewrite(ctx: &XdpContext, flow: &Flow, end: End, addr: &[u8; 16], port: u16) -> bool {
    let old_port = match end {
        End::Src => flow.sport,
        End::Dst => flow.dport,
    };
    let Some(a) = rewrite_ip(ctx, flow, end, addr) else {
        return false;
    };
    let l4 = flow.l4_off;
    let (port_off, check_off, pseudo) = match flow.proto {
        IPPROTO_TCP => (if end == End::Src { l4 } else { l4 + 2 }, l4 + 16, true),
        IPPROTO_UDP => (if end == End::Src { l4 } else { l4 + 2 }, l4 + 6, true),
        // The echo identifier; flow.sport holds it for either end.
        IPPROTO_ICMP => (l4 + 4, l4 + 2, false),
        IPPROTO_ICMPV6 => (l4 + 4, l4 + 2, true),
        _ => return false,
    };
    let old_port = if flow.proto == IPPROTO_ICMP || flow.proto == IPPROTO_ICMPV6 {
        flow.sport
    } else {
        old_port
    };
    let mut d = Delta::new();
    if pseudo {
        d.add(a);
    }
    d.word(old_port, port);
    if !write(ctx, port_off, port.to_be_bytes()) {
        return false;
    }
    let udp4 = flow.proto == IPPROTO_UDP && !flow.v6;
    update_check(ctx, check_off, d, udp4).is_some()
}
