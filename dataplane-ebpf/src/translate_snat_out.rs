//! Outbound source NAT (path 3), tail-called by the fabric program once it
//! has checked the VNI and the VTEP: the inner source must lie in the
//! tenant's VPC and the destination in its egress allowlist; the flow gets
//! (or has) a tracked translation to the tenant's egress IP and a port from
//! the host's range, and leaves decapsulated through the uplink.
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    programs::XdpContext,
};
use dataplane_common::{
    Counter, DropReason,
    types::{
        CT_ESTABLISHED, CT_EVICT_SKIPS, CT_FIN, CT_RST, CT_SYN, CT_TOUCH_NS, CtKey, CtValue, HostConfig, MASK_EGRESS,
        MASK_VPC, SIDE_FABRIC, SNAT_PROBES, TENANT_EGRESS_V4, TENANT_EGRESS_V6, ct_lifetime,
    },
};

use crate::classify_fabric::leave;
use crate::counters::{Counters, run_handed};
use crate::maps::{CONNTRACK, CT_EVICT, CT_EVICT_CURSOR, CT_SCRATCH, Outbound, host_config};
use crate::packet::{IPPROTO_TCP, IPPROTO_UDP, TCP_FLAG_SYN};
use crate::parse::Flow;
use crate::translate_nat::{self as nat, End};
use crate::verdict::Refused;
use crate::{allow_choose as steer, handoff, translate_mss as mss};

const TCP_FLAG_FIN: u8 = 0x01;
const TCP_FLAG_RST: u8 = 0x04;
const TCP_FLAG_ACK: u8 = 0x10;

/// `carwash_snat_out`: an outbound packet from a tenant's machine.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    run_handed(ctx, SIDE_FABRIC, try_out)
}

/// The `CT_*` bits a TCP segment's flags stand for.
#[inline(always)]
pub fn tcp_state(flow: &Flow) -> u8 {
    if flow.proto != IPPROTO_TCP {
        return 0;
    }
    let f = flow.tcp_flags;
    let mut s = 0;
    if f & TCP_FLAG_RST != 0 {
        s |= CT_RST;
    }
    if f & TCP_FLAG_FIN != 0 {
        s |= CT_FIN;
    }
    if f & TCP_FLAG_SYN != 0 {
        s |= CT_SYN;
    } else if f & TCP_FLAG_ACK != 0 {
        s |= CT_ESTABLISHED;
    }
    s
}

/// Folds a packet's `CT_*` bits into a tracked direction and pushes its
/// expiry out. A bare SYN on a closed entry starts the connection anew.
#[inline(always)]
pub fn refresh(v: &mut CtValue, proto: u8, seen: u8, bare_syn: bool, now: u64) {
    v.state = if bare_syn && v.state & (CT_FIN | CT_RST) != 0 {
        seen
    } else {
        v.state | seen
    };
    v.expires_ns = now + ct_lifetime(proto, v.state);
}

#[inline(always)]
fn try_out(ctx: &XdpContext, stats: &Counters, tenant: &mut u32) -> Result<u32, Refused> {
    let h = handoff::take()?;
    *tenant = h.tenant;
    let cfg = host_config()?;
    // The tenant's record and the route, as the fabric program found them.
    let out = handoff::outbound()?;
    let flow = h.flow;
    let inner_off = h.inner_off as usize;
    let (sport, dport) = match flow.proto {
        IPPROTO_TCP | IPPROTO_UDP => (flow.sport, flow.dport),
        _ if nat::is_echo(&flow, true) => (flow.sport, 0),
        _ if flow.later_fragment => (0, 0),
        _ => return Err(DropReason::SnatProtocol.into()),
    };
    let egress = &out.egress;
    let key = nat::key(h.tenant, &flow.src, &flow.dst, sport, dport, flow.proto, flow.v6);
    let now = out.now;
    // A live flow to the tenant's egress IP, checked against the tenant's
    // tries as they are now, is not checked again: the fast path of an
    // established flow has no trie lookup.
    let live = CONNTRACK
        .get_ptr_mut(&key)
        // SAFETY: a value of the map, valid for this run (RCU).
        .filter(|v| unsafe { (**v).expires_ns > now && (**v).addr == *egress });
    // SAFETY: as above.
    if !live.is_some_and(|v| unsafe { (*v).version } == out.version) {
        if steer::mask(out.allow_slot, &flow.src, flow.v6) & MASK_VPC == 0 {
            return Err(DropReason::InnerSourceNotAllowed.into());
        }
        let need = if flow.v6 { TENANT_EGRESS_V6 } else { TENANT_EGRESS_V4 };
        if out.flags & need == 0 {
            return Err(DropReason::NoEgress.into());
        }
        if steer::mask(out.allow_slot, &flow.dst, flow.v6) & MASK_EGRESS == 0 {
            return Err(DropReason::EgressNotAllowed.into());
        }
    }
    if out.ifindex == 0 {
        return Err(DropReason::NoRoute.into());
    }
    // A fragment after the first carries no ports: the source address is
    // all there is to translate (the egress IP is the tenant's, whatever
    // the flow), and the first fragment took the port.
    if flow.later_fragment {
        if nat::rewrite_ip(ctx, &flow, End::Src, egress).is_none() {
            return Err(DropReason::Malformed.into());
        }
    } else {
        let seen = tcp_state(&flow);
        // SAFETY: as above.
        let port = match live.and_then(|v| tracked(unsafe { &mut *v }, &key, &flow, out.version, seen, now)) {
            Some(p) => p,
            None => {
                stats.inc(Counter::SnatNewFlow);
                let port = allocate(&key, &flow, cfg, out, h.origin as u8, seen, now, stats)?;
                crate::events::pending_translation(port);
                port
            }
        };
        if !nat::rewrite(ctx, &flow, End::Src, egress, port) {
            return Err(DropReason::Malformed.into());
        }
        // Replies must fit the fabric once encapsulated: the SYN tells the
        // other end how large a segment to send.
        mss::clamp(ctx, &flow, mss::tunnel_mss(cfg, flow.v6));
    }
    stats.inc(Counter::SnatOut);
    let action = leave(ctx, inner_off, out.ifindex, &out.smac, &out.dmac)?;
    stats.inc(Counter::Decapsulated);
    Ok(action)
}

/// The translated port of a tracked, live flow, with its state and expiry
/// brought up to date; `None` for a new flow (or one whose reply direction
/// now belongs to another flow, which gets a new translation).
#[inline(always)]
fn tracked(v: &mut CtValue, key: &CtKey, flow: &Flow, version: u32, seen: u8, now: u64) -> Option<u16> {
    v.version = version;
    let bare_syn = flow.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN && flow.proto == IPPROTO_TCP;
    refresh(v, flow.proto, seen, bare_syn, now);
    let port = u16::from_be_bytes(v.port_be);
    if !twin_due(v, now) {
        return Some(port);
    }
    let (addr, origin) = (v.addr, v.origin);
    let ok = keep_twin(
        |k, w| {
            *k = reply_key(key, &addr, port);
            *w = CtValue {
                addr: key.src,
                port_be: key.sport_be,
                origin,
                ..*w
            };
        },
        v,
        now,
    );
    ok.then_some(port)
}

/// Whether a packet of the tracked direction `v` brings the other
/// direction up to date ([`keep_twin`]): at most once per `CT_TOUCH_NS`.
#[inline(always)]
pub fn twin_due(v: &mut CtValue, now: u64) -> bool {
    let due = now.wrapping_sub(v.touched_ns) > CT_TOUCH_NS;
    if due {
        v.touched_ns = now;
    }
    due
}

/// Keeps the other direction of a tracked flow in step with the one a
/// packet just used: its expiry is pushed out (a flow whose traffic goes
/// one way only lives as long as that traffic), and a twin that is gone is
/// written back as `fill` makes it. `false` when the twin's key belongs to
/// another flow now.
#[inline(always)]
pub fn keep_twin(fill: impl FnOnce(&mut CtKey, &mut CtValue), own: &CtValue, now: u64) -> bool {
    let Some(s) = CT_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot, used by nothing else while the program runs.
    let s = unsafe { &mut *s };
    s.value = CtValue {
        tenant: own.tenant,
        state: own.state,
        expires_ns: own.expires_ns,
        touched_ns: now,
        version: own.version,
        ..s.value
    };
    fill(&mut s.key, &mut s.value);
    match CONNTRACK.get_ptr_mut(&s.key) {
        Some(r) => {
            // SAFETY: a value of the map, valid for this run (RCU).
            let r = unsafe { &mut *r };
            if r.tenant != s.value.tenant || r.addr != s.value.addr || r.port_be != s.value.port_be {
                return false;
            }
            let e = now + ct_lifetime(s.key.proto, r.state);
            if e > r.expires_ns {
                r.expires_ns = e;
            }
            true
        }
        None => CONNTRACK.insert(&s.key, &s.value, BPF_NOEXIST as u64).is_ok(),
    }
}

/// The key replies of the flow `key` arrive with once it is translated to
/// `egress`:`port`.
#[inline(always)]
fn reply_key(key: &CtKey, egress: &[u8; 16], port: u16) -> CtKey {
    let icmp = key.proto != IPPROTO_TCP && key.proto != IPPROTO_UDP;
    CtKey {
        tenant: 0,
        src: key.dst,
        dst: *egress,
        sport_be: if icmp { [0, 0] } else { key.dport_be },
        dport_be: port.to_be_bytes(),
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    }
}

/// `-E2BIG`: what an insert into a full preallocated hash map returns.
const E2BIG: i32 = -7;

/// A new translation: the first free port of the host's range from a
/// flow-dependent start, claimed by inserting the reply key only if it is
/// not there (so no two flows ever share a translated tuple). A full table
/// first gives up a flow ([`evict`]) for the port it found free; with none
/// to give up, the packet is dropped (`conntrack_full`), never a tracked
/// flow overwritten.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn allocate(
    key: &CtKey,
    flow: &Flow,
    cfg: &HostConfig,
    out: &Outbound,
    origin: u8,
    seen: u8,
    now: u64,
    stats: &Counters,
) -> Result<u16, DropReason> {
    let egress = &out.egress;
    let lo = cfg.snat_port_lo as u32;
    let hi = cfg.snat_port_hi as u32;
    if lo == 0 || hi < lo {
        return Err(DropReason::PortsExhausted);
    }
    let range = hi - lo + 1;
    let start = flow.hash().checked_rem(range).unwrap_or(0);
    let expires_ns = now + ct_lifetime(flow.proto, seen);
    let mut reply = CtValue {
        addr: key.src,
        port_be: key.sport_be,
        origin,
        state: seen,
        tenant: key.tenant,
        expires_ns,
        touched_ns: now,
        version: out.version,
        _pad: 0,
    };
    // The probes; a full table ends them with the port it would have
    // claimed (free, since the insert got as far as wanting room).
    let mut i = 0;
    let mut full_at = None;
    while i < SNAT_PROBES && i < range {
        let port = (lo + (start + i).checked_rem(range).unwrap_or(0)) as u16;
        match CONNTRACK.insert(reply_key(key, egress, port), &reply, BPF_NOEXIST as u64) {
            Ok(()) => return Ok(track(key, &mut reply, egress, port)),
            Err(E2BIG) => {
                full_at = Some(port);
                break;
            }
            Err(_) => i += 1,
        }
    }
    // Out of the loop, so that the verifier goes through the eviction once,
    // not once per probe.
    let Some(port) = full_at else {
        return Err(DropReason::PortsExhausted);
    };
    if !evict(stats)
        || CONNTRACK
            .insert(reply_key(key, egress, port), &reply, BPF_NOEXIST as u64)
            .is_err()
    {
        return Err(DropReason::ConntrackFull);
    }
    Ok(track(key, &mut reply, egress, port))
}

/// The outbound entry of a flow whose reply key `reply` just claimed
/// `egress`:`port`.
#[inline(always)]
fn track(key: &CtKey, reply: &mut CtValue, egress: &[u8; 16], port: u16) -> u16 {
    reply.addr = *egress;
    reply.port_be = port.to_be_bytes();
    // A failed insert only means the next packet translates anew.
    let _ = CONNTRACK.insert(key, &*reply, BPF_ANY as u64);
    port
}

/// Makes room in a full tracking table: removes both directions of the
/// next eviction candidate (the least recently used flows, oldest first,
/// as the agent listed them) that no packet has used since it was listed,
/// skipping at most `CT_EVICT_SKIPS` that were. `false`: no candidate
/// left.
#[inline(always)]
fn evict(stats: &Counters) -> bool {
    let Some(cur) = CT_EVICT_CURSOR.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: the array's one slot, valid for the program's run; shared by
    // the CPUs without a lock (see `EvictCursor`).
    let cur = unsafe { &mut *cur };
    let mut n = 0;
    while n < CT_EVICT_SKIPS {
        let at = cur.next;
        if at >= cur.end {
            return false;
        }
        cur.next = at + 1;
        n += 1;
        let Some(c) = CT_EVICT.get(at) else {
            return false;
        };
        // SAFETY: values of the map, valid for this run (RCU).
        let idle = unsafe { CONNTRACK.get(&c.out) }.is_some_and(|v| v.expires_ns == c.out_expires_ns)
            && unsafe { CONNTRACK.get(&c.reply) }.is_none_or(|v| v.expires_ns == c.reply_expires_ns);
        if idle {
            let _ = CONNTRACK.remove(&c.out);
            let _ = CONNTRACK.remove(&c.reply);
            stats.inc(Counter::CtEvicted);
            return true;
        }
    }
    false
}
