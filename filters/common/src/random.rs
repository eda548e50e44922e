//! Randomness and stable hashing for every kind: one source of random values ([`Random`]),
//! one seeded generator ([`SplitMix64`]), one bit mixer ([`mix64`]) and one stable keyed
//! hash ([`stable_hash`]). The filters, the control plane (`explain`) and the tests draw
//! and hash the same way.

/// The golden-ratio increment of SplitMix64.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// A source of uniformly distributed random values: the proxy's random generator in the
/// filters, a seeded [`SplitMix64`] or a fixed sequence in tests. Any `FnMut(&mut [u8])` is
/// one.
pub trait Random {
    /// Fills `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]);

    /// A uniform 64-bit value.
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_le_bytes(b)
    }
}

impl<F: FnMut(&mut [u8])> Random for F {
    fn fill(&mut self, buf: &mut [u8]) {
        self(buf)
    }
}

/// A small, well-mixed, deterministic generator (SplitMix64): per-worker draws seeded from
/// the host's randomness, and tests. Not cryptographic.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl Random for SplitMix64 {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix64(self.0)
    }
}

/// SplitMix64's finalizer: a bijective mix that spreads every input bit over the output.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stable keyed hash: FNV-1a (64 bit, offset basis XOR `seed`) over `parts` in order,
/// finished with [`mix64`] so low digits are uniform too. The same on every worker,
/// platform and release — sticky sampling and shared-data slots depend on it.
pub fn stable_hash(seed: u64, parts: &[&[u8]]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET ^ seed;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    }
    mix64(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_and_the_hash_are_stable() {
        // Reference values: changing them re-buckets every sticky user and rate-limit key.
        let mut g = SplitMix64(0);
        assert_eq!(g.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(mix64(1), 0x5692_161d_100b_05e5);
        assert_eq!(stable_hash(0, &[b"ab", b"c"]), stable_hash(0, &[b"abc"]));
        assert_ne!(stable_hash(0, &[b"abc"]), stable_hash(1, &[b"abc"]));
        let mut buf = [0u8; 12];
        SplitMix64(5).fill(&mut buf);
        let mut again = [0u8; 12];
        SplitMix64(5).fill(&mut again);
        assert_eq!(buf, again);
        let mut fixed = |b: &mut [u8]| b.fill(7);
        assert_eq!(fixed.next_u64(), u64::from_le_bytes([7; 8]));
    }
}
