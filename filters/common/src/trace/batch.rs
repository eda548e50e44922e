//! The bounded span queue of one exporting policy on one worker: spans wait here until a
//! batch is full or the flush interval passed, and are dropped (and counted) when the
//! queue is full, so a slow or dead collector never costs the request path more than a
//! push.

use super::export::ExportSpec;
use super::span::ProxySpan;
use crate::mirror::queue::BoundedQueue;

/// Spans waiting to be exported, and when the last batch left.
#[derive(Debug)]
pub struct SpanBatcher {
    queue: BoundedQueue<ProxySpan>,
    max_batch: usize,
    flush_interval_ms: u64,
    last_flush_ms: u64,
}

impl SpanBatcher {
    /// An empty queue for `export`, its interval counted from `now_ms`.
    pub fn new(export: &ExportSpec, now_ms: u64) -> Self {
        Self {
            queue: BoundedQueue::new(export.max_queue as usize),
            max_batch: (export.max_batch as usize).max(1),
            flush_interval_ms: export.flush_interval.as_millis(),
            last_flush_ms: now_ms,
        }
    }

    /// Queues a span; `false` if the queue is full (the span is dropped).
    pub fn push(&mut self, span: ProxySpan) -> bool {
        self.queue.push(span).is_ok()
    }

    /// Spans waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The next batch to send at `now_ms`: a full one whenever there is one, a partial one
    /// once the flush interval has passed since the last batch; `None` otherwise.
    pub fn take_due(&mut self, now_ms: u64) -> Option<Vec<ProxySpan>> {
        let full = self.queue.len() >= self.max_batch;
        let waited = now_ms.saturating_sub(self.last_flush_ms) >= self.flush_interval_ms;
        if self.queue.is_empty() || !(full || waited) {
            return None;
        }
        let n = self.queue.len().min(self.max_batch);
        let batch: Vec<ProxySpan> = (0..n).filter_map(|_| self.queue.pop()).collect();
        self.last_flush_ms = now_ms;
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::DurationSpec;
    use crate::trace::otlp::tests::span;
    use crate::trace::{ExportFormat, SpanStatus};

    fn batcher(max_batch: u32, max_queue: u32) -> SpanBatcher {
        let mut e = ExportSpec::new("c", ExportFormat::Otlp);
        e.max_batch = max_batch;
        e.max_queue = max_queue;
        e.flush_interval = DurationSpec::from_millis(100);
        SpanBatcher::new(&e, 1_000)
    }

    fn s() -> ProxySpan {
        span(SpanStatus::Http(200), false)
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut b = batcher(2, 3);
        assert!((0..3).all(|_| b.push(s())));
        assert!(!b.push(s()), "a full queue refuses");
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn full_batches_leave_at_once_partial_ones_after_the_interval() {
        let mut b = batcher(2, 10);
        b.push(s());
        assert!(b.take_due(1_001).is_none(), "one span waits for a second");
        b.push(s());
        b.push(s());
        assert_eq!(b.take_due(1_002).map(|v| v.len()), Some(2), "a full batch");
        assert!(b.take_due(1_050).is_none(), "the rest waits");
        assert_eq!(
            b.take_due(1_102).map(|v| v.len()),
            Some(1),
            "interval passed"
        );
        assert!(b.take_due(5_000).is_none(), "nothing left");
        assert!(b.is_empty());
    }
}
