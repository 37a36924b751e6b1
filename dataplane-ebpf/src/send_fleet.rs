//! Replies between the hosts of a fleet. Each host translates outbound
//! flows to ports of its own block of every egress IP's range, but ECMP may
//! deliver a reply to any host: one whose port lies in another host's block
//! is passed, whole, to that host's own fabric address in VXLAN
//! (`RELAY_VNI`), and the owner takes it as if its uplink had received it.
//! An ICMP error about such a flow (fragmentation needed, unreachable)
//! goes the same way, by the quoted packet's source port, and the owner
//! takes it as its uplink would have.
//! A host of its own (no peers) never gets here: its block is the whole
//! range, and a port outside it is dropped as untracked before this module
//! is asked.
use aya_ebpf::bindings::xdp_action;
use dataplane_common::{
    DropReason, jumps,
    types::{ADDR_EGRESS, BackendEntry, Fleet, HostConfig, MAX_PEERS, RELAY_VNI, SIDE_FABRIC},
};

use crate::counters::run_handed;
use crate::handoff::{self, hand_on};
use crate::maps::{FLEET, FLEET_STATS, active_gen, host_config};
use crate::packet::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, read};
use crate::parse::{Flow, NotIp, parse_from};
use crate::send_encap::{encapsulate_from, next_hop};
use crate::verdict::Refused;
use crate::{allow_choose as steer, translate_nat as nat};
use aya_ebpf::programs::XdpContext;

const UDP_VXLAN: usize = 8 + 8;

/// The fleet, if this host is in one.
#[inline(always)]
fn fleet() -> Option<&'static Fleet> {
    FLEET.get(0).filter(|f| f.n_peers > 0)
}

/// Whether this host is in a fleet (has peers to pass replies to).
#[inline(always)]
pub fn in_fleet() -> bool {
    fleet().is_some()
}

/// The port a reply's tracking entry is keyed by: the destination port, or
/// an echo reply's identifier.
#[inline(always)]
fn reply_port(flow: &Flow) -> Option<u16> {
    match flow.proto {
        IPPROTO_TCP | IPPROTO_UDP => Some(flow.dport),
        _ if nat::is_echo(flow, false) => Some(flow.sport),
        _ => None,
    }
}

/// A reply to an egress IP whose `port` lies outside this host's block:
/// sent to the host whose block holds it. `None` when no other host does
/// (not in a fleet, or a port of nobody's): the caller treats it as any
/// untracked reply.
#[inline(always)]
pub fn relay(ctx: &XdpContext, flow: &Flow, cfg: &HostConfig, port: u16) -> Option<Result<u32, DropReason>> {
    let f = fleet()?;
    let mut i = 0;
    while i < MAX_PEERS {
        if i as u32 >= f.n_peers {
            return None;
        }
        let p = &f.peers[i];
        if p.port_lo <= port && port <= p.port_hi && p.addr != f.own_addr {
            let peer = BackendEntry {
                vtep: p.addr,
                ..Default::default()
            };
            // Tenant 0's next-hop slots: no tenant has id 0.
            let result = next_hop(ctx, cfg, p.addr, (i & 3) as u32)
                .and_then(|nh| encapsulate_from(ctx, flow, cfg, &f.own_addr, RELAY_VNI, &peer, &nh, flow.hash()));
            if result.is_ok()
                && let Some(s) = FLEET_STATS.get_ptr_mut(0)
            {
                // SAFETY: this CPU's slot.
                unsafe { (*s).sent += 1 };
            }
            return Some(result);
        }
        i += 1;
    }
    None
}

/// Whether the fabric program's `outer` packet is addressed to this host's
/// own fabric address of the fleet (`carwash_fleet_in` takes it).
#[inline(always)]
pub fn to_own_address(outer: &Flow) -> bool {
    fleet().is_some_and(|f| outer.dst[..4] == f.own_addr)
}

/// `carwash_fleet_in`: the fabric program's parse comes in the hand-off.
#[inline(always)]
pub fn run_in(ctx: &XdpContext) -> u32 {
    run_handed(ctx, SIDE_FABRIC, |ctx, _stats, _tenant| {
        let h = handoff::take()?;
        let cfg = host_config()?;
        relayed_in(ctx, &h.flow, cfg)
    })
}

/// VXLAN to this host's own fabric address (not its VTEP): a reply another
/// host of the fleet passed on. Taken from a peer only, for a port of this
/// host's block only (so that it cannot be passed on again), and handed to
/// the reply program as the uplink would; anything else passes to the
/// host stack.
#[inline(always)]
pub fn relayed_in(ctx: &XdpContext, outer: &Flow, cfg: &HostConfig) -> Result<u32, Refused> {
    let Some(f) = fleet() else {
        return Ok(xdp_action::XDP_PASS);
    };
    if outer.dst[..4] != f.own_addr {
        return Ok(xdp_action::XDP_PASS);
    }
    let mut known = false;
    let mut i = 0;
    while i < MAX_PEERS && (i as u32) < f.n_peers {
        if f.peers[i].addr == outer.src[..4] && f.peers[i].addr != f.own_addr {
            known = true;
        }
        i += 1;
    }
    if !known {
        return Err(DropReason::VtepNotOfTenant.into());
    }
    let vx: [u8; 8] = read(ctx, outer.l4_off + 8).ok_or(DropReason::Malformed)?;
    if vx[0] & 0x08 == 0 || u32::from_be_bytes([0, vx[4], vx[5], vx[6]]) != RELAY_VNI {
        return Err(DropReason::UnknownVni.into());
    }
    let inner_off = outer.l4_off + UDP_VXLAN;
    let inner = match parse_from(ctx, inner_off) {
        Ok(fl) if fl.vlans == 0 && !fl.later_fragment => fl,
        Ok(_) => return Err(DropReason::Malformed.into()),
        Err(NotIp::Other) => return Err(DropReason::InnerNotIp.into()),
        Err(NotIp::Malformed(_)) => return Err(DropReason::Malformed.into()),
    };
    // An ICMP error belongs to the flow it quotes: the quoted packet's
    // (translated) source port names the host.
    let icmp_error = nat::is_icmp_error(&inner);
    let port = if icmp_error {
        quoted_port(ctx, &inner)?
    } else {
        reply_port(&inner).ok_or(DropReason::NoConntrack)?
    };
    if port < cfg.snat_port_lo || port > cfg.snat_port_hi {
        return Err(DropReason::NoConntrack.into());
    }
    let generation = active_gen();
    let owner = match steer::address(&inner.dst, inner.v6, generation) {
        Some(a) if a.kind == ADDR_EGRESS => a.tenant,
        _ => return Err(DropReason::NoConntrack.into()),
    };
    if let Some(s) = FLEET_STATS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { (*s).received += 1 };
    }
    // The reply program rewrites the inner packet and re-encapsulates it in
    // place, over these outer headers.
    let jump = if icmp_error { jumps::SNAT_ICMP } else { jumps::SNAT_IN };
    Err(hand_on(ctx, &inner, generation, owner, 0, inner_off, jump))
}

/// The source port (or echo identifier) of the packet an ICMP error
/// quotes: the port the packet left with.
#[inline(always)]
fn quoted_port(ctx: &XdpContext, error: &Flow) -> Result<u16, DropReason> {
    let (mut src, mut dst) = ([0u8; 16], [0u8; 16]);
    let q = nat::read_quote(ctx, error, &mut src, &mut dst)?;
    match q.proto {
        IPPROTO_TCP | IPPROTO_UDP => Ok(u16::from_be_bytes([q.head[0], q.head[1]])),
        IPPROTO_ICMP | IPPROTO_ICMPV6 => Ok(u16::from_be_bytes([q.head[4], q.head[5]])),
        _ => Err(DropReason::NoConntrack),
    }
}
