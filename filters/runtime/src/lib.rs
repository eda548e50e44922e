//! The one place the meshwarden filters talk to the proxy, so each filter stage is plain
//! Rust on top of it:
//!
//! - [`host`]: the [`Host`] interface — headers, bodies, local answers, shared data, clock,
//!   timer, call-outs, properties, metrics, randomness — over the proxy-wasm ABI on Wasm
//!   ([`wasm_host`]) and an in-memory [`fake_host`] natively (unit tests);
//! - [`pipeline`]: the [`Stage`]s of a module run in one pass over each request, with
//!   parking (injected delays), periodic ticks and call-out answers;
//! - [`module`]: the proxy-wasm root and HTTP contexts around a pipeline (Wasm only);
//! - [`headers`] (lazy request headers), [`connection`] (the downstream peer's identity), [`shared`] (compare-and-swap updates),
//!   [`metrics`] (per-policy stats), [`random`], [`calls`] (host-call accounting);
//! - [`outbox`]: records sent off the request path in batches (spans, capture summaries).

pub mod calls;
pub mod config;
pub mod connection;
#[cfg(not(target_arch = "wasm32"))]
pub mod fake_host;
pub mod headers;
pub mod host;
pub mod metrics;
#[cfg(target_arch = "wasm32")]
pub mod module;
pub mod outbox;
pub mod pipeline;
pub mod random;
pub mod shared;
#[cfg(target_arch = "wasm32")]
pub mod wasm_host;

pub use host::{host, Host, LocalResponse, Map, MetricKind, Phase};
pub use metrics::PolicyMetrics;
pub use outbox::{Outbox, Outboxes, Transport};
pub use pipeline::{Commit, Flow, Pipeline, Stage, Stream, StreamStage};
pub use random::HostRandom;

pub use meshwarden_common::{FilterConfig, KindSpec, RequestHeaders, ValidationError};

/// The SDK's entry-point macro, for module crates.
#[cfg(target_arch = "wasm32")]
pub use proxy_wasm;

/// Parses a stage's configuration (`{"policies": [...]}`) as [`FilterConfig`] of `S`.
pub fn parse_config<S: KindSpec>(bytes: &[u8]) -> Result<FilterConfig<S>, ValidationError> {
    FilterConfig::<S>::parse(bytes)
}
