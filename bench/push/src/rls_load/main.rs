//! `meshwarden-rls-load`: closed-loop load on a rate limit service
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`), for its throughput.
//!
//! `--concurrency` tasks share `--connections` HTTP/2 connections; each sends one
//! `ShouldRateLimit` after the other (one descriptor: `policy=<--policy>` and
//! `<--key>=<one of --values distinct values>`), until `--duration` has passed or
//! `--max-requests` were sent, whichever comes first. Prints decisions per second, how many
//! were OK / over the limit / errors, and latency percentiles, as JSON. Loopback only.

use anyhow::{bail, Context};
use clap::Parser;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor::Entry, RateLimitDescriptor,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

#[path = "../stats.rs"]
mod stats;

/// Command line.
#[derive(Debug, Parser)]
#[command(name = "meshwarden-rls-load", about)]
struct Args {
    /// The service's gRPC address (loopback).
    #[arg(long)]
    addr: SocketAddr,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// HTTP/2 connections the calls share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Length of the run, seconds (at most 60).
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Most calls sent in all.
    #[arg(long, default_value_t = 2_000_000)]
    max_requests: u64,
    /// The rate-limit domain.
    #[arg(long, default_value = "meshwarden")]
    domain: String,
    /// The `policy` entry's value.
    #[arg(long, default_value = "global")]
    policy: String,
    /// The second entry's key.
    #[arg(long, default_value = "x-tenant")]
    key: String,
    /// Distinct values of the second entry (one bucket each), 1 to 100000.
    #[arg(long, default_value_t = 1000)]
    values: u64,
    /// Per-call timeout, ms.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Write the results here as JSON (default: stdout).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    over: AtomicU64,
    errors: AtomicU64,
    sent: AtomicU64,
}

fn request(a: &Args, i: u64) -> RateLimitRequest {
    let entry = |key: &str, value: String| Entry {
        key: key.to_string(),
        value,
    };
    RateLimitRequest {
        domain: a.domain.clone(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![
                entry("policy", a.policy.clone()),
                entry(&a.key, format!("t{}", i % a.values)),
            ],
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn worker(
    a: Arc<Args>,
    mut client: RateLimitServiceClient<Channel>,
    counts: Arc<Counts>,
    end: Instant,
) -> Vec<Duration> {
    let mut latencies = Vec::new();
    while Instant::now() < end {
        let i = counts.sent.fetch_add(1, Ordering::Relaxed);
        if i >= a.max_requests {
            break;
        }
        let t = Instant::now();
        let r = client.should_rate_limit(request(&a, i)).await;
        latencies.push(t.elapsed());
        let counter = match r.map(|r| r.into_inner().overall_code) {
            Ok(c) if c == Code::Ok as i32 => &counts.ok,
            Ok(c) if c == Code::OverLimit as i32 => &counts.over,
            _ => &counts.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    latencies
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if !a.addr.ip().is_loopback() {
        bail!("{} is not a loopback address", a.addr);
    }
    if !(0.1..=60.0).contains(&a.duration) || !(1..=100_000).contains(&a.values) {
        bail!("--duration must be 0.1 to 60 s and --values 1 to 100000");
    }
    if a.concurrency == 0 || a.concurrency > 4096 || a.connections == 0 || a.connections > 64 {
        bail!("--concurrency must be 1 to 4096 and --connections 1 to 64");
    }
    let mut channels = Vec::new();
    for _ in 0..a.connections {
        let channel = Endpoint::from_shared(format!("http://{}", a.addr))?
            .timeout(Duration::from_millis(a.timeout_ms))
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", a.addr))?;
        channels.push(channel);
    }
    let a = Arc::new(a);
    let counts = Arc::new(Counts::default());
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.duration);
    let tasks: Vec<_> = (0..a.concurrency)
        .map(|i| {
            let client = RateLimitServiceClient::new(channels[i % channels.len()].clone());
            tokio::spawn(worker(a.clone(), client, counts.clone(), end))
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (ok, over, errors) = (
        counts.ok.load(Ordering::Relaxed),
        counts.over.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed),
    );
    let out = json!({
        "seconds": stats::round3(elapsed),
        "concurrency": a.concurrency,
        "connections": a.connections,
        "decisions": ok + over,
        "ok": ok,
        "over_limit": over,
        "errors": errors,
        "decisions_per_second": stats::round3((ok + over) as f64 / elapsed.max(1e-9)),
        "latency": stats::Summary::of(&latencies).to_json(),
    });
    let text = serde_json::to_string_pretty(&out)?;
    match &a.json {
        Some(path) => std::fs::write(path, text + "\n")?,
        None => println!("{text}"),
    }
    Ok(())
}
