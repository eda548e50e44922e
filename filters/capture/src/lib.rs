//! The meshwarden capture stage: for the first `CapturePolicy` whose match selects a
//! request, and when sampling and the proxy's `maxPerSecond` allow, a summary of the
//! request (method, path without query, status, duration, upstream, trace id, sizes,
//! allow-listed headers with credentials redacted — never a body) is made while it runs
//! ([`open`]) and queued when the stream ends; the root context's tick reports the queue
//! to the control plane in batches ([`report`]). Nothing is sent on the request path.
//!
//! The rules live in `meshwarden_common::capture`; this stage only applies them.

mod open;
mod report;

use meshwarden_common::capture::{CaptureSpec, RateCap};
use meshwarden_common::random::Random;
use meshwarden_filter_runtime::outbox::{Outboxes, Transport};
use meshwarden_filter_runtime::shared::HostShared;
use meshwarden_filter_runtime::{host, parse_config, Commit, Flow, HostRandom, Stage, Stream};
use meshwarden_filter_runtime::{FilterConfig, StreamStage, ValidationError};
use open::OpenRecord;
use report::{ControlPlane, Reporter};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// What a configured policy needs besides its spec.
struct Policy {
    reporter: Rc<Reporter>,
    cap: RateCap,
}

/// The capture stage of one worker.
#[derive(Default)]
pub struct CaptureStage {
    config: RefCell<Rc<FilterConfig<CaptureSpec>>>,
    /// Per policy (by index) of the configuration.
    policies: RefCell<Rc<Vec<Policy>>>,
    outboxes: Outboxes<ControlPlane>,
}

impl CaptureStage {
    /// Policies for `config`, keeping the current reporters whose policy and report
    /// fields are unchanged.
    fn policies_for(&self, config: &FilterConfig<CaptureSpec>) -> Vec<Policy> {
        config
            .policies
            .iter()
            .map(|p| {
                let name = p.name.as_str();
                let report = &p.spec.report;
                Policy {
                    reporter: self.outboxes.get_or_new(
                        name,
                        ControlPlane(report.clone()),
                        report.limits,
                    ),
                    cap: RateCap::new(format!("meshwarden.capture.{name}"), p.spec.max_per_second),
                }
            })
            .collect()
    }
}

impl Stage for CaptureStage {
    fn name(&self) -> &'static str {
        "capture"
    }

    fn prepare(&self, bytes: &[u8]) -> Result<Commit<'_>, ValidationError> {
        let config = parse_config::<CaptureSpec>(bytes)?;
        Ok(Box::new(move || {
            ControlPlane::COUNTERS.define_all(config.policies.iter().map(|p| p.name.as_str()));
            let policies = self.policies_for(&config);
            self.outboxes
                .replace(policies.iter().map(|p| p.reporter.clone()).collect());
            *self.policies.borrow_mut() = Rc::new(policies);
            *self.config.borrow_mut() = Rc::new(config);
        }))
    }

    fn policies(&self) -> usize {
        self.config.borrow().policies.len()
    }

    fn stream(&self, _: u32) -> Option<Box<dyn StreamStage>> {
        let config = self.config.borrow();
        if config.policies.is_empty() {
            return None;
        }
        Some(Box::new(CaptureStream {
            config: config.clone(),
            policies: self.policies.borrow().clone(),
            open: None,
        }))
    }

    fn tick_every(&self) -> Option<Duration> {
        self.outboxes.tick_every()
    }

    fn on_tick(&self) {
        self.outboxes.on_tick();
    }

    fn on_grpc_call_response(&self, token: u32, status: u32) -> bool {
        self.outboxes.answered(token, status)
    }
}

struct CaptureStream {
    config: Rc<FilterConfig<CaptureSpec>>,
    policies: Rc<Vec<Policy>>,
    /// The summary of this request, when it is captured.
    open: Option<OpenRecord>,
}

impl StreamStage for CaptureStream {
    fn request_headers(&mut self, s: &mut Stream<'_>) -> Flow {
        let Some(policy) = self.config.first_match(s.headers) else {
            return Flow::Continue;
        };
        if !policy.spec.samples(HostRandom.next_u64()) {
            return Flow::Continue;
        }
        let index = self
            .config
            .policies
            .iter()
            .position(|p| std::ptr::eq(p, policy));
        let Some(p) = index.and_then(|i| self.policies.get(i)) else {
            return Flow::Continue;
        };
        // A contended allowance counts as spent: the summary is dropped, not the request.
        if p.cap.admit(&HostShared, host().now_ns()).unwrap_or(false) {
            self.open = Some(OpenRecord::start(
                policy.name.as_str(),
                &policy.spec,
                s.headers,
                p.reporter.clone(),
            ));
        } else {
            p.reporter.drop_one();
        }
        Flow::Continue
    }

    fn response_headers(&mut self, _: &mut Stream<'_>) -> Flow {
        if let Some(open) = &mut self.open {
            open.responded();
        }
        Flow::Continue
    }

    fn done(&mut self) {
        if let Some(open) = self.open.take() {
            open.finish();
        }
    }
}

#[cfg(test)]
mod tests;
