//! Per-request selection: random draws, or sticky draws from a hash of a request header.

use super::spec::{MissingKey, StickySpec};
use crate::percentage::Percentage;
use crate::request::RequestHeaders;

/// A source of uniformly distributed 64-bit values (the proxy's random generator in the
/// filter, a seeded generator in tests).
pub trait Entropy {
    /// The next uniform value.
    fn next_u64(&mut self) -> u64;
}

/// Which fault a draw is for. Each fault draws independently, so for one sticky key the
/// delay and abort decisions are independent yet each is stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Salt {
    Delay = 1,
    Abort = 2,
    ResponseDelay = 3,
    ResponseOverride = 4,
}

/// A small, well-mixed, deterministic generator (SplitMix64). Used for tests and as a
/// fallback; not cryptographic.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl Entropy for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }
}

/// SplitMix64's finalizer: spreads every input bit over the whole output.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The sticky draw for `key` under `seed` for one fault: FNV-1a over the seed, the salt and
/// the key, then mixed. Stable across processes, platforms and releases.
pub fn sticky_draw(seed: u64, salt: Salt, key: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in seed
        .to_le_bytes()
        .into_iter()
        .chain([salt as u8])
        .chain(key.iter().copied())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    mix64(h)
}

/// Decides selections for one request.
pub struct Selector<'a, E: Entropy> {
    sticky: Option<(&'a StickySpec, Option<&'a [u8]>)>,
    entropy: &'a mut E,
}

impl<'a, E: Entropy> Selector<'a, E> {
    /// A selector for a request; `sticky` (if configured) reads its key from `headers`.
    pub fn new(
        sticky: Option<&'a StickySpec>,
        headers: &'a RequestHeaders,
        entropy: &'a mut E,
    ) -> Self {
        let sticky = sticky.map(|s| (s, headers.get(s.header.as_str())));
        Self { sticky, entropy }
    }

    /// Whether `pct` selects this request for the fault `salt`.
    pub fn selects(&mut self, pct: Percentage, salt: Salt) -> bool {
        if pct == Percentage::NONE {
            return false;
        }
        let draw = match self.sticky {
            Some((s, Some(key))) => sticky_draw(s.seed, salt, key),
            Some((s, None)) if s.when_missing == MissingKey::Skip => return false,
            _ => self.entropy.next_u64(),
        };
        pct.selects(draw)
    }

    /// A fresh random value (delay lengths are random even under sticky selection).
    pub fn random(&mut self) -> u64 {
        self.entropy.next_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::HeaderName;

    fn sticky(seed: u64, when_missing: MissingKey) -> StickySpec {
        StickySpec {
            header: HeaderName::try_from("x-user-id".to_string()).unwrap(),
            seed,
            when_missing,
        }
    }

    fn headers(user: Option<&str>) -> RequestHeaders {
        RequestHeaders::new(
            user.map(|u| ("x-user-id".to_string(), u.as_bytes().to_vec()))
                .into_iter()
                .collect(),
        )
    }

    #[test]
    fn hash_is_stable_across_releases() {
        // Pinned values: changing the hash would silently move users in or out of a fault.
        // (Computed independently with a Python FNV-1a + SplitMix64 finalizer.)
        assert_eq!(
            sticky_draw(42, Salt::Abort, b"alice"),
            0x9c34_adb2_6801_44b6
        );
        assert_eq!(sticky_draw(0, Salt::Delay, b""), 0x058b_5bcc_a37f_59ab);
        assert_ne!(
            sticky_draw(42, Salt::Abort, b"alice"),
            sticky_draw(43, Salt::Abort, b"alice")
        );
        assert_ne!(
            sticky_draw(42, Salt::Abort, b"alice"),
            sticky_draw(42, Salt::Delay, b"alice")
        );
    }

    #[test]
    fn same_user_always_or_never() {
        let spec = sticky(42, MissingKey::Skip);
        let pct = Percentage::try_from(30.0).unwrap();
        let mut rng = SplitMix64(7);
        let mut selected_users = 0;
        for u in 0..2000 {
            let name = format!("user-{u}");
            let h = headers(Some(&name));
            let first = Selector::new(Some(&spec), &h, &mut rng).selects(pct, Salt::Abort);
            for _ in 0..5 {
                assert_eq!(
                    Selector::new(Some(&spec), &h, &mut rng).selects(pct, Salt::Abort),
                    first
                );
            }
            selected_users += usize::from(first);
        }
        // ~30 % of users, within a generous bound.
        assert!((500..700).contains(&selected_users), "{selected_users}");
    }

    #[test]
    fn missing_key_skips_or_falls_back_to_random() {
        let mut rng = SplitMix64(1);
        let h = headers(None);
        let skip = sticky(1, MissingKey::Skip);
        assert!(!Selector::new(Some(&skip), &h, &mut rng).selects(Percentage::ALL, Salt::Delay));
        let random = sticky(1, MissingKey::Random);
        assert!(Selector::new(Some(&random), &h, &mut rng).selects(Percentage::ALL, Salt::Delay));
    }

    #[test]
    fn random_selection_matches_percentage() {
        let mut rng = SplitMix64(99);
        let h = headers(None);
        let pct = Percentage::try_from(12.5).unwrap();
        let mut sel = Selector::new(None, &h, &mut rng);
        let hits = (0..100_000)
            .filter(|_| sel.selects(pct, Salt::Abort))
            .count();
        assert!((12_000..13_000).contains(&hits), "{hits}");
    }
}
