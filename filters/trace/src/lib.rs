//! The meshwarden trace stage: for the first `TracePolicy` whose match selects a request,
//! continue (or start) its trace and write the trace context in the policy's formats
//! (W3C `traceparent`/`tracestate`, B3 single or multi, `x-request-id`), optionally
//! echoing the trace id on the response. The rules live in `meshwarden_common::trace`;
//! this stage only applies the plan and counts outcomes per policy:
//! `meshwarden_trace_{started,propagated,repaired}_total{policy="..."}`.
//!
//! With `spec.export`, the proxy's own span of each sampled request (`newSpan` mode) is
//! recorded by the stream ([`span`]) and sent in batches from the root context
//! ([`export`]).

mod export;
mod span;

use export::{Collector, Exporter, METRICS};
use meshwarden_common::names::HeaderName;
use meshwarden_common::trace::{decide, HeaderOp, Outcome, TraceSpec};
use meshwarden_filter_runtime::outbox::{Outboxes, Transport};
use meshwarden_filter_runtime::MetricKind;
use meshwarden_filter_runtime::{headers, parse_config, Commit, Flow, HostRandom, Stage, Stream};
use meshwarden_filter_runtime::{FilterConfig, StreamStage, ValidationError};
use span::OpenSpan;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// The trace stage of one worker.
#[derive(Default)]
pub struct TraceStage {
    config: RefCell<Rc<FilterConfig<TraceSpec>>>,
    /// The exporter of each policy (by index), `None` for policies without `export`.
    exporters: RefCell<Rc<Vec<Option<Rc<Exporter>>>>>,
    outboxes: Outboxes<Collector>,
}

impl TraceStage {
    /// Exporters for `config`, keeping the current ones whose policy and export are unchanged.
    fn exporters_for(&self, config: &FilterConfig<TraceSpec>) -> Vec<Option<Rc<Exporter>>> {
        config
            .policies
            .iter()
            .map(|p| {
                let spec = p.spec.export.as_ref()?;
                let collector = Collector(spec.clone());
                Some(
                    self.outboxes
                        .get_or_new(p.name.as_str(), collector, spec.limits),
                )
            })
            .collect()
    }
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
            let exporting = config.policies.iter().filter(|p| p.spec.export.is_some());
            Collector::COUNTERS.define_all(exporting.map(|p| p.name.as_str()));
            let exporters = self.exporters_for(&config);
            self.outboxes
                .replace(exporters.iter().flatten().cloned().collect());
            *self.exporters.borrow_mut() = Rc::new(exporters);
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
            exporters: self.exporters.borrow().clone(),
            echo: None,
            span: None,
        }))
    }

    fn tick_every(&self) -> Option<Duration> {
        self.outboxes.tick_every()
    }

    fn on_tick(&self) {
        self.outboxes.on_tick();
    }

    fn on_call_response(&self, token: u32, headers: usize, _body: usize) -> bool {
        self.outboxes.answered(token, headers)
    }
}

struct TraceStream {
    config: Rc<FilterConfig<TraceSpec>>,
    exporters: Rc<Vec<Option<Rc<Exporter>>>>,
    /// Response header and trace id to set, from the request's plan.
    echo: Option<(HeaderName, String)>,
    /// The proxy's span of this request, when it is sampled and exported.
    span: Option<OpenSpan>,
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
        if plan.sampled && policy.spec.export.is_some() {
            let index = self
                .config
                .policies
                .iter()
                .position(|p| std::ptr::eq(p, policy));
            let exporter = index.and_then(|i| self.exporters.get(i).cloned().flatten());
            if let Some(exporter) = exporter {
                self.span = Some(OpenSpan::start(&plan, s.headers, exporter));
            }
        }
        self.echo = plan.echo;
        Flow::Continue
    }

    fn response_headers(&mut self, _: &mut Stream<'_>) -> Flow {
        if let Some(span) = &mut self.span {
            span.responded();
        }
        if let Some((name, trace_id)) = self.echo.take() {
            headers::set_response_header(name.as_str(), trace_id.as_bytes());
        }
        Flow::Continue
    }

    fn done(&mut self) {
        if let Some(span) = self.span.take() {
            span.finish();
        }
    }
}

#[cfg(test)]
mod tests;
