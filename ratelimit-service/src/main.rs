//! `meshwarden-ratelimit`: the global rate limit service for Envoy's
//! `envoy.filters.http.ratelimit` filter (and meshwarden's `scope: global` limits).
//!
//! ```text
//! meshwarden-ratelimit (--config limits.yaml | --config-url URL [--config-poll 5s])
//!     [--grpc-addr 127.0.0.1:18081]
//!     [--http-addr 127.0.0.1:18082] [--redis redis://127.0.0.1:6379]
//!     [--redis-timeout 50ms] [--failure-mode allow|deny] [--max-in-flight 512]
//! ```
//!
//! SIGHUP reloads the limits file (a bad file keeps the old limits); `--config-url` is
//! polled instead (a failed fetch or bad content keeps the last good limits). SIGTERM or
//! SIGINT stops gracefully.

use anyhow::Context;
use clap::{Parser, ValueEnum};
use meshwarden_ratelimit_service::source::{self, MAX_POLL, MIN_POLL};
use meshwarden_ratelimit_service::{
    parse_duration, ConfigUrl, FailureMode, LimitsConfig, Server, ServerOptions, StoreOptions,
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
    #[arg(
        long,
        required_unless_present = "config_url",
        conflicts_with = "config_url"
    )]
    config: Option<PathBuf>,
    /// Fetch the limits from this http:// URL instead (the control plane's
    /// /ratelimit/config), polled every --config-poll.
    #[arg(long)]
    config_url: Option<String>,
    /// How often --config-url is polled (100ms to 5m).
    #[arg(long, default_value = "5s", value_parser = parse_poll)]
    config_poll: Duration,
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

fn parse_poll(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if !(MIN_POLL..=MAX_POLL).contains(&d) {
        return Err(format!("must be from 100ms to 5m, got {s}"));
    }
    Ok(d)
}

/// Where the limits come from.
enum Source {
    File(PathBuf),
    Url(ConfigUrl),
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
    let (source, config, text) = match (&args.config, &args.config_url) {
        (Some(path), _) => (Source::File(path.clone()), LimitsConfig::load(path)?, None),
        (None, Some(url)) => {
            let fetcher = ConfigUrl::new(url, args.config_poll.min(Duration::from_secs(5)))?;
            // The first fetch may fail (control plane not up yet): start without limits
            // (every descriptor OK) and keep polling.
            match fetcher.load().await {
                Ok((text, config)) => (Source::Url(fetcher), config, Some(text)),
                Err(e) => {
                    tracing::error!("no limits yet, polling {url}: {e:#}");
                    (Source::Url(fetcher), LimitsConfig::default(), None)
                }
            }
        }
        (None, None) => anyhow::bail!("--config or --config-url is required"),
    };
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
    let mut poll = Box::pin(async {
        match &source {
            Source::Url(url) => source::poll(&server, url, args.config_poll, text).await,
            Source::File(_) => std::future::pending().await,
        }
    });
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let Source::File(path) = &source else { continue };
                match server.reload_file(path) {
                    Ok(()) => tracing::info!(config = %path.display(), "limits reloaded"),
                    Err(e) => tracing::error!("limits not reloaded, keeping the old ones: {e}"),
                }
            }
            _ = &mut poll => {}
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    drop(poll);
    tracing::info!("stopping");
    server.shutdown().await;
    Ok(())
}
