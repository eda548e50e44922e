//! `maxPerSecond` across workers: a token bucket in the proxy's shared data (one key per
//! policy), updated with compare-and-swap.

use meshwarden_common::mirror::rate::{take_shared, Rate};
use meshwarden_filter_runtime::proxy_wasm::hostcalls;
use meshwarden_filter_runtime::proxy_wasm::types::Status;

/// CAS attempts before giving up (contention between workers is brief).
const ATTEMPTS: usize = 8;

/// Takes one token from `policy`'s bucket; `false` when the cap is reached (or the shared
/// store misbehaves: a copy is optional, so the answer is then "no").
pub fn take_token(policy: &str, per_second: u32, now_ms: u64) -> bool {
    let key = format!("meshwarden.mirror.rate.{policy}");
    let rate = Rate::per_second(u64::from(per_second));
    for _ in 0..ATTEMPTS {
        let Ok((stored, cas)) = hostcalls::get_shared_data(&key) else {
            return false;
        };
        let (taken, next) = take_shared(stored.as_deref(), rate, now_ms);
        if !taken {
            // Nothing to record: the refill is recomputed from the stored state next time.
            return false;
        }
        match hostcalls::set_shared_data(&key, Some(&next), cas) {
            Ok(()) => return taken,
            Err(Status::CasMismatch) => continue,
            Err(_) => return false,
        }
    }
    false
}
