//! Live request capture: the `CapturePolicy` spec and what a proxy does with it — sample
//! matching requests, summarise them (never a body; credentials redacted), cap the
//! summaries per second and proxy, and batch them to the control plane's
//! `CaptureService.Report` from the root context.
//!
//! - [`spec`]: fields, defaults, validation.
//! - [`redact`]: the allow-listed headers of a summary, credentials as `[redacted]`.
//! - [`cap`]: `maxPerSecond`, one allowance per proxy in shared data.
//! - [`record`]: a summary and the protobuf `ReportRequest` carrying a batch.
//!
//! Batching is [`crate::batch::Batcher`], as for exported spans.

pub mod cap;
pub mod record;
pub mod redact;
pub mod spec;

pub use cap::RateCap;
pub use record::{encode_report, CaptureRecord, REPORT_METHOD, SERVICE};
pub use redact::{select_headers, CapturedHeader, REDACTED};
pub use spec::{CaptureSpec, ReportLimits, ReportSpec, ALWAYS_REDACTED};

use crate::trace::b3::{B3, X_B3_TRACEID};
use crate::trace::span::field_text;
use crate::trace::TraceParent;
use crate::RequestHeaders;

impl CaptureSpec {
    /// Whether a request with uniformly distributed `draw` is summarised.
    pub fn samples(&self, draw: u64) -> bool {
        self.sampling_percentage.selects(draw)
    }
}

/// The request's trace id as the proxy forwards it: from `traceparent` (32 hex digits),
/// else `x-b3-traceid` or the first part of `b3` (as bounded text); `None` without one.
pub fn trace_id(headers: &RequestHeaders) -> Option<String> {
    if let Some(tp) = headers.get("traceparent") {
        if let Ok(tp) = TraceParent::parse(tp) {
            return Some(tp.trace_id.to_hex());
        }
    }
    let b3 = headers
        .get(X_B3_TRACEID)
        .or_else(|| headers.get(B3)?.split(|b| *b == b'-').next())
        .filter(|v| !v.is_empty())?;
    Some(redact::printable(field_text(b3)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_come_from_the_forwarded_context() {
        let id = |pairs: &[(&str, &str)]| {
            let h = RequestHeaders::new(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                    .collect(),
            );
            trace_id(&h)
        };
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            id(&[("traceparent", tp)]).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(id(&[("x-b3-traceid", "abc")]).as_deref(), Some("abc"));
        assert_eq!(
            id(&[("b3", "80f198ee-e457b5a2-1")]).as_deref(),
            Some("80f198ee")
        );
        assert_eq!(id(&[("traceparent", "junk")]), None);
        assert_eq!(id(&[]), None);
    }

    #[test]
    fn sampling_extremes_take_all_or_nothing() {
        let mut s = CaptureSpec::default();
        assert!((0..1000u64).all(|d| s.samples(crate::random::mix64(d))));
        s.sampling_percentage = crate::Percentage::NONE;
        assert!(!(0..1000u64).any(|d| s.samples(crate::random::mix64(d))));
    }
}
