//! The running service: the gRPC server, the HTTP server (`/metrics`, `/healthz`,
//! `/readyz`) and the Redis health check, started together and stopped together.

use crate::config::{ConfigError, LimitsConfig};
use crate::limits::Limits;
use crate::metrics::{Metrics, ResultLabels, CONTENT_TYPE};
use crate::service::RateLimiter;
use crate::store::{RedisStore, StoreOptions};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use meshwarden_common::ratelimit::FailureMode;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Largest gRPC request accepted.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// Most concurrent gRPC streams per connection (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`).
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// How to run the service.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// gRPC listener (`ShouldRateLimit`); port 0 picks a free port.
    pub grpc_addr: SocketAddr,
    /// HTTP listener (`/metrics`, `/healthz`, `/readyz`); port 0 picks a free port.
    pub http_addr: SocketAddr,
    /// Redis URL and bounds.
    pub redis: StoreOptions,
    /// When Redis is slow or down, for limits that do not set `failureMode`.
    pub failure_mode: FailureMode,
    /// Prefix of every bucket key in Redis.
    pub key_prefix: String,
    /// How often `/readyz` re-checks Redis (`PING`).
    pub health_interval: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 18081)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 18082)),
            redis: StoreOptions {
                url: "redis://127.0.0.1:6379".into(),
                timeout: Duration::from_millis(50),
                connect_timeout: Duration::from_secs(1),
                max_in_flight: 512,
            },
            failure_mode: FailureMode::Allow,
            key_prefix: "meshwarden:rl:".into(),
            health_interval: Duration::from_secs(1),
        }
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The limits are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An option is out of range.
    #[error("{option}: {message}")]
    Option {
        option: &'static str,
        message: String,
    },
    /// The Redis URL is malformed.
    #[error("redis URL {url:?}: {source}")]
    RedisUrl {
        url: String,
        source: redis::RedisError,
    },
    /// A listener could not be bound.
    #[error("bind {what} listener {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running service; stops (abruptly) when dropped, or gracefully with
/// [`Server::shutdown`].
#[derive(Debug)]
pub struct Server {
    /// The bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// The bound HTTP address.
    pub http_addr: SocketAddr,
    limiter: Arc<RateLimiter>,
    metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Clone)]
struct HttpState {
    limiter: Arc<RateLimiter>,
    metrics: Arc<Metrics>,
}

impl Server {
    /// Validates `config`, binds both listeners and starts serving. Redis is connected in
    /// the background: the service starts (and answers with the failure mode) while Redis
    /// is down.
    pub async fn start(opts: ServerOptions, config: &LimitsConfig) -> Result<Self, StartError> {
        config.validate()?;
        check_options(&opts)?;
        let metrics = Arc::new(Metrics::new());
        let store = RedisStore::new(&opts.redis, metrics.clone()).map_err(|source| {
            StartError::RedisUrl {
                url: opts.redis.url.clone(),
                source,
            }
        })?;
        let limiter = Arc::new(RateLimiter::new(
            Limits::new(config),
            store,
            opts.failure_mode,
            opts.key_prefix.clone(),
            metrics.clone(),
        ));
        let bind = |what, addr| async move {
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        let grpc_listener = bind("gRPC", opts.grpc_addr).await?;
        let http_listener = bind("HTTP", opts.http_addr).await?;
        let local = |l: &tokio::net::TcpListener, what, addr| {
            l.local_addr()
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        let grpc_addr = local(&grpc_listener, "gRPC", opts.grpc_addr)?;
        let http_addr = local(&http_listener, "HTTP", opts.http_addr)?;
        let (stop, stopped) = watch::channel(false);
        let until_stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };

        let grpc = RateLimitServiceServer::from_arc(limiter.clone())
            .max_decoding_message_size(MAX_REQUEST_BYTES);
        let grpc_task = tokio::spawn({
            let stopped = stopped.clone();
            async move {
                let result = tonic::transport::Server::builder()
                    .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
                    .add_service(grpc)
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(grpc_listener)
                            .with_nodelay(Some(true)),
                        until_stopped(stopped),
                    )
                    .await;
                if let Err(e) = result {
                    tracing::error!("gRPC server: {e}");
                }
            }
        });

        let router = Router::new()
            .route("/metrics", get(metrics_handler))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .with_state(HttpState {
                limiter: limiter.clone(),
                metrics: metrics.clone(),
            });
        let http_task = tokio::spawn({
            let stopped = stopped.clone();
            async move {
                let result = axum::serve(http_listener, router)
                    .with_graceful_shutdown(until_stopped(stopped))
                    .await;
                if let Err(e) = result {
                    tracing::error!("HTTP server: {e}");
                }
            }
        });

        let health_task = tokio::spawn({
            let limiter = limiter.clone();
            let interval = opts.health_interval;
            let ping_timeout = opts.redis.timeout.max(Duration::from_millis(500));
            let mut stopped = stopped.clone();
            async move {
                loop {
                    limiter.store().ping(ping_timeout).await;
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = stopped.wait_for(|s| *s) => break,
                    }
                }
            }
        });

        tracing::info!(%grpc_addr, %http_addr, "rate limit service started");
        Ok(Self {
            grpc_addr,
            http_addr,
            limiter,
            metrics,
            stop,
            tasks: vec![grpc_task, http_task, health_task],
        })
    }

    /// The service (to call [`RateLimiter::decide`] directly).
    pub fn limiter(&self) -> &Arc<RateLimiter> {
        &self.limiter
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Validates `config` and swaps it in; on error the old limits stay. Counted in
    /// `meshwarden_rls_config_reloads_total`.
    pub fn reload(&self, config: &LimitsConfig) -> Result<(), ConfigError> {
        self.count_reload(config.validate())?;
        self.limiter.set_limits(Limits::new(config));
        Ok(())
    }

    /// Reads, validates and swaps in the limits file at `path`; on error the old limits
    /// stay. Counted in `meshwarden_rls_config_reloads_total`.
    pub fn reload_file(&self, path: &Path) -> Result<(), ConfigError> {
        let config = self.count_reload(LimitsConfig::load(path))?;
        self.limiter.set_limits(Limits::new(&config));
        Ok(())
    }

    /// Parses, validates and swaps in limits from `text` (YAML or JSON, as fetched by
    /// `--config-url`); on error the old limits stay. Counted in
    /// `meshwarden_rls_config_reloads_total`.
    pub fn reload_text(&self, text: &str) -> Result<(), ConfigError> {
        let config = self.count_reload(LimitsConfig::parse(text))?;
        self.limiter.set_limits(Limits::new(&config));
        Ok(())
    }

    fn count_reload<T>(&self, result: Result<T, ConfigError>) -> Result<T, ConfigError> {
        let label = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .config_reloads
            .get_or_create(&ResultLabels { result: label })
            .inc();
        result
    }

    /// Stops accepting, lets requests in progress finish (each is bounded by the Redis
    /// timeout) and returns when both servers are down.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn check_options(opts: &ServerOptions) -> Result<(), StartError> {
    let bad = |option, message: String| Err(StartError::Option { option, message });
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    if opts.redis.timeout.is_zero() || opts.redis.timeout > Duration::from_secs(60) {
        return bad(
            "redis timeout",
            format!(
                "must be more than 0 and at most 60 s, got {} ms",
                ms(opts.redis.timeout)
            ),
        );
    }
    if opts.redis.connect_timeout.is_zero() {
        return bad("redis connect timeout", "must be more than 0".into());
    }
    if opts.redis.max_in_flight == 0 || opts.redis.max_in_flight > 1_000_000 {
        return bad(
            "max in flight",
            format!(
                "must be from 1 to 1000000, got {}",
                opts.redis.max_in_flight
            ),
        );
    }
    if opts.health_interval < Duration::from_millis(10) {
        return bad("health interval", "must be at least 10 ms".into());
    }
    if opts.key_prefix.len() > 256 {
        return bad("key prefix", "at most 256 bytes".into());
    }
    Ok(())
}

async fn metrics_handler(State(s): State<HttpState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], s.metrics.encode())
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    if s.limiter.store().is_up() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "redis unreachable: decisions use the failure mode\n",
        )
    }
}

/// Parses `50ms`, `1s`, `250us`, `1.5s`, `2m` (a number and a unit: `us`, `ms`, `s`, `m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{s:?}: add a unit: us, ms, s or m"))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit, like 50ms"))?;
    let secs = match unit {
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use us, ms, s or m")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("50").unwrap_err().contains("add a unit"));
        assert!(parse_duration("50h").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("1.2.3s").is_err());
    }

    #[test]
    fn options_are_bounded() {
        let mut o = ServerOptions::default();
        assert!(check_options(&o).is_ok());
        o.redis.timeout = Duration::ZERO;
        assert_eq!(
            check_options(&o).unwrap_err().to_string(),
            "redis timeout: must be more than 0 and at most 60 s, got 0 ms"
        );
        o.redis.timeout = Duration::from_millis(50);
        o.redis.max_in_flight = 0;
        assert_eq!(
            check_options(&o).unwrap_err().to_string(),
            "max in flight: must be from 1 to 1000000, got 0"
        );
    }
}
