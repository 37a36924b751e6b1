//! Ethernet (up to two VLAN tags), IPv4 (with options), IPv6 (skipping the
//! usual extension headers), then TCP, UDP, ICMP or ICMPv6: the flow fields
//! every later decision needs. Every read goes through `packet::read`.
use aya_ebpf::programs::XdpContext;
use dataplane_common::{Counter, hash};

use crate::packet::*;

/// How many VLAN tags are followed (QinQ).
const MAX_VLANS: usize = 2;
/// How many IPv6 extension headers are followed before giving up.
const MAX_IPV6_EXT: usize = 4;

/// The fields of a parsed IP packet. IPv4 addresses sit in the first four
/// bytes of `src`/`dst`.
// Aligned, so that LLVM zeroes and copies the address arrays with word
// stores instead of calling memset/memcpy (byte loops in BPF).
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub struct Flow {
    // The addresses first, at 8-byte aligned offsets: LLVM then reads them
    // by words (BPF has no unaligned loads; byte loads need a register, or
    // a stack slot, each).
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Offset of the IP header.
    pub l3_off: usize,
    /// Offset of the transport header (meaningless for non-first fragments).
    pub l4_off: usize,
    pub vlans: u8,
    pub v6: bool,
    pub proto: u8,
    /// TCP/UDP source port; ICMP echo identifier.
    pub sport: u16,
    /// TCP/UDP destination port; ICMP `type << 8 | code`.
    pub dport: u16,
    /// TCP flags (low byte of the offset/flags word).
    pub tcp_flags: u8,
    /// A fragment after the first: no transport header.
    pub later_fragment: bool,
    /// IPv4 "don't fragment" (always true for IPv6, which routers never
    /// fragment).
    pub dont_fragment: bool,
}

impl Flow {
    /// The flow hash (`dataplane_common::hash::flow_hash`), with the
    /// addresses read as words: they sit at 8-byte aligned offsets, which
    /// LLVM cannot tell once a copy of the flow lives in a map.
    #[inline(always)]
    pub fn hash(&self) -> u32 {
        // SAFETY: `src` and `dst` are the first fields of an align(8)
        // struct, so aligned for u32; every bit pattern is valid.
        let (s, d) = unsafe {
            (
                &*(self.src.as_ptr() as *const [u32; 4]),
                &*(self.dst.as_ptr() as *const [u32; 4]),
            )
        };
        hash::flow_hash_words(s, d, self.sport, self.dport, self.proto)
    }
}

/// Why a frame yields no [`Flow`].
pub enum NotIp {
    /// Not IP at all (ARP, LLDP, ...): none of carwash's business.
    Other,
    /// Claims to be IP but is broken; the counter says how.
    Malformed(Counter),
}

/// Address words as loaded from the packet, back to bytes (the same
/// memory layout: network byte order is kept).
#[inline(always)]
fn words_to_addr(w: [u32; 4]) -> [u8; 16] {
    // SAFETY: same size, every bit pattern valid.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(w) }
}

#[inline(always)]
fn truncated() -> NotIp {
    NotIp::Malformed(Counter::MalformedTruncated)
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Flow, NotIp> {
    parse_from(ctx, 0)
}

/// Parses the frame whose Ethernet header starts at `eth_off` (0, or the
/// inner frame of a VXLAN packet).
#[inline(always)]
pub fn parse_from(ctx: &XdpContext, eth_off: usize) -> Result<Flow, NotIp> {
    let eth: &EthHdr = header(ctx, eth_off).ok_or_else(truncated)?;
    let mut ethertype = be16(eth.ethertype);
    let mut off = eth_off + ETH_LEN;
    let mut vlans = 0u8;
    for _ in 0..MAX_VLANS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let tag: &VlanHdr = header(ctx, off).ok_or_else(truncated)?;
        ethertype = be16(tag.ethertype);
        off += VLAN_LEN;
        vlans += 1;
    }
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        return Err(NotIp::Malformed(Counter::MalformedVlanDepth));
    }
    let mut flow = Flow {
        vlans,
        v6: false,
        l3_off: off,
        l4_off: 0,
        proto: 0,
        src: [0; 16],
        dst: [0; 16],
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        later_fragment: false,
        dont_fragment: true,
    };
    match ethertype {
        ETH_P_IPV4 => parse_ipv4(ctx, &mut flow)?,
        ETH_P_IPV6 => parse_ipv6(ctx, &mut flow)?,
        _ => return Err(NotIp::Other),
    }
    if !flow.later_fragment {
        parse_l4(ctx, &mut flow)?;
    }
    Ok(flow)
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, flow: &mut Flow) -> Result<(), NotIp> {
    let ip: &Ipv4Hdr = header(ctx, flow.l3_off).ok_or_else(truncated)?;
    let ihl = (ip.version_ihl & 0x0f) as usize;
    if ip.version_ihl >> 4 != 4 || ihl < 5 || (be16(ip.tot_len) as usize) < ihl * 4 {
        return Err(NotIp::Malformed(Counter::MalformedIpHeader));
    }
    // Options are skipped, but must be present.
    let hdr_len = ihl * 4;
    if ctx.data() + flow.l3_off + hdr_len > ctx.data_end() {
        return Err(truncated());
    }
    flow.l4_off = flow.l3_off + hdr_len;
    flow.proto = ip.proto;
    let [src] = load_words::<1>(ip.src.as_ptr());
    let [dst] = load_words::<1>(ip.dst.as_ptr());
    flow.src = words_to_addr([src, 0, 0, 0]);
    flow.dst = words_to_addr([dst, 0, 0, 0]);
    let frag = be16(ip.frag_off);
    flow.later_fragment = frag & 0x1fff != 0;
    flow.dont_fragment = frag & 0x4000 != 0;
    Ok(())
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, flow: &mut Flow) -> Result<(), NotIp> {
    let ip: &Ipv6Hdr = header(ctx, flow.l3_off).ok_or_else(truncated)?;
    if ip.vtc_flow[0] >> 4 != 6 {
        return Err(NotIp::Malformed(Counter::MalformedIpHeader));
    }
    flow.v6 = true;
    flow.src = words_to_addr(load_words::<4>(ip.src.as_ptr()));
    flow.dst = words_to_addr(load_words::<4>(ip.dst.as_ptr()));
    let mut next = ip.next_hdr;
    let mut off = flow.l3_off + IPV6_LEN;
    // One pass more than there are headers to follow: the last finds the
    // transport header, or gives up.
    for _ in 0..=MAX_IPV6_EXT {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let ext: &Ipv6ExtHdr = header(ctx, off).ok_or_else(truncated)?;
                next = ext.next_hdr;
                off += (ext.len as usize + 1) * 8;
            }
            IPPROTO_AH => {
                let ext: &Ipv6ExtHdr = header(ctx, off).ok_or_else(truncated)?;
                next = ext.next_hdr;
                off += (ext.len as usize + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let frag: &Ipv6FragHdr = header(ctx, off).ok_or_else(truncated)?;
                next = frag.next_hdr;
                off += 8;
                if be16(frag.frag_off) & 0xfff8 != 0 {
                    flow.later_fragment = true;
                }
            }
            _ => {
                flow.proto = next;
                flow.l4_off = off;
                return Ok(());
            }
        }
    }
    Err(NotIp::Malformed(Counter::MalformedIpv6ExtHeaders))
}

#[inline(always)]
fn parse_l4(ctx: &XdpContext, flow: &mut Flow) -> Result<(), NotIp> {
    match flow.proto {
        IPPROTO_TCP => {
            let tcp: &TcpHdr = header(ctx, flow.l4_off).ok_or_else(truncated)?;
            if tcp.off_flags[0] >> 4 < 5 {
                return Err(NotIp::Malformed(Counter::MalformedTcpHeader));
            }
            flow.sport = be16(tcp.src);
            flow.dport = be16(tcp.dst);
            flow.tcp_flags = tcp.off_flags[1];
        }
        IPPROTO_UDP => {
            let udp: &UdpHdr = header(ctx, flow.l4_off).ok_or_else(truncated)?;
            flow.sport = be16(udp.src);
            flow.dport = be16(udp.dst);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let icmp: &IcmpHdr = header(ctx, flow.l4_off).ok_or_else(truncated)?;
            flow.sport = be16([icmp.rest[0], icmp.rest[1]]);
            flow.dport = (icmp.ty as u16) << 8 | icmp.code as u16;
        }
        _ => {}
    }
    Ok(())
}
