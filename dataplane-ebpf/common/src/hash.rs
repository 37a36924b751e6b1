//! The flow hash. The programs and userspace must compute it identically:
//! the programs pick connectors and VXLAN source ports from it, userspace
//! (the consistency tests, `carwash trace`) predicts what they picked.

#[inline(always)]
fn mix(h: u32, w: u32) -> u32 {
    (h ^ w).wrapping_mul(0x9e37_79b1).rotate_left(13)
}

/// murmur3's finaliser: every input bit affects every output bit.
#[inline(always)]
fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
fn word(a: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]])
}

/// Hash of a flow's 5-tuple (addresses as in the packet; IPv4 in the first
/// four bytes, the rest zero).
#[inline(always)]
pub fn flow_hash(src: &[u8; 16], dst: &[u8; 16], sport: u16, dport: u16, proto: u8) -> u32 {
    let s = [word(src, 0), word(src, 4), word(src, 8), word(src, 12)];
    let d = [word(dst, 0), word(dst, 4), word(dst, 8), word(dst, 12)];
    flow_hash_words(&s, &d, sport, dport, proto)
}

/// [`flow_hash`] of addresses already loaded as little-endian words (what a
/// word load gives on the little-endian BPF target).
#[inline(always)]
pub fn flow_hash_words(src: &[u32; 4], dst: &[u32; 4], sport: u16, dport: u16, proto: u8) -> u32 {
    let mut h = 0x5bd1_e995u32 ^ proto as u32;
    h = mix(h, src[0]);
    h = mix(h, src[1]);
    h = mix(h, src[2]);
    h = mix(h, src[3]);
    h = mix(h, dst[0]);
    h = mix(h, dst[1]);
    h = mix(h, dst[2]);
    h = mix(h, dst[3]);
    h = mix(h, (sport as u32) << 16 | dport as u32);
    fmix(h)
}

/// The VXLAN UDP source port for a flow: in the ephemeral range 49152..=65535
/// (RFC 7348), so that the underlay's ECMP spreads tunnelled flows.
#[inline(always)]
pub fn vxlan_source_port(hash: u32) -> u16 {
    49152 | (hash >> 16) as u16 & 0x3fff
}

/// Words of the address filter: one bit per hash bucket, 4 Mi bits.
pub const ADDR_FILTER_WORDS: u32 = 1 << 16;

/// The filter bit of an address (IPv4 in the first four bytes). The
/// uplink program reads it before any hash map: most internet traffic is
/// not for a VIP, and an array word is far cheaper than a hash lookup.
#[inline(always)]
pub fn addr_filter_bit(addr: &[u8; 16]) -> u32 {
    let h = word(addr, 0).wrapping_mul(0x9e37_79b1)
        ^ word(addr, 4).wrapping_mul(0x85eb_ca77)
        ^ word(addr, 8).wrapping_mul(0xc2b2_ae3d)
        ^ word(addr, 12).wrapping_mul(0x27d4_eb2f);
    let h = h ^ (h >> 15);
    h.wrapping_mul(0x2c1b_3c6d) >> 10
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_and_depends_on_every_field() {
        let a = [1u8; 16];
        let b = [2u8; 16];
        let base = flow_hash(&a, &b, 1000, 443, 6);
        assert_ne!(base, flow_hash(&b, &a, 1000, 443, 6));
        assert_ne!(base, flow_hash(&a, &b, 1001, 443, 6));
        assert_ne!(base, flow_hash(&a, &b, 1000, 444, 6));
        assert_ne!(base, flow_hash(&a, &b, 1000, 443, 17));
        // Source ports 0..10000 over 2 buckets: close to half each.
        let ones = (0..10000u16).filter(|p| flow_hash(&a, &b, *p, 443, 6) & 1 == 1).count();
        assert!((4500..5500).contains(&ones), "{ones}");
    }

    #[test]
    fn filter_bits_fit_and_spread() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000u32 {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&(0xcb00_7100u32 + i).to_be_bytes());
            let b = addr_filter_bit(&a);
            assert!(b < ADDR_FILTER_WORDS * 64);
            seen.insert(b);
        }
        assert!(seen.len() > 9_980, "{}", seen.len());
    }

    #[test]
    fn vxlan_source_ports_are_ephemeral() {
        for h in [0, 1, u32::MAX, 0xdead_beef] {
            assert!(vxlan_source_port(h) >= 49152);
        }
    }
}
