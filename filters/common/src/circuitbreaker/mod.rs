//! Circuit breaking with a fallback: the `CircuitBreakerPolicy` spec and the Resilience4j
//! state machine the circuit-breaker filter runs with it.
//!
//! - [`spec`], [`status`]: fields, defaults, validation; failure statuses.
//! - [`window`]: count- and time-based sliding windows of outcomes, in a compact byte form.
//! - [`breaker`]: one breaker — CLOSED → OPEN → HALF_OPEN → CLOSED/OPEN — on a caller's
//!   clock, and its stored form.
//! - [`shared`]: a policy's breakers (one, or one per descriptor key in bounded slots) in
//!   the proxy's shared data, updated with compare-and-swap so every worker sees one state.
//! - [`outcome`]: whether a finished call failed or was slow.
//! - [`report`]: the breakers that are not closed, reported to the control plane once
//!   per change for `meshwarden status`.
//!
//! Nothing here touches the proxy: the filter supplies the clock, the response and a
//! [`crate::ratelimit::SharedStore`].

pub mod breaker;
pub mod outcome;
pub mod report;
pub mod shared;
pub mod spec;
pub mod status;
pub mod window;

pub use breaker::{Admission, Breaker, Reason, Rules, State, Ticket, Transition};
pub use outcome::{parse_grpc_status, Response};
pub use shared::{Admitted, BreakerSet, Guarded};
pub use spec::{CircuitBreakerSpec, FallbackSpec, SlidingWindow};
pub use status::StatusRange;
pub use window::{Outcome, Totals};
