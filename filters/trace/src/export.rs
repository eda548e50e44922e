//! Span export: each exporting policy's spans go through an [`Outbox`] whose [`Collector`]
//! sends a batch as an HTTP call-out to the collector (OTLP or Zipkin) and accepts a 2xx
//! answer.
//!
//! Metrics per policy: `meshwarden_trace_spans_{exported,dropped,failed}_total`.

use meshwarden_common::mirror::answer::upstream_status;
use meshwarden_common::trace::{otlp, zipkin, ExportFormat, ExportSpec, ProxySpan};
use meshwarden_filter_runtime::host::{host, Map};
use meshwarden_filter_runtime::outbox::{Counters, Outbox, Transport};
use meshwarden_filter_runtime::PolicyMetrics;

/// Per-policy counters of the trace stage.
pub(crate) const METRICS: PolicyMetrics = PolicyMetrics::new("trace");

/// The export of one policy on one worker.
pub type Exporter = Outbox<Collector>;

/// Where and how a policy's spans are sent: its `export`.
#[derive(Debug, PartialEq)]
pub struct Collector(pub ExportSpec);

impl Transport for Collector {
    type Item = ProxySpan;
    /// The number of headers of the answer (0: none came).
    type Answer = usize;
    const COUNTERS: Counters = Counters {
        metrics: METRICS,
        sent: "spans_exported",
        dropped: "spans_dropped",
        failed: "spans_failed",
        records: "spans",
    };

    fn cluster(&self) -> &str {
        &self.0.cluster
    }

    fn send(&self, policy: &str, batch: &[ProxySpan], _dropped: u64) -> Result<u32, String> {
        let spec = &self.0;
        let body = match spec.format {
            ExportFormat::Otlp => otlp::encode_request(policy, batch),
            ExportFormat::Zipkin => zipkin::encode_spans(policy, batch),
        };
        let headers = [
            (":method", "POST"),
            (":path", spec.path()),
            (":authority", spec.authority()),
            ("content-type", spec.format.content_type()),
        ];
        host().http_call(
            &spec.cluster,
            &headers,
            Some(&body),
            spec.limits.timeout.as_duration(),
        )
    }

    fn judge(&self, num_headers: usize) -> Result<(), String> {
        let headers = if num_headers == 0 {
            Vec::new()
        } else {
            host().headers(Map::CallResponseHeaders)
        };
        match upstream_status(&headers) {
            Some(status) if (200..300).contains(&status) => Ok(()),
            Some(status) => Err(format!("answered {status}")),
            None => Err("no answer (timeout, reset or unreachable)".to_string()),
        }
    }
}
