//! `maxPerSecond` across workers: a token bucket in the proxy's shared data (one key per
//! policy), updated with compare-and-swap.

use meshwarden_common::mirror::rate::{take_shared, Rate};
use meshwarden_filter_runtime::shared::{update, HostShared, Update};

/// Takes one token from `policy`'s bucket; `false` when the cap is reached (or the shared
/// store stays contended: a copy is optional, so the answer is then "no").
pub fn take_token(policy: &str, per_second: u32, now_ms: u64) -> bool {
    let key = format!("meshwarden.mirror.rate.{policy}");
    let rate = Rate::per_second(u64::from(per_second));
    update(&HostShared, &key, |stored| {
        let stored = (!stored.is_empty()).then_some(stored);
        match take_shared(stored, rate, now_ms) {
            (true, next) => Update::Write(next.to_vec(), true),
            // Nothing to record: the refill is recomputed from the stored state next time.
            (false, _) => Update::Keep(false),
        }
    })
    .unwrap_or(false)
}
