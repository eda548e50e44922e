//! The meshwarden fault filter: for the first `FaultPolicy` whose match and source select a
//! request (and that has not expired), inject the faults it draws — request delay, abort
//! (HTTP or gRPC trailers-only), response delay, response override — within the policy's
//! safety rails (guard, dry run, `maxActiveFaults`, TTL/expiry). The decisions live in
//! `meshwarden_common::fault`; this module carries them out in Envoy.
//!
//! Delays: proxy-wasm has no per-stream timer, so a delayed stream is paused and parked in
//! its worker's queue; the root context's tick (1 ms period while anything waits, off
//! otherwise) releases it at the tick nearest its deadline (see
//! `meshwarden_common::fault::delay_queue`). State shared across workers (active-fault
//! counters, guard windows, when a policy version was first seen) lives in proxy shared
//! data.
//!
//! Metrics: `meshwarden_fault_<metric>{policy="..."}`, see [`metrics`].

mod config;
mod host;
mod metrics;
mod root;
mod shared;
mod stream;
mod worker;

use meshwarden_filter_runtime::{proxy_wasm, random};
use proxy_wasm::types::LogLevel;
use std::time::UNIX_EPOCH;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(root::FaultRoot::new(random::next_u64())));
}}

/// The proxy's clock in Unix microseconds (delay deadlines).
pub fn now_us() -> u64 {
    proxy_wasm::hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_micros() as u64)
}

/// The proxy's clock in Unix milliseconds (policy decisions).
pub fn now_ms() -> u64 {
    now_us() / 1000
}
