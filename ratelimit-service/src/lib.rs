//! meshwarden's global rate limit service: Envoy's rate limit service API
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`) over GCRA token
//! buckets kept in Redis, so every proxy of a fleet shares one limit.
//!
//! - [`config`]: the limits file (domains, descriptors, `rate`, `burst`, `overrides`).
//! - [`limits`]: descriptor → limit and Redis key.
//! - [`gcra`]: the Lua script deciding in one atomic round trip, and its arithmetic.
//! - [`store`]: Redis with a timeout, an in-flight bound and automatic reconnection.
//! - [`service`]: the gRPC service: statuses, headers, failure mode.
//! - [`server`]: gRPC + HTTP (`/metrics`, `/healthz`, `/readyz`) servers.
//! - [`source`]: `--config-url`: limits polled over HTTP (from the control plane).
//! - [`metrics`]: the Prometheus metrics.

pub mod config;
pub mod gcra;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod service;
pub mod source;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use config::{ConfigError, LimitsConfig};
pub use limits::{Limits, Period, Quota};
pub use meshwarden_common::ratelimit::FailureMode;
pub use server::{parse_duration, Server, ServerOptions, StartError};
pub use service::RateLimiter;
pub use source::ConfigUrl;
pub use store::{RedisStore, StoreError, StoreOptions};
