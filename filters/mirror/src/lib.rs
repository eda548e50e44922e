//! The meshwarden mirror stage: copies matching requests to one or more targets without
//! ever pausing or changing the primary request, and in diff mode compares each copy's
//! answer with the primary's.
//!
//! The decisions live in `meshwarden_common::mirror`; this crate carries them out through
//! the filter runtime:
//! - [`stream`]: per request, decide on the headers, copy the body while it streams on,
//!   queue the copies when the request is complete, keep the primary's answer for diffs;
//! - [`MirrorStage`]: per worker, load policies, send queued copies from the root context's
//!   tick (call-outs owned by a request would be cancelled when it ends; the root's are
//!   not), receive the answers and compare;
//! - [`worker`]: the bounded state those two share; [`rate_cap`]: the cross-worker
//!   `maxPerSecond` bucket in shared data; [`metrics`]: per-policy counters.

mod metrics;
mod rate_cap;
mod stream;
mod worker;

use meshwarden_common::mirror::answer::upstream_status;
use meshwarden_common::mirror::diff::{CapturedResponse, PENDING_TTL_MS};
use meshwarden_common::mirror::queue::MAX_IN_FLIGHT;
use meshwarden_common::mirror::rate::LogLimiter;
use meshwarden_common::mirror::{MirrorSpec, SkipReason};
use meshwarden_filter_runtime::host::now_ms;
use meshwarden_filter_runtime::{host, parse_config, Commit, Stage, StreamStage};
use meshwarden_filter_runtime::{Map, ValidationError};
use metrics::Metric;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use stream::MirrorStream;
use worker::{record_pair, InFlight, Policy, Shared};

/// Stage name in logs and metrics.
const FILTER: &str = "mirror";

/// Tick while policies are loaded: how long a finished request's copies may wait.
const ACTIVE_TICK: Duration = Duration::from_millis(10);
/// Tick without policies but with copies still out (expiring leftovers only).
const IDLE_TICK: Duration = Duration::from_millis(500);
/// A call-out unanswered this long after its timeout is given up.
const LOST_AFTER_MS: u64 = 5_000;

/// The mirror stage of one worker.
pub struct MirrorStage {
    shared: Shared,
}

impl Default for MirrorStage {
    fn default() -> Self {
        Self {
            shared: Shared::new(),
        }
    }
}

impl MirrorStage {
    /// Sends waiting copies while fewer than the in-flight cap are outstanding. Copies that
    /// waited longer than their timeout are dropped.
    fn dispatch(&self) {
        let now = now_ms();
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
            match host().http_call(
                &target.cluster,
                &headers,
                body,
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
                            "{FILTER} filter: policy {}: copy to cluster {} not sent ({status}); does the cluster exist?",
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

    /// Gives up call-outs whose answer is overdue and expires old pending diffs.
    fn expire(&self, now: u64) {
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
    }
}

impl Stage for MirrorStage {
    fn name(&self) -> &'static str {
        FILTER
    }

    fn prepare(&self, bytes: &[u8]) -> Result<Commit<'_>, ValidationError> {
        let config = parse_config::<MirrorSpec>(bytes)?;
        let index = Rc::new(config.index);
        let policies = config
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
            .collect::<Result<Vec<_>, ValidationError>>()?;
        Ok(Box::new(move || {
            for p in &policies {
                metrics::define(&p.name);
            }
            let mut w = self.shared.worker.borrow_mut();
            w.policies = Rc::new(policies);
            w.index = index;
        }))
    }

    fn policies(&self) -> usize {
        self.shared.worker.borrow().policies.len()
    }

    fn stream(&self, _: u32) -> Option<Box<dyn StreamStage>> {
        if self.shared.worker.borrow().policies.is_empty() {
            return None;
        }
        Some(Box::new(MirrorStream::new(self.shared.clone())))
    }

    fn tick_every(&self) -> Option<Duration> {
        let w = self.shared.worker.borrow();
        if !w.policies.is_empty() {
            Some(ACTIVE_TICK)
        } else if !w.in_flight.is_empty() || !w.queue.is_empty() || !w.diffs.is_empty() {
            Some(IDLE_TICK)
        } else {
            None
        }
    }

    fn on_tick(&self) {
        self.expire(now_ms());
        self.dispatch();
    }

    fn on_call_response(&self, token: u32, num_headers: usize, body_size: usize) -> bool {
        let Some(call) = self.shared.worker.borrow_mut().in_flight.remove(&token) else {
            return false;
        };
        let policy = call.policy;
        let headers = if num_headers == 0 {
            Vec::new()
        } else {
            host().headers(Map::CallResponseHeaders)
        };
        let Some(status) = upstream_status(&headers) else {
            policy.count(Metric::Errors, 1);
            self.copy_failed(call.request_id, call.diff);
            return true;
        };
        if status >= 500 {
            policy.count(Metric::Errors, 1);
        }
        if !call.diff {
            return true;
        }
        let Some(diff) = &policy.plan.diff else {
            return true;
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
                resp.body = host()
                    .body(
                        meshwarden_filter_runtime::host::Body::CallResponse,
                        0,
                        body_size,
                    )
                    .unwrap_or_default();
            }
        }
        let now = now_ms();
        let pair = {
            let mut w = self.shared.worker.borrow_mut();
            let mut budget = self.shared.budget.borrow_mut();
            w.diffs
                .mirror(call.request_id, call.target, resp, &mut budget)
        };
        if let Some(pair) = pair {
            record_pair(pair, now);
        }
        true
    }
}
