//! `meshwarden-load`: open-loop HTTP/1.1 load at a fixed rate, for latency measurements.
//!
//! Request `i` is due at `start + i / rate`, whatever happened to the requests before it
//! (open loop, like wrk2): the requests are spread round-robin over `--connections`
//! keep-alive connections, one thread each, and a connection whose previous response is
//! late sends its next request late. Latency is reported twice: from the moment the request
//! was actually written (service time) and from the moment it was due (corrected for
//! coordinated omission: a stall shows up in every request it delayed). Loopback targets
//! only; the run ends after `--duration` plus a short grace period.

mod client;

use anyhow::{bail, Context};
use clap::Parser;
use client::{Connection, Outcome};
use serde_json::{json, Value};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Command line.
#[derive(Debug, Parser)]
#[command(name = "meshwarden-load", about)]
struct Args {
    /// Target, `http://127.0.0.1:<port>/<path>` (loopback only).
    #[arg(long)]
    url: String,
    /// Requests per second, in total.
    #[arg(long)]
    rate: f64,
    /// Length of the run, seconds.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Keep-alive connections (one thread each).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Write the results here as JSON (default: stdout).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// How long requests may still complete after the schedule ends.
const GRACE: Duration = Duration::from_secs(5);

/// Splits `http://host:port/path` into a loopback socket address, the host and the path.
fn parse_url(url: &str) -> anyhow::Result<(SocketAddr, String, String)> {
    let rest = url
        .strip_prefix("http://")
        .context("only http:// URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {authority}"))?
        .next()
        .context("no address")?;
    if !addr.ip().is_loopback() {
        bail!("{addr} is not a loopback address; this load generator only targets this machine");
    }
    Ok((addr, authority.to_string(), path))
}

/// Asks the kernel to wake this thread within 1 µs of the requested time instead of the
/// default 50 µs timer slack, so requests leave on schedule.
#[allow(unsafe_code)]
fn precise_sleeps() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and only affects this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

/// One finished request.
struct Record {
    /// How late the request was written, relative to when it was due.
    send_delay: Duration,
    /// Written -> response read.
    service: Duration,
    outcome: Outcome,
    done: Instant,
}

/// Nearest-rank percentiles (microseconds) of `values`.
fn percentiles(mut values: Vec<u64>) -> Value {
    values.sort_unstable();
    // `p` in thousandths of a percent, so 99.9 % is exact.
    let q = |p: usize| -> Value {
        if values.is_empty() {
            return Value::Null;
        }
        let rank = (p * values.len()).div_ceil(100_000);
        json!(values[rank.clamp(1, values.len()) - 1])
    };
    json!({
        "count": values.len(),
        "p50": q(50_000), "p90": q(90_000), "p99": q(99_000), "p999": q(99_900),
        "max": values.last().copied(),
    })
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

fn run(args: &Args) -> anyhow::Result<Value> {
    if !(args.rate > 0.0 && args.rate.is_finite()) || args.duration <= 0.0 {
        bail!("--rate and --duration must be positive");
    }
    let (addr, host, path) = parse_url(&args.url)?;
    let connections = args.connections.max(1);
    let total = (args.rate * args.duration).round().max(1.0) as usize;
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let mut conns: Vec<Connection> = (0..connections)
        .map(|_| Connection::new(addr, &host, &path))
        .collect();
    for c in &mut conns {
        c.warm()
            .with_context(|| format!("cannot connect to {addr}"))?;
    }
    let start = Instant::now() + Duration::from_millis(50);
    let give_up = start + Duration::from_secs_f64(args.duration) + GRACE;
    let per_thread: Vec<(Vec<Record>, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(k, mut conn)| {
                scope.spawn(move || {
                    precise_sleeps();
                    let mut records = Vec::with_capacity(total / connections + 1);
                    let mut skipped = 0;
                    for i in (k..total).step_by(connections) {
                        let due = start + interval * i as u32;
                        let now = Instant::now();
                        if now >= give_up {
                            skipped += 1;
                            continue;
                        }
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        let sent = Instant::now();
                        let outcome = conn.get();
                        let done = Instant::now();
                        records.push(Record {
                            send_delay: sent.saturating_duration_since(due),
                            service: done - sent,
                            outcome,
                            done,
                        });
                    }
                    (records, skipped)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let skipped: usize = per_thread.iter().map(|(_, s)| s).sum();
    let records: Vec<Record> = per_thread.into_iter().flat_map(|(r, _)| r).collect();
    let ok = |r: &&Record| matches!(r.outcome, Outcome::Status(s) if (200..300).contains(&s));
    let failed = records
        .iter()
        .filter(|r| r.outcome == Outcome::Failed)
        .count();
    let non_2xx = records.len() - failed - records.iter().filter(ok).count();
    let last = records.iter().map(|r| r.done).max().unwrap_or(start);
    let span = last.saturating_duration_since(start).as_secs_f64();
    Ok(json!({
        "url": args.url,
        "target_rps": args.rate,
        "duration_s": args.duration,
        "connections": connections,
        "scheduled": total,
        "completed": records.len(),
        "skipped": skipped,
        "failed": failed,
        "non_2xx": non_2xx,
        "achieved_rps": if span > 0.0 { records.len() as f64 / span } else { 0.0 },
        "service_us": percentiles(records.iter().filter(ok).map(|r| micros(r.service)).collect()),
        "corrected_us": percentiles(
            records.iter().filter(ok).map(|r| micros(r.send_delay + r.service)).collect()
        ),
        "send_delay_us": percentiles(records.iter().map(|r| micros(r.send_delay)).collect()),
    }))
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let result = run(&args).and_then(|report| {
        let text = serde_json::to_string_pretty(&report)? + "\n";
        match &args.json {
            Some(path) => std::fs::write(path, text)
                .with_context(|| format!("cannot write {}", path.display())),
            None => {
                print!("{text}");
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_loopback_http() {
        let (addr, host, path) = parse_url("http://127.0.0.1:8080/bench").unwrap();
        assert_eq!(
            (addr.port(), host.as_str(), path.as_str()),
            (8080, "127.0.0.1:8080", "/bench")
        );
        assert_eq!(parse_url("http://127.0.0.1:9").unwrap().2, "/");
        assert!(parse_url("https://127.0.0.1:8080/").is_err());
        assert!(parse_url("http://192.0.2.1:80/").is_err());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let p = percentiles((1..=1000).collect());
        assert_eq!(p["p50"], 500);
        assert_eq!(p["p99"], 990);
        assert_eq!(p["p999"], 999);
        assert_eq!(p["max"], 1000);
        assert_eq!(percentiles(vec![])["p50"], Value::Null);
    }
}
