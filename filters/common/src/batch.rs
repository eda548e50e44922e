//! The bounded queue of records that a filter sends off the request path (trace spans,
//! capture summaries): records wait here until a batch is full or the flush interval
//! passed, and are dropped (and counted by the caller) when the queue is full, so a slow or
//! dead receiver never costs the request path more than a push. The root context's tick
//! takes the due batches.

use crate::duration::DurationSpec;
use crate::error::ValidationError;
use crate::mirror::queue::BoundedQueue;

/// Most records in one call-out.
pub const MAX_BATCH: u32 = 512;
/// Most records waiting per policy and worker.
pub const MAX_QUEUE: u32 = 8192;
/// Bounds of `flushInterval` and `timeout`.
const MIN_INTERVAL: DurationSpec = DurationSpec::from_millis(10);
const MAX_INTERVAL: DurationSpec = DurationSpec::from_millis(60_000);

/// How a [`Batcher`] groups records: the batching fields of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most records per batch.
    pub max_batch: u32,
    /// Most records waiting.
    pub max_queue: u32,
    /// Longest wait of a partial batch.
    pub flush_interval: DurationSpec,
    /// Call-out timeout.
    pub timeout: DurationSpec,
}

impl BatchLimits {
    /// Checks the bounds (`maxBatch` 1 to 512, `maxQueue` `maxBatch` to 8192,
    /// `flushInterval` and `timeout` 10ms to 60s); errors name the policy field.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !(1..=MAX_BATCH).contains(&self.max_batch) {
            return Err(ValidationError::new(
                "maxBatch",
                format!("must be from 1 to {MAX_BATCH}, got {}", self.max_batch),
            ));
        }
        if !(self.max_batch..=MAX_QUEUE).contains(&self.max_queue) {
            return Err(ValidationError::new(
                "maxQueue",
                format!(
                    "must be from maxBatch ({}) to {MAX_QUEUE}, got {}",
                    self.max_batch, self.max_queue
                ),
            ));
        }
        for (field, d) in [
            ("flushInterval", self.flush_interval),
            ("timeout", self.timeout),
        ] {
            if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&d) {
                return Err(ValidationError::new(
                    field,
                    format!("must be from {MIN_INTERVAL} to {MAX_INTERVAL}, got {d}"),
                ));
            }
        }
        Ok(())
    }
}

/// Records waiting to be sent, and when the last batch left.
#[derive(Debug)]
pub struct Batcher<T> {
    queue: BoundedQueue<T>,
    max_batch: usize,
    flush_interval_ms: u64,
    last_flush_ms: u64,
}

impl<T> Batcher<T> {
    /// An empty queue with `limits`, its interval counted from `now_ms`.
    pub fn with_limits(limits: BatchLimits, now_ms: u64) -> Self {
        Self {
            queue: BoundedQueue::new(limits.max_queue as usize),
            max_batch: (limits.max_batch as usize).max(1),
            flush_interval_ms: limits.flush_interval.as_millis(),
            last_flush_ms: now_ms,
        }
    }

    /// Queues a record; `false` if the queue is full (the record is dropped).
    pub fn push(&mut self, record: T) -> bool {
        self.queue.push(record).is_ok()
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The next batch to send at `now_ms`: a full one whenever there is one, a partial one
    /// once the flush interval has passed since the last batch; `None` otherwise.
    pub fn take_due(&mut self, now_ms: u64) -> Option<Vec<T>> {
        let full = self.queue.len() >= self.max_batch;
        let waited = now_ms.saturating_sub(self.last_flush_ms) >= self.flush_interval_ms;
        if self.queue.is_empty() || !(full || waited) {
            return None;
        }
        let n = self.queue.len().min(self.max_batch);
        let batch: Vec<T> = (0..n).filter_map(|_| self.queue.pop()).collect();
        self.last_flush_ms = now_ms;
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_batch: u32, max_queue: u32) -> BatchLimits {
        BatchLimits {
            max_batch,
            max_queue,
            flush_interval: DurationSpec::from_millis(100),
            timeout: DurationSpec::from_millis(1000),
        }
    }

    fn batcher(max_batch: u32, max_queue: u32) -> Batcher<u32> {
        Batcher::with_limits(limits(max_batch, max_queue), 1_000)
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut b = batcher(2, 3);
        assert!((0..3).all(|i| b.push(i)));
        assert!(!b.push(9), "a full queue refuses");
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn full_batches_leave_at_once_partial_ones_after_the_interval() {
        let mut b = batcher(2, 10);
        b.push(1);
        assert!(b.take_due(1_001).is_none(), "one record waits for a second");
        b.push(2);
        b.push(3);
        assert_eq!(
            b.take_due(1_002),
            Some(vec![1, 2]),
            "a full batch, in order"
        );
        assert!(b.take_due(1_050).is_none(), "the rest waits");
        assert_eq!(b.take_due(1_102), Some(vec![3]), "interval passed");
        assert!(b.take_due(5_000).is_none(), "nothing left");
        assert!(b.is_empty());
    }

    #[test]
    fn limit_errors_name_the_field() {
        let field = |l: BatchLimits| l.validate().unwrap_err().field;
        assert!(limits(1, 1).validate().is_ok());
        assert_eq!(field(limits(0, 1)), "maxBatch");
        assert_eq!(field(limits(513, 600)), "maxBatch");
        assert_eq!(field(limits(100, 99)), "maxQueue");
        assert_eq!(field(limits(1, 9000)), "maxQueue");
        let mut l = limits(1, 1);
        l.flush_interval = DurationSpec::from_millis(5);
        assert_eq!(field(l), "flushInterval");
        l.flush_interval = DurationSpec::from_millis(50);
        l.timeout = DurationSpec::from_millis(120_000);
        assert_eq!(field(l), "timeout");
    }
}
