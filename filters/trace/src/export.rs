//! Span export of one worker: per exporting policy, a bounded queue the streams push their
//! finished spans into ([`Exporter::push`]: never a host call), and batches sent as HTTP
//! call-outs from the root context's tick ([`Exporter::flush`]), whose answers are counted
//! ([`Exporter::answered`]). A slow or dead collector fills the queue, and further spans
//! are dropped and counted: the requests never wait for it.
//!
//! Metrics per policy: `meshwarden_trace_spans_{exported,dropped,failed}_total`.

use meshwarden_common::mirror::answer::upstream_status;
use meshwarden_common::mirror::rate::LogLimiter;
use meshwarden_common::trace::batch::SpanBatcher;
use meshwarden_common::trace::{otlp, zipkin, ExportFormat, ExportSpec, ProxySpan};
use meshwarden_filter_runtime::host::{host, now_ms, Map};
use meshwarden_filter_runtime::{MetricKind, PolicyMetrics};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;

/// Per-policy counters of the trace stage.
pub(crate) const METRICS: PolicyMetrics = PolicyMetrics::new("trace");

/// Spans a collector accepted.
const EXPORTED: &str = "spans_exported";
/// Spans dropped because the queue was full.
const DROPPED: &str = "spans_dropped";
/// Spans whose call-out failed (refused, timed out, reset or answered other than 2xx).
const FAILED: &str = "spans_failed";

/// The export counters, for [`PolicyMetrics::define_all`].
pub(crate) const COUNTERS: [(&str, MetricKind); 3] = [
    (EXPORTED, MetricKind::Counter),
    (DROPPED, MetricKind::Counter),
    (FAILED, MetricKind::Counter),
];

/// Most batches of one policy in flight at once per worker; more wait in the queue.
pub(crate) const MAX_IN_FLIGHT: usize = 4;
/// A call-out unanswered this long after its timeout is given up as failed.
const LOST_AFTER_MS: u64 = 5_000;

/// A batch sent and not answered yet.
#[derive(Debug, Clone, Copy)]
struct Sent {
    spans: u64,
    sent_ms: u64,
}

/// The export of one policy on one worker.
#[derive(Debug)]
pub struct Exporter {
    policy: String,
    spec: ExportSpec,
    batcher: RefCell<SpanBatcher>,
    in_flight: RefCell<HashMap<u32, Sent>>,
    /// Limits warnings about call-outs the proxy refused or collectors rejected.
    warnings: RefCell<LogLimiter>,
    /// No longer looked after by the stage (a configuration replaced it and it drained):
    /// spans pushed now would never leave, so they are dropped.
    detached: Cell<bool>,
}

impl Exporter {
    /// An exporter of `policy`'s spans as `spec` says.
    pub fn new(policy: &str, spec: &ExportSpec) -> Self {
        Self {
            policy: policy.to_string(),
            spec: spec.clone(),
            batcher: RefCell::new(SpanBatcher::new(spec, now_ms())),
            in_flight: RefCell::default(),
            warnings: RefCell::new(LogLimiter::per_minute(1)),
            detached: Cell::new(false),
        }
    }

    /// Whether this exporter serves `policy` with `spec` (so a new configuration keeps it,
    /// queue and calls in flight included).
    pub fn serves(&self, policy: &str, spec: &ExportSpec) -> bool {
        self.policy == policy && self.spec == *spec
    }

    /// How often the root context should look at this exporter.
    pub fn tick(&self) -> Duration {
        self.spec.flush_interval.as_duration()
    }

    /// Queues a finished span (from a stream); a full queue drops and counts it.
    pub fn push(&self, span: ProxySpan) {
        let queued = !self.detached.get()
            && self
                .batcher
                .try_borrow_mut()
                .is_ok_and(|mut b| b.push(span));
        if !queued {
            METRICS.increment(DROPPED, &self.policy);
        }
    }

    /// Whether no span waits and no batch is out.
    pub fn is_idle(&self) -> bool {
        self.batcher.borrow().is_empty() && self.in_flight.borrow().is_empty()
    }

    /// The stage stops looking after this exporter.
    pub fn detach(&self) {
        self.detached.set(true);
    }

    /// From the root context's tick: gives up overdue calls, then sends every due batch
    /// while fewer than [`MAX_IN_FLIGHT`] are out.
    pub fn flush(&self) {
        let now = now_ms();
        self.expire(now);
        while self.in_flight.borrow().len() < MAX_IN_FLIGHT {
            let Some(batch) = self.batcher.borrow_mut().take_due(now) else {
                break;
            };
            self.send(&batch, now);
        }
    }

    fn send(&self, batch: &[ProxySpan], now: u64) {
        let body = match self.spec.format {
            ExportFormat::Otlp => otlp::encode_request(&self.policy, batch),
            ExportFormat::Zipkin => zipkin::encode_spans(&self.policy, batch),
        };
        let headers = [
            (":method", "POST"),
            (":path", self.spec.path()),
            (":authority", self.spec.authority()),
            ("content-type", self.spec.format.content_type()),
        ];
        let spans = batch.len() as u64;
        match host().http_call(
            &self.spec.cluster,
            &headers,
            Some(&body),
            self.spec.timeout.as_duration(),
        ) {
            Ok(token) => {
                self.in_flight.borrow_mut().insert(
                    token,
                    Sent {
                        spans,
                        sent_ms: now,
                    },
                );
            }
            Err(status) => {
                METRICS.add(FAILED, &self.policy, spans);
                self.warn(
                    now,
                    &format!("not sent ({status}); does the cluster exist?"),
                );
            }
        }
    }

    /// Counts the answer to call `token`; `false` if it is not this exporter's.
    pub fn answered(&self, token: u32, num_headers: usize) -> bool {
        let Some(sent) = self.in_flight.borrow_mut().remove(&token) else {
            return false;
        };
        let headers = if num_headers == 0 {
            Vec::new()
        } else {
            host().headers(Map::CallResponseHeaders)
        };
        match upstream_status(&headers) {
            Some(status) if (200..300).contains(&status) => {
                METRICS.add(EXPORTED, &self.policy, sent.spans);
            }
            status => {
                METRICS.add(FAILED, &self.policy, sent.spans);
                let what = status.map_or_else(
                    || "no answer (timeout, reset or unreachable)".to_string(),
                    |s| format!("answered {s}"),
                );
                self.warn(now_ms(), &what);
            }
        }
        true
    }

    /// Calls whose answer is overdue (every call has a timeout, so it never comes).
    fn expire(&self, now: u64) {
        let limit = self.spec.timeout.as_millis() + LOST_AFTER_MS;
        let lost: u64 = {
            let mut in_flight = self.in_flight.borrow_mut();
            let before: u64 = in_flight.values().map(|s| s.spans).sum();
            in_flight.retain(|_, s| now.saturating_sub(s.sent_ms) <= limit);
            before - in_flight.values().map(|s| s.spans).sum::<u64>()
        };
        METRICS.add(FAILED, &self.policy, lost);
    }

    fn warn(&self, now: u64, what: &str) {
        if self.warnings.borrow_mut().allow(now) {
            log::warn!(
                "trace filter: policy {}: spans to cluster {} {what}",
                self.policy,
                self.spec.cluster
            );
        }
    }
}
