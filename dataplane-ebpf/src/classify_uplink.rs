//! The `uplink` program: traffic from the internet (path 1). What is not
//! addressed to a VIP or egress IP passes to the host stack untouched;
//! traffic to a VIP is checked against the tenant's policy and steered into
//! its VPC, or dropped with a counted reason.
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use aya_log_ebpf::debug;
use dataplane_common::{
    Counter, DropReason, jumps,
    types::{ADDR_EGRESS, CLASS_NONE, HOPS_PER_TENANT, SIDE_UPLINK, VXLAN_PORT},
};

use crate::counters::{Counters, tenant_dropped, tenant_steered};
use crate::handoff::hand_on;
use crate::maps::{CONFIG, JUMPS, generation_word, host_config};
use crate::packet::{IPPROTO_UDP, frame_len};
use crate::parse::Flow;
use crate::send_encap::{ENCAP_OVERHEAD, encapsulate};
use crate::{
    allow_choose as steer, deny_cache, events, send_too_big as icmp, translate_mss as mss, translate_nat as nat,
};

use crate::verdict::Refused;

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let Some(stats) = Counters::this_cpu(SIDE_UPLINK) else {
        return xdp_action::XDP_PASS;
    };
    // A flood's packets stop here: a denial remembered for the frame,
    // found without the full parse, counted and reported as the full path
    // would.
    if let Some(action) = remembered(ctx, &stats) {
        return action;
    }
    stats.around(frame_len(ctx), || try_uplink(ctx, &stats))
}

/// The fast path for remembered denials (`deny_cache::fast`): the verdict
/// of a hit, after counting and reporting it; `None` for the full path.
#[inline(always)]
fn remembered(ctx: &XdpContext, stats: &Counters) -> Option<u32> {
    let epoch = generation_word();
    let fast = deny_cache::fast(ctx, epoch);
    if fast.tenant == 0 {
        return None;
    }
    let bytes = frame_len(ctx);
    stats.remembered_drop(fast.v6, fast.udp, fast.why, bytes);
    tenant_dropped(fast.tenant, fast.class as u8, fast.why, bytes as u64);
    // SAFETY: the hit's slot, this CPU's (set with every hit).
    let slot = unsafe { &mut *fast.slot };
    events::dropped_remembered(
        ctx,
        (fast.tenant, fast.class << 8 | fast.why),
        epoch & 1,
        fast.now_tick,
        slot,
    );
    Some(xdp_action::XDP_DROP)
}

/// The full path. It consults the denial cache itself: the fast path is
/// off outside a flood, and leaves frames of other shapes to it.
#[inline(always)]
fn try_uplink(ctx: &XdpContext, stats: &Counters) -> u32 {
    let Some(flow) = stats.parse(ctx) else {
        return xdp_action::XDP_PASS;
    };
    // A host whose fabric is its uplink gets its tunnel traffic here too:
    // the fabric program takes it (and counts it in its own block).
    if flow.proto == IPPROTO_UDP && flow.dport == VXLAN_PORT && !flow.v6 {
        shared_fabric(ctx, &flow);
    }

    // One read of the word gives the generation and the denial cache's
    // epoch, before any policy lookup (`deny_cache`).
    let epoch = generation_word();
    let generation = epoch & 1;
    if !steer::maybe_ours(&flow.dst, generation) {
        return xdp_action::XDP_PASS;
    }
    // The service lookup comes first: for traffic to a service it is the
    // only lookup by address. Only a miss asks whose address it is.
    // Counted as the packet arrived, before any encapsulation.
    let bytes = frame_len(ctx) as u64;
    if let Some(hit) = deny_cache::lookup(&flow, epoch) {
        deny_cache::arm_fast();
        let r = Refused {
            why: hit.why,
            action: xdp_action::XDP_DROP,
        };
        return refused(ctx, stats, &flow, hit.tenant, hit.class, r, bytes, generation);
    }
    let svc = if flow.later_fragment {
        None
    } else {
        steer::service(&flow, generation)
    };
    let (tenant, class, result) = match svc {
        Some(svc) => (svc.tenant, svc.class, steer_to_vpc(ctx, &flow, &svc, generation)),
        None => match steer::address(&flow.dst, flow.v6, generation) {
            // The filter's false positive: not ours after all.
            None => return xdp_action::XDP_PASS,
            // Replies to an egress IP: the tracking program decides.
            Some(a) if a.kind == ADDR_EGRESS => {
                let jump = if nat::is_icmp_error(&flow) {
                    jumps::SNAT_ICMP
                } else {
                    jumps::SNAT_IN
                };
                (
                    a.tenant,
                    CLASS_NONE,
                    Err(hand_on(ctx, &flow, generation, a.tenant, 0, 0, jump)),
                )
            }
            // An ICMP error about a steered flow follows it: the only
            // traffic to a VIP without a service that takes this branch.
            Some(a) if nat::is_icmp_error(&flow) => (
                a.tenant,
                CLASS_NONE,
                Err(hand_on(ctx, &flow, generation, a.tenant, 0, 0, jumps::VIP_ICMP)),
            ),
            Some(a) => {
                let why = if flow.later_fragment {
                    DropReason::Fragment
                } else {
                    DropReason::NoService
                };
                (a.tenant, CLASS_NONE, Err(why.into()))
            }
        },
    };
    match result {
        Ok(action) => {
            stats.inc(Counter::Steered);
            tenant_steered(tenant, class, bytes);
            events::allowed(ctx, &flow, tenant, class, generation);
            action
        }
        Err(r) => {
            let (class_why, action) = (events::class_why(class, r.why), r.action);
            refused(ctx, stats, &flow, tenant, class, r, bytes, generation);
            deny_cache::remember(&flow, epoch, tenant, class_why, action);
            action
        }
    }
}

/// Counts and reports a refused packet: the same for a verdict of the full
/// path and one remembered by the denial cache.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn refused(
    ctx: &XdpContext,
    stats: &Counters,
    flow: &Flow,
    tenant: u32,
    class: u8,
    r: Refused,
    bytes: u64,
    generation: u32,
) -> u32 {
    stats.drop(r.why);
    tenant_dropped(tenant, class, r.why, bytes);
    events::dropped(ctx, flow, tenant, events::class_why(class, r.why), generation);
    // Compiled out unless the agent loads with an eBPF log level.
    debug!(
        ctx,
        "uplink: dropped, reason {}, tenant {}, class {}", r.why, tenant, class
    );
    r.action
}

/// Tail-calls the fabric program for VXLAN to this host's VTEP when the
/// fabric is the uplink interface; returns otherwise.
#[inline(always)]
fn shared_fabric(ctx: &XdpContext, flow: &Flow) {
    if let Some(c) = CONFIG.get(0)
        && c.ready != 0
        && c.fabric_ifindex == c.uplink_ifindex
        && flow.dst[..4] == c.vtep
    {
        // SAFETY: valid context and program array. A failed call returns
        // and the packet goes on as uplink traffic (none of carwash's
        // business: the VTEP is no VIP).
        unsafe { JUMPS.tail_call(ctx, jumps::FABRIC) };
    }
}

/// Path 1 for a packet to a service.
#[inline(always)]
fn steer_to_vpc(ctx: &XdpContext, flow: &Flow, svc: &steer::Service, generation: u32) -> Result<u32, Refused> {
    let t = steer::tenant(svc.tenant, generation)?;
    if !steer::allowed(t, flow, svc.class) {
        return Err(DropReason::NotAllowed.into());
    }
    let hash = flow.hash();
    let (backend, slot) = steer::backend(t, svc.class, hash)?;
    let cfg = host_config()?;

    let usable = cfg.fabric_mtu.saturating_sub(ENCAP_OVERHEAD as u16);
    // MSS = usable MTU - IP header - TCP header.
    let ip_hdr = if flow.v6 { 40 } else { 20 };
    mss::clamp(ctx, flow, usable.saturating_sub(ip_hdr + 20));
    let ip_len = frame_len(ctx) - flow.l3_off;
    if ip_len > usable as usize {
        return Err(too_big(ctx, flow, usable));
    }
    let hop = svc.tenant * HOPS_PER_TENANT + slot;
    Ok(encapsulate(ctx, flow, cfg, t.vni, &backend, hop, hash)?)
}

/// A packet that would not fit the fabric once encapsulated.
#[inline(always)]
pub fn too_big(ctx: &XdpContext, flow: &Flow, usable: u16) -> Refused {
    let answered = if flow.v6 {
        icmp::packet_too_big_v6(ctx, flow, usable)
    } else if flow.dont_fragment {
        icmp::frag_needed_v4(ctx, flow, usable)
    } else {
        // XDP cannot fragment, and the sender did not ask for PMTU
        // discovery: drop and count it (docs/architecture.md, "Too big").
        false
    };
    if answered {
        Refused {
            why: DropReason::TooBigIcmpSent.index(),
            action: xdp_action::XDP_TX,
        }
    } else {
        DropReason::TooBig.into()
    }
}
