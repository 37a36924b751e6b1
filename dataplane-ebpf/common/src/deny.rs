//! The uplink's cache of recent denials: per CPU, direct-mapped, holding
//! only verdicts decided by the packet's addresses, port and protocol and
//! by the policy alone, so that a flood of denied packets skips the
//! service lookup, the tenant's record and its allowlist trie. Only
//! denials are kept, never an allow: a stale slot can drop a packet the
//! new policy would drop anyway or let it take the full path, never let
//! one in.

/// Slots per CPU (a power of two): each a [`DenySlot`], 64 bytes.
pub const DENY_CACHE_SLOTS: u32 = 1024;
const DENY_CACHE_BITS: u32 = DENY_CACHE_SLOTS.trailing_zeros();

/// One remembered denial. The whole key is kept, so two flows sharing a
/// slot never take each other's verdict; `epoch` is the `DENY_EPOCH` the
/// verdict was reached under, and any other value makes the slot a miss.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DenySlot {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub dport: u16,
    pub proto: u8,
    pub v6: u8,
    pub epoch: u32,
    /// The tenant the packet was addressed to; 0: an empty slot.
    pub tenant: u16,
    /// `class << 8 | reason` (`DropReason` index), as events carry it.
    pub class_why: u16,
    /// Drop events of this entry's fast-path drops that the tenant's
    /// budget held back while `quiet_until` was ahead, and that are not in
    /// the tenant's bucket yet (`EventBucket::suppressed`) nor in
    /// `EventCounts::suppressed` of `drop` events. The fast path moves them
    /// there at its next drop after `quiet_until` (and the full path when
    /// it replaces the entry): until then, readers add them (the map is
    /// pinned, so an agent's restart loses none).
    pub held: u32,
    /// Packets the full path dropped on this entry since it was written
    /// (wrapping).
    pub hits: u32,
    /// Frames the uplink's fast path dropped on this entry since it was
    /// written (wrapping).
    pub fast_hits: u32,
    /// The tick (`bpf_jiffies64`) before which the tenant's event budget
    /// on this CPU is known to be empty: the fast path counts a drop's
    /// event in `held` without the bucket's arithmetic until then. 0: not
    /// known.
    pub quiet_until: u64,
}

// The uplink's fast path compares these four fields as one word.
const _: () = assert!(
    core::mem::offset_of!(DenySlot, dport) == 32
        && core::mem::offset_of!(DenySlot, proto) == 34
        && core::mem::offset_of!(DenySlot, v6) == 35
        && core::mem::offset_of!(DenySlot, epoch) == 36
);

impl DenySlot {
    /// Whether `other` holds the same remembered flow (the same key and
    /// tenant, whatever its counts): a reader that sees a slot's `held`
    /// fall, or its flow change, between two reads knows the data path
    /// moved held events into the bucket meanwhile.
    pub fn same_entry(&self, other: &DenySlot) -> bool {
        (self.src, self.dst, self.dport, self.proto, self.v6, self.tenant)
            == (other.src, other.dst, other.dport, other.proto, other.v6, other.tenant)
    }
}

/// The slot of a flow: addresses as little-endian words (what a word load
/// gives on the little-endian BPF target; IPv4 in the first word, the rest
/// zero). Not the flow hash: no source port (the verdict does not depend
/// on it, and a flood from one address with random ports should hit one
/// slot), and a multiply-shift rather than a full mix, the slot holding
/// the whole key anyway.
#[inline(always)]
pub fn deny_slot_words(src: &[u32; 4], dst: &[u32; 4], dport: u16, proto: u8) -> u32 {
    let s = src[0] ^ src[1] ^ src[2] ^ src[3];
    let d = dst[0] ^ dst[1] ^ dst[2] ^ dst[3];
    let h = (s ^ d.rotate_left(16) ^ ((dport as u32) << 8 | proto as u32)).wrapping_mul(0x9e37_79b1);
    h >> (32 - DENY_CACHE_BITS)
}

/// [`deny_slot_words`] of addresses as bytes.
pub fn deny_slot(src: &[u8; 16], dst: &[u8; 16], dport: u16, proto: u8) -> u32 {
    let w = |a: &[u8; 16], i: usize| u32::from_le_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    let s = [w(src, 0), w(src, 4), w(src, 8), w(src, 12)];
    let d = [w(dst, 0), w(dst, 4), w(dst, 8), w(dst, 12)];
    deny_slot_words(&s, &d, dport, proto)
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), no implicit padding, every bit pattern valid.
    unsafe impl aya::Pod for super::DenySlot {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_is_64_bytes() {
        assert_eq!(core::mem::size_of::<DenySlot>(), 64);
    }

    #[test]
    fn slots_in_range_and_spread() {
        let mut seen = [false; DENY_CACHE_SLOTS as usize];
        let dst = [203, 0, 113, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        for i in 0..4096u32 {
            let mut src = [0u8; 16];
            src[..4].copy_from_slice(&(0xc633_6400u32 + i).to_be_bytes());
            let s = deny_slot(&src, &dst, 443, 6);
            assert!(s < DENY_CACHE_SLOTS);
            seen[s as usize] = true;
        }
        // 4,096 sources over 1,024 slots: nearly all used.
        assert!(seen.iter().filter(|&&b| b).count() > 900);
    }
}
