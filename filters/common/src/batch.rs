//! The bounded queue of records that a filter sends off the request path (trace spans,
//! capture summaries): records wait here until a batch is full or the flush interval
//! passed, and are dropped (and counted by the caller) when the queue is full, so a slow or
//! dead receiver never costs the request path more than a push. The root context's tick
//! takes the due batches.

use crate::duration::DurationSpec;
use crate::error::ValidationError;
use crate::mirror::queue::BoundedQueue;
use serde::{Deserialize, Serialize};

/// Most records in one call-out.
pub const MAX_BATCH: u32 = 512;
/// Most records waiting per policy and worker.
pub const MAX_QUEUE: u32 = 8192;
/// Bounds of `flushInterval` and `timeout`.
const MIN_INTERVAL: DurationSpec = DurationSpec::from_millis(10);
const MAX_INTERVAL: DurationSpec = DurationSpec::from_millis(60_000);

/// How a [`Batcher`] groups records: the batching fields of a policy (`maxBatch`,
/// `flushInterval`, `maxQueue`, `timeout`), flattened into `TracePolicy.spec.export` and
/// `CapturePolicy.spec.report`. `FLUSH_MS` is the default `flushInterval`, the one default
/// they differ in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchLimits<const FLUSH_MS: u64> {
    /// Most records per batch (1 to 512, default 64): a full batch is sent at the next tick
    /// of the root context.
    #[serde(default = "default_max_batch")]
    pub max_batch: u32,
    /// Longest wait of a partial batch (10ms to 60s, default `FLUSH_MS`).
    #[serde(default = "default_flush_interval::<FLUSH_MS>")]
    pub flush_interval: DurationSpec,
    /// Most records waiting per worker (`maxBatch` to 8192, default 1024); more are dropped
    /// and counted.
    #[serde(default = "default_max_queue")]
    pub max_queue: u32,
    /// Call-out timeout (10ms to 60s, default 2s).
    #[serde(default = "default_timeout")]
    pub timeout: DurationSpec,
}

fn default_max_batch() -> u32 {
    64
}

fn default_flush_interval<const FLUSH_MS: u64>() -> DurationSpec {
    DurationSpec::from_millis(FLUSH_MS)
}

fn default_max_queue() -> u32 {
    1024
}

fn default_timeout() -> DurationSpec {
    DurationSpec::from_millis(2000)
}

impl<const FLUSH_MS: u64> Default for BatchLimits<FLUSH_MS> {
    fn default() -> Self {
        Self {
            max_batch: default_max_batch(),
            flush_interval: default_flush_interval::<FLUSH_MS>(),
            max_queue: default_max_queue(),
            timeout: default_timeout(),
        }
    }
}

impl<const FLUSH_MS: u64> BatchLimits<FLUSH_MS> {
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
    pub fn with_limits<const F: u64>(limits: BatchLimits<F>, now_ms: u64) -> Self {
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

    fn limits(max_batch: u32, max_queue: u32) -> BatchLimits<100> {
        BatchLimits {
            max_batch,
            max_queue,
            ..BatchLimits::default()
        }
    }

    fn parse(v: serde_json::Value) -> Result<BatchLimits<200>, String> {
        let l: BatchLimits<200> = serde_json::from_value(v).map_err(|e| e.to_string())?;
        l.validate().map_err(|e| e.to_string())?;
        Ok(l)
    }

    #[test]
    fn defaults_and_the_flush_interval_of_the_kind() {
        let l = parse(serde_json::json!({})).unwrap();
        assert_eq!((l.max_batch, l.max_queue), (64, 1024));
        assert_eq!(l.flush_interval.as_millis(), 200);
        assert_eq!(l.timeout.as_millis(), 2000);
        let l = parse(serde_json::json!({"maxBatch": 10, "maxQueue": 10, "flushInterval": "250ms", "timeout": "1s"}))
            .unwrap();
        assert_eq!((l.max_batch, l.max_queue), (10, 10));
        assert_eq!(l.flush_interval.as_millis(), 250);
        assert_eq!(parse(serde_json::to_value(l).unwrap()).unwrap(), l);
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
        let field = |l: BatchLimits<100>| l.validate().unwrap_err().field;
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
        let err = |v| parse(v).unwrap_err();
        assert!(err(serde_json::json!({"maxQueue": 9000})).starts_with("maxQueue:"));
        assert!(err(serde_json::json!({"flushInterval": "5ms"})).starts_with("flushInterval:"));
        assert!(err(serde_json::json!({"flushInterval": "soon"})).contains("duration"));
    }
}
