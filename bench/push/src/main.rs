//! `meshwarden-push-bench`: how fast a policy change reaches N proxies.
//!
//! For each N it starts a fresh `meshwarden serve`, applies a TracePolicy, connects N
//! simulated proxies over ADS (each subscribing to the four meshwarden ECDS resources and
//! ACKing every response), then changes the policy `--pushes` times and measures, from the
//! moment the Apply call is made, when each proxy has received and ACKed the new version.
//! It also reports the control plane's resident memory per connected proxy and its CPU time.
//!
//! With `--replicas N` (N > 1) it starts a real etcd and N replicas sharing it, spreads the
//! proxies' connections over them and applies on the first: the latency then includes the
//! etcd commit, the other replicas' watch and their reload.

mod control_plane;
mod fleet;
mod profiler;
mod stats;

use anyhow::{bail, Context};
use clap::Parser;
use control_plane::{usage_of, ControlPlane, Usage};
use fleet::{Event, Fleet, RESOURCES};
use serde_json::{json, Value};
use stats::{round3, Summary};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Command line.
#[derive(Debug, Parser)]
#[command(name = "meshwarden-push-bench", about)]
struct Args {
    /// The `meshwarden` binary to benchmark.
    #[arg(long, default_value = "target/release/meshwarden")]
    meshwarden: PathBuf,
    /// Directory with the four `meshwarden_<filter>.wasm` modules (needed by `serve`).
    #[arg(long, default_value = "target/filters")]
    wasm_dir: PathBuf,
    /// Fleet sizes, comma separated; each gets a fresh control plane.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    proxies: Vec<usize>,
    /// Policy changes measured per fleet size.
    #[arg(long, default_value_t = 5)]
    pushes: u64,
    /// ADS streams multiplexed on one HTTP/2 connection.
    #[arg(long, default_value_t = 100)]
    streams_per_connection: usize,
    /// Longest wait for a fleet to connect or for one change to reach every proxy.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    /// Pause between two changes, so each is measured on its own.
    #[arg(long, default_value_t = 300)]
    pause_ms: u64,
    /// Write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Control-plane replicas sharing one etcd (started by the benchmark); 1: one control
    /// plane on its embedded store.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Record a perf profile of the control plane during the changes pushed to the largest
    /// fleet into this file (needs `perf`).
    #[arg(long)]
    perf_data: Option<PathBuf>,
}

/// Latencies (since a start instant) of one event per proxy.
struct Arrivals {
    received: Vec<Duration>,
    acked: Vec<Duration>,
}

/// Waits until every proxy of the fleet has ACKed a configuration carrying `push`.
async fn wait_for_push(
    events: &mut mpsc::UnboundedReceiver<Event>,
    proxies: usize,
    push: u64,
    since: Instant,
    timeout: Duration,
) -> anyhow::Result<Arrivals> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = vec![false; proxies];
    let mut out = Arrivals {
        received: Vec::with_capacity(proxies),
        acked: Vec::with_capacity(proxies),
    };
    while out.acked.len() < proxies {
        let event = match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => bail!("all simulated proxies are gone"),
            Err(_) => bail!(
                "{} of {proxies} proxies had not ACKed change {push} after {timeout:?}",
                proxies - out.acked.len()
            ),
        };
        match event {
            Event::Ended { proxy, reason } => bail!("simulated proxy {proxy}: {reason}"),
            Event::Config {
                proxy,
                push: Some(p),
                resources,
                received,
                acked,
            } if p == push && !seen[proxy] => {
                if resources != RESOURCES.len() {
                    bail!(
                        "proxy {proxy} got {resources} resources, expected {}",
                        RESOURCES.len()
                    );
                }
                seen[proxy] = true;
                out.received.push(received.saturating_duration_since(since));
                out.acked.push(acked.saturating_duration_since(since));
            }
            Event::Config { .. } => {}
        }
    }
    Ok(out)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One fleet size: fresh control plane, connect, change the policy `pushes` times.
async fn run_size(args: &Args, proxies: usize) -> anyhow::Result<Value> {
    let work = std::env::temp_dir().join(format!(
        "meshwarden-push-bench-{}-{proxies}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&work);
    let etcd = match args.replicas {
        0 | 1 => None,
        _ => Some(meshwarden_e2e::etcd::Etcd::start().await?),
    };
    let mut cps = Vec::new();
    for replica in 0..args.replicas.max(1) {
        let extra: Vec<String> = match &etcd {
            Some(etcd) => vec![
                "--store".into(),
                etcd.url(),
                "--replica-id".into(),
                format!("bench-{replica}"),
            ],
            None => Vec::new(),
        };
        let dir = work.join(format!("replica-{replica}"));
        cps.push(ControlPlane::start(&args.meshwarden, &args.wasm_dir, &dir, &extra).await?);
    }
    let result = measure(args, &cps, proxies).await;
    if result.is_err() {
        for cp in &cps {
            eprintln!("control plane log:\n{}", cp.log_tail());
        }
    }
    for cp in cps {
        cp.stop().await;
    }
    drop(etcd);
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// Resident memory and CPU time summed over every replica.
fn usage(cps: &[ControlPlane]) -> anyhow::Result<Usage> {
    let mut total = Usage {
        rss_bytes: 0,
        cpu_ms: 0.0,
    };
    for cp in cps {
        let u = cp.usage()?;
        total.rss_bytes += u.rss_bytes;
        total.cpu_ms += u.cpu_ms;
    }
    Ok(total)
}

/// Applies on the first replica; the fleet is spread over all of them.
async fn measure(args: &Args, cps: &[ControlPlane], proxies: usize) -> anyhow::Result<Value> {
    let cp = &cps[0];
    let timeout = Duration::from_secs(args.timeout_secs);
    let mut api = cp.policy_client().await?;
    api.apply_push(0).await.context("initial policy")?;
    // Let the snapshotter publish the initial policy before anything connects.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = usage(cps)?;

    let (tx, mut events) = mpsc::unbounded_channel();
    let started = Instant::now();
    let urls: Vec<String> = cps.iter().map(|cp| cp.grpc_url.clone()).collect();
    // With replicas, at least one connection per replica, so the fleet spreads over all.
    let per = args
        .streams_per_connection
        .min(proxies.div_ceil(urls.len()).max(1));
    let fleet = Fleet::connect(&urls, proxies, per, tx).await?;
    let connect = wait_for_push(&mut events, proxies, 0, started, timeout)
        .await
        .context("connecting the fleet")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connected = usage(cps)?;
    let per_proxy = (connected.rss_bytes as f64 - idle.rss_bytes as f64) / proxies as f64;
    println!(
        "N={proxies}: {} connections, all connected and ACKed in {:.1} ms; CP RSS {:.1} MiB -> {:.1} MiB ({:.1} KB/proxy)",
        fleet.connections,
        Summary::of(&connect.acked).max,
        idle.rss_bytes as f64 / 1048576.0,
        connected.rss_bytes as f64 / 1048576.0,
        per_proxy / 1000.0
    );

    let largest = args.proxies.iter().copied().max() == Some(proxies);
    let profiler = match &args.perf_data {
        Some(path) if largest => profiler::Profiler::start(cp.pid(), path),
        _ => None,
    };
    let mut all_received = Vec::new();
    let mut all_acked = Vec::new();
    let mut per_push = Vec::new();
    for push in 1..=args.pushes {
        tokio::time::sleep(Duration::from_millis(args.pause_ms)).await;
        let before: Usage = usage(cps)?;
        let client_before = usage_of(std::process::id())?;
        let t0 = Instant::now();
        api.apply_push(push).await?;
        let apply_ms = t0.elapsed().as_secs_f64() * 1e3;
        let arrivals = wait_for_push(&mut events, proxies, push, t0, timeout).await?;
        let after = usage(cps)?;
        let client_cpu_ms = usage_of(std::process::id())?.cpu_ms - client_before.cpu_ms;
        let s = Summary::of(&arrivals.acked);
        println!(
            "N={proxies} change {push}: apply {apply_ms:.1} ms, ACKed p50 {:.1} p99 {:.1} max {:.1} ms; CPU: control plane {:.0} ms, simulated proxies {client_cpu_ms:.0} ms",
            s.p50,
            s.p99,
            s.max,
            after.cpu_ms - before.cpu_ms
        );
        per_push.push(json!({
            "push": push,
            "apply_ms": round3(apply_ms),
            "acked": s.to_json(),
            "cp_cpu_ms": round3(after.cpu_ms - before.cpu_ms),
            "client_cpu_ms": round3(client_cpu_ms),
        }));
        all_received.extend(arrivals.received);
        all_acked.extend(arrivals.acked);
    }
    if let Some(p) = profiler {
        p.stop();
    }
    let end = usage(cps)?;
    let connections = fleet.connections;
    fleet.close().await;

    let maxima: Vec<f64> = per_push
        .iter()
        .filter_map(|p| p["acked"]["max_ms"].as_f64())
        .collect();
    let field =
        |name: &str| -> Vec<f64> { per_push.iter().filter_map(|p| p[name].as_f64()).collect() };
    let (cpu, client_cpu) = (field("cp_cpu_ms"), field("client_cpu_ms"));
    Ok(json!({
        "proxies": proxies,
        "connections": connections,
        "connect": {
            "acked": Summary::of(&connect.acked).to_json(),
            "cp_cpu_ms": round3(connected.cpu_ms - idle.cpu_ms),
        },
        "cp_rss_idle_bytes": idle.rss_bytes,
        "cp_rss_connected_bytes": connected.rss_bytes,
        "cp_rss_end_bytes": end.rss_bytes,
        "cp_rss_per_proxy_bytes": per_proxy.round(),
        "push": {
            "acked": Summary::of(&all_acked).to_json(),
            "received": Summary::of(&all_received).to_json(),
            "all_acked_ms_median": round3(median(maxima)),
            "cp_cpu_ms_median": round3(median(cpu)),
            "client_cpu_ms_median": round3(median(client_cpu)),
            "per_push": per_push,
        },
    }))
}

async fn run(args: Args) -> anyhow::Result<()> {
    if !args.meshwarden.is_file() {
        bail!(
            "{} not found (build it: cargo build --release -p meshwarden-control-plane)",
            args.meshwarden.display()
        );
    }
    let mut runs = Vec::new();
    for &n in &args.proxies {
        let run = run_size(&args, n)
            .await
            .with_context(|| format!("N={n} proxies"))?;
        runs.push(run);
    }
    let report = json!({
        "meshwarden": args.meshwarden.display().to_string(),
        "pushes": args.pushes,
        "streams_per_connection": args.streams_per_connection,
        "protocol": "sotw",
        "replicas": args.replicas.max(1),
        "store": if args.replicas > 1 { "etcd" } else { "redb" },
        "runs": runs,
    });
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
