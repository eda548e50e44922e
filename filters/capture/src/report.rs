//! Reports: each capture policy's summaries go through an [`Outbox`] whose [`ControlPlane`]
//! sends a batch as a unary gRPC call to the control plane's `CaptureService.Report` (with
//! the summaries dropped since the last one) and accepts gRPC status 0.
//!
//! Metrics per policy: `meshwarden_capture_{captured,dropped,failed}_total`.

use meshwarden_common::capture::{encode_report, CaptureRecord, ReportSpec};
use meshwarden_common::capture::{REPORT_METHOD, SERVICE};
use meshwarden_filter_runtime::host::{host, node_id};
use meshwarden_filter_runtime::outbox::{Counters, Outbox, Transport};
use meshwarden_filter_runtime::PolicyMetrics;

/// The reports of one policy on one worker.
pub type Reporter = Outbox<ControlPlane>;

/// Where and how a policy's summaries are reported: its `report`.
#[derive(Debug, PartialEq)]
pub struct ControlPlane(pub ReportSpec);

impl Transport for ControlPlane {
    type Item = CaptureRecord;
    /// The gRPC status of the answer.
    type Answer = u32;
    const COUNTERS: Counters = Counters {
        metrics: PolicyMetrics::new("capture"),
        sent: "captured",
        dropped: "dropped",
        failed: "failed",
        records: "reports",
    };

    fn cluster(&self) -> &str {
        self.0.cluster.as_str()
    }

    fn send(&self, _policy: &str, batch: &[CaptureRecord], dropped: u64) -> Result<u32, String> {
        let message = encode_report(&node_id(), batch, dropped);
        host().grpc_call(
            self.0.cluster.as_str(),
            SERVICE,
            REPORT_METHOD,
            &message,
            self.0.limits.timeout.as_duration(),
        )
    }

    fn judge(&self, status: u32) -> Result<(), String> {
        match status {
            0 => Ok(()),
            s => Err(format!("answered gRPC status {s}")),
        }
    }
}
