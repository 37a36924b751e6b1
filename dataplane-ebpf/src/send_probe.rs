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
use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_FIXED_GSO, BPF_RB_NO_WAKEUP, TC_ACT_SHOT, TC_ACT_UNSPEC, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
        xdp_action,
    },
    helpers::{bpf_ktime_get_ns, bpf_redirect_neigh, bpf_xdp_adjust_head},
    programs::{TcContext, XdpContext},
};
use dataplane_common::{
    DropReason, checksum,
    hash::vxlan_source_port,
    types::{BackendEntry, SYN_PROBE_PORT_BASE, SYN_PROBE_PORTS, SynProbeReply, TenantInfo, VXLAN_PORT, probe_target},
};

use aya_log_ebpf::debug;

use crate::allow_choose as steer;
use crate::maps::{PROBE_HOST, PROBE_REPLIES, active_gen, host_config};
use crate::packet::{ETH_LEN, ETH_P_IPV4, IPPROTO_TCP, read, write};
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

/// The fabric MAC to hand `inner` to the stack with, if it is a reply to
/// one of the agent's probes (addressed to the probe source address).
#[inline(always)]
pub fn reply_to(inner: &Flow) -> Option<[u8; 6]> {
    let host = PROBE_HOST.get(0)?;
    if inner.v6 || host.addr == [0; 4] || inner.dst[..4] != host.addr {
        return None;
    }
    Some(host.fabric_mac)
}

/// An answer to one of the agent's half-open probes (TCP, to a port of
/// their range): handed to the agent through `PROBE_REPLIES` and dropped,
/// for no socket waits for it. `None`: not such an answer (a TLS check's
/// socket waits for it). A full ring loses the answer, which the agent
/// then counts as a probe without one.
#[inline(always)]
pub fn syn_reply(ctx: &XdpContext, inner: &Flow, tenant: u32, origin: u32) -> Option<u32> {
    if inner.proto != IPPROTO_TCP
        || inner.later_fragment
        || !(SYN_PROBE_PORT_BASE..SYN_PROBE_PORT_BASE + SYN_PROBE_PORTS).contains(&inner.dport)
    {
        return None;
    }
    let Some(nums) = read::<[u8; 8]>(ctx, inner.l4_off + 4) else {
        return Some(xdp_action::XDP_DROP);
    };
    if let Some(mut entry) = PROBE_REPLIES.reserve::<SynProbeReply>(0) {
        entry.write(SynProbeReply {
            // SAFETY: plain helper call.
            ts_ns: unsafe { bpf_ktime_get_ns() },
            tenant,
            seq: u32::from_be_bytes([nums[0], nums[1], nums[2], nums[3]]),
            ack: u32::from_be_bytes([nums[4], nums[5], nums[6], nums[7]]),
            vip: [inner.src[0], inner.src[1], inner.src[2], inner.src[3]],
            vip_port: inner.sport,
            port: inner.dport,
            origin: origin as u8,
            flags: inner.tcp_flags,
            _pad: [0; 6],
        });
        // No wake-up: the agent polls the ring at its own pace.
        entry.submit(BPF_RB_NO_WAKEUP as u64);
    }
    Some(xdp_action::XDP_DROP)
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
