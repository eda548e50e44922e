//! An echo upstream that records every request it receives.
//!
//! It answers `200` with a JSON echo of the request. A request may steer the answer:
//! `x-echo-status: 503` sets the status, `x-echo-delay-ms: 250` delays it.

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::net::SocketAddr;
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

/// A running echo upstream; stops when dropped.
pub struct EchoUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<RecordedRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoUpstream {
    /// Starts on `addr` (use port 0 for any free port).
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<Self> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new().fallback(echo).with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, seen, task })
    }

    /// Starts on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().expect("literal address")).await
    }

    /// The requests seen so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.seen.lock().expect("upstream lock").clone()
    }

    /// The most recent request whose path is `path`.
    pub fn last_with_path(&self, path: &str) -> Option<RecordedRequest> {
        self.requests().into_iter().rev().find(|r| r.path == path)
    }

    /// How many requests with path `path` were seen.
    pub fn requests_with_path(&self, path: &str) -> usize {
        self.seen
            .lock()
            .expect("upstream lock")
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    /// Forgets the requests seen so far.
    pub fn clear(&self) {
        self.seen.lock().expect("upstream lock").clear();
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

async fn echo(State(seen): State<Arc<Mutex<Vec<RecordedRequest>>>>, req: Request) -> Response {
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
    seen.lock().expect("upstream lock").push(recorded);
    if let Some(ms) = header_number(&parts.headers, "x-echo-delay-ms") {
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
