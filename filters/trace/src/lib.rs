//! The meshwarden trace stage: for the first `TracePolicy` whose match selects a request,
//! continue (or start) its trace and write the trace context in the policy's formats
//! (W3C `traceparent`/`tracestate`, B3 single or multi, `x-request-id`), optionally
//! echoing the trace id on the response. The rules live in `meshwarden_common::trace`;
//! this stage only applies the plan and counts outcomes per policy:
//! `meshwarden_trace_{started,propagated,repaired}_total{policy="..."}`.

use meshwarden_common::names::HeaderName;
use meshwarden_common::trace::{decide, HeaderOp, Outcome, TraceSpec};
use meshwarden_filter_runtime::MetricKind;
use meshwarden_filter_runtime::{headers, parse_config, Commit, Flow, HostRandom, Stage, Stream};
use meshwarden_filter_runtime::{FilterConfig, PolicyMetrics, StreamStage, ValidationError};
use std::cell::RefCell;
use std::rc::Rc;

/// Per-policy counters, one per [`Outcome`].
const METRICS: PolicyMetrics = PolicyMetrics::new("trace");

/// The trace stage of one worker.
#[derive(Default)]
pub struct TraceStage {
    config: RefCell<Rc<FilterConfig<TraceSpec>>>,
}

impl Stage for TraceStage {
    fn name(&self) -> &'static str {
        "trace"
    }

    fn prepare(&self, bytes: &[u8]) -> Result<Commit<'_>, ValidationError> {
        let config = parse_config::<TraceSpec>(bytes)?;
        Ok(Box::new(move || {
            let counters = Outcome::ALL.map(|o| (o.as_str(), MetricKind::Counter));
            METRICS.define_all(config.policies.iter().map(|p| p.name.as_str()), &counters);
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
        Some(Box::new(TraceStream {
            config: config.clone(),
            echo: None,
        }))
    }
}

struct TraceStream {
    config: Rc<FilterConfig<TraceSpec>>,
    /// Response header and trace id to set, from the request's plan.
    echo: Option<(HeaderName, String)>,
}

impl StreamStage for TraceStream {
    fn request_headers(&mut self, s: &mut Stream<'_>) -> Flow {
        let Some(policy) = self.config.first_match(s.headers) else {
            return Flow::Continue;
        };
        let plan = decide(s.headers, &policy.spec, &mut HostRandom);
        for op in &plan.ops {
            match op {
                HeaderOp::Set { name, value } => s.set_request_header(name, Some(value.as_bytes())),
                HeaderOp::Remove { name } => s.set_request_header(name, None),
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
        Flow::Continue
    }

    fn response_headers(&mut self, _: &mut Stream<'_>) -> Flow {
        if let Some((name, trace_id)) = self.echo.take() {
            headers::set_response_header(name.as_str(), trace_id.as_bytes());
        }
        Flow::Continue
    }
}
