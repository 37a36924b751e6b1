//! Benchmark-only programs, never attached by the agent: they put the
//! original frame back before anything else runs. In the live-frames mode
//! of `BPF_PROG_TEST_RUN` the kernel copies the frame into each of its
//! pages once and, when it reuses a page, only resets the data pointers;
//! a path that rewrites the packet (carwash's NAT, or the kernel's own
//! forwarding and NAT) would see its own output the next time. The
//! benchmark writes the frame to `BENCH_FRAME`; these programs copy it over
//! the packet (its length is the packet's: the kernel resets that) and then
//! hand it on: to the fabric program, or to the kernel stack.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, bpf_tunnel_key, xdp_action},
    helpers::{bpf_skb_change_type, bpf_skb_set_tunnel_key, bpf_xdp_store_bytes},
    macros::map,
    maps::Array,
    programs::{TcContext, XdpContext},
};
use dataplane_common::{
    jumps,
    types::{BENCH_FRAME_MAX, BenchTunnel, BenchTunnelKey},
};

use crate::packet::ETH_P_IPV4;

const PACKET_HOST: u32 = 0;

use crate::maps::JUMPS;

#[map(name = "BENCH_FRAME")]
static BENCH_FRAME: Array<[u8; BENCH_FRAME_MAX]> = Array::with_max_entries(1, 0);

#[inline(always)]
fn restore(ctx: &XdpContext) -> bool {
    let Some(frame) = BENCH_FRAME.get_ptr_mut(0) else {
        return false;
    };
    let len = ctx.data_end().wrapping_sub(ctx.data());
    // 1..=BENCH_FRAME_MAX (a power of two) by construction, which the
    // verifier follows; a frame of another length is refused below.
    let n = (len.wrapping_sub(1) & (BENCH_FRAME_MAX - 1)) + 1;
    // SAFETY: valid context; `frame` is a map value of BENCH_FRAME_MAX
    // bytes and `n` is at most that.
    let stored = unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, frame.cast(), n as u32) } == 0;
    stored && n == len
}

/// Restores the frame, then runs the fabric program on it.
#[inline(always)]
pub fn restore_then_fabric(ctx: &XdpContext) -> u32 {
    if restore(ctx) {
        // SAFETY: valid context and program array; returns only on failure.
        unsafe { JUMPS.tail_call(ctx, jumps::FABRIC) };
    }
    xdp_action::XDP_ABORTED
}

/// Restores the frame, then passes it to the kernel stack.
#[inline(always)]
pub fn restore_then_pass(ctx: &XdpContext) -> u32 {
    if restore(ctx) {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_ABORTED
    }
}

#[map(name = "BENCH_TUNNELS")]
static BENCH_TUNNELS: aya_ebpf::maps::HashMap<BenchTunnelKey, BenchTunnel> =
    aya_ebpf::maps::HashMap::with_max_entries(1 << 16, 0);

/// A frame decapsulated by the responder's VXLAN device is addressed to
/// the machine's MAC, which the device does not have: taken as the
/// device's own, as the machine would.
#[inline(always)]
pub fn tunnel_in(ctx: &TcContext) -> i32 {
    // SAFETY: the context's socket buffer, valid for the program's run.
    unsafe { bpf_skb_change_type(ctx.skb.skb, PACKET_HOST) };
    TC_ACT_OK as i32
}

/// An answer from a VIP and port in `BENCH_TUNNELS` leaves in that
/// tenant's tunnel: its VNI, from the machine's VTEP to the host's.
#[inline(always)]
pub fn tunnel_out(ctx: &TcContext) -> i32 {
    let Ok(proto) = ctx.load::<[u8; 2]>(12) else {
        return TC_ACT_OK as i32;
    };
    if u16::from_be_bytes(proto) != ETH_P_IPV4 {
        return TC_ACT_OK as i32;
    }
    let (Ok(vihl), Ok(l4), Ok(src)) = (ctx.load::<u8>(14), ctx.load::<u8>(14 + 9), ctx.load::<[u8; 4]>(14 + 12)) else {
        return TC_ACT_OK as i32;
    };
    if l4 != 6 {
        return TC_ACT_OK as i32;
    }
    let ihl = ((vihl & 0x0f) as usize) * 4;
    let Ok(sport) = ctx.load::<[u8; 2]>(14 + ihl) else {
        return TC_ACT_OK as i32;
    };
    let key = BenchTunnelKey {
        addr: src,
        port_be: sport,
        _pad: [0; 2],
    };
    // SAFETY: copied out at once.
    let Some(t) = (unsafe { BENCH_TUNNELS.get(&key) }).copied() else {
        return TC_ACT_OK as i32;
    };
    // SAFETY: plain data, all zero is a valid value.
    let mut k: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    k.tunnel_id = t.vni;
    k.__bindgen_anon_1.remote_ipv4 = u32::from_be_bytes(t.remote);
    k.__bindgen_anon_3.local_ipv4 = u32::from_be_bytes(t.local);
    k.tunnel_ttl = 64;
    // SAFETY: a valid key of the size given.
    let rc = unsafe { bpf_skb_set_tunnel_key(ctx.skb.skb, &mut k, core::mem::size_of::<bpf_tunnel_key>() as u32, 0) };
    if rc != 0 {
        return TC_ACT_SHOT as i32;
    }
    TC_ACT_OK as i32
}

/// Tests only: drops what carries the fabric program's reset metadata
/// (`PROBE_RESET_META`), so that `carwash_probe_reset`, behind it, never
/// sees a reset; lets everything else go on.
#[inline(always)]
pub fn lose_resets(ctx: &TcContext) -> i32 {
    if crate::send_probe::marked_for_reset(ctx) {
        TC_ACT_SHOT as i32
    } else {
        aya_ebpf::bindings::TC_ACT_UNSPEC
    }
}
