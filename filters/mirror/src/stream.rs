//! One request: decide on its headers, copy its body while it streams on (never pausing
//! it), queue the copies when it is complete, and, in diff mode, keep the primary's answer.

use crate::metrics::Metric;
use crate::rate_cap::take_token;
use crate::worker::{record_pair, Copy, DiffContext, Policy, Shared};
use meshwarden_common::mirror::body::{BodyCopy, CopyError};
use meshwarden_common::mirror::diff::CapturedResponse;
use meshwarden_common::mirror::SkipReason;
use meshwarden_common::trace::log_id;
use meshwarden_filter_runtime::host::{now_ms, Body};
use meshwarden_filter_runtime::{headers, host, Flow, Stream, StreamStage};
use std::rc::Rc;

/// A request being copied.
struct Pending {
    policy: Rc<Policy>,
    targets: Vec<usize>,
    headers: Rc<Vec<(String, String)>>,
    body: BodyCopy,
    path: String,
    /// The request's trace id (diff mode: for the mismatch log line).
    trace_id: String,
}

/// The primary's answer being kept for diff mode.
struct Capture {
    policy: Rc<Policy>,
    request_id: u64,
    response: CapturedResponse,
    /// Bytes of `response.body` reserved in the worker's budget while capturing.
    reserved: usize,
    /// Request finished and copies queued (a diff entry exists).
    opened: bool,
    done: bool,
}

pub struct MirrorStream {
    shared: Shared,
    pending: Option<Pending>,
    capture: Option<Capture>,
}

impl MirrorStream {
    pub fn new(shared: Shared) -> Self {
        Self {
            shared,
            pending: None,
            capture: None,
        }
    }

    fn start(&mut self, s: &Stream<'_>) {
        let (policies, index) = {
            let w = self.shared.worker.borrow();
            (w.policies.clone(), w.index.clone())
        };
        let req = &*s.headers;
        let Some(policy) = index
            .candidates(req)
            .into_iter()
            .map(|i| &policies[i as usize])
            .find(|p| p.matcher.matches(req))
            .cloned()
        else {
            return;
        };
        let selection = {
            let mut w = self.shared.worker.borrow_mut();
            policy.plan.select(req, w.random())
        };
        for reason in &selection.skipped {
            policy.skipped(*reason, 1);
        }
        if selection.chosen.is_empty() {
            return;
        }
        if s.missed_request_body {
            policy.skipped(SkipReason::BodyUnavailable, selection.chosen.len());
            return;
        }
        let fallback = policy.plan.targets[selection.chosen[0]].cluster.clone();
        let Some(headers) = policy
            .plan
            .headers
            .apply(req.pairs(), &policy.name, &fallback)
        else {
            policy.count(Metric::Errors, selection.chosen.len() as u64);
            return;
        };
        let path = String::from_utf8_lossy(req.path()).into_owned();
        let trace_id = if policy.plan.diff.is_some() {
            log_id(req)
        } else {
            String::new()
        };
        if policy.plan.diff.is_some() {
            let request_id = self.shared.worker.borrow_mut().next_request_id();
            self.capture = Some(Capture {
                policy: policy.clone(),
                request_id,
                response: CapturedResponse::default(),
                reserved: 0,
                opened: false,
                done: false,
            });
        }
        self.pending = Some(Pending {
            body: BodyCopy::new(policy.plan.max_body_bytes),
            policy,
            targets: selection.chosen,
            headers: Rc::new(headers.pairs),
            path,
            trace_id,
        });
        if s.end_of_stream {
            self.finish_request();
        }
    }

    fn copy_chunk(&mut self, size: usize, end_of_stream: bool) {
        if self.pending.is_none() {
            return;
        }
        if size > 0 {
            let chunk = host().body(Body::Request, 0, size).unwrap_or_default();
            let Some(p) = self.pending.as_mut() else {
                return;
            };
            let pushed = p.body.push(&chunk, &mut self.shared.budget.borrow_mut());
            if let Err(e) = pushed {
                let reason = match e {
                    CopyError::TooLarge => SkipReason::BodyTooLarge,
                    CopyError::OverBudget => SkipReason::QueueFull,
                };
                p.policy.skipped(reason, p.targets.len());
                self.pending = None;
                self.drop_capture();
                return;
            }
        }
        if end_of_stream {
            self.finish_request();
        }
    }

    /// The request is complete: queue one copy per chosen target (after the rate cap).
    fn finish_request(&mut self) {
        let Some(p) = self.pending.take() else {
            return;
        };
        let now = now_ms();
        let body = p.body.finish().map(|data| Rc::new(self.shared.hold(data)));
        let mut targets = Vec::new();
        for t in p.targets {
            let allowed = match p.policy.plan.max_per_second {
                Some(n) => take_token(&p.policy.name, n, now),
                None => true,
            };
            if allowed {
                targets.push(t);
            } else {
                p.policy.skipped(SkipReason::RateCapped, 1);
            }
        }
        let mut w = self.shared.worker.borrow_mut();
        let request_id = match &self.capture {
            Some(c) => c.request_id,
            None => w.next_request_id(),
        };
        let mut diff = false;
        if let Some(c) = self.capture.as_mut() {
            let ctx = DiffContext {
                policy: p.policy.clone(),
                path: p.path.clone(),
                trace_id: p.trace_id.clone(),
            };
            diff = !targets.is_empty() && w.diffs.open(request_id, ctx, targets.len() as u32, now);
            if !diff && !targets.is_empty() {
                p.policy
                    .count(Metric::DiffIncomparable, targets.len() as u64);
            }
            c.opened = diff;
        }
        for target in targets {
            let copy = Copy {
                policy: p.policy.clone(),
                target,
                request_id,
                headers: p.headers.clone(),
                body: body.clone(),
                queued_ms: now,
                diff,
            };
            if w.queue.push(copy).is_err() {
                p.policy.skipped(SkipReason::QueueFull, 1);
                if diff {
                    w.diffs
                        .mirror_failed(request_id, &mut self.shared.budget.borrow_mut());
                }
            }
        }
        drop(w);
        if !diff {
            self.drop_capture();
        } else if self.capture.as_ref().is_some_and(|c| c.done) {
            self.deliver_primary();
        }
    }

    fn capture_body(&mut self, size: usize) {
        let Some(c) = self.capture.as_mut() else {
            return;
        };
        let wants = c.policy.plan.diff.as_ref().is_some_and(|d| d.wants_body());
        if !wants || c.response.body_truncated || size == 0 {
            return;
        }
        let fits = c.response.body.len() + size <= c.policy.plan.max_body_bytes
            && self.shared.budget.borrow_mut().try_reserve(size);
        if !fits {
            self.shared.budget.borrow_mut().release(c.reserved);
            c.reserved = 0;
            c.response.body = Vec::new();
            c.response.body_truncated = true;
            return;
        }
        c.reserved += size;
        let chunk = host().body(Body::Response, 0, size).unwrap_or_default();
        if let Some(c) = self.capture.as_mut() {
            c.response.body.extend_from_slice(&chunk);
        }
    }

    /// Drops the capture and gives its bytes back.
    fn drop_capture(&mut self) -> Option<Capture> {
        let c = self.capture.take()?;
        if let Ok(mut b) = self.shared.budget.try_borrow_mut() {
            b.release(c.reserved);
        }
        Some(c)
    }

    /// The primary's answer is complete.
    fn primary_done(&mut self) {
        let Some(c) = self.capture.as_mut() else {
            return;
        };
        if c.done {
            return;
        }
        c.done = true;
        if c.opened {
            self.deliver_primary();
        }
    }

    fn deliver_primary(&mut self) {
        let Some(c) = self.drop_capture() else {
            return;
        };
        let now = now_ms();
        let pairs = {
            let mut w = self.shared.worker.borrow_mut();
            let mut budget = self.shared.budget.borrow_mut();
            w.diffs.primary(c.request_id, c.response, &mut budget)
        };
        for pair in pairs {
            record_pair(pair, now);
        }
    }
}

impl StreamStage for MirrorStream {
    fn request_headers(&mut self, s: &mut Stream<'_>) -> Flow {
        self.start(s);
        Flow::Continue
    }

    fn request_body(&mut self, s: &mut Stream<'_>, size: usize) {
        self.copy_chunk(size, s.end_of_stream);
    }

    fn request_trailers(&mut self, _: &mut Stream<'_>) {
        self.finish_request();
    }

    fn response_headers(&mut self, s: &mut Stream<'_>) -> Flow {
        if let Some(c) = self.capture.as_ref() {
            let policy = c.policy.clone();
            let status = headers::response_status().unwrap_or(0);
            let picked = match &policy.plan.diff {
                Some(d) if !d.headers.is_empty() => d.pick_headers(&headers::response_headers()),
                _ => Vec::new(),
            };
            if let Some(c) = self.capture.as_mut() {
                c.response.status = status;
                c.response.headers = picked;
            }
            if s.end_of_stream {
                self.primary_done();
            }
        }
        Flow::Continue
    }

    fn response_body(&mut self, s: &mut Stream<'_>, size: usize) {
        if self.capture.is_some() {
            self.capture_body(size);
            if s.end_of_stream {
                self.primary_done();
            }
        }
    }

    fn response_trailers(&mut self, _: &mut Stream<'_>) {
        self.primary_done();
    }

    fn done(&mut self) {
        // The stream ended: a copy still being collected is dropped; a primary that never
        // completed cannot be compared.
        if let Some(mut p) = self.pending.take() {
            if let Ok(mut b) = self.shared.budget.try_borrow_mut() {
                p.body.release(&mut b);
            }
        }
        if let Some(c) = self.drop_capture() {
            if c.opened {
                if let (Ok(mut w), Ok(mut b)) = (
                    self.shared.worker.try_borrow_mut(),
                    self.shared.budget.try_borrow_mut(),
                ) {
                    w.diffs.abandon(c.request_id, &mut b);
                }
            }
        }
    }
}

impl Drop for MirrorStream {
    fn drop(&mut self) {
        if let Some(mut p) = self.pending.take() {
            if let Ok(mut b) = self.shared.budget.try_borrow_mut() {
                p.body.release(&mut b);
            }
        }
        self.drop_capture();
    }
}
