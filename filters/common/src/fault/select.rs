//! Per-request selection: random draws, or sticky draws from a hash of a request header.

use super::spec::{MissingKey, StickySpec};
use crate::percentage::Percentage;
use crate::random::stable_hash;
pub use crate::random::{Random, SplitMix64};
use crate::request::RequestHeaders;

/// Which fault a draw is for. Each fault draws independently, so for one sticky key the
/// delay and abort decisions are independent yet each is stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Salt {
    Delay = 1,
    Abort = 2,
    ResponseDelay = 3,
    ResponseOverride = 4,
}

/// The sticky draw for `key` under `seed` for one fault: FNV-1a over the seed, the salt and
/// the key, then mixed. Stable across processes, platforms and releases.
pub fn sticky_draw(seed: u64, salt: Salt, key: &[u8]) -> u64 {
    stable_hash(0, &[&seed.to_le_bytes(), &[salt as u8], key])
}

/// Decides selections for one request.
pub struct Selector<'a, E: Random> {
    sticky: Option<(&'a StickySpec, Option<&'a [u8]>)>,
    entropy: &'a mut E,
}

impl<'a, E: Random> Selector<'a, E> {
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
