//! Reports of one capture policy on one worker: a bounded queue the streams push their
//! finished summaries into ([`Reporter::push`]: never a host call), and batches sent as
//! unary gRPC calls to the control plane's `CaptureService.Report` from the root context's
//! tick ([`Reporter::flush`]), whose answers are counted ([`Reporter::answered`]). A slow
//! or absent control plane fills the queue; further summaries are dropped and counted.
//!
//! Metrics per policy: `meshwarden_capture_{captured,dropped,failed}_total`.

use meshwarden_common::capture::ReportSpec;
use meshwarden_common::capture::{encode_report, grpc_service, CaptureRecord, RecordBatcher};
use meshwarden_common::capture::{REPORT_METHOD, SERVICE};
use meshwarden_common::mirror::rate::LogLimiter;
use meshwarden_filter_runtime::host::{host, now_ms};
use meshwarden_filter_runtime::{MetricKind, PolicyMetrics};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;

/// Per-policy counters of the capture stage.
pub(crate) const METRICS: PolicyMetrics = PolicyMetrics::new("capture");

/// Summaries the control plane accepted.
const CAPTURED: &str = "captured";
/// Summaries dropped: over `maxPerSecond`, or the queue was full.
pub(crate) const DROPPED: &str = "dropped";
/// Summaries whose report failed (refused, timed out, or an error status).
const FAILED: &str = "failed";

/// The counters, for [`PolicyMetrics::define_all`].
pub(crate) const COUNTERS: [(&str, MetricKind); 3] = [
    (CAPTURED, MetricKind::Counter),
    (DROPPED, MetricKind::Counter),
    (FAILED, MetricKind::Counter),
];

/// Most reports of one policy in flight at once per worker; more wait in the queue.
const MAX_IN_FLIGHT: usize = 4;
/// A call unanswered this long after its timeout is given up as failed.
const LOST_AFTER_MS: u64 = 5_000;
/// Envoy attributes naming the proxy's node id: `xds.node` (Envoy's attribute), then the
/// Wasm-only `node`.
const NODE_ID: [&[&str]; 2] = [&["xds", "node", "id"], &["node", "id"]];

/// A report sent and not answered yet.
#[derive(Debug, Clone, Copy)]
struct Sent {
    records: u64,
    sent_ms: u64,
}

/// The reports of one policy on one worker.
#[derive(Debug)]
pub struct Reporter {
    policy: String,
    spec: ReportSpec,
    /// The cluster as the gRPC call names it ([`grpc_service`]).
    service: String,
    batcher: RefCell<RecordBatcher>,
    in_flight: RefCell<HashMap<u32, Sent>>,
    /// Dropped since the last report (the control plane counts them too).
    dropped: Cell<u64>,
    warnings: RefCell<LogLimiter>,
    /// No longer looked after by the stage: summaries pushed now would never leave.
    detached: Cell<bool>,
}

impl Reporter {
    /// A reporter of `policy`'s summaries as `spec` says.
    pub fn new(policy: &str, spec: &ReportSpec) -> Self {
        Self {
            policy: policy.to_string(),
            spec: spec.clone(),
            service: grpc_service(&spec.cluster),
            batcher: RefCell::new(RecordBatcher::with_limits(spec.limits(), now_ms())),
            in_flight: RefCell::default(),
            dropped: Cell::new(0),
            warnings: RefCell::new(LogLimiter::per_minute(1)),
            detached: Cell::new(false),
        }
    }

    /// Whether this reporter serves `policy` with `spec` (a new configuration keeps it).
    pub fn serves(&self, policy: &str, spec: &ReportSpec) -> bool {
        self.policy == policy && self.spec == *spec
    }

    /// How often the root context should look at this reporter.
    pub fn tick(&self) -> Duration {
        self.spec.flush_interval.as_duration()
    }

    /// Counts a summary dropped before it was made (over the rate cap).
    pub fn drop_one(&self) {
        self.dropped.set(self.dropped.get() + 1);
        METRICS.increment(DROPPED, &self.policy);
    }

    /// Queues a finished summary (from a stream); a full queue drops and counts it.
    pub fn push(&self, record: CaptureRecord) {
        let queued = !self.detached.get()
            && self
                .batcher
                .try_borrow_mut()
                .is_ok_and(|mut b| b.push(record));
        if !queued {
            self.drop_one();
        }
    }

    /// Whether nothing waits and no report is out.
    pub fn is_idle(&self) -> bool {
        self.batcher.borrow().is_empty() && self.in_flight.borrow().is_empty()
    }

    /// The stage stops looking after this reporter.
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

    fn send(&self, batch: &[CaptureRecord], now: u64) {
        let node = NODE_ID
            .iter()
            .find_map(|path| host().property(path).filter(|v| !v.is_empty()))
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default();
        let message = encode_report(&node, batch, self.dropped.replace(0));
        let records = batch.len() as u64;
        match host().grpc_call(
            &self.service,
            SERVICE,
            REPORT_METHOD,
            &message,
            self.spec.timeout.as_duration(),
        ) {
            Ok(token) => {
                let sent = Sent {
                    records,
                    sent_ms: now,
                };
                self.in_flight.borrow_mut().insert(token, sent);
            }
            Err(e) => {
                METRICS.add(FAILED, &self.policy, records);
                self.warn(now, &format!("not sent ({e}); does the cluster exist?"));
            }
        }
    }

    /// Counts the answer (gRPC `status`) to call `token`; `false` if it is not ours.
    pub fn answered(&self, token: u32, status: u32) -> bool {
        let Some(sent) = self.in_flight.borrow_mut().remove(&token) else {
            return false;
        };
        if status == 0 {
            METRICS.add(CAPTURED, &self.policy, sent.records);
        } else {
            METRICS.add(FAILED, &self.policy, sent.records);
            self.warn(now_ms(), &format!("answered gRPC status {status}"));
        }
        true
    }

    /// Calls whose answer is overdue (every call has a timeout, so it never comes).
    fn expire(&self, now: u64) {
        let limit = self.spec.timeout.as_millis() + LOST_AFTER_MS;
        let lost: u64 = {
            let mut in_flight = self.in_flight.borrow_mut();
            let before: u64 = in_flight.values().map(|s| s.records).sum();
            in_flight.retain(|_, s| now.saturating_sub(s.sent_ms) <= limit);
            before - in_flight.values().map(|s| s.records).sum::<u64>()
        };
        METRICS.add(FAILED, &self.policy, lost);
    }

    fn warn(&self, now: u64, what: &str) {
        if self.warnings.borrow_mut().allow(now) {
            log::warn!(
                "capture filter: policy {}: reports to cluster {} {what}",
                self.policy,
                self.spec.cluster
            );
        }
    }
}
