//! The HTTP side port: `GET /metrics` (Prometheus text), `GET /healthz` (the process is
//! alive), `GET /readyz` (the store is loaded and the gRPC server is listening) and
//! `GET /modules/<sha256>.wasm` (the filter modules, by content hash, for proxies that fetch
//! them over HTTP instead of reading a local path) and `GET /ratelimit/config` (the global
//! rate limit service's limits, generated from `scope: global` RateLimitPolicies:
//! [`crate::ratelimit_limits`]).

use crate::idle::IdleTimeout;
use crate::metrics::{Metrics, CONTENT_TYPE};
use crate::policy_set::SharedPolicySet;
use crate::registry::PolicyRegistry;
use crate::store::StoreHealth;
use crate::xds::modules::cached_module;
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
use tokio::sync::watch;

/// Readiness conditions, set by `serve` as startup progresses and by the store watchdog.
#[derive(Debug, Default)]
pub struct Readiness {
    store_loaded: AtomicBool,
    grpc_listening: AtomicBool,
    /// The registry whose store's health readiness reports, once loaded.
    store: OnceLock<Arc<PolicyRegistry>>,
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

    /// The store is loaded; readiness follows its health from now on.
    pub fn set_store(&self, registry: Arc<PolicyRegistry>) {
        let _ = self.store.set(registry);
        self.set_store_loaded();
    }

    /// Why the server is not ready, or `None` if it is.
    pub fn not_ready_reason(&self) -> Option<String> {
        if !self.store_loaded.load(Ordering::Acquire) {
            Some("policy store not loaded".into())
        } else if !self.grpc_listening.load(Ordering::Acquire) {
            Some("gRPC server not listening".into())
        } else {
            match self.store.get().map(|r| r.store_health()) {
                Some(StoreHealth::Failing { error, .. }) => {
                    Some(format!("policy store cannot take writes: {error}"))
                }
                _ => None,
            }
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
    /// Content-addressed module copies, for versions no longer current.
    pub module_cache: Arc<OnceLock<std::path::PathBuf>>,
    /// The current policies (for the rate limit service's limits).
    pub policies: Arc<OnceLock<watch::Receiver<SharedPolicySet>>>,
}

/// The HTTP routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/modules/{file}", get(module))
        .route(crate::ratelimit_limits::PATH, get(ratelimit_limits))
        .with_state(state)
}

/// A module by `<sha256>.wasm`: one of the current snapshot, or an earlier version kept in
/// the module cache. The file is hashed again as it is read, so different bytes are never
/// served under a hash.
async fn module(State(state): State<HttpState>, Path(file): Path<String>) -> Response {
    let not_found = || (StatusCode::NOT_FOUND, "no such module\n").into_response();
    let Some(sha) = file.strip_suffix(".wasm") else {
        return not_found();
    };
    let Some(snapshots) = state.snapshots.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response();
    };
    let snapshot = snapshots.borrow().clone();
    let path = Some(snapshot.modules.module())
        .filter(|m| m.sha256 == sha)
        .map(|m| m.path.clone())
        .or_else(|| {
            let cached = cached_module(state.module_cache.get()?, sha)?;
            cached.exists().then_some(cached)
        });
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
/// Connections on the HTTP port without a byte either way for this long are closed.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Serves `router` on `listener` until `shutdown` resolves; idle connections are closed
/// after [`IDLE_TIMEOUT`].
pub async fn serve<L>(
    listener: L,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    axum::serve(IdleTimeout::new(listener, IDLE_TIMEOUT), router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The rate limit service's limits (JSON), from the current policies.
async fn ratelimit_limits(State(state): State<HttpState>) -> Response {
    let Some(policies) = state.policies.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "policy store not loaded\n").into_response();
    };
    let set = policies.borrow().clone();
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::ratelimit_limits::limits_json(&set),
    )
        .into_response()
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
    use tokio::net::TcpListener;

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
        assert_eq!(get(addr, "/ratelimit/config").await.0, 503);

        let dir = tempfile::tempdir().unwrap();
        let reg = Arc::new(crate::registry::PolicyRegistry::open(dir.path()).unwrap());
        state.policies.set(reg.subscribe()).unwrap();
        assert_eq!(
            get(addr, "/ratelimit/config").await,
            (200, "{\n  \"domains\": []\n}\n".into())
        );
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
