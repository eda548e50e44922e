//! One HTTP stream: picks the policy, decides the faults and carries them out. Delays park
//! the stream on the pipeline's timer; [`FaultStream::wake`] finishes what the delay began.

use crate::config::ActiveConfig;
use crate::metrics;
use crate::shared;
use meshwarden_common::fault::{AbortPlan, AbortResponse, FaultPlan, SplitMix64};
use meshwarden_common::trace::log_id;
use meshwarden_filter_runtime::connection::downstream_peer;
use meshwarden_filter_runtime::host::{now_ms, now_us};
use meshwarden_filter_runtime::{headers, host, Flow, LocalResponse, Phase, Stream, StreamStage};
use std::cell::RefCell;
use std::rc::Rc;

/// Response code details Envoy records for an injected abort (`%RESPONSE_CODE_DETAILS%`).
const DETAILS: &str = "meshwarden_fault_abort";

/// What to do when a stream's delay ends.
#[derive(Debug, Clone, Copy)]
enum Wake {
    /// Forward the request.
    ResumeRequest,
    /// Answer the request locally (a delay followed by an abort).
    Abort(AbortPlan),
    /// Send the upstream's response on.
    ResumeResponse,
    /// Replace the upstream's response (a response delay followed by an override with body).
    OverrideResponse,
}

/// The policy a stream matched and what the stage did about it.
struct Matched {
    policy: usize,
    /// Faults being injected (empty when none were selected, or when dry run, the guard
    /// or the active-fault cap held them back).
    plan: FaultPlan,
    holds_slot: bool,
    counted_active: bool,
}

/// The stage's per-stream part.
pub struct FaultStream {
    config: Rc<ActiveConfig>,
    rng: Rc<RefCell<SplitMix64>>,
    matched: Option<Matched>,
    wake: Option<Wake>,
    /// The request's trace id, for debug log lines (read only when debug logging is on).
    trace_id: Option<String>,
}

impl FaultStream {
    /// A stream under `config`.
    pub fn new(config: Rc<ActiveConfig>, rng: Rc<RefCell<SplitMix64>>) -> Self {
        Self {
            config,
            rng,
            matched: None,
            wake: None,
            trace_id: None,
        }
    }

    /// Ends the stream's active fault: gives back its slot and lowers the gauge. Idempotent.
    fn release(&mut self) {
        let Some(m) = self.matched.as_mut() else {
            return;
        };
        let p = &self.config.policies[m.policy];
        if std::mem::take(&mut m.holds_slot) {
            shared::release(&p.keys.active);
        }
        if std::mem::take(&mut m.counted_active) {
            p.metrics.active(-1);
        }
    }

    /// Parks the stream for `delay_ms` from now, to `wake` then.
    fn park(&mut self, s: &mut Stream<'_>, delay_ms: u64, wake: Wake) -> Flow {
        let deadline_us = now_us().saturating_add(delay_ms.saturating_mul(1000));
        s.park_until(deadline_us);
        self.wake = Some(wake);
        Flow::Pause
    }

    /// Sends the local answer of an abort and counts it; `false` if the proxy refused
    /// (the stream then continues).
    fn send_abort(&self, abort: &AbortPlan) -> bool {
        let Some(m) = &self.matched else {
            return false;
        };
        let p = &self.config.policies[m.policy];
        let sent = match p.spec.abort_response(abort) {
            AbortResponse::Http {
                status,
                body,
                headers,
            } => host().send_local_response(&LocalResponse {
                status,
                headers: &headers,
                body: body.as_bytes(),
                grpc_status: None,
                details: DETAILS,
            }),
            AbortResponse::Grpc {
                code,
                message,
                headers,
            } => host().send_local_response(&LocalResponse {
                status: 200,
                headers: &headers,
                body: message.as_bytes(),
                grpc_status: Some(code),
                details: DETAILS,
            }),
        };
        if sent {
            p.metrics.inc(metrics::ABORTS_INJECTED);
            log::debug!(
                "fault filter: policy {} aborted the request trace={}",
                p.name,
                self.trace_id.as_deref().unwrap_or("-")
            );
        }
        sent
    }

    /// Replaces the response with the policy's override (status, headers, body); `false`
    /// if the proxy refused (the response then continues).
    fn send_override(&self) -> bool {
        let Some(m) = &self.matched else {
            return false;
        };
        let Some(o) = &self.config.policies[m.policy].spec.response_override else {
            return false;
        };
        let headers: Vec<(&str, &str)> = o
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        host().send_local_response(&LocalResponse {
            status: o.http_status.code(),
            headers: &headers,
            body: o.body.as_deref().unwrap_or("").as_bytes(),
            grpc_status: None,
            details: DETAILS,
        })
    }
}

impl StreamStage for FaultStream {
    fn request_headers(&mut self, s: &mut Stream<'_>) -> Flow {
        let now_ms = now_ms();
        let config = self.config.clone();
        let peer = downstream_peer();
        let Some(index) = config.select(s.headers, &peer, now_ms as i64) else {
            return Flow::Continue;
        };
        let p = &config.policies[index];
        let plan = p.spec.plan(s.headers, &peer, &mut *self.rng.borrow_mut());
        if plan.header_request_refused {
            p.metrics.inc(metrics::HEADER_REQUESTS_REFUSED);
        }
        let mut m = Matched {
            policy: index,
            plan: FaultPlan::default(),
            holds_slot: false,
            counted_active: false,
        };
        let held_back = if plan.is_empty() {
            true
        } else if p
            .spec
            .guard
            .as_ref()
            .is_some_and(|g| shared::guard_trips(&p.keys.guard, g, now_ms))
        {
            p.metrics.inc(metrics::SUPPRESSED_BY_GUARD);
            true
        } else if p.spec.dry_run {
            p.metrics.inc(metrics::WOULD_INJECT);
            true
        } else if let Some(max) = p.spec.max_active_faults {
            m.holds_slot = shared::try_acquire(&p.keys.active, max);
            if !m.holds_slot {
                p.metrics.inc(metrics::FAULTS_OVERFLOW);
            }
            !m.holds_slot
        } else {
            false
        };
        if held_back {
            self.matched = Some(m);
            return Flow::Continue;
        }
        if log::log_enabled!(log::Level::Debug) {
            self.trace_id = Some(log_id(s.headers));
        }
        p.metrics.active(1);
        m.counted_active = true;
        m.plan = plan;
        self.matched = Some(m);

        if let Some(ms) = plan.delay_ms {
            p.metrics.inc(metrics::DELAYS_INJECTED);
            log::debug!(
                "fault filter: policy {} delayed the request {ms} ms trace={}",
                p.name,
                self.trace_id.as_deref().unwrap_or("-")
            );
            let wake = plan.abort.map_or(Wake::ResumeRequest, Wake::Abort);
            return self.park(s, ms, wake);
        }
        if let Some(abort) = plan.abort {
            if self.send_abort(&abort) {
                return Flow::Pause;
            }
        }
        Flow::Continue
    }

    fn response_headers(&mut self, s: &mut Stream<'_>) -> Flow {
        let Some(m) = &self.matched else {
            return Flow::Continue;
        };
        if m.plan.abort.is_some() {
            // Our own local answer: not the upstream's, and nothing more to inject.
            return Flow::Continue;
        }
        let plan = m.plan;
        let config = self.config.clone();
        let p = &config.policies[m.policy];
        if let Some(guard) = &p.spec.guard {
            if let Some(status) = headers::response_status() {
                shared::guard_record(&p.keys.guard, guard, now_ms(), status);
            }
        }
        let override_spec = p
            .spec
            .response_override
            .as_ref()
            .filter(|_| plan.response_override);
        let replace_whole = override_spec.is_some_and(|o| o.body.is_some());
        if let Some(o) = override_spec {
            p.metrics.inc(metrics::RESPONSES_OVERRIDDEN);
            if !replace_whole {
                headers::set_response_header(
                    ":status",
                    o.http_status.code().to_string().as_bytes(),
                );
                for (k, v) in &o.headers {
                    headers::set_response_header(k.as_str(), v.as_bytes());
                }
            }
        }
        if let Some(ms) = plan.response_delay_ms {
            p.metrics.inc(metrics::RESPONSE_DELAYS_INJECTED);
            let wake = if replace_whole {
                Wake::OverrideResponse
            } else {
                Wake::ResumeResponse
            };
            return self.park(s, ms, wake);
        }
        if replace_whole && self.send_override() {
            return Flow::Pause;
        }
        Flow::Continue
    }

    fn wake(&mut self, _: &mut Stream<'_>, _: Phase) -> Flow {
        match self.wake.take() {
            Some(Wake::Abort(abort)) if self.send_abort(&abort) => Flow::Pause,
            Some(Wake::OverrideResponse) if self.send_override() => Flow::Pause,
            _ => Flow::Continue,
        }
    }

    fn done(&mut self) {
        self.release();
    }
}
