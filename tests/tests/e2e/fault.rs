//! FaultPolicy in a real Envoy (`--concurrency 2`): percentages, delay accuracy, gRPC
//! aborts, TTL without a control plane, the error-ratio guard, hostile `x-envoy-fault-*`
//! headers, the cross-worker active-fault cap, response-phase faults and dry run.

use crate::support::{filter_status, FILTER};
use meshwarden_common::fault::{Random, SplitMix64};
use meshwarden_e2e::{wait_until, ControlPlane, EchoUpstream, Envoy, EnvoyOptions};
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The latency test measures alone (write lock) — no other fault test starts an Envoy or
/// sends traffic meanwhile (read lock) — so its numbers are taken under light load.
static QUIET: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

struct Stack {
    _upstream: EchoUpstream,
    cp: ControlPlane,
    envoy: Envoy,
    node_id: String,
}

async fn stack(node_id: &str) -> anyhow::Result<Stack> {
    let cp = ControlPlane::start().await?;
    let upstream = EchoUpstream::start().await?;
    let opts = EnvoyOptions {
        node_id: node_id.into(),
        ..Default::default()
    };
    let envoy = Envoy::start(&cp, upstream.addr.port(), opts).await?;
    Ok(Stack {
        _upstream: upstream,
        cp,
        envoy,
        node_id: node_id.into(),
    })
}

/// A FaultPolicy document.
fn fault_policy(name: &str, spec: &str) -> String {
    let body: Vec<String> = spec.lines().map(|l| format!("  {l}")).collect();
    format!(
        "apiVersion: meshwarden.dev/v1alpha1\nkind: FaultPolicy\nmetadata:\n  name: {name}\nspec:\n{}\n",
        body.join("\n")
    )
}

impl Stack {
    /// Applies `yaml` and waits until Envoy acknowledged the fault filter's new configuration.
    async fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        let cli = self.cp.cli();
        let before = self
            .fault_status(&cli)
            .map(|f| str_field(&f, "acceptedVersion"))
            .unwrap_or_default();
        let out = cli.apply_yaml(yaml);
        anyhow::ensure!(out.success, "apply failed: {}", out.stderr);
        let node = self.node_id.clone();
        wait_until(
            Duration::from_secs(10),
            "fault filter configuration accepted",
            || {
                let status = cli.status_json();
                let (node, before) = (node.clone(), before.clone());
                async move {
                    let f = filter_status(&status, &node, FILTER)?;
                    let accepted = str_field(&f, "acceptedVersion");
                    (accepted != before && accepted == str_field(&f, "sentVersion")).then_some(())
                }
            },
        )
        .await?;
        // An ACK precedes the workers' switch to the new configuration by a moment.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(())
    }

    fn fault_status(&self, cli: &meshwarden_e2e::Cli) -> Option<Value> {
        filter_status(&cli.status_json(), &self.node_id, FILTER)
    }

    /// A per-policy fault counter or gauge.
    async fn fault_stat(&self, policy: &str, metric: &str) -> anyhow::Result<i64> {
        self.envoy.stat(&fault_stat_name(policy, metric)).await
    }
}

/// Envoy's `/stats` name of a fault filter metric of `policy` (the runtime's scheme:
/// `meshwarden_<filter>_<metric>[_total].policy.<name>`; only `active_faults` is a gauge).
fn fault_stat_name(policy: &str, metric: &str) -> String {
    let total = if metric == "active_faults" {
        ""
    } else {
        "_total"
    };
    format!("wasmcustom.meshwarden_fault_{metric}{total}.policy.{policy}")
}

fn str_field(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// One request's outcome.
#[derive(Debug, Clone)]
struct Sample {
    status: u16,
    ms: f64,
    body: String,
}

/// Sends `n` GETs to `path` with at most `in_flight` at once (bounded by 60 s overall);
/// `headers(i)` gives request i's extra headers.
async fn load<F>(
    envoy: &Envoy,
    n: usize,
    in_flight: usize,
    path: &str,
    headers: F,
) -> anyhow::Result<Vec<Sample>>
where
    F: Fn(usize) -> Vec<(String, Vec<u8>)> + Send + Sync + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let headers = Arc::new(headers);
    let url = envoy.url(path);
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let (next, headers, url) = (next.clone(), headers.clone(), url.clone());
        let client = envoy.client().clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(out);
                }
                let mut req = client.get(&url).timeout(Duration::from_secs(10));
                for (k, v) in headers(i) {
                    req = req.header(k, v);
                }
                let t = Instant::now();
                let resp = req.send().await?;
                let status = resp.status().as_u16();
                let body = resp.text().await.unwrap_or_default();
                out.push(Sample {
                    status,
                    ms: t.elapsed().as_secs_f64() * 1000.0,
                    body,
                });
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    let joined = tokio::time::timeout(Duration::from_secs(60), async {
        for t in tasks {
            all.extend(t.await??);
        }
        Ok::<_, anyhow::Error>(())
    })
    .await;
    joined.map_err(|_| anyhow::anyhow!("load to {path} did not finish in 60 s"))??;
    Ok(all)
}

/// Whether `observed` successes of `n` trials fit `p` within a two-sided 99.9 % binomial
/// bound (normal approximation, with continuity correction). A 99 % bound failed a correct
/// filter about once in 30 runs of `make test` (several such checks per run); 99.9 % still
/// fails a broken draw (e.g. 0 % or correlated draws) by a wide margin.
fn within_binomial(observed: usize, n: usize, p: f64) -> bool {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (observed as f64 - mean).abs() <= 3.291 * sd + 0.5
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn sorted_ms(samples: &[&Sample]) -> Vec<f64> {
    let mut v: Vec<f64> = samples.iter().map(|s| s.ms).collect();
    v.sort_by(f64::total_cmp);
    v
}

async fn status_of(envoy: &Envoy, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<u16> {
    Ok(envoy.get(path, headers).await?.status().as_u16())
}

fn no_headers(_: usize) -> Vec<(String, Vec<u8>)> {
    Vec::new()
}

#[tokio::test]
async fn abort_and_delay_percentages_hold_over_2000_requests() -> anyhow::Result<()> {
    let _shared = QUIET.read().await;
    let s = stack("fault-pct").await?;
    s.apply(&fault_policy(
        "pct",
        "match: {path: {prefix: /pct}}\nabort: {httpStatus: 503, percentage: {value: 20}}\ndelay: {fixedDelay: 200ms, percentage: {value: 30}}",
    ))
    .await?;
    let n = 2000;
    let samples = load(&s.envoy, n, 32, "/pct", no_headers).await?;
    assert_eq!(samples.len(), n);
    let aborted = samples.iter().filter(|r| r.status == 503).count();
    // 150 ms splits delayed (200 ms ± half a timer tick) from not delayed (a few ms) with
    // a wide margin even on a busy machine.
    let delayed = samples.iter().filter(|r| r.ms >= 150.0).count();
    let other = samples
        .iter()
        .filter(|r| r.status != 503 && r.status != 200)
        .count();
    assert_eq!(other, 0, "only 200 and injected 503");
    assert!(
        within_binomial(aborted, n, 0.20),
        "aborted {aborted} of {n}, configured 20 %"
    );
    assert!(
        within_binomial(delayed, n, 0.30),
        "delayed {delayed} of {n}, configured 30 %"
    );
    // Independent draws: aborts among delayed requests also ~20 %.
    let both = samples
        .iter()
        .filter(|r| r.status == 503 && r.ms >= 150.0)
        .count();
    assert!(
        within_binomial(both, delayed, 0.20),
        "aborted {both} of {delayed} delayed"
    );
    assert!(samples
        .iter()
        .filter(|r| r.status == 503)
        .all(|r| r.body == "fault filter abort"));
    assert_eq!(
        s.fault_stat("pct", "aborts_injected").await?,
        aborted as i64
    );
    // The filter's own count agrees (a request slowed by outside load could be misread as
    // delayed, hence the small tolerance).
    let counted = s.fault_stat("pct", "delays_injected").await?;
    assert!(
        (counted - delayed as i64).abs() <= 5,
        "delays_injected {counted}, observed {delayed}"
    );
    Ok(())
}

/// Latency figures of one measurement round of the delay test.
struct Round {
    delayed: usize,
    p50: f64,
    p99: f64,
    min: f64,
    fast_p50: f64,
    fast_max: f64,
}

impl Round {
    /// The delay is accurate: the median within 5 ms of 100 ms, and the tail no longer than
    /// 100 ms plus the tail requests have without the policy (`base_tail`, p99 − p50 of the
    /// baseline) plus 10 ms — the proxy path's own tail on a busy 2-core machine is not the
    /// filter's inaccuracy.
    fn meets_bounds(&self, base_p50: f64, base_tail: f64) -> bool {
        (self.p50 - 100.0).abs() <= 5.0
            && self.p99 - 100.0 <= base_tail + TAIL_ALLOWANCE_MS
            && self.min >= 97.0
            && self.fast_max < 50.0
            && self.fast_p50 <= base_p50 + 2.0
    }
}

/// How much longer than the baseline's own tail (p99 − p50) a delayed request's p99 may be
/// past the delay. The tail of 150 requests on a shared 2-core machine with a debug-built
/// client is scheduling noise (seen: +16 ms with the machine otherwise idle), not the
/// filter's accuracy, which the minimum and the median check.
const TAIL_ALLOWANCE_MS: f64 = 25.0;

#[tokio::test]
async fn injected_delay_is_accurate_and_unselected_requests_are_not_delayed() -> anyhow::Result<()>
{
    let _alone = QUIET.write().await;
    let s = stack("fault-latency").await?;
    // Baseline without a policy, same load shape.
    let baseline = load(&s.envoy, 200, 8, "/lat", no_headers).await?;
    let base = sorted_ms(&baseline.iter().collect::<Vec<_>>());
    let base_p50 = percentile(&base, 0.5);
    let base_tail = (percentile(&base, 0.99) - base_p50).max(0.0);
    s.apply(&fault_policy(
        "lat",
        "match: {path: {prefix: /lat}}\ndelay: {fixedDelay: 100ms, percentage: {value: 50}}",
    ))
    .await?;

    // Light load: 8 in flight. This machine is shared with other builds and tests, so a
    // round disturbed by outside load (visible in its own numbers) is measured again, up
    // to three rounds; one round must meet every bound.
    let n = 300;
    let mut rounds = Vec::new();
    let mut injected = 0;
    for _ in 0..3 {
        let samples = load(&s.envoy, n, 8, "/lat", no_headers).await?;
        assert!(samples.iter().all(|r| r.status == 200));
        let (slow, fast): (Vec<&Sample>, Vec<&Sample>) = samples.iter().partition(|r| r.ms >= 50.0);
        assert!(
            within_binomial(slow.len(), n, 0.5),
            "{} of {n} delayed",
            slow.len()
        );
        injected += slow.len();
        let (slow, fast) = (sorted_ms(&slow), sorted_ms(&fast));
        let round = Round {
            delayed: slow.len(),
            p50: percentile(&slow, 0.5),
            p99: percentile(&slow, 0.99),
            min: slow[0],
            fast_p50: percentile(&fast, 0.5),
            fast_max: fast[fast.len() - 1],
        };
        eprintln!(
            "delay 100ms, {} delayed: min {:.2} p50 {:.2} p99 {:.2}; not delayed p50 {:.2} max {:.2} (no policy: p50 {:.2} p99 {:.2})",
            round.delayed, round.min, round.p50, round.p99, round.fast_p50, round.fast_max, base_p50, percentile(&base, 0.99)
        );
        let done = round.meets_bounds(base_p50, base_tail);
        rounds.push(round);
        if done {
            break;
        }
    }
    // The filter's own count agrees (outside load can make a request look delayed).
    let counted = s.fault_stat("lat", "delays_injected").await?;
    assert!(
        (counted - injected as i64).abs() <= 3 * rounds.len() as i64,
        "delays_injected {counted}, observed {injected}"
    );
    let last = rounds.last().expect("at least one round");
    // Released at the timer tick nearest the deadline: at most half a tick (~2 ms) early.
    assert!(last.min >= 97.0, "too short: {:.2} ms", last.min);
    assert!((last.p50 - 100.0).abs() <= 5.0, "p50 {:.2} ms", last.p50);
    assert!(
        last.p99 - 100.0 <= base_tail + TAIL_ALLOWANCE_MS,
        "p99 {:.2} ms (the baseline's own p99 - p50 is {base_tail:.2} ms)",
        last.p99
    );
    // Not selected: nowhere near the delay, and as fast as without the policy.
    assert!(
        last.fast_max < 50.0,
        "an unselected request took {:.2} ms",
        last.fast_max
    );
    assert!(
        last.fast_p50 <= base_p50 + 2.0,
        "unselected p50 {:.2} ms vs {base_p50:.2} ms without the policy",
        last.fast_p50
    );
    Ok(())
}

/// A codec for a unary call with an empty message (valid for any protobuf message type);
/// the calls under test are answered by the proxy, so nothing needs decoding.
#[derive(Clone, Copy, Default)]
struct EmptyCodec;

impl tonic::codec::Encoder for EmptyCodec {
    type Item = ();
    type Error = tonic::Status;
    fn encode(&mut self, _: (), _: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        Ok(())
    }
}

impl tonic::codec::Decoder for EmptyCodec {
    type Item = ();
    type Error = tonic::Status;
    fn decode(&mut self, _: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        Ok(Some(()))
    }
}

impl tonic::codec::Codec for EmptyCodec {
    type Encode = ();
    type Decode = ();
    type Encoder = EmptyCodec;
    type Decoder = EmptyCodec;
    fn encoder(&mut self) -> EmptyCodec {
        EmptyCodec
    }
    fn decoder(&mut self) -> EmptyCodec {
        EmptyCodec
    }
}

async fn grpc_call(
    envoy: &Envoy,
    method: &'static str,
    metadata: &[(&'static str, &'static str)],
) -> anyhow::Result<tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(envoy.url(""))?
        .timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let mut req = tonic::Request::new(());
    for (k, v) in metadata {
        req.metadata_mut().insert(*k, v.parse()?);
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
    match grpc.unary::<(), (), _>(req, path, EmptyCodec).await {
        Ok(_) => anyhow::bail!("{method} unexpectedly succeeded"),
        Err(status) => Ok(status),
    }
}

#[tokio::test]
async fn grpc_abort_is_seen_by_a_grpc_client_as_the_configured_status() -> anyhow::Result<()> {
    let _shared = QUIET.read().await;
    let s = stack("fault-grpc").await?;
    let policies = format!(
        "{}---\n{}",
        fault_policy(
            "grpc-by-name",
            "match: {path: {prefix: /meshwarden.test.Echo/}}\nabort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}, body: injected by meshwarden}",
        ),
        fault_policy(
            "grpc-by-number",
            "match: {path: {prefix: /meshwarden.test.Other/}}\nabort: {grpcStatus: 8, percentage: {value: 100}}\nheaderControl: {enabled: true, anyCaller: true, allowedGrpcStatuses: [DEADLINE_EXCEEDED]}",
        )
    );
    s.apply(&policies).await?;

    let status = grpc_call(&s.envoy, "/meshwarden.test.Echo/Say", &[]).await?;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "injected by meshwarden");

    let status = grpc_call(&s.envoy, "/meshwarden.test.Other/Say", &[]).await?;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), "fault filter abort");
    // A caller-requested gRPC status, allowed by the policy, replaces the configured one.
    let status = grpc_call(
        &s.envoy,
        "/meshwarden.test.Other/Say",
        &[("x-envoy-fault-abort-grpc-request", "4")],
    )
    .await?;
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(s.fault_stat("grpc-by-name", "aborts_injected").await? >= 1);
    Ok(())
}

#[tokio::test]
async fn ttl_stops_injection_at_expiry_with_the_control_plane_gone() -> anyhow::Result<()> {
    let _shared = QUIET.read().await;
    let mut s = stack("fault-ttl").await?;
    let applied = Instant::now();
    s.apply(&fault_policy("ttl", "match: {path: {prefix: /ttl}}\nabort: {httpStatus: 503, percentage: {value: 100}}\nttl: 3s")).await?;
    let effective = applied.elapsed();
    assert!(
        effective < Duration::from_millis(2500),
        "policy took {effective:?} to apply"
    );
    s.cp.kill9();

    // Poll for 6 s after apply; the TTL runs from when Envoy received the policy (after
    // `applied`), so requests up to 2.9 s after apply are faulted, later ones (with 0.5 s
    // slack for delivery) are not.
    let mut seen = Vec::new();
    while applied.elapsed() < Duration::from_secs(6) {
        let status = s.envoy.get("/ttl", &[]).await?.status().as_u16();
        seen.push((applied.elapsed(), status));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before: Vec<_> = seen
        .iter()
        .filter(|(t, _)| *t < Duration::from_millis(2900))
        .collect();
    let after: Vec<_> = seen
        .iter()
        .filter(|(t, _)| *t > effective + Duration::from_millis(3500))
        .collect();
    assert!(
        !before.is_empty() && before.iter().all(|(_, st)| *st == 503),
        "faulted until expiry: {before:?}"
    );
    assert!(
        !after.is_empty() && after.iter().all(|(_, st)| *st == 200),
        "no faults after expiry: {after:?}"
    );
    Ok(())
}

#[tokio::test]
async fn guard_suspends_injection_while_upstream_fails_and_resumes_after_recovery(
) -> anyhow::Result<()> {
    let _shared = QUIET.read().await;
    let s = stack("fault-guard").await?;
    s.apply(&fault_policy(
        "guarded",
        "match: {path: {prefix: /guard}}\nabort: {httpStatus: 418, percentage: {value: 50}}\nguard: {maxErrorRatio: 0.2, window: 2s, minRequests: 10}",
    ))
    .await?;
    let failing = [("x-echo-status", "503")];
    // Healthy upstream: faults are injected.
    let mut injected = 0;
    for _ in 0..40 {
        injected += usize::from(status_of(&s.envoy, "/guard", &[]).await? == 418);
    }
    assert!(injected > 5, "faults injected while healthy: {injected}/40");

    // The upstream fails on its own: the guard trips and only real 503s come back.
    let t = Instant::now();
    let mut clean_run = 0;
    while clean_run < 40 {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(5),
            "guard did not suspend injection"
        );
        match status_of(&s.envoy, "/guard", &failing).await? {
            503 => clean_run += 1,
            418 => clean_run = 0,
            other => anyhow::bail!("unexpected status {other}"),
        }
    }
    assert!(s.fault_stat("guarded", "suppressed_by_guard").await? > 0);

    // Recovery: still suspended at first (the window remembers the failures), then
    // injection resumes once the failures slide out of the 2 s window.
    let t = Instant::now();
    let mut first_resumed = None;
    let mut healthy_before = 0;
    while first_resumed.is_none() {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(6),
            "injection did not resume"
        );
        match status_of(&s.envoy, "/guard", &[]).await? {
            418 => first_resumed = Some(t.elapsed()),
            200 => healthy_before += 1,
            other => anyhow::bail!("unexpected status {other}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        healthy_before >= 10,
        "suspended right after recovery ({healthy_before} clean responses first)"
    );
    Ok(())
}

/// Header values a hostile caller might send (all valid on the wire, so they reach Envoy).
fn hostile_value(rng: &mut SplitMix64) -> Vec<u8> {
    const NASTY: [&str; 22] = [
        "",
        " ",
        "0",
        "1",
        "199",
        "200",
        "599",
        "600",
        "503",
        "429",
        "-1",
        "+1",
        "1e9",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999999999",
        "NaN",
        "inf",
        "100.0000001",
        "0x10",
        "\t42\t",
        "4 2",
    ];
    match rng.next_u64() % 4 {
        0 => NASTY[(rng.next_u64() % NASTY.len() as u64) as usize]
            .as_bytes()
            .to_vec(),
        1 => (rng.next_u64() % 100_000_000).to_string().into_bytes(),
        2 => format!("{}.{}", rng.next_u64() % 1000, rng.next_u64() % 1_000_000).into_bytes(),
        _ => {
            let len = 1 + (rng.next_u64() % 40) as usize;
            // Visible ASCII and obs-text: what an HTTP/1.1 client may legally send.
            (0..len)
                .map(|_| match (rng.next_u64() % 96) as u8 {
                    b @ 0..=93 => b + 0x21,
                    _ => 0xe9,
                })
                .collect()
        }
    }
}

#[tokio::test]
async fn hostile_fault_headers_never_crash_the_filter_or_exceed_caps() -> anyhow::Result<()> {
    let _shared = QUIET.read().await;
    let s = stack("fault-hostile").await?;
    s.apply(&fault_policy(
        "headers",
        "match: {path: {prefix: /hostile}}\nheaderControl:\n  enabled: true\n  maxDelay: 30ms\n  maxPercentage: {value: 25}\n  allowedStatuses: [429, 503]\n  allowedGrpcStatuses: [UNAVAILABLE]\n  anyCaller: true",
    ))
    .await?;

    let names = [
        "x-envoy-fault-abort-request",
        "x-envoy-fault-abort-grpc-request",
        "x-envoy-fault-abort-request-percentage",
        "x-envoy-fault-delay-request",
        "x-envoy-fault-delay-request-percentage",
    ];
    let n = 3000;
    let samples = load(&s.envoy, n, 32, "/hostile", move |i| {
        let mut rng = SplitMix64(0x0bad_5eed ^ i as u64);
        let mut h = Vec::new();
        for name in names {
            for _ in 0..rng.next_u64() % 3 {
                h.push((name.to_string(), hostile_value(&mut rng)));
            }
        }
        h
    })
    .await?;
    assert_eq!(samples.len(), n);
    for r in &samples {
        // 200: not faulted, or a gRPC abort answered to this plain HTTP request; 429/503:
        // allowed aborts. Any other status means a cap was exceeded (or the filter failed).
        assert!(
            matches!(r.status, 200 | 429 | 503),
            "status {} escaped the caps",
            r.status
        );
    }
    let max_ms = samples.iter().map(|r| r.ms).fold(0.0, f64::max);
    // Requested delays go up to 10^8 ms; the 30 ms cap keeps every request short.
    assert!(
        max_ms < 1000.0,
        "a request took {max_ms:.0} ms despite maxDelay 30ms"
    );
    assert!(samples.iter().any(|r| r.status == 503) && samples.iter().any(|r| r.status == 429));

    // Asking for 100 % gets at most the 25 % cap.
    let m = 1000;
    let capped = load(&s.envoy, m, 16, "/hostile", |_| {
        vec![
            ("x-envoy-fault-abort-request".to_string(), b"503".to_vec()),
            (
                "x-envoy-fault-abort-request-percentage".to_string(),
                b"100".to_vec(),
            ),
        ]
    })
    .await?;
    let aborted = capped.iter().filter(|r| r.status == 503).count();
    assert!(
        within_binomial(aborted, m, 0.25),
        "{aborted} of {m} aborted, cap 25 %"
    );

    // Envoy and the filter are alive and well.
    assert_eq!(s.envoy.get("/hostile", &[]).await?.status().as_u16(), 200);
    let log = s.envoy.log();
    for bad in ["panicked", "Function: proxy_on", "wasm trap", "unreachable"] {
        assert!(
            !log.contains(bad),
            "Envoy log shows a filter failure ({bad}):\n{log}"
        );
    }
    let stats = s.envoy.stats().await?;
    let failures: Vec<_> = stats
        .iter()
        .filter(|(k, v)| k.starts_with("wasm.") && k.contains("fail") && **v > 0)
        .collect();
    assert!(failures.is_empty(), "wasm failure stats: {failures:?}");
    assert!(s.fault_stat("headers", "aborts_injected").await? > 0);
    Ok(())
}

#[tokio::test]
async fn max_active_faults_holds_across_workers() -> anyhow::Result<()> {
    let _shared = QUIET.read().await;
    let s = stack("fault-active").await?;
    s.apply(&fault_policy(
        "capped",
        "match: {path: {prefix: /active}}\ndelay: {fixedDelay: 600ms, percentage: {value: 100}}\nmaxActiveFaults: 3",
    ))
    .await?;
    let n = 12;
    // One connection per request, so both workers get some.
    let mut tasks = Vec::new();
    for _ in 0..n {
        let url = s.envoy.url("/active");
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()?;
            let t = Instant::now();
            let st = client
                .get(url)
                .timeout(Duration::from_secs(5))
                .send()
                .await?
                .status()
                .as_u16();
            Ok::<_, anyhow::Error>((st, t.elapsed()))
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let active_mid_flight = s.fault_stat("capped", "active_faults").await?;
    let mut delayed = 0;
    for t in tasks {
        let (status, took) = t.await??;
        assert_eq!(status, 200);
        delayed += usize::from(took >= Duration::from_millis(590));
    }
    assert_eq!(
        delayed, 3,
        "exactly maxActiveFaults requests delayed at once"
    );
    assert_eq!(active_mid_flight, 3);
    assert_eq!(
        s.fault_stat("capped", "faults_overflow").await?,
        (n - 3) as i64
    );
    assert_eq!(
        s.fault_stat("capped", "active_faults").await?,
        0,
        "slots are given back"
    );
    // Slots were returned: the next request is delayed again.
    let t = Instant::now();
    s.envoy.get("/active", &[]).await?;
    assert!(t.elapsed() >= Duration::from_millis(590));
    Ok(())
}

#[tokio::test]
async fn response_phase_faults_sticky_source_and_dry_run() -> anyhow::Result<()> {
    let _shared = QUIET.read().await;
    let s = stack("fault-misc").await?;
    let docs = [
        fault_policy("override", "match: {path: {exact: /override}}\nresponseOverride: {httpStatus: 502, percentage: {value: 100}, headers: {x-fault: override}}"),
        fault_policy("override-body", "match: {path: {exact: /override-body}}\nresponseOverride: {httpStatus: 500, percentage: {value: 100}, body: replaced}"),
        fault_policy("slow-response", "match: {path: {exact: /slow-response}}\nresponseDelay: {fixedDelay: 150ms, percentage: {value: 100}}"),
        fault_policy("dry", "match: {path: {exact: /dry}}\nabort: {httpStatus: 503, percentage: {value: 100}}\ndryRun: true"),
        fault_policy("sticky", "match: {path: {exact: /sticky}}\nabort: {httpStatus: 503, percentage: {value: 50}}\nsticky: {header: x-user-id, seed: 7}"),
        fault_policy("custom-abort", "match: {path: {exact: /custom-abort}}\nabort:\n  httpStatus: 429\n  percentage: {value: 100}\n  body: '{\"error\":\"slow down\"}'\n  headers: {content-type: application/json, retry-after: \"2\"}"),
        fault_policy("from-web", "match: {path: {exact: /source}}\nabort: {httpStatus: 503, percentage: {value: 100}}\nsource: {clusters: [web], trustHeaders: true}"),
    ];
    s.apply(&docs.join("---\n")).await?;

    // An abort with the policy's own body and headers.
    let r = s.envoy.get("/custom-abort", &[]).await?;
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.headers()["retry-after"], "2");
    assert_eq!(r.text().await?, r#"{"error":"slow down"}"#);

    // Response override keeps the upstream's body (it did the work) but changes the status.
    let r = s.envoy.get("/override", &[]).await?;
    assert_eq!(r.status().as_u16(), 502);
    assert_eq!(r.headers()["x-fault"], "override");
    assert!(
        r.text().await?.contains("\"path\":\"/override\""),
        "upstream answered"
    );
    let r = s.envoy.get("/override-body", &[]).await?;
    assert_eq!(r.status().as_u16(), 500);
    assert_eq!(r.text().await?, "replaced");

    let t = Instant::now();
    let r = s.envoy.get("/slow-response", &[]).await?;
    assert_eq!(r.status().as_u16(), 200);
    assert!(t.elapsed() >= Duration::from_millis(147));
    assert_eq!(
        s.fault_stat("slow-response", "response_delays_injected")
            .await?,
        1
    );

    for _ in 0..20 {
        assert_eq!(
            s.envoy.get("/dry", &[]).await?.status().as_u16(),
            200,
            "dry run injects nothing"
        );
    }
    assert_eq!(s.fault_stat("dry", "would_inject").await?, 20);
    assert_eq!(s.fault_stat("dry", "aborts_injected").await?, 0);

    // Sticky: each user always or never; about half of the users.
    let mut faulted_users = 0;
    let users = 200;
    for u in 0..users {
        let id = format!("user-{u}");
        let first = s
            .envoy
            .get("/sticky", &[("x-user-id", &id)])
            .await?
            .status()
            .as_u16();
        for _ in 0..2 {
            assert_eq!(
                s.envoy
                    .get("/sticky", &[("x-user-id", &id)])
                    .await?
                    .status()
                    .as_u16(),
                first,
                "{id}"
            );
        }
        faulted_users += usize::from(first == 503);
    }
    assert!(
        within_binomial(faulted_users, users, 0.5),
        "{faulted_users} of {users} users"
    );
    assert_eq!(
        s.envoy.get("/sticky", &[]).await?.status().as_u16(),
        200,
        "no key, no fault"
    );

    // Source targeting by the downstream cluster header.
    let web = [("x-envoy-downstream-service-cluster", "web")];
    assert_eq!(s.envoy.get("/source", &web).await?.status().as_u16(), 503);
    let api = [("x-envoy-downstream-service-cluster", "api")];
    assert_eq!(s.envoy.get("/source", &api).await?.status().as_u16(), 200);
    assert_eq!(s.envoy.get("/source", &[]).await?.status().as_u16(), 200);
    Ok(())
}

#[tokio::test]
async fn invalid_fault_policy_is_rejected_with_the_field() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let cli = cp.cli();
    for (spec, field, problem) in [
        (
            "abort: {httpStatus: 700, percentage: {value: 1}}",
            "spec.abort.httpStatus",
            "200 to 599",
        ),
        (
            "abort: {httpStatus: 503, percentage: {value: 101}}",
            "spec.abort.percentage.value",
            "0 to 100",
        ),
        (
            "delay: {fixedDelay: soon, percentage: {value: 1}}",
            "spec.delay.fixedDelay",
            "250ms",
        ),
        (
            "abort: {httpStatus: 503, percentage: {value: 1}}\nttl: 0s",
            "spec.ttl",
            "longer than 0",
        ),
    ] {
        let out = cli.apply_yaml(&fault_policy("bad", spec));
        assert!(!out.success, "{spec} must be rejected");
        assert!(
            out.stderr.contains(field) && out.stderr.contains(problem),
            "{spec}: {}",
            out.stderr
        );
    }
    Ok(())
}
