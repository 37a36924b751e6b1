//! The `fabric` program: VXLAN from the tenants' machines (paths 2, 3).
//! The VNI names a tenant, the outer source must be one of that tenant's
//! VTEPs; the inner frame is then a reply from one of the tenant's VIPs,
//! which leaves decapsulated for the internet. Everything that is not VXLAN
//! to this host's VTEP passes to the host stack untouched.
use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use aya_log_ebpf::debug;
use dataplane_common::{
    Counter, DropReason, jumps,
    types::{
        ADDR_VIP, CLASS_NONE, HostConfig, SIDE_FABRIC, TENANT_EGRESS_V4, TENANT_EGRESS_V6, TenantInfo, VXLAN_PORT,
        vni_key,
    },
};

use crate::clock;
use crate::counters::{Counters, tenant_dropped, tenant_steered};
use crate::handoff::{self, hand_on};
use crate::maps::{CONFIG, Outbound, VNIS, active_gen};
use crate::packet::{IPPROTO_UDP, frame_len, read, write};
use crate::parse::{Flow, NotIp, parse_from};
use crate::send_encap::{RouteQuery, route, transmit};
use crate::verdict::Refused;
use crate::{allow_choose as steer, send_fleet as fleet, send_probe as probe, translate_mss as mss};

const UDP_VXLAN: usize = 8 + 8;

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let Some(stats) = Counters::this_cpu(SIDE_FABRIC) else {
        return xdp_action::XDP_PASS;
    };
    stats.around(frame_len(ctx), || try_fabric(ctx, &stats))
}

#[inline(always)]
fn try_fabric(ctx: &XdpContext, stats: &Counters) -> u32 {
    let Some(outer) = stats.parse(ctx) else {
        return xdp_action::XDP_PASS;
    };
    if outer.v6 || outer.proto != IPPROTO_UDP || outer.dport != VXLAN_PORT || outer.later_fragment {
        return xdp_action::XDP_PASS;
    }
    let cfg = match CONFIG.get(0) {
        Some(c) if c.ready != 0 => c,
        _ => return xdp_action::XDP_PASS,
    };
    if outer.dst[..4] != cfg.vtep {
        // Not from a tenant's machine: perhaps a reply another host of the
        // fleet passed on.
        // A program of its own: its parse would not fit this one's stack.
        if !fleet::to_own_address(&outer) {
            return xdp_action::XDP_PASS;
        }
        let r = hand_on(ctx, &outer, active_gen(), 0, 0, 0, jumps::FLEET_IN);
        stats.drop(r.why);
        return r.action;
    }
    let bytes = frame_len(ctx) as u64;
    let mut tenant = 0;
    let l3 = outer.l3_off as u32;
    match from_vpc(ctx, &outer, cfg, &mut tenant) {
        Ok(action) => {
            stats.inc(Counter::Decapsulated);
            tenant_steered(tenant, CLASS_NONE, bytes);
            action
        }
        Err(r) => {
            stats.drop(r.why);
            if tenant != 0 {
                tenant_dropped(tenant, CLASS_NONE, r.why, bytes);
            }
            // The tunnel's outer addresses: the sending VTEP is what a
            // refused tunnel packet is known by.
            crate::events::dropped_tunnel(
                ctx,
                l3,
                tenant,
                crate::events::class_why(CLASS_NONE, r.why),
                crate::maps::active_gen(),
            );
            debug!(ctx, "fabric: dropped, reason {}, tenant {}", r.why, tenant);
            r.action
        }
    }
}

/// Which of the tenant's machines `vtep` is, as a backend slot
/// (connectors 0-1, cores 2-3); `None` if it is none of them.
#[inline(always)]
fn vtep_slot(t: &TenantInfo, vtep: &[u8]) -> Option<u32> {
    let n_conn = t.n_connectors as usize;
    let n_core = t.n_cores as usize;
    if n_conn > 0 && t.connectors[0].vtep == vtep {
        Some(0)
    } else if n_conn > 1 && t.connectors[1].vtep == vtep {
        Some(1)
    } else if n_core > 0 && t.cores[0].vtep == vtep {
        Some(2)
    } else if n_core > 1 && t.cores[1].vtep == vtep {
        Some(3)
    } else {
        None
    }
}

#[inline(always)]
fn from_vpc(ctx: &XdpContext, outer: &Flow, cfg: &HostConfig, tenant: &mut u32) -> Result<u32, Refused> {
    let generation = active_gen();
    let vx: [u8; 8] = read(ctx, outer.l4_off + 8).ok_or(DropReason::Malformed)?;
    if vx[0] & 0x08 == 0 {
        return Err(DropReason::Malformed.into());
    }
    let vni = u32::from_be_bytes([0, vx[4], vx[5], vx[6]]);
    // SAFETY: copied out at once.
    let id = unsafe { VNIS.get(vni_key(vni, generation)) }
        .copied()
        .ok_or(DropReason::UnknownVni)?;
    *tenant = id;
    let t = steer::tenant(id, generation)?;
    // The isolation check: a VNI is only believed from its tenant's VTEPs.
    let Some(origin) = vtep_slot(t, &outer.src[..4]) else {
        return Err(DropReason::VtepNotOfTenant.into());
    };
    let inner_off = outer.l4_off + UDP_VXLAN;
    let inner = match parse_from(ctx, inner_off) {
        Ok(f) if f.vlans == 0 => f,
        Ok(_) => return Err(DropReason::Malformed.into()),
        Err(NotIp::Other) => return Err(DropReason::InnerNotIp.into()),
        Err(NotIp::Malformed(_)) => return Err(DropReason::Malformed.into()),
    };
    // A private source (outbound traffic) mostly has a clear filter bit:
    // no exact lookup for it.
    let addr = if steer::maybe_ours(&inner.src, generation) {
        steer::address(&inner.src, inner.v6, generation)
    } else {
        None
    };
    match addr {
        Some(a) if a.tenant == id && a.kind == ADDR_VIP => {
            if let Some((mac, in_path)) = probe::reply_to(&inner) {
                if let Some(action) = probe::syn_reply(ctx, &inner, id, origin, in_path) {
                    return Ok(action);
                }
                return probe::deliver(ctx, inner_off, &mac);
            }
            Ok(to_internet(ctx, &inner, &inner.src, inner_off, cfg)?)
        }
        // Not a reply from a VIP: the outbound program decides (path 3).
        _ => {
            if let Some(out) = handoff::outbound_mut() {
                outbound(ctx, t, &inner, cfg, out);
            }
            Err(hand_on(ctx, &inner, generation, id, origin, inner_off, jumps::SNAT_OUT))
        }
    }
}

/// What the outbound program needs of the tenant's record, and the route a
/// translated packet would take: found here, where the record is at hand
/// and the stack has room for a route lookup.
#[inline(always)]
fn outbound(ctx: &XdpContext, t: &TenantInfo, inner: &Flow, cfg: &HostConfig, out: &mut Outbound) {
    let (egress, need) = if inner.v6 {
        (&t.snat_v6, TENANT_EGRESS_V6)
    } else {
        (&t.snat_v4, TENANT_EGRESS_V4)
    };
    out.egress = *egress;
    out.flags = t.flags;
    out.allow_slot = t.allow_slot;
    out.version = t.version;
    out.ifindex = 0;
    let now = clock::now(cfg);
    out.now = now;
    if t.flags & need != 0
        && let Ok(nh) = route(
            &RouteQuery {
                ctx,
                ifindex: cfg.uplink_ifindex,
                v6: inner.v6,
                src: egress,
                dst: &inner.dst,
            },
            now,
        )
        && nh.ifindex == cfg.uplink_ifindex
    {
        out.ifindex = nh.ifindex;
        out.smac = nh.smac;
        out.dmac = nh.dmac;
    }
}

/// Strips the tunnel headers and sends the inner packet (now from `src`)
/// towards its destination through the uplink.
#[inline(always)]
pub fn to_internet(
    ctx: &XdpContext,
    inner: &Flow,
    src: &[u8; 16],
    inner_off: usize,
    cfg: &HostConfig,
) -> Result<u32, DropReason> {
    // The machine's SYN-ACK tells the client how large a segment to send
    // through the tunnel: without this clamp a machine whose tunnel device
    // has a full-size MTU invites segments carwash cannot encapsulate, and
    // the client lives on ICMP too-big answers (if they reach it at all).
    mss::clamp(ctx, inner, mss::tunnel_mss(cfg, inner.v6));
    let now = clock::now(cfg);
    let nh = route(
        &RouteQuery {
            ctx,
            ifindex: cfg.uplink_ifindex,
            v6: inner.v6,
            src,
            dst: &inner.dst,
        },
        now,
    )?;
    // Only towards the internet: a destination the FIB reaches through the
    // fabric (another tenant's VTEP, say) would put a packet from this
    // tenant's tunnel into another's.
    if nh.ifindex != cfg.uplink_ifindex {
        return Err(DropReason::NoRoute);
    }
    leave(ctx, inner_off, nh.ifindex, &nh.smac, &nh.dmac)
}

/// Strips everything before the inner IP packet (whose Ethernet header
/// starts at `inner_off`) and sends it out of `ifindex` from `smac` to
/// `dmac`.
#[inline(always)]
pub fn leave(
    ctx: &XdpContext,
    inner_off: usize,
    ifindex: u32,
    smac: &[u8; 6],
    dmac: &[u8; 6],
) -> Result<u32, DropReason> {
    // SAFETY: valid context; pointers are re-derived afterwards.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, inner_off as i32) } != 0 {
        return Err(DropReason::Malformed);
    }
    if !write(ctx, 0, *dmac) || !write(ctx, 6, *smac) {
        return Err(DropReason::Malformed);
    }
    Ok(transmit(ctx, ifindex))
}
