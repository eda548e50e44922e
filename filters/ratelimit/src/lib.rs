//! The meshwarden rate-limit stage: token buckets and concurrency limits from
//! `RateLimitPolicy`, shared by every worker of the proxy through shared data.
//!
//! All decisions live in `meshwarden_common::ratelimit`; this stage only reads the
//! request, asks the [`Limiter`], answers or forwards, adds response headers, releases
//! in-flight counts when the stream ends, and counts.

mod metrics;

use meshwarden_common::ratelimit::{release_all, Decision, Held, Limiter, RateLimitSpec, Request};
use meshwarden_filter_runtime::shared::HostShared;
use meshwarden_filter_runtime::{headers, host, parse_config, Commit, Flow, LocalResponse};
use meshwarden_filter_runtime::{Stage, Stream, StreamStage, ValidationError};
use std::cell::RefCell;
use std::rc::Rc;

/// Response code details of a rate-limit answer (`%RESPONSE_CODE_DETAILS%`).
const DETAILS: &str = "meshwarden_rate_limited";

/// The rate-limit stage of one worker.
#[derive(Default)]
pub struct RateLimitStage {
    limiter: RefCell<Rc<Limiter>>,
}

impl Stage for RateLimitStage {
    fn name(&self) -> &'static str {
        "ratelimit"
    }

    fn prepare(&self, bytes: &[u8]) -> Result<Commit<'_>, ValidationError> {
        let config = parse_config::<RateLimitSpec>(bytes)?;
        Ok(Box::new(move || {
            let limiter = Limiter::new(&config);
            limiter.prepare(&HostShared);
            metrics::define(&limiter);
            *self.limiter.borrow_mut() = Rc::new(limiter);
        }))
    }

    fn policies(&self) -> usize {
        self.limiter.borrow().policies().len()
    }

    fn stream(&self, _: u32) -> Option<Box<dyn StreamStage>> {
        let limiter = self.limiter.borrow();
        if limiter.is_empty() {
            return None;
        }
        Some(Box::new(RateLimitStream {
            limiter: limiter.clone(),
            held: Vec::new(),
            response_headers: Vec::new(),
        }))
    }
}

struct RateLimitStream {
    limiter: Rc<Limiter>,
    /// In-flight counts to release when the stream ends.
    held: Vec<Held>,
    /// Headers for the upstream's response (empty after a local answer).
    response_headers: Vec<(String, String)>,
}

fn is_grpc(s: &Stream<'_>) -> bool {
    s.headers
        .get("content-type")
        .is_some_and(|ct| ct.starts_with(b"application/grpc"))
}

impl StreamStage for RateLimitStream {
    fn request_headers(&mut self, s: &mut Stream<'_>) -> Flow {
        let peer = if self.limiter.needs_peer() {
            host().property(&["source", "address"])
        } else {
            None
        };
        let verdict = self.limiter.check(
            &HostShared,
            &Request {
                headers: s.headers,
                peer: peer.as_deref(),
            },
            host().now_ns(),
        );
        metrics::record(&verdict.events);
        self.held = verdict.held;
        match verdict.decision {
            Decision::Allow { response_headers } => {
                self.response_headers = response_headers;
                Flow::Continue
            }
            Decision::Reject(rejection) => {
                log::debug!(
                    "ratelimit filter: {} {} trace={}",
                    rejection.status,
                    rejection.grpc_message(),
                    meshwarden_common::trace::log_id(s.headers)
                );
                let sent = if is_grpc(s) {
                    let headers: Vec<(&str, &str)> = rejection
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    host().send_local_response(&LocalResponse {
                        status: 200,
                        headers: &headers,
                        body: rejection.grpc_message().as_bytes(),
                        grpc_status: Some(if rejection.grpc_status == 8 { 8 } else { 14 }),
                        details: DETAILS,
                    })
                } else {
                    let owned = rejection.http_headers();
                    let headers: Vec<(&str, &str)> = owned
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    host().send_local_response(&LocalResponse {
                        status: rejection.status,
                        headers: &headers,
                        body: rejection.body().as_bytes(),
                        grpc_status: None,
                        details: DETAILS,
                    })
                };
                if !sent {
                    log::warn!("ratelimit filter: cannot send the local answer");
                    return Flow::Continue;
                }
                Flow::Pause
            }
        }
    }

    fn response_headers(&mut self, _: &mut Stream<'_>) -> Flow {
        for (name, value) in std::mem::take(&mut self.response_headers) {
            headers::add_response_header(&name, value.as_bytes());
        }
        Flow::Continue
    }

    fn done(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.held);
        for (policy, released) in release_all(&HostShared, &held) {
            metrics::left(&policy, released);
        }
    }
}
