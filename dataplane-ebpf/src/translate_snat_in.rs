//! Traffic to an egress IP (path 4, and path 5 for translated flows),
//! tail-called by the uplink program: a reply of a tracked flow is
//! translated back and encapsulated to the machine that opened the flow; an
//! ICMP error about a tracked flow is translated too, outer and embedded
//! headers, and follows the flow; anything else is dropped.
use aya_ebpf::programs::XdpContext;
use dataplane_common::{
    Counter, DropReason, jumps,
    types::{CT_REPLY, CtKey, CtValue, HOPS_PER_TENANT, SIDE_UPLINK},
};

use crate::classify_uplink::too_big;
use crate::clock;
use crate::counters::{Counters, run_handed};
use crate::handoff::hand_on;
use crate::maps::{CONNTRACK, host_config};
use crate::packet::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, TCP_FLAG_SYN, be16, frame_len, write};
use crate::parse::Flow;
use crate::send_encap::{ENCAP_OVERHEAD, cached_hop, encapsulate, encapsulate_via};
use crate::translate_nat::{self as nat, Delta, End};
use crate::translate_snat_out::{keep_twin, refresh, tcp_state, twin_due};
use crate::verdict::Refused;
use crate::{allow_choose as steer, handoff, send_fleet as fleet};

const TCP_FLAG_ACK: u8 = 0x10;

/// In the hand-off's `origin` from `carwash_snat_icmp` to
/// `carwash_snat_in`: an ICMP error about the flow of another host's port
/// (the low 16 bits), to be passed on to that host.
const QUOTED_PORT: u32 = 1 << 31;

/// `carwash_snat_in`: a reply of a tracked flow.
#[inline(always)]
pub fn run_reply(ctx: &XdpContext) -> u32 {
    run_handed(ctx, SIDE_UPLINK, try_reply)
}

/// `carwash_snat_icmp`: an ICMP error about a tracked flow.
#[inline(always)]
pub fn run_icmp(ctx: &XdpContext) -> u32 {
    run_handed(ctx, SIDE_UPLINK, try_icmp_error)
}

/// `carwash_too_big`: a reply that would not fit the fabric is answered
/// with fragmentation needed / packet too big.
#[inline(always)]
pub fn run_too_big(ctx: &XdpContext) -> u32 {
    run_handed(ctx, SIDE_UPLINK, try_too_big)
}

/// `carwash_deliver`: a translated packet to the machine of its flow.
#[inline(always)]
pub fn run_deliver(ctx: &XdpContext) -> u32 {
    run_handed(ctx, SIDE_UPLINK, try_deliver)
}

#[inline(always)]
fn try_reply(ctx: &XdpContext, stats: &Counters, tenant: &mut u32) -> Result<u32, Refused> {
    let h = handoff::take()?;
    let owner = h.tenant;
    *tenant = owner;
    let cfg = host_config()?;
    let flow = h.flow;
    if flow.later_fragment {
        return Err(DropReason::Fragment.into());
    }
    let quoted = h.origin & QUOTED_PORT != 0;
    let (sport, dport) = match flow.proto {
        // An ICMP error about the flow of another host's port.
        _ if quoted => (0, h.origin as u16),
        IPPROTO_TCP | IPPROTO_UDP => (flow.sport, flow.dport),
        _ if nat::is_echo(&flow, false) => (0, flow.sport),
        _ => return Err(DropReason::NoConntrack.into()),
    };
    // In a fleet, a port of another host's block is that host's flow.
    if (dport < cfg.snat_port_lo || dport > cfg.snat_port_hi)
        && let Some(relayed) = fleet::relay(ctx, &flow, cfg, dport)
    {
        return Ok(relayed?);
    }
    if quoted {
        return Err(DropReason::NoConntrack.into());
    }
    let key = nat::key(0, &flow.src, &flow.dst, sport, dport, flow.proto, flow.v6);
    let now = clock::now(cfg);
    let v = reply_entry(&key, &flow, owner, now)?;
    let usable = cfg.fabric_mtu.saturating_sub(ENCAP_OVERHEAD as u16);
    // Checked before the rewrite: the answer quotes the packet as sent.
    if frame_len(ctx) - flow.l3_off > usable as usize {
        return Err(hand_on(ctx, &flow, h.generation, owner, 0, 0, jumps::TOO_BIG));
    }
    let port = u16::from_be_bytes(v.port_be);
    if !nat::rewrite(ctx, &flow, End::Dst, &v.addr, port) {
        return Err(DropReason::Malformed.into());
    }
    stats.inc(Counter::SnatReply);
    let (tenant, origin) = (v.tenant, v.origin as u32);
    // The machine's next hop is mostly cached: then the packet leaves from
    // here. A stale cache means a FIB lookup, for which this program's
    // stack has no room: `carwash_deliver` does it.
    let t = steer::tenant(tenant, h.generation)?;
    let slot = origin & 3;
    let machine = steer::machine(t, slot)?;
    match cached_hop(machine.vtep, tenant * HOPS_PER_TENANT + slot, now) {
        Some(nh) => Ok(encapsulate_via(ctx, &flow, cfg, t.vni, &machine, &nh, flow.hash())?),
        None => Err(hand_on(ctx, &flow, h.generation, tenant, origin, 0, jumps::DELIVER)),
    }
}

/// The live tracking entry of a reply, brought up to date.
#[inline(always)]
fn reply_entry(key: &CtKey, flow: &Flow, owner: u32, now: u64) -> Result<&'static CtValue, DropReason> {
    // SAFETY: a value of the map, valid for this run (RCU).
    let v = unsafe { &mut *CONNTRACK.get_ptr_mut(key).ok_or(DropReason::NoConntrack)? };
    // The egress IP's owner must be the flow's tenant: entries of an
    // address that changed hands deliver nothing.
    if v.expires_ns <= now || v.tenant != owner {
        return Err(DropReason::NoConntrack);
    }
    let bare_syn = flow.proto == IPPROTO_TCP && flow.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
    refresh(v, flow.proto, tcp_state(flow) | CT_REPLY, bare_syn, now);
    if !twin_due(v, now) {
        return Ok(v);
    }
    // The outbound direction lives as long as this one.
    let icmp = flow.proto != IPPROTO_TCP && flow.proto != IPPROTO_UDP;
    let fill = |k: &mut CtKey, w: &mut CtValue| {
        *k = CtKey {
            tenant: v.tenant,
            src: v.addr,
            dst: key.src,
            sport_be: v.port_be,
            dport_be: if icmp { [0, 0] } else { key.sport_be },
            proto: key.proto,
            family: key.family,
            _pad: [0; 2],
        };
        w.addr = key.dst;
        w.port_be = key.dport_be;
        w.origin = v.origin;
    };
    if !keep_twin(fill, v, now) {
        // The machine's tuple has moved on to another translation.
        return Err(DropReason::NoConntrack);
    }
    Ok(v)
}

#[inline(always)]
fn try_too_big(ctx: &XdpContext, _stats: &Counters, tenant: &mut u32) -> Result<u32, Refused> {
    let h = handoff::take()?;
    *tenant = h.tenant;
    let cfg = host_config()?;
    let usable = cfg.fabric_mtu.saturating_sub(ENCAP_OVERHEAD as u16);
    Err(too_big(ctx, &h.flow, usable))
}

/// Encapsulates the (translated) packet to the machine that opened the
/// flow.
#[inline(always)]
fn try_deliver(ctx: &XdpContext, _stats: &Counters, tenant: &mut u32) -> Result<u32, Refused> {
    let h = handoff::take()?;
    *tenant = h.tenant;
    let cfg = host_config()?;
    let t = steer::tenant(h.tenant, h.generation)?;
    let slot = h.origin & 3;
    let machine = steer::machine(t, slot)?;
    let flow = &h.flow;
    let hash = flow.hash();
    Ok(encapsulate(
        ctx,
        flow,
        cfg,
        t.vni,
        &machine,
        h.tenant * HOPS_PER_TENANT + slot,
        hash,
    )?)
}

/// An ICMP error about a translated flow: the quoted packet left with the
/// egress IP as its source; it is looked up as the reply it would have
/// drawn, and both the outer destination and the quoted source go back to
/// the machine's own address and port.
#[inline(always)]
fn try_icmp_error(ctx: &XdpContext, stats: &Counters, tenant: &mut u32) -> Result<u32, Refused> {
    let h = handoff::take()?;
    let owner = h.tenant;
    *tenant = owner;
    let cfg = host_config()?;
    let flow = &h.flow;
    // The reply key of the quoted packet: from its destination to its
    // (translated) source, built in place.
    let mut key = nat::key(0, &[0; 16], &[0; 16], 0, 0, 0, flow.v6);
    let q = nat::read_quote(ctx, flow, &mut key.dst, &mut key.src)?;
    let (e, q_l4, l4) = (q.l3, q.l4, q.head);
    key.proto = q.proto;
    // The quoted packet left from the egress IP this error came to.
    if key.dst != flow.dst {
        return Err(DropReason::NoConntrack.into());
    }
    let (q_port, port_off) = match key.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            key.sport_be = [l4[2], l4[3]];
            key.dport_be = [l4[0], l4[1]];
            (be16([l4[0], l4[1]]), q_l4)
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            key.dport_be = [l4[4], l4[5]];
            (be16([l4[4], l4[5]]), q_l4 + 4)
        }
        _ => return Err(DropReason::NoConntrack.into()),
    };
    // In a fleet, an error about a flow of another host's block is that
    // host's, as the flow's replies are: the reply program passes it on
    // (passing on from here too would not fit this program's stack).
    if (q_port < cfg.snat_port_lo || q_port > cfg.snat_port_hi) && fleet::in_fleet() {
        return Err(hand_on(
            ctx,
            flow,
            h.generation,
            owner,
            QUOTED_PORT | u32::from(q_port),
            0,
            jumps::SNAT_IN,
        ));
    }
    let q_proto = key.proto;
    // SAFETY: a value of the map, valid for this run (RCU).
    let v = unsafe { CONNTRACK.get(&key) }.ok_or(DropReason::NoConntrack)?;
    let now = clock::now(cfg);
    if v.expires_ns <= now || v.tenant != owner {
        return Err(DropReason::NoConntrack.into());
    }
    let usable = cfg.fabric_mtu.saturating_sub(ENCAP_OVERHEAD as u16);
    if frame_len(ctx) - flow.l3_off > usable as usize {
        return Err(DropReason::TooBig.into());
    }
    let v6 = flow.v6;
    let new_port = u16::from_be_bytes(v.port_be);

    // The quoted source address.
    let mut addr = Delta::new();
    addr.addr(&flow.dst, &v.addr, v6);
    // Every change inside the ICMP message, for its checksum.
    let mut icmp = addr;
    if !nat::write_addr(ctx, nat::addr_off(e, v6, End::Src), &v.addr, v6) {
        return Err(DropReason::Malformed.into());
    }
    if !v6 {
        let (old, new) = nat::update_check(ctx, e + 10, addr, false).ok_or(DropReason::Malformed)?;
        icmp.word(old, new);
    }
    // The quoted source port (or echo identifier), and the quoted
    // transport checksum where the quote reaches it.
    if !write(ctx, port_off, new_port.to_be_bytes()) {
        return Err(DropReason::Malformed.into());
    }
    icmp.word(q_port, new_port);
    let mut l4d = Delta::new();
    if q_proto != IPPROTO_ICMP {
        l4d.add(addr);
    }
    l4d.word(q_port, new_port);
    let check_off = match q_proto {
        IPPROTO_TCP => q_l4 + 16,
        IPPROTO_UDP => q_l4 + 6,
        _ => q_l4 + 2,
    };
    if let Some((old, new)) = nat::update_check(ctx, check_off, l4d, q_proto == IPPROTO_UDP && !v6) {
        icmp.word(old, new);
    }
    // The outer destination; ICMPv6 sums it in its pseudo-header.
    let mut outer = Delta::new();
    outer.addr(&flow.dst, &v.addr, v6);
    if !nat::write_addr(ctx, nat::addr_off(flow.l3_off, v6, End::Dst), &v.addr, v6) {
        return Err(DropReason::Malformed.into());
    }
    if v6 {
        icmp.add(outer);
    } else if nat::update_check(ctx, flow.l3_off + 10, outer, false).is_none() {
        return Err(DropReason::Malformed.into());
    }
    if nat::update_check(ctx, flow.l4_off + 2, icmp, false).is_none() {
        return Err(DropReason::Malformed.into());
    }
    stats.inc(Counter::SnatIcmpError);
    Err(hand_on(
        ctx,
        flow,
        h.generation,
        v.tenant,
        v.origin as u32,
        0,
        jumps::DELIVER,
    ))
}
