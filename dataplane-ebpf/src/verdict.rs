//! What a program's body returns when it does not forward a packet: shared
//! by every stage, the hand-off and the counters, so it lives in none of
//! them.
use aya_ebpf::bindings::xdp_action;
use dataplane_common::DropReason;

/// A packet carwash did not forward: why (a `DropReason`'s index), and
/// what became of it (dropped, or turned into an ICMP answer and sent
/// back).
///
/// The reason is kept as a plain index, not as the enum: with the enum,
/// `Result<u32, Refused>` hides its `Ok` in reason values near `u32::MAX`,
/// and the BPF backend (without 32-bit jumps) tests for them with a 64-bit
/// comparison against a sign-extended -1, which never holds: every `Ok` of
/// a tail-called program was counted as a drop.
pub struct Refused {
    pub why: u32,
    pub action: u32,
}

impl From<DropReason> for Refused {
    #[inline(always)]
    fn from(why: DropReason) -> Self {
        Refused {
            why: why.index(),
            action: xdp_action::XDP_DROP,
        }
    }
}
