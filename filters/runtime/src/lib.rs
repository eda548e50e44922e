//! proxy-wasm glue shared by the meshwarden filters, so each filter is only its own logic:
//!
//! - [`Filter`] + [`install`]: the root context (configuration loading in `on_configure`,
//!   an `Rc` of the validated [`FilterConfig`] handed to every HTTP context);
//! - [`passthrough_filter!`]: a whole module that accepts only an empty policy list;
//! - [`headers`]: request-header snapshots and header writes that never panic;
//! - [`random`]: random bytes from WASI `random_get`, with a fallback;
//! - [`metrics`]: per-policy counters, gauges and histograms named for Prometheus.
//!
//! Host calls go through `proxy_wasm::hostcalls` and their `Result`s are handled (logged);
//! nothing here unwraps a host call.

pub mod config;
pub mod headers;
pub mod metrics;
pub mod random;
mod root;

pub use config::load_config;
pub use metrics::{MetricKind, PolicyMetrics};
pub use random::HostRandom;
pub use root::{install, require_no_policies, Filter, NoopHttp};

pub use meshwarden_common::{FilterConfig, KindSpec, RequestHeaders, ValidationError};

/// The SDK, re-exported for [`passthrough_filter!`] and the filters.
pub use proxy_wasm;
