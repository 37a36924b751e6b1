//! Answers to packets that would not fit the fabric once encapsulated:
//! ICMP fragmentation needed (IPv4 with DF) or ICMPv6 packet too big,
//! carrying the usable MTU, sent back out of the uplink with XDP_TX.
//!
//! The answer is built around the packet without copying its quote: the
//! frame grows at the head by the new IP + ICMP headers, the L2 header
//! (MACs swapped, VLAN tags kept) moves to the new front, and the tail is
//! cut after the original IP header + 8 bytes, which become the quote.
use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use dataplane_common::checksum;

use crate::packet::{IPPROTO_ICMP, IPPROTO_ICMPV6, frame_len, ptr_at_mut, read, write};
use crate::parse::Flow;

/// IPv4 header + 8 bytes of the offending packet.
const QUOTE4: usize = 28;
const NEW4: usize = 20 + 8;
/// IPv6 header + 8 bytes.
const QUOTE6: usize = 48;
const NEW6: usize = 40 + 8;
/// The longest L2 header the parser accepts: Ethernet + two VLAN tags.
const MAX_L2: usize = 22;

/// Makes room for `new` bytes of headers between the L2 header and the
/// packet's IP header, and cuts the frame after `quote` bytes of it.
#[inline(always)]
fn reshape(ctx: &XdpContext, l3: usize, new: usize, quote: usize) -> bool {
    let Some(l2) = read::<[u8; MAX_L2]>(ctx, 0) else {
        return false;
    };
    // SAFETY: valid context; pointers are re-derived afterwards.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(new as i32)) } != 0 {
        return false;
    }
    // Bytes of `l2` past the real L2 header land where the new headers go,
    // and are overwritten by them.
    if !write(ctx, 0, l2)
        || !write(ctx, 0, [l2[6], l2[7], l2[8], l2[9], l2[10], l2[11]])
        || !write(ctx, 6, [l2[0], l2[1], l2[2], l2[3], l2[4], l2[5]])
    {
        return false;
    }
    let len = (l3 + new + quote) as i32;
    // The volatile read keeps LLVM from folding this into arithmetic on
    // the packet-end pointer, which the verifier forbids.
    let cur = frame_len(ctx) as i32;
    // SAFETY: reading a local; valid context; only shrinks (the packet was
    // too big).
    unsafe { bpf_xdp_adjust_tail(ctx.ctx, len - core::ptr::read_volatile(&cur)) == 0 }
}

/// Turns the packet into an ICMP fragmentation-needed message for its
/// sender. Only for IPv4 headers without options (the quote is the 20-byte
/// header + 8 bytes).
// Not inlined: the slow path keeps its state out of the fast path's stack.
#[inline(never)]
pub fn frag_needed_v4(ctx: &XdpContext, flow: &Flow, mtu: u16) -> bool {
    let l3 = flow.l3_off;
    match read::<u8>(ctx, l3) {
        Some(0x45) => {}
        _ => return false,
    }
    if !reshape(ctx, l3, NEW4, QUOTE4) {
        return false;
    }
    let Some(p) = ptr_at_mut::<[u8; NEW4 + QUOTE4]>(ctx, l3) else {
        return false;
    };
    // SAFETY: bounds checked; alignment 1.
    let a = unsafe { &mut *p };
    a[0..NEW4].fill(0);
    a[0] = 0x45;
    a[3] = (NEW4 + QUOTE4) as u8;
    a[8] = 64;
    a[9] = IPPROTO_ICMP;
    a[12..16].copy_from_slice(&flow.dst[..4]);
    a[16..20].copy_from_slice(&flow.src[..4]);
    let c = checksum::fold(checksum::sum_bytes(0, &a[0..20]));
    a[10..12].copy_from_slice(&c.to_be_bytes());
    // Destination unreachable, fragmentation needed and DF set, next-hop MTU.
    a[20] = 3;
    a[21] = 4;
    a[26..28].copy_from_slice(&mtu.to_be_bytes());
    let c = checksum::fold(checksum::sum_bytes(0, &a[20..]));
    a[22..24].copy_from_slice(&c.to_be_bytes());
    true
}

/// The same for IPv6: ICMPv6 packet too big.
#[inline(never)]
pub fn packet_too_big_v6(ctx: &XdpContext, flow: &Flow, mtu: u16) -> bool {
    let l3 = flow.l3_off;
    if !reshape(ctx, l3, NEW6, QUOTE6) {
        return false;
    }
    let Some(p) = ptr_at_mut::<[u8; NEW6 + QUOTE6]>(ctx, l3) else {
        return false;
    };
    // SAFETY: bounds checked; alignment 1.
    let a = unsafe { &mut *p };
    let payload_len = (8 + QUOTE6) as u16;
    a[0..NEW6].fill(0);
    a[0] = 0x60;
    a[5] = payload_len as u8;
    a[6] = IPPROTO_ICMPV6;
    a[7] = 64;
    a[8..24].copy_from_slice(&flow.dst);
    a[24..40].copy_from_slice(&flow.src);
    // Packet too big, with the MTU as a 32-bit field.
    a[40] = 2;
    a[46..48].copy_from_slice(&mtu.to_be_bytes());
    // Pseudo-header (addresses, upper-layer length, next header) + message.
    // The pseudo-header's addresses are the quoted header's, swapped, and
    // sum the same: counting the quote's address words twice saves a pass.
    let quote_addrs = checksum::sum_bytes(0, &a[NEW6 + 8..NEW6 + 40]);
    let sum = quote_addrs
        + checksum::sum_bytes(0, &a[NEW6..NEW6 + 8])
        + checksum::sum_bytes(0, &a[NEW6 + 40..])
        + quote_addrs
        + checksum::sum_bytes(0, &a[40..NEW6])
        + payload_len as u32
        + IPPROTO_ICMPV6 as u32;
    let c = checksum::fold(sum);
    a[42..44].copy_from_slice(&c.to_be_bytes());
    true
}
