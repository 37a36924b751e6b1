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
    let mut h = 0x5bd1_e995u32 ^ proto as u32;
    h = mix(h, word(src, 0));
    h = mix(h, word(src, 4));
    h = mix(h, word(src, 8));
    h = mix(h, word(src, 12));
    h = mix(h, word(dst, 0));
    h = mix(h, word(dst, 4));
    h = mix(h, word(dst, 8));
    h = mix(h, word(dst, 12));
    h = mix(h, (sport as u32) << 16 | dport as u32);
    fmix(h)
}

/// The VXLAN UDP source port for a flow: in the ephemeral range 49152..=65535
/// (RFC 7348), so that the underlay's ECMP spreads tunnelled flows.
#[inline(always)]
pub fn vxlan_source_port(hash: u32) -> u16 {
    49152 | (hash >> 16) as u16 & 0x3fff
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
    fn vxlan_source_ports_are_ephemeral() {
        for h in [0, 1, u32::MAX, 0xdead_beef] {
            assert!(vxlan_source_port(h) >= 49152);
        }
    }
}
