//! Sampling draws: random, or sticky (a hash of a request header, so the same user is always
//! in or always out).

/// FNV-1a (64 bit) over `parts`, finished with a SplitMix64 mix so that the low digits used
/// by [`crate::Percentage::selects`] are uniformly distributed.
pub fn sticky_hash(seed: u64, header_value: &[u8], target_index: usize) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    feed(&seed.to_le_bytes());
    feed(&(target_index as u64).to_le_bytes());
    feed(header_value);
    mix64(h)
}

/// SplitMix64 finalizer: a bijective mix with good avalanche.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Percentage;

    #[test]
    fn sticky_hash_is_deterministic_and_depends_on_every_input() {
        let a = sticky_hash(7, b"user-1", 0);
        assert_eq!(a, sticky_hash(7, b"user-1", 0));
        assert_ne!(a, sticky_hash(8, b"user-1", 0));
        assert_ne!(a, sticky_hash(7, b"user-2", 0));
        assert_ne!(a, sticky_hash(7, b"user-1", 1));
    }

    #[test]
    fn sticky_selection_matches_the_percentage() {
        let p = Percentage::try_from(30.0).unwrap();
        let n = 20_000;
        let hits = (0..n)
            .filter(|i| p.selects(sticky_hash(42, format!("user-{i}").as_bytes(), 0)))
            .count();
        // 30 % of 20 000 = 6 000; 99.9 % binomial bound is about ±210.
        assert!((5_790..=6_210).contains(&hits), "{hits}");
    }

    #[test]
    fn targets_sample_independently() {
        let p = Percentage::try_from(50.0).unwrap();
        let both = (0..10_000)
            .filter(|i| {
                let v = format!("u{i}");
                p.selects(sticky_hash(1, v.as_bytes(), 0))
                    && p.selects(sticky_hash(1, v.as_bytes(), 1))
            })
            .count();
        assert!((2_300..=2_700).contains(&both), "{both}");
    }
}
