//! The proxy's span of one request while it runs: started with the request headers,
//! given its status by the response headers, and handed to its exporter's queue when the
//! stream ends (no call-out on the request path).

use crate::export::Exporter;
use meshwarden_common::trace::span::{field_text, path_text};
use meshwarden_common::trace::{ProxySpan, SpanStatus, TracePlan};
use meshwarden_common::RequestHeaders;
use meshwarden_filter_runtime::host::{host, Map};
use std::rc::Rc;

/// Envoy attributes read when the stream ends.
const UPSTREAM_CLUSTER: [&str; 2] = ["xds", "cluster_name"];
const UPSTREAM_ADDRESS: [&str; 2] = ["upstream", "address"];

/// A span not finished yet.
pub struct OpenSpan {
    span: ProxySpan,
    exporter: Rc<Exporter>,
}

impl OpenSpan {
    /// Starts the span of the request `plan` was made for.
    pub fn start(plan: &TracePlan, headers: &RequestHeaders, exporter: Rc<Exporter>) -> Self {
        Self {
            span: ProxySpan {
                trace_id: plan.trace_id,
                span_id: plan.span_id,
                parent: plan.parent,
                start_ns: host().now_ns(),
                end_ns: 0,
                status: SpanStatus::Reset,
                method: field_text(headers.method()),
                path: path_text(headers.path()),
                upstream_cluster: None,
                upstream_host: None,
            },
            exporter,
        }
    }

    /// Response headers are going out: records their status.
    pub fn responded(&mut self) {
        let status = host()
            .header(Map::ResponseHeaders, ":status")
            .and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse::<u16>().ok());
        self.span.status = status.map_or(SpanStatus::Reset, SpanStatus::Http);
    }

    /// The stream ended: completes the span and queues it.
    pub fn finish(mut self) {
        let property = |path: &[&str]| {
            host()
                .property(path)
                .filter(|v| !v.is_empty())
                .map(|v| field_text(&v))
        };
        self.span.end_ns = host().now_ns().max(self.span.start_ns);
        self.span.upstream_cluster = property(&UPSTREAM_CLUSTER);
        self.span.upstream_host = property(&UPSTREAM_ADDRESS);
        self.exporter.push(self.span);
    }
}
