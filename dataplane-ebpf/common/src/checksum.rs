//! Internet checksum (RFC 1071) and its incremental update (RFC 1624), used
//! by the programs for the headers they build or rewrite.

/// Adds `data` as big-endian 16-bit words to a running 32-bit sum.
#[inline(always)]
pub fn sum_bytes(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u32) << 8;
    }
    sum
}

/// Folds a 32-bit sum to 16 bits and complements it: the checksum field.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// RFC 1624 eqn. 3: the checksum after one 16-bit word changed from `old`
/// to `new`.
#[inline(always)]
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check as u32) + (!old as u32) + new as u32;
    fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The IPv4 header example of RFC 1071 / Wikipedia: checksum 0xb861.
    const HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
        0x00, 0xc7,
    ];

    #[test]
    fn ipv4_header_checksum() {
        assert_eq!(fold(sum_bytes(0, &HDR)), 0xb861);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum_bytes(0, &[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }

    #[test]
    fn incremental_equals_full_recompute() {
        let mut h = HDR;
        let check = fold(sum_bytes(0, &h));
        // Change the TTL/protocol word.
        let old = u16::from_be_bytes([h[8], h[9]]);
        h[8] = 0x3f;
        let new = u16::from_be_bytes([h[8], h[9]]);
        assert_eq!(update16(check, old, new), fold(sum_bytes(0, &h)));
    }
}
