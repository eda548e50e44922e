//! The HTTP side port: `GET /metrics` (Prometheus text), `GET /healthz` (the process is
//! alive), `GET /readyz` (the store is loaded and the gRPC server is listening) and
//! `GET /modules/<sha256>.wasm` (the filter modules, by content hash, for proxies that fetch
//! them over HTTP instead of reading a local path).

use crate::metrics::{Metrics, CONTENT_TYPE};
use crate::xds::Snapshot;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Readiness conditions, set by `serve` as startup progresses.
#[derive(Debug, Default)]
pub struct Readiness {
    store_loaded: AtomicBool,
    grpc_listening: AtomicBool,
}

impl Readiness {
    /// The policy store is loaded.
    pub fn set_store_loaded(&self) {
        self.store_loaded.store(true, Ordering::Release);
    }

    /// The gRPC listener is bound and being served.
    pub fn set_grpc_listening(&self) {
        self.grpc_listening.store(true, Ordering::Release);
    }

    /// Why the server is not ready, or `None` if it is.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if !self.store_loaded.load(Ordering::Acquire) {
            Some("policy store not loaded")
        } else if !self.grpc_listening.load(Ordering::Acquire) {
            Some("gRPC server not listening")
        } else {
            None
        }
    }
}

/// Shared state of the HTTP handlers. `metrics` and `snapshots` are set once the store is
/// open and the xDS side started.
#[derive(Debug, Clone, Default)]
pub struct HttpState {
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<OnceLock<Metrics>>,
    pub snapshots: Arc<OnceLock<watch::Receiver<Arc<Snapshot>>>>,
}

/// The HTTP routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/modules/{file}", get(module))
        .with_state(state)
}

/// A module of the current snapshot by `<sha256>.wasm`. The file is hashed again as it is
/// read, so a module rebuilt since the snapshot is never served under the old hash.
async fn module(State(state): State<HttpState>, Path(file): Path<String>) -> Response {
    let not_found = || (StatusCode::NOT_FOUND, "no such module\n").into_response();
    let Some(sha) = file.strip_suffix(".wasm") else {
        return not_found();
    };
    let Some(snapshots) = state.snapshots.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response();
    };
    let snapshot = snapshots.borrow().clone();
    let path = snapshot
        .modules
        .iter()
        .find(|m| m.sha256 == sha)
        .map(|m| m.path.clone());
    let Some(path) = path else {
        return not_found();
    };
    let sha = sha.to_string();
    let read = tokio::task::spawn_blocking(move || std::fs::read(&path)).await;
    match read {
        Ok(Ok(bytes)) if hex::encode(Sha256::digest(&bytes)) == sha => {
            ([(header::CONTENT_TYPE, "application/wasm")], bytes).into_response()
        }
        Ok(Ok(_)) => (
            StatusCode::CONFLICT,
            "module changed on disk since it was advertised; a new version follows\n",
        )
            .into_response(),
        _ => not_found(),
    }
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn readyz(State(state): State<HttpState>) -> Response {
    match state.readiness.not_ready_reason() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let Some(metrics) = state.metrics.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "metrics not ready\n").into_response();
    };
    match metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let out = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(req.as_bytes()).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .await
        .unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
        (status, body)
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let state = HttpState::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router(state.clone()), async {
            let _ = rx.await;
        }));

        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
        assert_eq!(get(addr, "/readyz").await.0, 503);
        assert_eq!(get(addr, "/metrics").await.0, 503);

        let dir = tempfile::tempdir().unwrap();
        let reg = Arc::new(crate::registry::PolicyRegistry::open(dir.path()).unwrap());
        state.metrics.set(Metrics::new(reg)).unwrap();
        state.readiness.set_store_loaded();
        assert_eq!(
            get(addr, "/readyz").await,
            (503, "gRPC server not listening\n".into())
        );
        state.readiness.set_grpc_listening();
        assert_eq!(get(addr, "/readyz").await.0, 200);
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("meshwarden_store_generation 0"), "{body}");

        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
