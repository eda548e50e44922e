//! A span collector for end-to-end tests: accepts OTLP/HTTP protobuf (`POST /v1/traces`,
//! decoded with prost types) and Zipkin v2 JSON (`POST /api/v2/spans`), records every span
//! in one shape, and can answer slowly to play an overloaded collector.

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use meshwarden_common::trace::otlp_decode::{self, any_value::Value as V};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest request body read.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// One span as a collector received it (either format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectedSpan {
    /// Lowercase hex.
    pub trace_id: String,
    pub span_id: String,
    pub parent_id: Option<String>,
    pub name: String,
    /// Unix microseconds.
    pub start_us: u64,
    pub duration_us: u64,
    pub http_status: Option<u16>,
    pub error: bool,
    pub policy: Option<String>,
    /// The Envoy cluster and `ip:port` the request went to, if the proxy knew them.
    pub upstream_cluster: Option<String>,
    pub upstream_address: Option<String>,
    /// Which endpoint got it: `otlp` or `zipkin`.
    pub format: &'static str,
}

#[derive(Clone, Default)]
struct Shared {
    spans: Arc<Mutex<Vec<CollectedSpan>>>,
    requests: Arc<Mutex<u64>>,
    delay: Duration,
}

/// A running collector; stops when dropped.
pub struct Collector {
    pub addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    /// Starts on a free loopback port, answering every export after `delay`.
    pub async fn start(delay: Duration) -> anyhow::Result<Self> {
        let shared = Shared {
            delay,
            ..Shared::default()
        };
        let app = Router::new()
            .route("/v1/traces", post(otlp))
            .route("/api/v2/spans", post(zipkin))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    /// Spans received so far.
    pub fn spans(&self) -> Vec<CollectedSpan> {
        self.shared.spans.lock().expect("collector lock").clone()
    }

    /// Export requests received so far (answered or not).
    pub fn requests(&self) -> u64 {
        *self.shared.requests.lock().expect("collector lock")
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn body(state: &Shared, req: Request) -> Option<Vec<u8>> {
    *state.requests.lock().expect("collector lock") += 1;
    let bytes = to_bytes(req.into_body(), MAX_BODY).await.ok()?;
    tokio::time::sleep(state.delay).await;
    Some(bytes.to_vec())
}

fn record(state: &Shared, spans: Vec<CollectedSpan>) -> (StatusCode, Body) {
    state.spans.lock().expect("collector lock").extend(spans);
    (StatusCode::OK, Body::empty())
}

async fn otlp(State(state): State<Shared>, req: Request) -> (StatusCode, Body) {
    let Some(bytes) = body(&state, req).await else {
        return (StatusCode::BAD_REQUEST, Body::empty());
    };
    let Ok(export) = otlp_decode::decode(&bytes) else {
        return (StatusCode::BAD_REQUEST, Body::from("not protobuf"));
    };
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let spans = export
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .map(|s| CollectedSpan {
            trace_id: hex(&s.trace_id),
            span_id: hex(&s.span_id),
            parent_id: (!s.parent_span_id.is_empty()).then(|| hex(&s.parent_span_id)),
            name: s.name.clone(),
            start_us: s.start_time_unix_nano / 1_000,
            duration_us: s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano) / 1_000,
            http_status: match s.attribute("http.response.status_code") {
                Some(V::IntValue(code)) => u16::try_from(*code).ok(),
                _ => None,
            },
            error: s.status.as_ref().is_some_and(|st| st.code == 2),
            policy: text_attribute(s, "meshwarden.policy"),
            upstream_cluster: text_attribute(s, "upstream_cluster"),
            upstream_address: text_attribute(s, "upstream_address"),
            format: "otlp",
        })
        .collect();
    record(&state, spans)
}

fn text_attribute(span: &otlp_decode::Span, key: &str) -> Option<String> {
    match span.attribute(key) {
        Some(V::StringValue(v)) => Some(v.clone()),
        _ => None,
    }
}

async fn zipkin(State(state): State<Shared>, req: Request) -> (StatusCode, Body) {
    let Some(bytes) = body(&state, req).await else {
        return (StatusCode::BAD_REQUEST, Body::empty());
    };
    let Ok(list) = serde_json::from_slice::<Vec<serde_json::Value>>(&bytes) else {
        return (StatusCode::BAD_REQUEST, Body::from("not a JSON array"));
    };
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    let spans = list
        .iter()
        .map(|s| CollectedSpan {
            trace_id: text(&s["traceId"]).unwrap_or_default(),
            span_id: text(&s["id"]).unwrap_or_default(),
            parent_id: text(&s["parentId"]),
            name: text(&s["name"]).unwrap_or_default(),
            start_us: s["timestamp"].as_u64().unwrap_or_default(),
            duration_us: s["duration"].as_u64().unwrap_or_default(),
            http_status: text(&s["tags"]["http.status_code"]).and_then(|c| c.parse().ok()),
            error: s["tags"].get("error").is_some(),
            policy: text(&s["tags"]["meshwarden.policy"]),
            upstream_cluster: text(&s["tags"]["upstream_cluster"]),
            upstream_address: text(&s["tags"]["upstream_address"]),
            format: "zipkin",
        })
        .collect();
    record(&state, spans)
}
