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
use meshwarden_filter_runtime::shared::HostShared;
use meshwarden_filter_runtime::{host, parse_config, Commit, Flow, HostRandom, Stage, Stream};
use meshwarden_filter_runtime::{FilterConfig, StreamStage, ValidationError};
use open::OpenRecord;
use report::{Reporter, COUNTERS, METRICS};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// Longest gap between two looks at the report queues.
const REPORT_TICK: Duration = Duration::from_millis(50);

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
    /// Reporters a new configuration replaced, until their queue and calls are done.
    draining: RefCell<Vec<Rc<Reporter>>>,
}

impl CaptureStage {
    /// Policies for `config`, keeping the current reporters whose policy and report
    /// fields are unchanged.
    fn policies_for(&self, config: &FilterConfig<CaptureSpec>) -> Vec<Policy> {
        let current = self.policies.borrow();
        config
            .policies
            .iter()
            .map(|p| {
                let name = p.name.as_str();
                let spec = &p.spec.report;
                let kept = current.iter().find(|c| c.reporter.serves(name, spec));
                Policy {
                    reporter: kept.map_or_else(
                        || Rc::new(Reporter::new(name, spec)),
                        |c| c.reporter.clone(),
                    ),
                    cap: RateCap::new(format!("meshwarden.capture.{name}"), p.spec.max_per_second),
                }
            })
            .collect()
    }

    fn all_reporters(&self) -> Vec<Rc<Reporter>> {
        let current = self.policies.borrow();
        let draining = self.draining.borrow();
        current
            .iter()
            .map(|p| p.reporter.clone())
            .chain(draining.iter().cloned())
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
            METRICS.define_all(config.policies.iter().map(|p| p.name.as_str()), &COUNTERS);
            let policies = Rc::new(self.policies_for(&config));
            let old = std::mem::replace(&mut *self.policies.borrow_mut(), policies.clone());
            let replaced = old.iter().filter(|o| {
                !policies
                    .iter()
                    .any(|p| Rc::ptr_eq(&p.reporter, &o.reporter))
            });
            self.draining
                .borrow_mut()
                .extend(replaced.map(|o| o.reporter.clone()));
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
        self.all_reporters()
            .iter()
            .map(|r| r.tick().min(REPORT_TICK))
            .min()
    }

    fn on_tick(&self) {
        for r in self.all_reporters() {
            r.flush();
        }
        self.draining.borrow_mut().retain(|r| {
            let busy = !r.is_idle();
            if !busy {
                r.detach();
            }
            busy
        });
    }

    fn on_grpc_call_response(&self, token: u32, status: u32) -> bool {
        self.all_reporters()
            .iter()
            .any(|r| r.answered(token, status))
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
