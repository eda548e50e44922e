//! Rate limiting and load shedding: the `RateLimitPolicy` spec and everything the
//! rate-limit filter decides with it.
//!
//! - [`spec`]: fields, defaults, validation.
//! - [`rate`], [`bucket`]: token-bucket arithmetic, exact in fixed point.
//! - [`descriptor`], [`key`]: which bucket a request belongs to.
//! - [`store`], [`slots`], [`concurrency`]: buckets and in-flight counters in the proxy's
//!   shared data, updated with compare-and-swap so every worker sees one limit, in a fixed
//!   set of keys so shared data never grows with traffic.
//! - [`response`]: `RateLimit-Policy`/`RateLimit` fields, legacy headers, problem bodies.
//! - [`shedding`], [`gradient`]: `shedding` — a concurrency limit found from latency
//!   (Envoy's gradient algorithm) or set at a share of a declared capacity, with request
//!   classes that may fill different shares of it.
//! - [`limiter`]: the decision for one request.
//! - [`global`], [`rls`]: `scope: global` policies — the descriptors and limits both the
//!   filter and the control plane derive from a policy, and the few protobuf messages of
//!   Envoy's rate limit service API the filter sends and reads.
//! - [`lease`]: leased tokens of global policies with a `lease` (local pre-admission).
//!
//! Nothing here touches the proxy: the filter supplies the clock, the headers and a
//! [`store::SharedStore`] over `get_shared_data`/`set_shared_data`.

pub mod bucket;
pub mod concurrency;
pub mod descriptor;
pub mod global;
pub mod gradient;
pub mod key;
pub mod lease;
pub mod limiter;
pub mod rate;
pub mod response;
pub mod rls;
pub mod shedding;
pub mod slots;
pub mod spec;
pub mod store;

#[cfg(test)]
mod limiter_tests;
#[cfg(test)]
mod shedding_tests;

pub use descriptor::{ClientAddressSpec, Descriptor};
pub use limiter::{
    release_all, Decision, GlobalAnswer, GlobalCall, Held, Limiter, PolicyEvents, Rejection,
    Request, Settled, Verdict,
};
pub use rate::{Limit, Rate, Unit};
pub use shedding::{ShedStatus, SheddingSpec};
pub use spec::{FailureMode, LeaseSpec, Override, RateLimitSpec, Scope};
pub use store::{CasMismatch, MemoryStore, SharedStore};
