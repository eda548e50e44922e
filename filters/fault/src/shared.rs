//! State every worker of the proxy shares, kept in proxy shared data (scoped to this
//! filter's VM id): the active-fault counters, the guard windows and the time each policy
//! version was first seen. Updates use compare-and-swap with bounded retries.

use meshwarden_common::fault::{GuardSpec, GuardWindow};
use meshwarden_filter_runtime::shared::{self, ensure_exists, HostShared, Update};

/// Shared-data keys of one policy.
#[derive(Debug, Clone)]
pub struct PolicyKeys {
    pub active: String,
    pub guard: String,
}

impl PolicyKeys {
    /// Keys of policy `name`.
    pub fn new(name: &str) -> Self {
        Self {
            active: format!("meshwarden.fault/active/{name}"),
            guard: format!("meshwarden.fault/guard/{name}"),
        }
    }
}

/// Applies `f` to the value at `key` until the compare-and-swap succeeds. `f` returns the
/// new value, or `None` to leave the value alone (the result is then `false`).
fn update(key: &str, mut f: impl FnMut(&[u8]) -> Option<Vec<u8>>) -> bool {
    shared::update(&HostShared, key, |v| match f(v) {
        Some(new) => Update::Write(new, true),
        None => Update::Keep(false),
    })
    .unwrap_or(false)
}

/// Creates the policy's shared entries if absent, so later updates always carry a
/// compare-and-swap token (two workers creating a key at once could lose an update).
pub fn init(keys: &PolicyKeys) {
    for key in [&keys.active, &keys.guard] {
        ensure_exists(&HostShared, key);
    }
}

fn read(key: &str) -> Option<Vec<u8>> {
    shared::read(key)
}

fn decode_u32(bytes: &[u8]) -> u32 {
    bytes.try_into().map_or(0, u32::from_le_bytes)
}

/// Takes one of `max` active-fault slots; `false` when all are taken (or contention did
/// not let the update through, which errs on the safe side).
pub fn try_acquire(key: &str, max: u32) -> bool {
    update(key, |v| {
        let n = decode_u32(v);
        (n < max).then(|| (n + 1).to_le_bytes().to_vec())
    })
}

/// Gives a slot back.
pub fn release(key: &str) {
    let ok = update(key, |v| {
        Some(decode_u32(v).saturating_sub(1).to_le_bytes().to_vec())
    });
    if !ok {
        log::warn!("meshwarden.fault: could not release an active-fault slot ({key})");
    }
}

/// Whether the guard suspends injection now.
pub fn guard_trips(key: &str, guard: &GuardSpec, now_ms: u64) -> bool {
    let window = GuardWindow::decode(read(key).as_deref(), guard.window.as_millis());
    let (total, errors) = window.totals(now_ms);
    guard.trips(total, errors)
}

/// Counts a real upstream response in the guard window.
pub fn guard_record(key: &str, guard: &GuardSpec, now_ms: u64, status: u16) {
    update(key, |v| {
        let mut w = GuardWindow::decode(Some(v), guard.window.as_millis());
        w.record(now_ms, GuardSpec::is_error(status));
        Some(w.encode())
    });
}

/// When this proxy first saw `name` at `version` (Unix ms): stored on first sight, so every
/// worker and every later reconfiguration agrees on when a `ttl` started.
pub fn first_seen(name: &str, version: &str, now_ms: i64) -> i64 {
    let key = format!("meshwarden.fault/first-seen/{name}/{version}");
    if let Some(stored) = read(&key).and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok()) {
        return i64::from_le_bytes(stored);
    }
    let mut seen = now_ms;
    update(&key, |v| match <[u8; 8]>::try_from(v).ok() {
        Some(stored) => {
            seen = i64::from_le_bytes(stored);
            None
        }
        None => Some(now_ms.to_le_bytes().to_vec()),
    });
    seen
}
