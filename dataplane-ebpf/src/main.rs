//! carwash's XDP/TC programs. Entry points are thin: each calls a `try_*`
//! body and maps its result to an action in one visible place.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

// Along a packet's path: parse, classify, allow and choose, translate, send.
mod packet;
mod parse;

mod classify_fabric;
mod classify_uplink;

mod allow_choose;
mod deny_cache;

mod translate_mss;
mod translate_nat;
mod translate_snat_in;
mod translate_snat_out;
mod translate_vip_icmp;

mod send_encap;
mod send_fleet;
mod send_probe;
mod send_redirect_err;
mod send_too_big;

// Between programs, and beside the path.
mod handoff;
mod verdict;

mod bench;
mod clock;
mod counters;
mod events;
mod maps;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, raw_tracepoint, xdp},
    programs::{RawTracePointContext, TcContext, XdpContext},
};

/// XDP on `uplink`: everything that arrives from the internet.
#[xdp]
pub fn carwash_uplink(ctx: XdpContext) -> u32 {
    classify_uplink::run(&ctx)
}

/// XDP on `fabric`: VXLAN from the tenants' machines.
#[xdp]
pub fn carwash_fabric(ctx: XdpContext) -> u32 {
    classify_fabric::run(&ctx)
}

/// TC egress on the probe device: the agent's health probes, encapsulated
/// to the machine their socket mark names.
#[classifier]
pub fn carwash_probe(ctx: TcContext) -> i32 {
    send_probe::run(&ctx)
}

/// TC ingress on `fabric`: the resets the fabric program wrote in place of
/// probes' SYN-ACKs, sent back out.
#[classifier]
pub fn carwash_probe_reset(ctx: TcContext) -> i32 {
    send_probe::bounce(&ctx)
}

/// Outbound source NAT: tail-called by `carwash_fabric`.
#[xdp]
pub fn carwash_snat_out(ctx: XdpContext) -> u32 {
    translate_snat_out::run(&ctx)
}

/// Replies to egress IPs: tail-called by `carwash_uplink`.
#[xdp]
pub fn carwash_snat_in(ctx: XdpContext) -> u32 {
    translate_snat_in::run_reply(&ctx)
}

/// ICMP errors to egress IPs: tail-called by `carwash_uplink`.
#[xdp]
pub fn carwash_snat_icmp(ctx: XdpContext) -> u32 {
    translate_snat_in::run_icmp(&ctx)
}

/// ICMP errors to VIPs, about steered flows: tail-called by
/// `carwash_uplink`.
#[xdp]
pub fn carwash_vip_icmp(ctx: XdpContext) -> u32 {
    translate_vip_icmp::run(&ctx)
}

/// The answer to a reply too big for the fabric: tail-called by
/// `carwash_snat_in`.
#[xdp]
pub fn carwash_too_big(ctx: XdpContext) -> u32 {
    translate_snat_in::run_too_big(&ctx)
}

/// Replies another host of the fleet passed on: tail-called by
/// `carwash_fabric`.
#[xdp]
pub fn carwash_fleet_in(ctx: XdpContext) -> u32 {
    send_fleet::run_in(&ctx)
}

/// The last step of reverse NAT: tail-called by the two above.
#[xdp]
pub fn carwash_deliver(ctx: XdpContext) -> u32 {
    translate_snat_in::run_deliver(&ctx)
}

/// Reports the event a tail-called program left, and returns its verdict
/// (tail-called by them last: `events::report_pending`).
#[xdp]
pub fn carwash_event(ctx: XdpContext) -> u32 {
    events::run_pending(&ctx)
}

/// Counts the redirects the kernel refused to deliver, per target
/// interface (attached to the `xdp_redirect_err` tracepoint).
#[raw_tracepoint(tracepoint = "xdp_redirect_err")]
pub fn carwash_redirect_err(ctx: RawTracePointContext) -> i32 {
    send_redirect_err::count(&ctx);
    0
}

/// The kernel's tick counter, for the agent (never attached).
#[xdp]
pub fn carwash_clock(ctx: XdpContext) -> u32 {
    clock::report(&ctx)
}

/// The yardstick for benchmarks: the cheapest program XDP can run.
#[xdp]
pub fn carwash_bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The yardstick of a denied flood: the cheapest way XDP drops a frame.
#[xdp]
pub fn carwash_bench_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Benchmarks only (live frames): restores the frame, then the fabric
/// program.
#[xdp]
pub fn carwash_bench_restore_fabric(ctx: XdpContext) -> u32 {
    bench::restore_then_fabric(&ctx)
}

/// Benchmarks only (live frames): restores the frame, then the kernel
/// stack.
#[xdp]
pub fn carwash_bench_restore_pass(ctx: XdpContext) -> u32 {
    bench::restore_then_pass(&ctx)
}

/// Benchmarks only: a responder's tunnel device takes the machines'
/// frames as its own.
#[classifier]
pub fn carwash_bench_tunnel_in(ctx: TcContext) -> i32 {
    bench::tunnel_in(&ctx)
}

/// Benchmarks only: a responder's answers go back into their tenants'
/// tunnels.
#[classifier]
pub fn carwash_bench_tunnel_out(ctx: TcContext) -> i32 {
    bench::tunnel_out(&ctx)
}

/// Tests only: the fabric's probe resets lost before `carwash_probe_reset`.
#[classifier]
pub fn carwash_bench_lose_resets(ctx: TcContext) -> i32 {
    bench::lose_resets(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
