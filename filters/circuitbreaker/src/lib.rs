//! The meshwarden circuit-breaker stage: the Resilience4j state machine of each
//! `CircuitBreakerPolicy` (one breaker per policy, or per descriptor key), shared by every
//! worker of the proxy through shared data.
//!
//! All decisions live in `meshwarden_common::circuitbreaker`; this stage only picks the
//! request's policy (first match), asks its breaker, answers with the fallback while it is
//! open, remembers the response status (headers or gRPC trailers) and records the outcome
//! when the stream ends (the log phase), and counts.

mod metrics;
mod status;

use meshwarden_common::circuitbreaker::report as status_report;
use meshwarden_common::circuitbreaker::{
    parse_grpc_status, Admitted, BreakerSet, CircuitBreakerSpec, Guarded, Response, Transition,
};
use meshwarden_common::ratelimit::key::BucketKey;
use meshwarden_common::{CompiledPolicy, FilterConfig, PolicyIndex, RequestHeaders};
use meshwarden_filter_runtime::host::Map;
use meshwarden_filter_runtime::shared::HostShared;
use meshwarden_filter_runtime::{host, parse_config, Commit, Flow, LocalResponse};
use meshwarden_filter_runtime::{Stage, Stream, StreamStage, ValidationError};
use status::{Reported, StatusReports};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// Response code details of a fallback answer (`%RESPONSE_CODE_DETAILS%`).
const DETAILS: &str = "meshwarden_circuit_open";

/// What an open breaker answers, ready to send.
struct Fallback {
    status: u16,
    grpc_status: u8,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Fallback {
    fn of(spec: &CircuitBreakerSpec) -> Self {
        let f = spec.fallback();
        Self {
            status: f.status(),
            grpc_status: f.grpc().number(),
            headers: f
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.clone()))
                .collect(),
            body: f.body().as_bytes().to_vec(),
        }
    }
}

/// A policy ready to run: its breakers and its fallback.
struct Policy {
    compiled: CompiledPolicy<CircuitBreakerSpec>,
    breakers: BreakerSet,
    fallback: Fallback,
    /// Where its open breakers are reported, if anywhere.
    report_cluster: Option<String>,
}

/// The policies of one configuration.
#[derive(Default)]
struct Breakers {
    policies: Vec<Policy>,
    /// Which policies can match a request (by path).
    index: PolicyIndex,
}

impl Breakers {
    fn new(config: FilterConfig<CircuitBreakerSpec>) -> Self {
        let policies = config
            .policies
            .into_iter()
            .map(|p| Policy {
                breakers: BreakerSet::new(p.name.as_str(), &p.spec),
                fallback: Fallback::of(&p.spec),
                report_cluster: p.spec.status_report().map(|c| c.as_str().to_string()),
                compiled: p,
            })
            .collect();
        Self {
            policies,
            index: config.index,
        }
    }

    /// The first policy (in configuration order) whose match selects the request.
    fn first_match(&self, req: &RequestHeaders) -> Option<usize> {
        self.index
            .candidates(req)
            .into_iter()
            .map(|i| i as usize)
            .find(|&i| self.policies[i].compiled.matcher.matches(req))
    }
}

/// The circuit-breaker stage of one worker.
#[derive(Default)]
pub struct CircuitBreakerStage {
    breakers: RefCell<Rc<Breakers>>,
    reports: StatusReports,
}

impl Stage for CircuitBreakerStage {
    fn name(&self) -> &'static str {
        "circuitbreaker"
    }

    fn prepare(&self, bytes: &[u8]) -> Result<Commit<'_>, ValidationError> {
        let config = parse_config::<CircuitBreakerSpec>(bytes)?;
        Ok(Box::new(move || {
            let breakers = Breakers::new(config);
            for p in &breakers.policies {
                p.breakers.prepare(&HostShared);
                status_report::prepare(&HostShared, &p.breakers);
            }
            metrics::define(breakers.policies.iter().map(|p| p.compiled.name.as_str()));
            *self.breakers.borrow_mut() = Rc::new(breakers);
        }))
    }

    fn policies(&self) -> usize {
        self.breakers.borrow().policies.len()
    }

    fn tick_every(&self) -> Option<Duration> {
        let breakers = self.breakers.borrow();
        let reporting = breakers.policies.iter().any(|p| p.report_cluster.is_some());
        (reporting || self.reports.busy()).then_some(status::TICK)
    }

    fn on_tick(&self) {
        let breakers = self.breakers.borrow().clone();
        self.reports
            .tick(breakers.policies.iter().map(|p| Reported {
                name: p.compiled.name.as_str(),
                breakers: &p.breakers,
                cluster: p.report_cluster.as_deref(),
            }));
    }

    fn on_grpc_call_response(&self, token: u32, status: u32) -> bool {
        self.reports.answered(token, status)
    }

    fn stream(&self, _: u32) -> Option<Box<dyn StreamStage>> {
        let breakers = self.breakers.borrow();
        if breakers.policies.is_empty() {
            return None;
        }
        Some(Box::new(BreakerStream {
            breakers: breakers.clone(),
            call: None,
        }))
    }
}

/// A guarded call in flight.
struct Call {
    policy: usize,
    guarded: Guarded,
    started_ms: u64,
    response: Option<Response>,
}

struct BreakerStream {
    breakers: Rc<Breakers>,
    call: Option<Call>,
}

fn is_grpc(s: &Stream<'_>) -> bool {
    s.headers
        .get("content-type")
        .is_some_and(|ct| ct.starts_with(b"application/grpc"))
}

/// Logs and counts a state change, and notes it for the next status report.
fn report(policy: &Policy, breaker: &str, t: &Transition) {
    metrics::transition(policy.compiled.name.as_str(), t);
    if status_report::note_transition(&HostShared, &policy.breakers).is_err() {
        metrics::count("contended", policy.compiled.name.as_str());
    }
    let line = format!(
        "circuitbreaker filter: policy {} breaker {breaker}: {} -> {} ({})",
        policy.compiled.name, t.from, t.to, t.reason
    );
    if t.to == meshwarden_common::circuitbreaker::State::Open {
        log::warn!("{line}");
    } else {
        log::info!("{line}");
    }
}

/// Sends the policy's fallback (HTTP, or gRPC for gRPC requests); `Pause` once sent.
fn fallback(s: &Stream<'_>, f: &Fallback) -> Flow {
    let headers: Vec<(&str, &str)> = f
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let grpc = is_grpc(s);
    let sent = host().send_local_response(&LocalResponse {
        status: if grpc { 200 } else { f.status },
        headers: &headers,
        body: &f.body,
        grpc_status: grpc.then_some(f.grpc_status),
        details: DETAILS,
    });
    if !sent {
        log::warn!("circuitbreaker filter: cannot send the fallback answer");
        return Flow::Continue;
    }
    Flow::Pause
}

impl StreamStage for BreakerStream {
    fn request_headers(&mut self, s: &mut Stream<'_>) -> Flow {
        let Some(i) = self.breakers.first_match(s.headers) else {
            return Flow::Continue;
        };
        let breakers = self.breakers.clone();
        let policy = &breakers.policies[i];
        let spec = &policy.compiled.spec;
        let name = policy.compiled.name.as_str();
        let owner = if spec.descriptors.is_empty() {
            BucketKey::from_values([])
        } else {
            let peer = spec
                .descriptors
                .iter()
                .any(|d| d.needs_peer())
                .then(|| host().property(&["source", "address"]))
                .flatten();
            BucketKey::from_values(
                spec.descriptors
                    .iter()
                    .map(|d| d.value(s.headers, peer.as_deref())),
            )
        };
        let now_ms = meshwarden_filter_runtime::host::now_ms();
        let (admitted, transition) = match policy.breakers.admit(&HostShared, &owner, now_ms) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("circuitbreaker filter: policy {name}: {e}; request let through");
                metrics::count("contended", name);
                return Flow::Continue;
            }
        };
        match admitted {
            Admitted::Call(guarded) => {
                if let Some(t) = &transition {
                    report(policy, &guarded.key, t);
                }
                self.call = Some(Call {
                    policy: i,
                    guarded,
                    started_ms: now_ms,
                    response: None,
                });
                Flow::Continue
            }
            Admitted::Overflow => {
                metrics::count("overflow", name);
                Flow::Continue
            }
            Admitted::Reject { .. } if spec.dry_run => {
                metrics::count("shadow_short_circuited", name);
                Flow::Continue
            }
            Admitted::Reject { .. } => {
                metrics::count("short_circuited", name);
                log::debug!(
                    "circuitbreaker filter: policy {name} open, fallback answered trace={}",
                    meshwarden_common::trace::log_id(s.headers)
                );
                fallback(s, &policy.fallback)
            }
        }
    }

    fn response_headers(&mut self, _: &mut Stream<'_>) -> Flow {
        if let Some(call) = &mut self.call {
            let status = host()
                .header(Map::ResponseHeaders, ":status")
                .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok());
            let grpc = host()
                .header(Map::ResponseHeaders, "grpc-status")
                .and_then(|v| parse_grpc_status(&v));
            call.response = Some(Response {
                http_status: status,
                grpc_status: grpc,
                elapsed_ms: 0,
            });
        }
        Flow::Continue
    }

    fn response_trailers(&mut self, _: &mut Stream<'_>) {
        if let Some(Call {
            response: Some(r), ..
        }) = &mut self.call
        {
            if let Some(code) = host()
                .header(Map::ResponseTrailers, "grpc-status")
                .and_then(|v| parse_grpc_status(&v))
            {
                r.grpc_status = Some(code);
            }
        }
    }

    fn done(&mut self) {
        let Some(call) = self.call.take() else {
            return;
        };
        let policy = &self.breakers.policies[call.policy];
        let name = policy.compiled.name.as_str();
        let breakers = &policy.breakers;
        let Some(mut response) = call.response else {
            // No answer at all (the caller went away): not an outcome; a trial's permit
            // goes back.
            if breakers.abandon(&HostShared, &call.guarded).is_err() {
                metrics::count("contended", name);
            }
            return;
        };
        let now_ms = meshwarden_filter_runtime::host::now_ms();
        response.elapsed_ms = now_ms.saturating_sub(call.started_ms);
        let outcome = policy.compiled.spec.outcome(&response);
        metrics::call(name, outcome);
        match breakers.record(&HostShared, &call.guarded, outcome, now_ms) {
            Ok(Some(t)) => report(policy, &call.guarded.key, &t),
            Ok(None) => {}
            Err(e) => {
                log::warn!("circuitbreaker filter: policy {name}: {e}; outcome not recorded");
                metrics::count("contended", name);
            }
        }
    }
}
