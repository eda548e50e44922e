//! Trace-header injection and propagation: the `TracePolicy` spec and the Trace Context,
//! B3 and x-request-id rules the trace filter applies.

mod spec;

pub use spec::{SpanMode, TraceFormat, TraceSpec};
