//! One HTTP stream: picks the policy, decides the faults and carries them out. Delays park
//! the stream in the worker's queue; the root context's timer resumes it.

use crate::config::ActiveConfig;
use crate::host;
use crate::metrics;
use crate::shared;
use crate::worker::{Waiting, Wake, Worker};
use meshwarden_common::fault::{AbortPlan, AbortResponse, FaultPlan};
use meshwarden_common::RequestHeaders;
use meshwarden_filter_runtime::{headers, proxy_wasm};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use std::cell::RefCell;
use std::rc::Rc;

/// The policy a stream matched and what the filter did about it.
struct Matched {
    config: Rc<ActiveConfig>,
    policy: usize,
    /// Faults being injected (empty when none were selected, or when dry run, the guard
    /// or the active-fault cap held them back).
    plan: FaultPlan,
    holds_slot: bool,
    counted_active: bool,
}

/// The filter's per-stream context.
pub struct FaultStream {
    id: u32,
    worker: Rc<RefCell<Worker>>,
    matched: Option<Matched>,
}

impl FaultStream {
    /// A stream of worker `worker`.
    pub fn new(id: u32, worker: Rc<RefCell<Worker>>) -> Self {
        Self {
            id,
            worker,
            matched: None,
        }
    }

    /// Ends the stream's active fault: gives back its slot and lowers the gauge. Idempotent.
    fn release(&mut self) {
        if let Ok(mut w) = self.worker.try_borrow_mut() {
            w.waiting.remove(self.id);
        }
        let Some(m) = self.matched.as_mut() else {
            return;
        };
        let p = &m.config.policies[m.policy];
        if std::mem::take(&mut m.holds_slot) {
            shared::release(&p.keys.active);
        }
        if std::mem::take(&mut m.counted_active) {
            p.metrics.active(-1);
        }
    }

    fn decide(&mut self, headers: &RequestHeaders, now_ms: u64) -> Action {
        let (config, plan, index) = {
            let mut w = self.worker.borrow_mut();
            let config = w.config.clone();
            let Some(index) = config.select(headers, now_ms as i64) else {
                return Action::Continue;
            };
            let plan = config.policies[index].spec.plan(headers, &mut w.rng);
            (config, plan, index)
        };
        let p = &config.policies[index];
        let mut m = Matched {
            config: config.clone(),
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
            return Action::Continue;
        }
        p.metrics.active(1);
        m.counted_active = true;
        m.plan = plan;
        self.matched = Some(m);

        if let Some(ms) = plan.delay_ms {
            p.metrics.inc(metrics::DELAYS_INJECTED);
            let wake = plan.abort.map_or(Wake::ResumeRequest, Wake::Abort);
            self.park(ms, wake, config, index);
            return Action::Pause;
        }
        if let Some(abort) = plan.abort {
            if send_abort(&config, index, &abort) {
                return Action::Pause;
            }
        }
        Action::Continue
    }

    /// Parks the stream for `delay_ms` from now.
    fn park(&self, delay_ms: u64, wake: Wake, config: Rc<ActiveConfig>, policy: usize) {
        let now_us = crate::now_us();
        let deadline_us = now_us.saturating_add(delay_ms.saturating_mul(1000));
        self.worker.borrow_mut().park(
            self.id,
            now_us,
            deadline_us,
            Waiting {
                wake,
                config,
                policy,
            },
        );
    }
}

/// Sends the local answer of an abort on the effective stream and counts it; `false` if
/// the proxy refused (the caller then lets the stream continue).
pub fn send_abort(config: &ActiveConfig, policy: usize, abort: &AbortPlan) -> bool {
    let p = &config.policies[policy];
    let sent = match p.spec.abort_response(abort) {
        AbortResponse::Http {
            status,
            body,
            headers,
        } => host::send_local_response(u32::from(status), &headers, body, None),
        AbortResponse::Grpc {
            code,
            message,
            headers,
        } => host::send_local_response(200, &headers, message, Some(code)),
    };
    if sent {
        p.metrics.inc(metrics::ABORTS_INJECTED);
    }
    sent
}

/// Replaces the effective stream's response with the policy's override (status, headers,
/// body); `false` if the proxy refused (the caller then lets the response continue).
pub fn send_override(config: &ActiveConfig, policy: usize) -> bool {
    let p = &config.policies[policy];
    let Some(o) = &p.spec.response_override else {
        return false;
    };
    let headers: Vec<(&str, &str)> = o
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let body = o.body.as_deref().unwrap_or("");
    host::send_local_response(u32::from(o.http_status.code()), &headers, body, None)
}

impl Context for FaultStream {}

impl HttpContext for FaultStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.worker.borrow().config.policies.is_empty() {
            return Action::Continue;
        }
        let headers = headers::request_headers();
        self.decide(&headers, crate::now_ms())
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(m) = &self.matched else {
            return Action::Continue;
        };
        if m.plan.abort.is_some() {
            // Our own local answer: not the upstream's, and nothing more to inject.
            return Action::Continue;
        }
        let (config, policy, plan) = (m.config.clone(), m.policy, m.plan);
        let p = &config.policies[policy];
        let now = crate::now_ms();
        if let Some(guard) = &p.spec.guard {
            let status = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status")
                .ok()
                .flatten()
                .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok());
            if let Some(status) = status {
                shared::guard_record(&p.keys.guard, guard, now, status);
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
            self.park(ms, wake, config.clone(), policy);
            return Action::Pause;
        }
        if replace_whole && send_override(&config, policy) {
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.release();
    }
}

impl Drop for FaultStream {
    fn drop(&mut self) {
        self.release();
    }
}
