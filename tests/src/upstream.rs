//! An echo upstream that records every request it receives.
//!
//! It answers `200` with a JSON echo of the request. A request may steer the answer:
//! `x-echo-status: 503` sets the status, `x-echo-delay-ms: 250` delays it, and
//! `x-echo-delay-per-inflight-ms: 5` adds 5 ms per request in flight at the upstream
//! (itself included) — an upstream whose latency rises with concurrency. The upstream
//! counts requests in flight and remembers the peak.

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest request body the upstream reads.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// Every value of header `name` (lowercase), lossily as text.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    /// The single value of header `name`, if it occurs exactly once.
    pub fn header(&self, name: &str) -> Option<String> {
        let all = self.header_all(name);
        (all.len() == 1).then(|| all[0].clone())
    }
}

/// What the handler shares with the test.
#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<RecordedRequest>>,
    in_flight: AtomicU64,
    peak: AtomicU64,
}

/// A running echo upstream; stops when dropped.
pub struct EchoUpstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoUpstream {
    /// Starts on `addr` (use port 0 for any free port).
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared::default());
        let app = Router::new().fallback(echo).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    /// Starts on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().expect("literal address")).await
    }

    /// The requests seen so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.seen.lock().expect("upstream lock").clone()
    }

    /// Most requests in flight at once since the start (or [`EchoUpstream::reset_peak`]).
    pub fn peak_in_flight(&self) -> u64 {
        self.shared.peak.load(Ordering::SeqCst)
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u64 {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Starts measuring the peak anew.
    pub fn reset_peak(&self) {
        self.shared.peak.store(
            self.shared.in_flight.load(Ordering::SeqCst),
            Ordering::SeqCst,
        );
    }

    /// The most recent request whose path is `path`.
    pub fn last_with_path(&self, path: &str) -> Option<RecordedRequest> {
        self.requests().into_iter().rev().find(|r| r.path == path)
    }

    /// How many requests with path `path` were seen.
    pub fn requests_with_path(&self, path: &str) -> usize {
        self.shared
            .seen
            .lock()
            .expect("upstream lock")
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    /// Forgets the requests seen so far.
    pub fn clear(&self) {
        self.shared.seen.lock().expect("upstream lock").clear();
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn header_number(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Counts a request in flight until dropped (also when the client goes away mid-way).
struct InFlight<'a>(&'a Shared);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn echo(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.peak.fetch_max(now, Ordering::SeqCst);
    let _guard = InFlight(&shared);
    let (parts, body) = req.into_parts();
    let body = to_bytes(body, MAX_BODY).await.unwrap_or_default().to_vec();
    let recorded = RecordedRequest {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.path().to_string())
            .unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
            .collect(),
        body,
    };
    let echo = serde_json::json!({
        "method": recorded.method,
        "path": recorded.path,
        "headers": recorded.headers.iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect::<Vec<_>>(),
        "bodyBytes": recorded.body.len(),
    });
    shared.seen.lock().expect("upstream lock").push(recorded);
    let base = header_number(&parts.headers, "x-echo-delay-ms").unwrap_or(0);
    let per_request = header_number(&parts.headers, "x-echo-delay-per-inflight-ms").unwrap_or(0);
    let ms = base.saturating_add(per_request.saturating_mul(now));
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }
    let status = header_number(&parts.headers, "x-echo-status")
        .and_then(|s| StatusCode::from_u16(s as u16).ok())
        .unwrap_or(StatusCode::OK);
    (
        status,
        [("content-type", "application/json")],
        Body::from(echo.to_string()),
    )
        .into_response()
}
