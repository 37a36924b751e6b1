//! The `probe` program (TC egress on `lo`): the agent's health probes
//! leave as ordinary TCP sockets to a VIP, marked with the machine they are
//! for (`types::probe_mark`); a VIP is a local address (or routed to `lo`
//! by the mark), so they leave through `lo`. Here each marked packet is
//! wrapped the way inbound traffic is (`encap`: VXLAN with the tenant's
//! VNI from the host VTEP to the machine's VTEP, inner Ethernet from the
//! router MAC to the machine's MAC) and sent out of the fabric, so a probe
//! travels the very path a client's connection does. Every other packet
//! on `lo` passes untouched; a marked one that names no machine is
//! dropped.
//!
//! The answers come back through the fabric program: to a TLS check's
//! socket (`deliver`), or, for the half-open probes, into `PROBE_REPLIES`
//! (`syn_reply`), the SYN-ACK turned into the reset that answers it and
//! sent back out of the fabric by the `probe_reset` program (`bounce`, TC
//! ingress on the fabric).
use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_FIXED_GSO, BPF_RB_NO_WAKEUP, TC_ACT_SHOT, TC_ACT_UNSPEC, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
        xdp_action,
    },
    helpers::{
        bpf_ktime_get_ns, bpf_redirect, bpf_redirect_neigh, bpf_xdp_adjust_head, bpf_xdp_adjust_meta,
        bpf_xdp_adjust_tail,
    },
    programs::{TcContext, XdpContext},
};
use dataplane_common::{
    DropReason, checksum,
    hash::vxlan_source_port,
    types::{
        BackendEntry, PROBE_RESET_META, SYN_PROBE_PORT_BASE, SYN_PROBE_PORTS, SynProbeReply, TenantInfo, VXLAN_PORT,
        probe_target,
    },
};

use aya_log_ebpf::debug;

use crate::allow_choose as steer;
use crate::maps::{PROBE_HOST, PROBE_REPLIES, PROBE_RESETS, active_gen, host_config};
use crate::packet::{ETH_LEN, ETH_P_IPV4, IPPROTO_TCP, frame_len, ptr_at_mut, read, write};
use crate::parse::Flow;
use crate::send_encap::ENCAP_OVERHEAD;
use crate::verdict::Refused;

const HEADERS: usize = ETH_LEN + ENCAP_OVERHEAD;

#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    // SAFETY: the context's socket buffer, valid for the program's run.
    let mark = unsafe { (*ctx.skb.skb).mark };
    let Some((id, slot)) = probe_target(mark) else {
        // Not a probe: on to the next program on `lo`, if any.
        return TC_ACT_UNSPEC;
    };
    match try_probe(ctx, mark, id, slot) {
        Ok(action) => action,
        Err(step) => {
            debug!(ctx, "probe: tenant {} slot {} dropped at {}", id, slot, step);
            TC_ACT_SHOT as i32
        }
    }
}

/// The machine of tenant record `t` in probe slot `slot` (connectors 0-1,
/// cores 2-3).
#[inline(always)]
fn machine(t: &TenantInfo, slot: u32) -> Option<BackendEntry> {
    let (list, n, i) = if slot < 2 {
        (&t.connectors, t.n_connectors, slot as usize)
    } else {
        (&t.cores, t.n_cores, slot as usize - 2)
    };
    if i >= n as usize || i >= list.len() {
        return None;
    }
    Some(list[i])
}

#[inline(always)]
fn try_probe(ctx: &TcContext, mark: u32, id: u32, slot: u32) -> Result<i32, u32> {
    let eth_proto: u16 = ctx.load::<[u8; 2]>(12).map(u16::from_be_bytes).map_err(|_| 1u32)?;
    if eth_proto != ETH_P_IPV4 {
        return Err(2);
    }
    let cfg = host_config().map_err(|_| 3u32)?;
    let t = steer::tenant(id, active_gen()).map_err(|_| 4u32)?;
    let backend = machine(t, slot).ok_or(5u32)?;
    let ip_len = ctx.len() as usize - ETH_LEN;
    // The outer packet is routed as the host's own: the probe's mark would
    // route it back to this device.
    ctx.set_mark(0);
    ctx.adjust_room(ENCAP_OVERHEAD as i32, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO as u64)
        .map_err(|_| 6u32)?;
    let mut h = [0u8; HEADERS];
    // Outer Ethernet: filled in by the neighbour lookup below.
    h[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
    let tot_len = (ENCAP_OVERHEAD + ip_len) as u16;
    h[14] = 0x45;
    h[16..18].copy_from_slice(&tot_len.to_be_bytes());
    h[20] = 0x40;
    h[22] = 64;
    h[23] = 17;
    h[26..30].copy_from_slice(&cfg.vtep);
    h[30..34].copy_from_slice(&backend.vtep);
    let csum = checksum::fold(checksum::sum_bytes(0, &h[14..34]));
    h[24..26].copy_from_slice(&csum.to_be_bytes());
    h[34..36].copy_from_slice(&vxlan_source_port(mark).to_be_bytes());
    h[36..38].copy_from_slice(&VXLAN_PORT.to_be_bytes());
    h[38..40].copy_from_slice(&(tot_len - 20).to_be_bytes());
    h[42] = 0x08;
    h[46..49].copy_from_slice(&t.vni.to_be_bytes()[1..4]);
    h[50..56].copy_from_slice(&backend.mac);
    h[56..62].copy_from_slice(&cfg.router_mac);
    h[62..64].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
    ctx.store(0, &h, 0).map_err(|_| 7u32)?;
    // The kernel resolves the VTEP's neighbour (and waits for it if need
    // be), as for any packet the host sends into the fabric.
    // SAFETY: plain helper call; no parameters, the FIB decides.
    let action = unsafe { bpf_redirect_neigh(cfg.fabric_ifindex, core::ptr::null_mut(), 0, 0) } as i32;
    Ok(action)
}

/// If `inner` is a reply to one of the agent's probes (addressed to the
/// probe source address): the fabric MAC to hand it to the stack with, and
/// whether `carwash_probe_reset` sends resets back.
#[inline(always)]
pub fn reply_to(inner: &Flow) -> Option<([u8; 6], bool)> {
    let host = PROBE_HOST.get(0)?;
    if inner.v6 || host.addr == [0; 4] || inner.dst[..4] != host.addr {
        return None;
    }
    Some((host.fabric_mac, host.resets_in_path == 1))
}

/// An answer to one of the agent's half-open probes (TCP, to a port of
/// their range): handed to the agent through `PROBE_REPLIES`. `None`: not
/// such an answer (a TLS check's socket waits for it). A full ring loses
/// the answer, which the agent then counts as a probe without one.
///
/// A SYN-ACK must be answered with a reset, so that the machine keeps
/// nothing of the probe. Where `carwash_probe_reset` is attached
/// (`ProbeHost::resets_in_path`), the SYN-ACK becomes that reset here,
/// where it lies, marked for that program by a metadata word, and passes
/// to it; otherwise, and for anything else, the answer is dropped here and
/// the agent sends the reset.
#[inline(always)]
pub fn syn_reply(ctx: &XdpContext, inner: &Flow, tenant: u32, origin: u32, in_path: bool) -> Option<u32> {
    if inner.proto != IPPROTO_TCP
        || inner.later_fragment
        || !(SYN_PROBE_PORT_BASE..SYN_PROBE_PORT_BASE + SYN_PROBE_PORTS).contains(&inner.dport)
    {
        return None;
    }
    let Some(nums) = read::<[u8; 8]>(ctx, inner.l4_off + 4) else {
        return Some(xdp_action::XDP_DROP);
    };
    let ack = u32::from_be_bytes([nums[4], nums[5], nums[6], nums[7]]);
    let synack = inner.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK;
    let reset = in_path && synack && mark_for_reset(ctx) && reset_in_place(ctx, ack);
    if reset {
        count_reset(0);
    }
    if let Some(mut entry) = PROBE_REPLIES.reserve::<SynProbeReply>(0) {
        entry.write(SynProbeReply {
            // SAFETY: plain helper call.
            ts_ns: unsafe { bpf_ktime_get_ns() },
            tenant,
            seq: u32::from_be_bytes([nums[0], nums[1], nums[2], nums[3]]),
            ack,
            vip: [inner.src[0], inner.src[1], inner.src[2], inner.src[3]],
            vip_port: inner.sport,
            port: inner.dport,
            origin: origin as u8,
            flags: inner.tcp_flags,
            reset: u8::from(reset),
            _pad: [0; 5],
        });
        // No wake-up: the agent polls the ring at its own pace.
        entry.submit(BPF_RB_NO_WAKEUP as u64);
    }
    Some(if reset {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    })
}

/// Puts `PROBE_RESET_META` in front of the frame. `false` where the driver
/// keeps no metadata (the agent then sends the reset).
#[inline(always)]
fn mark_for_reset(ctx: &XdpContext) -> bool {
    // SAFETY: valid context; pointers are re-derived afterwards.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -4) } != 0 {
        return false;
    }
    let (meta, data) = (ctx.metadata(), ctx.data());
    if meta + 4 > data {
        return false;
    }
    // SAFETY: the four bytes before the frame, checked just above.
    unsafe { core::ptr::write_unaligned(meta as *mut u32, PROBE_RESET_META) };
    true
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const TCP_RST: u8 = 0x04;
/// The offsets of a tunnel frame without VLAN tags or IP options: outer
/// IPv4, UDP, inner Ethernet, inner IPv4, TCP; and the reset's length.
const O_IP: usize = 14;
const O_UDP: usize = O_IP + 20;
const I_ETH: usize = O_UDP + 16;
const I_IP: usize = I_ETH + 14;
const I_TCP: usize = I_IP + 20;
const RST_LEN: usize = I_TCP + 20;

/// Turns the SYN-ACK in the frame into the reset that answers it, back
/// through the same tunnel: addresses, MACs and TCP ports swapped, the
/// sequence number the SYN-ACK acknowledged, no options, cut to length;
/// every checksum written whole. Only for frames without VLAN tags or IP
/// options (`false` otherwise, and for anything that does not fit; the
/// agent then sends the reset). Rewritten where it lies: no copies on the
/// fabric program's stack.
#[inline(always)]
fn reset_in_place(ctx: &XdpContext, ack: u32) -> bool {
    if frame_len(ctx) < RST_LEN {
        return false;
    }
    let (Some(eth), Some(oip), Some(udp), Some(ieth), Some(iip), Some(tcp)) = (
        ptr_at_mut::<[u8; 14]>(ctx, 0),
        ptr_at_mut::<[u8; 20]>(ctx, O_IP),
        ptr_at_mut::<[u8; 8]>(ctx, O_UDP),
        ptr_at_mut::<[u8; 14]>(ctx, I_ETH),
        ptr_at_mut::<[u8; 20]>(ctx, I_IP),
        ptr_at_mut::<[u8; 20]>(ctx, I_TCP),
    ) else {
        return false;
    };
    // SAFETY: each lies inside the packet (checked by ptr_at_mut), they do
    // not overlap, and nothing else refers to the packet meanwhile.
    let (eth, oip, udp, ieth, iip, tcp) =
        unsafe { (&mut *eth, &mut *oip, &mut *udp, &mut *ieth, &mut *iip, &mut *tcp) };
    // Untagged IPv4 without options on both levels, UDP outside, TCP
    // inside: the offsets above hold.
    let ipv4 = ETH_P_IPV4.to_be_bytes();
    if eth[12..14] != ipv4
        || ieth[12..14] != ipv4
        || oip[0] != 0x45
        || iip[0] != 0x45
        || oip[9] != 17
        || iip[9] != IPPROTO_TCP
    {
        return false;
    }
    swap6(eth);
    swap6(ieth);
    // Outer IPv4: back to the VTEP it came from.
    swap4(oip);
    oip[2..4].copy_from_slice(&((RST_LEN - O_IP) as u16).to_be_bytes());
    oip[8] = 64;
    oip[10] = 0;
    oip[11] = 0;
    let c = checksum::fold(checksum::sum_bytes(0, &oip[..]));
    oip[10..12].copy_from_slice(&c.to_be_bytes());
    // UDP: the same ports (the machine's source port, VXLAN's 4789), the
    // new length, no checksum.
    udp[4..6].copy_from_slice(&((RST_LEN - O_UDP) as u16).to_be_bytes());
    udp[6] = 0;
    udp[7] = 0;
    // Inner IPv4.
    swap4(iip);
    iip[2..4].copy_from_slice(&40u16.to_be_bytes());
    iip[8] = 64;
    iip[10] = 0;
    iip[11] = 0;
    let c = checksum::fold(checksum::sum_bytes(0, &iip[..]));
    iip[10..12].copy_from_slice(&c.to_be_bytes());
    // TCP: the reset, with the sequence number the SYN-ACK acknowledged.
    for i in 0..2 {
        tcp.swap(i, i + 2);
    }
    tcp[4..8].copy_from_slice(&ack.to_be_bytes());
    for b in tcp[8..20].iter_mut() {
        *b = 0;
    }
    tcp[12] = 5 << 4;
    tcp[13] = TCP_RST;
    let sum = checksum::sum_bytes(checksum::sum_bytes(6 + 20, &iip[12..20]), &tcp[..]);
    let c = checksum::fold(sum);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    // The volatile read keeps LLVM from folding this into arithmetic on
    // the packet-end pointer, which the verifier forbids.
    let cur = frame_len(ctx) as i32;
    // SAFETY: reading a local; valid context; only shrinks.
    unsafe { bpf_xdp_adjust_tail(ctx.ctx, RST_LEN as i32 - core::ptr::read_volatile(&cur)) == 0 }
}

/// Swaps an Ethernet header's destination and source.
#[inline(always)]
fn swap6(h: &mut [u8; 14]) {
    for i in 0..6 {
        h.swap(i, i + 6);
    }
}

/// Swaps an IPv4 header's source and destination.
#[inline(always)]
fn swap4(h: &mut [u8; 20]) {
    for i in 12..16 {
        h.swap(i, i + 4);
    }
}

/// The `probe_reset` program (TC ingress on the fabric): a frame the
/// fabric program marked with `PROBE_RESET_META` is a reset it wrote in
/// place of a probe's SYN-ACK, addressed to the machine; it leaves by the
/// fabric it came in on. Everything else goes on untouched.
#[inline(always)]
pub fn bounce(ctx: &TcContext) -> i32 {
    if !marked_for_reset(ctx) {
        return TC_ACT_UNSPEC;
    }
    count_reset(1);
    // SAFETY: the context's socket buffer, valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain helper call; egress of the receiving device.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// Whether the socket buffer carries `PROBE_RESET_META` (`mark_for_reset`)
/// in front of its frame.
#[inline(always)]
pub fn marked_for_reset(ctx: &TcContext) -> bool {
    let skb = ctx.skb.skb;
    // SAFETY: the context's socket buffer, valid for the program's run.
    let (meta, data) = unsafe { ((*skb).data_meta as usize, (*skb).data as usize) };
    // SAFETY: the metadata's first four bytes, checked to lie before the
    // frame first.
    meta + 4 <= data && unsafe { core::ptr::read_unaligned(meta as *const u32) } == PROBE_RESET_META
}

/// Counts a reset in `PROBE_RESETS` slot `i`: 0 written by the fabric
/// program, 1 sent back by the TC program.
#[inline(always)]
fn count_reset(i: u32) {
    if let Some(n) = PROBE_RESETS.get_ptr_mut(i) {
        // SAFETY: this CPU's slot; the program is not preempted.
        unsafe { *n += 1 };
    }
}

/// Strips the tunnel headers of a probe reply (whose inner Ethernet header
/// starts at `inner_off`) and passes it to the host stack, which finds the
/// probing socket by its addresses and ports. The VNI and the sending VTEP
/// were checked as for any reply; the VIP, which only one tenant has, and
/// the probe's own source port keep machines with the same private
/// addresses apart.
#[inline(always)]
pub fn deliver(ctx: &XdpContext, inner_off: usize, fabric_mac: &[u8; 6]) -> Result<u32, Refused> {
    // SAFETY: valid context; pointers are re-derived afterwards.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, inner_off as i32) } != 0 {
        return Err(DropReason::Malformed.into());
    }
    if !write(ctx, 0, *fabric_mac) {
        return Err(DropReason::Malformed.into());
    }
    Ok(xdp_action::XDP_PASS)
}
