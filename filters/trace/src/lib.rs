//! The meshwarden trace filter: for the first `TracePolicy` whose match selects a request,
//! continue (or start) its trace and write the trace context in the policy's formats
//! (W3C `traceparent`/`tracestate`, B3 single or multi, `x-request-id`), optionally
//! echoing the trace id on the response. The rules live in `meshwarden_common::trace`;
//! this module only applies the plan and counts outcomes per policy:
//! `meshwarden_trace_{started,propagated,repaired}_total{policy="..."}`.

use meshwarden_common::names::HeaderName;
use meshwarden_common::trace::{decide, HeaderOp, Outcome, TraceSpec};
use meshwarden_filter_runtime::proxy_wasm;
use meshwarden_filter_runtime::{headers, install, Filter, FilterConfig, HostRandom};
use meshwarden_filter_runtime::{MetricKind, PolicyMetrics};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;

/// Per-policy counters, one per [`Outcome`].
const METRICS: PolicyMetrics = PolicyMetrics::new("trace");

struct Trace;

impl Filter for Trace {
    type Spec = TraceSpec;
    const NAME: &'static str = "trace";

    fn configured(config: &FilterConfig<TraceSpec>) {
        let counters = Outcome::ALL.map(|o| (o.as_str(), MetricKind::Counter));
        METRICS.define_all(config.policies.iter().map(|p| p.name.as_str()), &counters);
    }

    fn http_context(config: Rc<FilterConfig<TraceSpec>>, _: u32) -> Box<dyn HttpContext> {
        Box::new(TraceHttp { config, echo: None })
    }
}

struct TraceHttp {
    config: Rc<FilterConfig<TraceSpec>>,
    /// Response header and trace id to set, from the request's plan.
    echo: Option<(HeaderName, String)>,
}

impl Context for TraceHttp {}

impl HttpContext for TraceHttp {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        if self.config.policies.is_empty() {
            return Action::Continue;
        }
        let request = headers::request_headers();
        let Some(policy) = self.config.first_match(&request) else {
            return Action::Continue;
        };
        let plan = decide(&request, &policy.spec, &mut HostRandom);
        for op in &plan.ops {
            match op {
                HeaderOp::Set { name, value } => {
                    headers::set_request_header(name, value.as_bytes())
                }
                HeaderOp::Remove { name } => headers::remove_request_header(name),
            }
        }
        METRICS.increment(plan.outcome.as_str(), policy.name.as_str());
        log::debug!(
            "trace filter: policy {} {} trace {}",
            policy.name,
            plan.outcome.as_str(),
            plan.trace_id
        );
        self.echo = plan.echo;
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if let Some((name, trace_id)) = self.echo.take() {
            headers::set_response_header(name.as_str(), trace_id.as_bytes());
        }
        Action::Continue
    }
}

proxy_wasm::main! {{
    install::<Trace>();
}}
