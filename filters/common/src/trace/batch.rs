//! The bounded span queue of one exporting policy on one worker: a [`Batcher`] of spans
//! with the limits of the policy's `export`.

use super::export::ExportSpec;
use super::span::ProxySpan;
use crate::batch::Batcher;

/// Spans waiting to be exported, and when the last batch left.
pub type SpanBatcher = Batcher<ProxySpan>;

impl Batcher<ProxySpan> {
    /// An empty queue for `export`, its interval counted from `now_ms`.
    pub fn new(export: &ExportSpec, now_ms: u64) -> Self {
        Self::with_limits(export.limits(), now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::DurationSpec;
    use crate::trace::otlp::tests::span;
    use crate::trace::{ExportFormat, SpanStatus};

    #[test]
    fn the_export_sets_the_limits() {
        let mut e = ExportSpec::new("c", ExportFormat::Otlp);
        e.max_batch = 2;
        e.max_queue = 3;
        e.flush_interval = DurationSpec::from_millis(100);
        let mut b = SpanBatcher::new(&e, 1_000);
        assert!((0..3).all(|_| b.push(span(SpanStatus::Http(200), false))));
        assert!(
            !b.push(span(SpanStatus::Http(200), false)),
            "a full queue refuses"
        );
        assert_eq!(b.take_due(1_001).map(|v| v.len()), Some(2), "a full batch");
        assert!(b.take_due(1_050).is_none(), "the rest waits");
        assert_eq!(
            b.take_due(1_101).map(|v| v.len()),
            Some(1),
            "interval passed"
        );
    }
}
