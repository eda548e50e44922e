//! `meshwarden-ratelimit`: the global rate limit service for Envoy's
//! `envoy.filters.http.ratelimit` filter (and meshwarden's `scope: global` limits).
//!
//! ```text
//! meshwarden-ratelimit --config limits.yaml [--grpc-addr 127.0.0.1:18081]
//!     [--http-addr 127.0.0.1:18082] [--redis redis://127.0.0.1:6379]
//!     [--redis-timeout 50ms] [--failure-mode allow|deny] [--max-in-flight 512]
//! ```
//!
//! SIGHUP reloads the limits file (a bad file keeps the old limits); SIGTERM or SIGINT
//! stops gracefully.

use anyhow::Context;
use clap::{Parser, ValueEnum};
use meshwarden_ratelimit_service::{
    parse_duration, FailureMode, LimitsConfig, Server, ServerOptions, StoreOptions,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    /// Let requests through when Redis is slow or down.
    Allow,
    /// Answer OVER_LIMIT (Envoy: 429) when Redis is slow or down.
    Deny,
}

/// Global rate limit service (Envoy RLS API) with GCRA token buckets in Redis.
#[derive(Debug, Parser)]
#[command(name = "meshwarden-ratelimit", version)]
struct Args {
    /// The limits file (YAML).
    #[arg(long)]
    config: PathBuf,
    /// gRPC listener for envoy.service.ratelimit.v3.RateLimitService.
    #[arg(long, default_value = "127.0.0.1:18081")]
    grpc_addr: SocketAddr,
    /// HTTP listener for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:18082")]
    http_addr: SocketAddr,
    /// Redis URL.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Longest wait for Redis per decision (us, ms, s).
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    redis_timeout: Duration,
    /// Longest wait for one connection attempt to Redis.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    redis_connect_timeout: Duration,
    /// Most decisions waiting for Redis at once; more get the failure mode at once.
    #[arg(long, default_value_t = 512)]
    max_in_flight: usize,
    /// What to answer when Redis is slow or down (limits may set their own).
    #[arg(long, value_enum, default_value = "allow")]
    failure_mode: Mode,
    /// Prefix of every key in Redis.
    #[arg(long, default_value = "meshwarden:rl:")]
    key_prefix: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let config = LimitsConfig::load(&args.config)?;
    let opts = ServerOptions {
        grpc_addr: args.grpc_addr,
        http_addr: args.http_addr,
        redis: StoreOptions {
            url: args.redis.clone(),
            timeout: args.redis_timeout,
            connect_timeout: args.redis_connect_timeout,
            max_in_flight: args.max_in_flight,
        },
        failure_mode: match args.failure_mode {
            Mode::Allow => FailureMode::Allow,
            Mode::Deny => FailureMode::Deny,
        },
        key_prefix: args.key_prefix.clone(),
        ..ServerOptions::default()
    };
    let server = Server::start(opts, &config)
        .await
        .context("start the rate limit service")?;
    println!(
        "meshwarden-ratelimit: gRPC on {}, HTTP on {}, {} domain(s)",
        server.grpc_addr,
        server.http_addr,
        config.domains.len()
    );

    let mut hup = signal(SignalKind::hangup()).context("install SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                match server.reload_file(&args.config) {
                    Ok(()) => tracing::info!(config = %args.config.display(), "limits reloaded"),
                    Err(e) => tracing::error!("limits not reloaded, keeping the old ones: {e}"),
                }
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("stopping");
    server.shutdown().await;
    Ok(())
}
