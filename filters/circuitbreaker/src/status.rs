//! Open breakers reported to the control plane for `meshwarden status` (the rules are in
//! `meshwarden_common::circuitbreaker::report`): from the root context's tick, each
//! policy's breakers that are not closed, sent when they change by the one worker of the
//! proxy that claims the change. Never on the request path.

use crate::metrics;
use meshwarden_common::circuitbreaker::report::{self, REPORT_METHOD, SERVICE};
use meshwarden_common::circuitbreaker::BreakerSet;
use meshwarden_common::mirror::rate::LogLimiter;
use meshwarden_filter_runtime::host::{host, node_id, now_ms};
use meshwarden_filter_runtime::shared::HostShared;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

/// How often the breakers are looked at.
pub const TICK: Duration = Duration::from_millis(500);
/// Report call timeout.
const TIMEOUT: Duration = Duration::from_secs(2);
/// A call unanswered this long is given up as failed.
const LOST_AFTER_MS: u64 = 7_000;

/// A report sent and not answered yet.
struct Sent {
    policy: String,
    breakers: BreakerSet,
    cluster: String,
    sent_ms: u64,
}

/// The reports of one worker.
pub struct StatusReports {
    in_flight: RefCell<HashMap<u32, Sent>>,
    warnings: RefCell<LogLimiter>,
}

impl Default for StatusReports {
    fn default() -> Self {
        Self {
            in_flight: RefCell::default(),
            warnings: RefCell::new(LogLimiter::per_minute(1)),
        }
    }
}

/// A policy as the reports see it.
pub struct Reported<'a> {
    pub name: &'a str,
    pub breakers: &'a BreakerSet,
    /// Where to report; `None`: reporting is off.
    pub cluster: Option<&'a str>,
}

impl StatusReports {
    /// Gives up overdue calls, then reports every policy whose set changed (if this worker
    /// claims it).
    pub fn tick<'a>(&self, policies: impl IntoIterator<Item = Reported<'a>>) {
        let now = now_ms();
        let lost: Vec<Sent> = {
            let mut in_flight = self.in_flight.borrow_mut();
            let overdue: Vec<u32> = in_flight
                .iter()
                .filter(|(_, s)| now.saturating_sub(s.sent_ms) > LOST_AFTER_MS)
                .map(|(t, _)| *t)
                .collect();
            overdue
                .into_iter()
                .filter_map(|t| in_flight.remove(&t))
                .collect()
        };
        for sent in lost {
            self.failed(&sent, now, "was not answered");
        }
        for p in policies {
            let Some(cluster) = p.cluster else { continue };
            let Ok(Some(snapshot)) = report::claim(&HostShared, p.breakers, now) else {
                continue;
            };
            let message = report::encode_report(&node_id(), p.name, &snapshot);
            let sent = Sent {
                policy: p.name.to_string(),
                breakers: p.breakers.clone(),
                cluster: cluster.to_string(),
                sent_ms: now,
            };
            match host().grpc_call(cluster, SERVICE, REPORT_METHOD, &message, TIMEOUT) {
                Ok(token) => {
                    metrics::count("status_reports", p.name);
                    self.in_flight.borrow_mut().insert(token, sent);
                }
                Err(e) => self.failed(
                    &sent,
                    now,
                    &format!("not sent ({e}); does the cluster exist?"),
                ),
            }
        }
    }

    /// Whether any report waits for its answer.
    pub fn busy(&self) -> bool {
        !self.in_flight.borrow().is_empty()
    }

    /// Takes the answer (gRPC `status`) to call `token`; `false` if it is not a report.
    pub fn answered(&self, token: u32, status: u32) -> bool {
        let Some(sent) = self.in_flight.borrow_mut().remove(&token) else {
            return false;
        };
        if status != 0 {
            self.failed(&sent, now_ms(), &format!("answered gRPC status {status}"));
        }
        true
    }

    fn failed(&self, sent: &Sent, now: u64, what: &str) {
        metrics::count("status_reports_failed", &sent.policy);
        // Contended: another worker wrote; the next tick looks again anyway.
        let _ = report::failed(&HostShared, &sent.breakers, now);
        if self.warnings.borrow_mut().allow(now) {
            log::warn!(
                "circuitbreaker filter: policy {}: breaker status report to cluster {} {what}",
                sent.policy,
                sent.cluster
            );
        }
    }
}
