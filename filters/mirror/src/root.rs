//! The root context of a worker: loads policies, sends queued copies on its tick (call-outs
//! it owns outlive the requests they copy), and receives their answers.

use crate::metrics::{self, Metric};
use crate::stream::MirrorStream;
use crate::worker::{record_pair, InFlight, Policy, Shared};
use meshwarden_common::mirror::answer::upstream_status;
use meshwarden_common::mirror::diff::{CapturedResponse, PENDING_TTL_MS};
use meshwarden_common::mirror::queue::MAX_IN_FLIGHT;
use meshwarden_common::mirror::rate::LogLimiter;
use meshwarden_common::mirror::{MirrorSpec, SkipReason};
use meshwarden_filter_runtime::config::{load_config, log_rejection};
use meshwarden_filter_runtime::proxy_wasm::hostcalls;
use meshwarden_filter_runtime::proxy_wasm::traits::{Context, HttpContext, RootContext};
use meshwarden_filter_runtime::proxy_wasm::types::ContextType;
use meshwarden_filter_runtime::proxy_wasm::types::LogLevel;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// Filter name in logs and metrics.
const FILTER: &str = "mirror";

/// Tick while policies are loaded: how long a finished request's copies may wait.
const ACTIVE_TICK: Duration = Duration::from_millis(10);
/// Tick without policies (expiring leftovers only).
const IDLE_TICK: Duration = Duration::from_millis(500);
/// A call-out unanswered this long after its timeout is given up.
const LOST_AFTER_MS: u64 = 5_000;

pub struct MirrorRoot {
    shared: Shared,
}

impl MirrorRoot {
    pub fn new() -> Self {
        Self {
            shared: Shared::new(),
        }
    }

    /// Reads and validates the plugin configuration; `None` (logged) rejects it.
    fn load(&self) -> Option<Vec<Rc<Policy>>> {
        let config = load_config::<MirrorSpec>(FILTER)?;
        let compiled = config
            .policies
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let plan = p
                    .spec
                    .compile()
                    .map_err(|e| e.within(&format!("policies[{i}].spec")))?;
                let per_minute = plan
                    .diff
                    .as_ref()
                    .map_or(0, |d| u64::from(d.log_per_minute));
                Ok(Rc::new(Policy {
                    name: p.name.to_string(),
                    matcher: p.matcher,
                    plan,
                    log: RefCell::new(LogLimiter::per_minute(per_minute)),
                }))
            })
            .collect::<Result<Vec<_>, meshwarden_common::ValidationError>>();
        match compiled {
            Ok(policies) => Some(policies),
            Err(e) => {
                log_rejection(FILTER, &e);
                None
            }
        }
    }

    fn now_ms(&self) -> u64 {
        crate::now_ms(self.get_current_time())
    }

    /// Sends waiting copies while fewer than the in-flight cap are outstanding. Copies that
    /// waited longer than their timeout are dropped.
    fn dispatch(&mut self) {
        let now = self.now_ms();
        loop {
            let copy = {
                let mut w = self.shared.worker.borrow_mut();
                if w.in_flight.len() >= MAX_IN_FLIGHT {
                    None
                } else {
                    w.queue.pop()
                }
            };
            let Some(copy) = copy else {
                break;
            };
            let policy = copy.policy.clone();
            let target = &policy.plan.targets[copy.target];
            if now.saturating_sub(copy.queued_ms) > policy.plan.timeout.as_millis() {
                policy.skipped(SkipReason::QueueFull, 1);
                self.copy_failed(copy.request_id, copy.diff);
                continue;
            }
            let headers: Vec<(&str, &str)> = copy
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let body = copy
                .body
                .as_ref()
                .map(|b| b.data.as_slice())
                .filter(|b| !b.is_empty());
            match self.dispatch_http_call(
                &target.cluster,
                headers,
                body,
                vec![],
                policy.plan.timeout.as_duration(),
            ) {
                Ok(token) => {
                    policy.count(Metric::Mirrored, 1);
                    self.shared.worker.borrow_mut().in_flight.insert(
                        token,
                        InFlight {
                            policy: policy.clone(),
                            target: copy.target,
                            request_id: copy.request_id,
                            diff: copy.diff,
                            sent_ms: now,
                        },
                    );
                }
                Err(status) => {
                    policy.count(Metric::Errors, 1);
                    if self.shared.worker.borrow_mut().send_warnings.allow(now) {
                        log::warn!(
                            "{FILTER} filter: policy {}: copy to cluster {} not sent ({status:?}); does the cluster exist?",
                            policy.name,
                            target.cluster
                        );
                    }
                    self.copy_failed(copy.request_id, copy.diff);
                }
            }
        }
    }

    fn copy_failed(&self, request_id: u64, diff: bool) {
        if diff {
            let mut w = self.shared.worker.borrow_mut();
            w.diffs
                .mirror_failed(request_id, &mut self.shared.budget.borrow_mut());
        }
    }
}

impl Context for MirrorRoot {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(call) = self.shared.worker.borrow_mut().in_flight.remove(&token) else {
            return;
        };
        let policy = call.policy;
        let headers = if num_headers == 0 {
            Vec::new()
        } else {
            self.get_http_call_response_headers_bytes()
        };
        let Some(status) = upstream_status(&headers) else {
            policy.count(Metric::Errors, 1);
            self.copy_failed(call.request_id, call.diff);
            return;
        };
        if status >= 500 {
            policy.count(Metric::Errors, 1);
        }
        if !call.diff {
            return;
        }
        let Some(diff) = &policy.plan.diff else {
            return;
        };
        let mut resp = CapturedResponse {
            status,
            ..Default::default()
        };
        if !diff.headers.is_empty() {
            resp.headers = diff.pick_headers(&headers);
        }
        if diff.wants_body() {
            if body_size > policy.plan.max_body_bytes {
                resp.body_truncated = true;
            } else if body_size > 0 {
                resp.body = self
                    .get_http_call_response_body(0, body_size)
                    .unwrap_or_default();
            }
        }
        let now = self.now_ms();
        let pair = {
            let mut w = self.shared.worker.borrow_mut();
            let mut budget = self.shared.budget.borrow_mut();
            w.diffs
                .mirror(call.request_id, call.target, resp, &mut budget)
        };
        if let Some(pair) = pair {
            record_pair(pair, now);
        }
    }
}

impl RootContext for MirrorRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        // Follow the host's level for the `wasm` component (not readable before now).
        meshwarden_filter_runtime::proxy_wasm::set_log_level(
            hostcalls::get_log_level().unwrap_or(LogLevel::Info),
        );
        let Some(policies) = self.load() else {
            return false;
        };
        for p in &policies {
            metrics::define(&p.name);
        }
        let tick = if policies.is_empty() {
            IDLE_TICK
        } else {
            ACTIVE_TICK
        };
        log::info!(
            "{FILTER} filter: configured with {} policies",
            policies.len()
        );
        self.shared.worker.borrow_mut().policies = Rc::new(policies);
        self.set_tick_period(tick);
        true
    }

    fn on_tick(&mut self) {
        let now = self.now_ms();
        let lost: Vec<InFlight> = {
            let mut w = self.shared.worker.borrow_mut();
            let mut budget = self.shared.budget.borrow_mut();
            w.diffs.expire(now, PENDING_TTL_MS, &mut budget);
            // Every call-out has a timeout, so an answer that is this late never comes.
            let overdue: Vec<u32> = w
                .in_flight
                .iter()
                .filter(|(_, c)| {
                    now.saturating_sub(c.sent_ms)
                        > c.policy.plan.timeout.as_millis() + LOST_AFTER_MS
                })
                .map(|(token, _)| *token)
                .collect();
            overdue
                .iter()
                .filter_map(|t| w.in_flight.remove(t))
                .collect()
        };
        for call in lost {
            call.policy.count(Metric::Errors, 1);
            self.copy_failed(call.request_id, call.diff);
        }
        self.dispatch();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(MirrorStream::new(self.shared.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
