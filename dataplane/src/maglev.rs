//! Maglev lookup tables (Eisenbud et al., NSDI 2016), built in userspace and
//! read by the uplink program: bucket = flow hash mod `MAGLEV_SIZE`, entry =
//! connector index. Every carwash host builds the same table from the same
//! policy (the permutations depend only on the machines' identities), so all
//! hosts send a flow to the same connector; when a connector leaves, only
//! the buckets it held change hands.
use dataplane_common::types::MAGLEV_SIZE;

/// A machine's identity for the permutation: VTEP and MAC.
pub type Identity = ([u8; 4], [u8; 6]);

/// FNV-1a, 64 bit, from a seed: stable across hosts and releases.
fn fnv1a(seed: u64, data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn permutation_params(id: &Identity) -> (usize, usize) {
    let mut bytes = [0u8; 10];
    bytes[..4].copy_from_slice(&id.0);
    bytes[4..].copy_from_slice(&id.1);
    let offset = (fnv1a(0x6f66_6673, &bytes) % MAGLEV_SIZE as u64) as usize;
    let skip = (fnv1a(0x736b_6970, &bytes) % (MAGLEV_SIZE as u64 - 1)) as usize + 1;
    (offset, skip)
}

/// The table for `machines` (index = position in the policy), of which only
/// those with `up[i]` take buckets. With none up, every bucket names 0 and
/// the program finds machine 0 down.
pub fn build(machines: &[Identity], up: &[bool]) -> [u8; 256] {
    let mut table = [0u8; 256];
    let live: Vec<usize> = (0..machines.len())
        .filter(|&i| up.get(i).copied().unwrap_or(false))
        .collect();
    if live.is_empty() {
        return table;
    }
    let params: Vec<(usize, usize)> = live.iter().map(|&i| permutation_params(&machines[i])).collect();
    let mut next = vec![0usize; live.len()];
    let mut filled = [false; MAGLEV_SIZE];
    let mut n = 0;
    'fill: loop {
        for (k, &machine) in live.iter().enumerate() {
            let (offset, skip) = params[k];
            // Each machine takes its next preferred bucket still free; since
            // skip and the prime table size are coprime, its permutation
            // visits every bucket.
            let mut c = (offset + next[k] * skip) % MAGLEV_SIZE;
            while filled[c] {
                next[k] += 1;
                c = (offset + next[k] * skip) % MAGLEV_SIZE;
            }
            table[c] = machine as u8;
            filled[c] = true;
            next[k] += 1;
            n += 1;
            if n == MAGLEV_SIZE {
                break 'fill;
            }
        }
    }
    // Padding past MAGLEV_SIZE is never read; keep it a valid index anyway.
    for e in table.iter_mut().skip(MAGLEV_SIZE) {
        *e = live[0] as u8;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Identity = ([10, 200, 1, 10], [2, 0, 10, 200, 1, 10]);
    const B: Identity = ([10, 200, 1, 11], [2, 0, 10, 200, 1, 11]);

    #[test]
    fn two_machines_share_the_buckets_evenly() {
        let t = build(&[A, B], &[true, true]);
        let a = t[..MAGLEV_SIZE].iter().filter(|&&e| e == 0).count();
        assert!((124..=127).contains(&a), "{a}");
    }

    #[test]
    fn a_machine_leaving_moves_only_its_buckets() {
        let both = build(&[A, B], &[true, true]);
        let only_b = build(&[A, B], &[false, true]);
        for i in 0..MAGLEV_SIZE {
            if both[i] == 1 {
                assert_eq!(only_b[i], 1);
            }
            assert_eq!(only_b[i], 1);
        }
    }

    #[test]
    fn same_input_same_table_whatever_the_order_of_calls() {
        assert_eq!(build(&[A, B], &[true, true]), build(&[A, B], &[true, true]));
        assert_ne!(build(&[A, B], &[true, true]), build(&[B, A], &[true, true]));
    }

    #[test]
    fn nothing_up_is_all_zero() {
        assert!(build(&[A, B], &[false, false]).iter().all(|&e| e == 0));
    }
}
