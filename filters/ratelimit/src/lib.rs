//! The meshwarden rate-limit stage: token buckets and concurrency limits from
//! `RateLimitPolicy`, shared by every worker of the proxy through shared data.
//!
//! All decisions live in `meshwarden_common::ratelimit`; this stage only reads the
//! request, asks the [`Limiter`], answers or forwards, adds response headers, releases
//! in-flight counts when the stream ends, and counts.
//!
//! A request matched by a `scope: global` policy is held while the stage asks the rate
//! limit service (`ShouldRateLimit` on the [`global::CLUSTER`] cluster, bounded by the
//! policies' `timeout`); the answer — or its absence: an error, a timeout, a malformed
//! message — completes the decision, local policies included.
//!
//! A global policy with a `lease` admits from the proxy's leased tokens when it has one (no
//! call); otherwise the call asks for a lease, and when the service cannot grant it, the
//! stage asks again for the request's single hit before deciding.

mod metrics;

use meshwarden_common::ratelimit::{global, rls};
use meshwarden_common::ratelimit::{release_all, Decision, Held, Limiter, RateLimitSpec, Request};
use meshwarden_common::ratelimit::{GlobalAnswer, GlobalCall, Settled};
use meshwarden_filter_runtime::host::Body;
use meshwarden_filter_runtime::shared::HostShared;
use meshwarden_filter_runtime::{headers, host, parse_config, Commit, Flow, LocalResponse};
use meshwarden_filter_runtime::{Stage, Stream, StreamStage, ValidationError};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

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
            peer: None,
            pending: None,
            admitted: false,
        }))
    }
}

struct RateLimitStream {
    limiter: Rc<Limiter>,
    /// In-flight counts to release when the stream ends.
    held: Vec<Held>,
    /// Headers for the upstream's response (empty after a local answer).
    response_headers: Vec<(String, String)>,
    /// The downstream address, if a policy keys by it.
    peer: Option<Vec<u8>>,
    /// The rate limit service call the stream waits for.
    pending: Option<Pending>,
    /// The request was let through.
    admitted: bool,
}

/// A call to the rate limit service in flight.
struct Pending {
    token: u32,
    call: GlobalCall,
    matched: Vec<usize>,
    started_ns: u64,
}

fn is_grpc(s: &Stream<'_>) -> bool {
    s.headers
        .get("content-type")
        .is_some_and(|ct| ct.starts_with(b"application/grpc"))
}

impl RateLimitStream {
    /// Sends the rate limit service call; the call back if the proxy refused it.
    fn dispatch(&mut self, call: GlobalCall, matched: Vec<usize>) -> Result<(), Box<GlobalCall>> {
        let sent = host().grpc_call(
            global::CLUSTER,
            rls::SERVICE,
            rls::METHOD,
            &call.message,
            Duration::from_millis(call.timeout_ms),
        );
        match sent {
            Ok(token) => {
                self.pending = Some(Pending {
                    token,
                    call,
                    matched,
                    started_ns: host().now_ns(),
                });
                Ok(())
            }
            Err(e) => {
                log::warn!(
                    "ratelimit filter: cannot call the rate limit service (cluster {}): {e}",
                    global::CLUSTER
                );
                Err(Box::new(call))
            }
        }
    }

    /// Sends `call` and holds the request for its answer; decides at once (failure mode)
    /// if the proxy refused the call.
    fn call(&mut self, s: &mut Stream<'_>, call: GlobalCall, matched: Vec<usize>) -> Flow {
        metrics::lease_requests(&self.limiter, &call);
        match self.dispatch(call, matched.clone()) {
            Ok(()) => {
                s.await_call();
                Flow::Pause
            }
            Err(call) => {
                let call = *call;
                metrics::global_call(&self.limiter, &call, None);
                // No answer: clear the lease marks; leased tokens still answer.
                let settled = self
                    .limiter
                    .settle(&HostShared, &call, Err(()), host().now_ns());
                let answer = match settled {
                    Settled::Answer(a) => a,
                    Settled::Retry(_) => GlobalAnswer::Unavailable,
                };
                self.decide_leased(s, &matched, &call, &answer)
            }
        }
    }

    /// [`RateLimitStream::decide`], counting the requests admitted with leased tokens.
    fn decide_leased(
        &mut self,
        s: &mut Stream<'_>,
        matched: &[usize],
        call: &GlobalCall,
        global: &GlobalAnswer,
    ) -> Flow {
        let flow = self.decide(s, matched, global);
        if self.admitted {
            metrics::lease_admitted(&self.limiter, call);
        }
        flow
    }

    /// Decides with the service's answer and answers locally or lets the request go on.
    fn decide(&mut self, s: &mut Stream<'_>, matched: &[usize], global: &GlobalAnswer) -> Flow {
        let verdict = self.limiter.decide(
            &HostShared,
            &Request {
                headers: s.headers,
                peer: self.peer.as_deref(),
            },
            host().now_ns(),
            matched,
            global,
        );
        metrics::record(&verdict.events);
        self.held = verdict.held;
        match verdict.decision {
            Decision::Allow { response_headers } => {
                self.admitted = true;
                self.response_headers = response_headers;
                Flow::Continue
            }
            Decision::Reject(rejection) => reject(s, &rejection),
        }
    }
}

/// Reads and decodes the service's answer (`status` 0: a message of `size` bytes).
fn read_answer(status: u32, size: usize) -> Result<rls::Response, String> {
    if status != 0 {
        return Err(format!("gRPC status {status}"));
    }
    if size > rls::MAX_RESPONSE_BYTES {
        return Err(format!("{size}-byte answer"));
    }
    let bytes = host()
        .body(Body::GrpcCallResponse, 0, size)
        .unwrap_or_default();
    rls::decode_response(&bytes).map_err(|e| e.to_string())
}

/// Sends the rejection (HTTP or gRPC); `Pause` once sent.
fn reject(s: &Stream<'_>, rejection: &meshwarden_common::ratelimit::Rejection) -> Flow {
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

impl StreamStage for RateLimitStream {
    fn request_headers(&mut self, s: &mut Stream<'_>) -> Flow {
        if self.limiter.needs_peer() {
            self.peer = host().property(&["source", "address"]);
        }
        let req = Request {
            headers: s.headers,
            peer: self.peer.as_deref(),
        };
        let matched = self.limiter.matched(&req);
        // The clock only for leases (local decisions read it themselves).
        let now = if self.limiter.has_global() {
            host().now_ns()
        } else {
            0
        };
        let Some(call) = self.limiter.global_call(&HostShared, &req, &matched, now) else {
            return self.decide(s, &matched, &GlobalAnswer::Unavailable);
        };
        if !call.needs_call() {
            let answer = call.leased_answer();
            return self.decide_leased(s, &matched, &call, &answer);
        }
        self.call(s, call, matched)
    }

    fn grpc_response(&mut self, s: &mut Stream<'_>, token: u32, status: u32, size: usize) -> Flow {
        let Some(p) = self.pending.take_if(|p| p.token == token) else {
            return Flow::Continue;
        };
        let now = host().now_ns();
        let elapsed_us = now.saturating_sub(p.started_ns) / 1_000;
        let answer = read_answer(status, size);
        if let Err(e) = &answer {
            log::debug!("ratelimit filter: no answer from the rate limit service: {e}");
        }
        metrics::global_call(&self.limiter, &p.call, Some(elapsed_us));
        match self.limiter.settle(&HostShared, &p.call, answer, now) {
            Settled::Answer(answer) => self.decide_leased(s, &p.matched, &p.call, &answer),
            Settled::Retry(single) => self.call(s, single, p.matched),
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
        for (policy, released) in release_all(&HostShared, &held, host().now_ns()) {
            metrics::left(&policy, released);
        }
    }
}
