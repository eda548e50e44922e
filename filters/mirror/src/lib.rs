//! The meshwarden mirror filter: copies matching requests to one or more targets without
//! ever pausing or changing the primary request, and in diff mode compares each copy's
//! answer with the primary's.
//!
//! The decisions live in `meshwarden_common::mirror`; this crate is the proxy-wasm glue:
//! - [`stream`]: per request, decide on the headers, copy the body while it streams on,
//!   queue the copies when the request is complete, keep the primary's answer for diffs;
//! - [`root`]: per worker, load policies, send queued copies from the root context on its
//!   tick (call-outs owned by a request's context are cancelled when it ends; the root's
//!   are not), receive the answers and compare;
//! - [`worker`]: the bounded state those two share; [`rate_cap`]: the cross-worker
//!   `maxPerSecond` bucket in shared data; [`metrics`]: per-policy counters.

mod metrics;
mod rate_cap;
mod root;
mod stream;
mod worker;

use meshwarden_filter_runtime::proxy_wasm;
use std::time::{SystemTime, UNIX_EPOCH};

proxy_wasm::main! {{
    // The host's level cannot be read before `on_configure`, which syncs it.
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(root::MirrorRoot::new()));
}}

/// Milliseconds since the Unix epoch.
fn now_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
