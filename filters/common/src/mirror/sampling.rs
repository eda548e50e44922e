//! Sampling draws: random, or sticky (a hash of a request header, so the same user is always
//! in or always out).

use crate::random::stable_hash;

/// The stable hash ([`stable_hash`]) of the seed, the target and the header value, so the
/// low digits used by [`crate::Percentage::selects`] are uniformly distributed.
pub fn sticky_hash(seed: u64, header_value: &[u8], target_index: usize) -> u64 {
    stable_hash(
        0,
        &[
            &seed.to_le_bytes(),
            &(target_index as u64).to_le_bytes(),
            header_value,
        ],
    )
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
