//! TCP MSS clamping: a SYN or SYN-ACK announces at most the segment size
//! that still fits the fabric once encapsulated, so TCP flows rarely meet
//! the too-big path at all. Both ends of a connection through carwash are
//! clamped: the client's SYN (path 1) and the machine's SYN-ACK (path 2)
//! for inbound connections, the machine's SYN (path 3) for outbound ones.
use aya_ebpf::programs::XdpContext;
use dataplane_common::{checksum, types::HostConfig};

use crate::packet::{IPPROTO_TCP, TCP_FLAG_SYN, TcpHdr, be16, read, write};
use crate::parse::Flow;
use crate::send_encap::ENCAP_OVERHEAD;

const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_MSS: u8 = 2;
/// Every common stack sends MSS as the first option of a SYN; a few NOPs
/// before it are followed, anything else ends the search. A bounded walk of
/// all 40 option bytes would multiply the states the verifier explores.
const MAX_OPTION_STEPS: usize = 4;

/// The largest segment the fabric carries once encapsulated: its MTU less
/// the VXLAN encapsulation, the IP header and the TCP header.
#[inline(always)]
pub fn tunnel_mss(cfg: &HostConfig, v6: bool) -> u16 {
    let ip_hdr = if v6 { 40 } else { 20 };
    cfg.fabric_mtu.saturating_sub(ENCAP_OVERHEAD as u16 + ip_hdr + 20)
}

/// Lowers the MSS option of a SYN (or SYN-ACK) to `max_mss`; returns
/// whether it changed.
#[inline(always)]
pub fn clamp(ctx: &XdpContext, flow: &Flow, max_mss: u16) -> bool {
    if flow.proto != IPPROTO_TCP || flow.tcp_flags & TCP_FLAG_SYN == 0 {
        return false;
    }
    let Some(tcp) = read::<TcpHdr>(ctx, flow.l4_off) else {
        return false;
    };
    let opts_end = flow.l4_off + ((tcp.off_flags[0] >> 4) as usize) * 4;
    let mut off = flow.l4_off + 20;
    for _ in 0..MAX_OPTION_STEPS {
        if off >= opts_end {
            return false;
        }
        // Two bytes rather than one: LLVM rewrites a one-byte bounds check
        // into a form the verifier does not accept. Only a last-byte EOL or
        // NOP cannot be read this way, and no MSS follows those.
        let Some([kind, _]) = read::<[u8; 2]>(ctx, off) else {
            return false;
        };
        match kind {
            TCPOPT_EOL => return false,
            TCPOPT_NOP => off += 1,
            TCPOPT_MSS => {
                let Some(opt) = read::<[u8; 4]>(ctx, off) else {
                    return false;
                };
                let mss = be16([opt[2], opt[3]]);
                if opt[1] != 4 || mss <= max_mss {
                    return false;
                }
                let check = checksum::update16(be16(tcp.check), mss, max_mss);
                return write(ctx, off + 2, max_mss.to_be_bytes()) && write(ctx, flow.l4_off + 16, check.to_be_bytes());
            }
            _ => return false,
        }
    }
    false
}
