//! Trace-header injection and propagation: the `TracePolicy` spec and the Trace Context
//! (W3C Level 2), B3 and x-request-id rules the trace filter applies. Pure functions of the
//! request headers, the spec and a source of random bytes.

pub mod b3;
pub mod decision;
pub mod export;
pub mod ids;
mod log_id;
pub mod otlp;
#[cfg(any(test, feature = "otlp-decode"))]
pub mod otlp_decode;
pub mod request_id;
pub mod span;
mod spec;
pub mod traceparent;
pub mod tracestate;
pub mod zipkin;

pub use decision::{decide, HeaderOp, Outcome, TracePlan};
pub use export::{ExportFormat, ExportSpec};
pub use ids::{SpanId, TraceId};
pub use log_id::log_id;
pub use span::{ProxySpan, SpanStatus};
pub use spec::{SpanMode, TraceFormat, TraceSpec};
pub use traceparent::TraceParent;
pub use tracestate::TraceState;
