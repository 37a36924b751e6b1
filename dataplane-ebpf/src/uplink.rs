//! The `uplink` program: traffic from the internet. At this stage it
//! classifies and counts; everything passes to the host stack.
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use dataplane_common::Counter;

use crate::counters::Counters;
use crate::packet::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};
use crate::parse::{NotIp, parse};

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let Some(stats) = Counters::this_cpu() else {
        return xdp_action::XDP_PASS;
    };
    stats.inc(Counter::Packets);
    stats.add(Counter::Bytes, (ctx.data_end() - ctx.data()) as u64);
    let action = try_uplink(ctx, &stats);
    stats.inc(match action {
        xdp_action::XDP_DROP => Counter::ActionDrop,
        xdp_action::XDP_TX => Counter::ActionTx,
        xdp_action::XDP_REDIRECT => Counter::ActionRedirect,
        _ => Counter::ActionPass,
    });
    action
}

#[inline(always)]
fn try_uplink(ctx: &XdpContext, stats: &Counters) -> u32 {
    let flow = match parse(ctx) {
        Ok(flow) => flow,
        Err(NotIp::Other) => {
            stats.inc(Counter::NonIp);
            return xdp_action::XDP_PASS;
        }
        // The host stack drops what it cannot parse either; passing keeps
        // carwash out of traffic that is not addressed to it.
        Err(NotIp::Malformed(why)) => {
            stats.inc(why);
            return xdp_action::XDP_PASS;
        }
    };
    if flow.vlans > 0 {
        stats.inc(Counter::Vlan);
    }
    stats.inc(if flow.v6 {
        Counter::Ipv6
    } else {
        Counter::Ipv4
    });
    if flow.later_fragment {
        stats.inc(Counter::Fragment);
        return xdp_action::XDP_PASS;
    }
    stats.inc(match flow.proto {
        IPPROTO_TCP => Counter::Tcp,
        IPPROTO_UDP => Counter::Udp,
        IPPROTO_ICMP => Counter::Icmp,
        IPPROTO_ICMPV6 => Counter::Icmpv6,
        _ => Counter::OtherL4,
    });
    xdp_action::XDP_PASS
}
