//! ICMP errors addressed to a VIP (path 5 for steered flows), tail-called
//! by the uplink program: a router on the way to a client answers a
//! machine's reply (which left with the VIP as its source) with
//! destination unreachable, packet too big or time exceeded. The error
//! follows the flow it quotes: the quoted packet, read backwards, is the
//! client's flow, whose service, allowlist and hash choose the same machine
//! the client's own packets reach. The error itself travels untouched.
use aya_ebpf::programs::XdpContext;
use dataplane_common::{
    Counter, DropReason,
    types::{HOPS_PER_TENANT, SIDE_UPLINK},
};

use crate::counters::{Counters, run_handed};
use crate::maps::host_config;
use crate::packet::{IPPROTO_TCP, IPPROTO_UDP, be16, frame_len};
use crate::send_encap::{ENCAP_OVERHEAD, encapsulate};
use crate::translate_nat as nat;
use crate::verdict::Refused;
use crate::{allow_choose as steer, handoff};

/// `carwash_vip_icmp`.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    run_handed(ctx, SIDE_UPLINK, try_vip_icmp)
}

#[inline(always)]
fn try_vip_icmp(ctx: &XdpContext, stats: &Counters, tenant: &mut u32) -> Result<u32, Refused> {
    let h = handoff::take()?;
    *tenant = h.tenant;
    let error = &h.flow;
    // The client's flow: the quoted packet with its ends swapped.
    let mut flow = h.flow;
    let q = nat::read_quote(ctx, error, &mut flow.dst, &mut flow.src)?;
    // The quoted packet must have left from the VIP this error came to.
    if flow.dst != error.dst {
        return Err(DropReason::NoService.into());
    }
    match q.proto {
        IPPROTO_TCP | IPPROTO_UDP => {}
        _ => return Err(DropReason::NoService.into()),
    }
    flow.proto = q.proto;
    flow.sport = be16([q.head[2], q.head[3]]);
    flow.dport = be16([q.head[0], q.head[1]]);
    let svc = steer::service(&flow, h.generation).ok_or(DropReason::NoService)?;
    let t = steer::tenant(svc.tenant, h.generation)?;
    // Only flows the client could have opened: an error about any other
    // is no business of the tenant's machines.
    if !steer::allowed(t, &flow, svc.class) {
        return Err(DropReason::NotAllowed.into());
    }
    let hash = flow.hash();
    let (backend, slot) = steer::backend(t, svc.class, hash)?;
    let cfg = host_config()?;
    let usable = cfg.fabric_mtu.saturating_sub(ENCAP_OVERHEAD as u16);
    // An error about an error is never sent: too big is dropped.
    if frame_len(ctx) - error.l3_off > usable as usize {
        return Err(DropReason::TooBig.into());
    }
    let hop = svc.tenant * HOPS_PER_TENANT + slot;
    // The flow's hash also picks the tunnel's source port: the error takes
    // the flow's path through the underlay.
    let action = encapsulate(ctx, error, cfg, t.vni, &backend, hop, hash)?;
    stats.inc(Counter::Steered);
    Ok(action)
}
