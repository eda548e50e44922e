//! The summary of one request while it runs: started with the request headers, given its
//! status and response headers by the response, and handed to its reporter's queue when
//! the stream ends (no call on the request path).

use crate::report::Reporter;
use meshwarden_common::capture::{self, select_headers, CaptureRecord, CaptureSpec};
use meshwarden_common::trace::span::{field_text, path_text};
use meshwarden_common::trace::SpanStatus;
use meshwarden_common::RequestHeaders;
use meshwarden_filter_runtime::host::{host, Map};
use std::rc::Rc;

/// Envoy attributes read when the stream ends.
const UPSTREAM_CLUSTER: [&str; 2] = ["xds", "cluster_name"];
const UPSTREAM_ADDRESS: [&str; 2] = ["upstream", "address"];
const REQUEST_SIZE: [&str; 2] = ["request", "total_size"];
const RESPONSE_SIZE: [&str; 2] = ["response", "total_size"];

/// A summary not finished yet.
pub struct OpenRecord {
    record: CaptureRecord,
    spec: CaptureSpec,
    reporter: Rc<Reporter>,
}

impl OpenRecord {
    /// Starts the summary of the request `headers` belong to, for `policy`.
    pub fn start(
        policy: &str,
        spec: &CaptureSpec,
        headers: &RequestHeaders,
        reporter: Rc<Reporter>,
    ) -> Self {
        let request_headers = select_headers(spec, false, |name| {
            headers
                .get_all(name)
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>()
        });
        Self {
            record: CaptureRecord {
                policy: policy.to_string(),
                start_ns: host().now_ns(),
                duration_ns: 0,
                method: field_text(headers.method()),
                authority: field_text(headers.authority()),
                path: path_text(headers.path()),
                status: SpanStatus::Reset,
                upstream_cluster: None,
                upstream_host: None,
                trace_id: capture::trace_id(headers),
                request_bytes: 0,
                response_bytes: 0,
                headers: request_headers,
            },
            spec: spec.clone(),
            reporter,
        }
    }

    /// Response headers are going out: records their status and allow-listed headers.
    pub fn responded(&mut self) {
        let status = host()
            .header(Map::ResponseHeaders, ":status")
            .and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse::<u16>().ok());
        self.record.status = status.map_or(SpanStatus::Reset, SpanStatus::Http);
        if !self.spec.headers.is_empty() {
            let all = host().headers(Map::ResponseHeaders);
            let response = select_headers(&self.spec, true, |name| {
                all.iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.clone())
                    .collect::<Vec<_>>()
            });
            self.record.headers.extend(response);
        }
    }

    /// The stream ended: completes the summary and queues it.
    pub fn finish(mut self) {
        let text = |path: &[&str]| {
            host()
                .property(path)
                .filter(|v| !v.is_empty())
                .map(|v| field_text(&v))
        };
        let size = |path: &[&str]| {
            host()
                .property(path)
                .and_then(|v| Some(u64::from_le_bytes(v.get(..8)?.try_into().ok()?)))
                .unwrap_or(0)
        };
        let r = &mut self.record;
        r.duration_ns = host().now_ns().saturating_sub(r.start_ns);
        r.upstream_cluster = text(&UPSTREAM_CLUSTER);
        r.upstream_host = text(&UPSTREAM_ADDRESS);
        r.request_bytes = size(&REQUEST_SIZE);
        r.response_bytes = size(&RESPONSE_SIZE);
        self.reporter.push(self.record);
    }
}
