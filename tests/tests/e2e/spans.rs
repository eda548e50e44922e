//! Spans of the proxy hop (`TracePolicy.spec.export`) in a real Envoy: each sampled request
//! becomes exactly one span at an OTLP/HTTP or Zipkin collector, whose id is the parent id
//! the upstream received; an unreachable or slow collector changes nothing for the
//! traffic, and its failures and drops are counted.

use crate::support::{parse_traceparent, trace_policy};
use meshwarden_e2e::EnvoyOptions;
use meshwarden_e2e::{wait_until, CollectedSpan, Collector, ControlPlane, EchoUpstream, Envoy};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A control plane, an upstream, and a one-worker Envoy with extra `clusters`.
struct Stack {
    upstream: EchoUpstream,
    cp: ControlPlane,
    envoy: Envoy,
}

impl Stack {
    async fn start(node_id: &str, clusters: Vec<(String, SocketAddr)>) -> anyhow::Result<Self> {
        let cp = ControlPlane::start().await?;
        let upstream = EchoUpstream::start().await?;
        let opts = EnvoyOptions {
            node_id: node_id.into(),
            // One worker: one queue, so "nothing more came" is meaningful.
            concurrency: 1,
            clusters,
            ..Default::default()
        };
        let envoy = Envoy::start(&cp, upstream.addr.port(), opts).await?;
        Ok(Self {
            upstream,
            cp,
            envoy,
        })
    }

    /// Applies `policies` (YAML documents) and waits until requests under `prefix` are
    /// traced.
    async fn apply(&self, policies: &[String], prefix: &str) -> anyhow::Result<()> {
        let out = self.cp.cli().apply_yaml(&policies.join("---\n"));
        anyhow::ensure!(out.success, "apply failed: {}", out.stderr);
        let n = AtomicUsize::new(0);
        wait_until(
            Duration::from_secs(20),
            "the trace policies are enforced",
            || {
                let path = format!("{prefix}/ready/{}", n.fetch_add(1, Ordering::Relaxed));
                async move {
                    self.envoy.get(&path, &[]).await.ok()?;
                    self.upstream
                        .last_with_path(&path)?
                        .header("traceparent")
                        .map(|_| ())
                }
            },
        )
        .await
    }

    /// One request with an incoming sampled trace `trace` (parent `00f067aa0ba902b7`);
    /// returns the HTTP status and the parent id the upstream received.
    async fn send(
        &self,
        path: &str,
        trace: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<(u16, String)> {
        let tp = format!("00-{trace}-{INCOMING_PARENT}-01");
        let mut headers = vec![("traceparent", tp.as_str())];
        headers.extend_from_slice(extra);
        let status = self.envoy.get(path, &headers).await?.status().as_u16();
        let seen = self
            .upstream
            .last_with_path(path)
            .ok_or_else(|| anyhow::anyhow!("upstream never saw {path}"))?;
        let (got_trace, parent, _) =
            parse_traceparent(&seen.header("traceparent").unwrap_or_default())
                .ok_or_else(|| anyhow::anyhow!("no valid traceparent upstream for {path}"))?;
        anyhow::ensure!(got_trace == trace, "trace id changed for {path}");
        Ok((status, parent))
    }

    async fn stat(&self, metric: &str, policy: &str) -> i64 {
        let name = format!("meshwarden_trace_{metric}_total");
        self.envoy.policy_stat(&name, policy).await.unwrap_or(0)
    }
}

/// A request of a test: path, extra headers, expected status.
type Case = (&'static str, &'static [(&'static str, &'static str)], u16);

const INCOMING_PARENT: &str = "00f067aa0ba902b7";

/// An exporting TracePolicy for paths under `prefix`.
fn exporting(name: &str, prefix: &str, export: &str) -> String {
    trace_policy(
        name,
        &format!("formats: [w3c]\nmatch:\n  path: {{prefix: {prefix}}}\nexport: {{{export}}}"),
    )
}

/// A distinct trace id per request of a test.
fn trace_id(test: u8, i: u8) -> String {
    format!("4bf92f3577b34da6a3ce929d0e0e{test:02x}{i:02x}")
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Waits until `collector` has a span of every trace in `traces`; returns those spans.
async fn spans_of(collector: &Collector, traces: &[String]) -> anyhow::Result<Vec<CollectedSpan>> {
    wait_until(
        Duration::from_secs(15),
        "the collector got every span",
        || async {
            let spans: Vec<CollectedSpan> = collector
                .spans()
                .into_iter()
                .filter(|s| traces.contains(&s.trace_id))
                .collect();
            traces
                .iter()
                .all(|t| spans.iter().any(|s| &s.trace_id == t))
                .then_some(spans)
        },
    )
    .await
}

#[tokio::test]
async fn each_sampled_request_is_one_span_whose_id_the_upstream_got_as_parent() -> anyhow::Result<()>
{
    let collector = Collector::start(Duration::ZERO).await?;
    let clusters = vec![("collector".to_string(), collector.addr)];
    let s = Stack::start("spans-ids", clusters).await?;
    s.apply(
        &[
            exporting(
                "otlp",
                "/otlp",
                "cluster: collector, maxBatch: 4, flushInterval: 200ms",
            ),
            exporting(
                "zipkin",
                "/zipkin",
                "cluster: collector, format: zipkin, flushInterval: 200ms",
            ),
        ],
        "/otlp",
    )
    .await?;

    let started_us = now_us();
    // (path, extra headers, expected status) per request; each its own trace.
    let cases: [Case; 5] = [
        ("/otlp/ok", &[], 200),
        ("/otlp/slow", &[("x-echo-delay-ms", "150")], 200),
        ("/otlp/broken", &[("x-echo-status", "503")], 503),
        ("/zipkin/ok", &[], 200),
        ("/zipkin/broken", &[("x-echo-status", "500")], 500),
    ];
    let mut traces = Vec::new();
    let mut parents = Vec::new();
    for (i, (path, extra, want)) in cases.iter().enumerate() {
        let trace = trace_id(1, i as u8);
        let (status, parent) = s.send(path, &trace, extra).await?;
        assert_eq!(status, *want, "{path}");
        traces.push(trace);
        parents.push(parent);
    }
    // Not sampled by the caller: no span.
    let unsampled = trace_id(1, 0xff);
    let tp = format!("00-{unsampled}-{INCOMING_PARENT}-00");
    s.envoy
        .get("/otlp/unsampled", &[("traceparent", &tp)])
        .await?;

    let spans = spans_of(&collector, &traces).await?;
    let ended_us = now_us();
    for (i, (path, _, status)) in cases.iter().enumerate() {
        let mine: Vec<&CollectedSpan> =
            spans.iter().filter(|sp| sp.trace_id == traces[i]).collect();
        assert_eq!(mine.len(), 1, "exactly one span for {path}: {mine:?}");
        let span = mine[0];
        assert_eq!(
            span.span_id, parents[i],
            "{path}: the span is the upstream's parent"
        );
        assert_eq!(span.parent_id.as_deref(), Some(INCOMING_PARENT), "{path}");
        assert_eq!(span.http_status, Some(*status), "{path}");
        assert_eq!(span.error, *status >= 500, "{path}");
        assert!(span.name.starts_with("GET /"), "{path}: {}", span.name);
        assert!(
            (started_us..=ended_us).contains(&span.start_us),
            "{path}: start {} outside the test's window",
            span.start_us
        );
        let format = if path.starts_with("/zipkin") {
            "zipkin"
        } else {
            "otlp"
        };
        assert_eq!(span.format, format, "{path}");
        assert_eq!(span.policy.as_deref(), Some(format), "{path}");
        assert_eq!(span.upstream_cluster.as_deref(), Some("upstream"), "{path}");
        let upstream = s.upstream.addr.to_string();
        assert_eq!(
            span.upstream_address.as_deref(),
            Some(upstream.as_str()),
            "{path}"
        );
    }
    let slow = spans.iter().find(|sp| sp.trace_id == traces[1]).unwrap();
    assert!(
        slow.duration_us >= 150_000,
        "the span covers the upstream's delay: {slow:?}"
    );

    // Later spans have arrived by now: still nothing for the unsampled request, nothing twice.
    let marker = trace_id(1, 0xfe);
    s.send("/otlp/marker", &marker, &[]).await?;
    spans_of(&collector, std::slice::from_ref(&marker)).await?;
    let all = collector.spans();
    assert!(
        all.iter().all(|sp| sp.trace_id != unsampled),
        "an unsampled request made a span"
    );
    for t in &traces {
        assert_eq!(all.iter().filter(|sp| &sp.trace_id == t).count(), 1);
    }
    assert!(s.stat("spans_exported", "otlp").await >= 4);
    assert_eq!(s.stat("spans_dropped", "otlp").await, 0);
    Ok(())
}

#[tokio::test]
async fn a_dead_or_slow_collector_changes_nothing_for_the_traffic() -> anyhow::Result<()> {
    // Answers after 3 s: calls stay out, the queue fills, spans are dropped.
    let slow = Collector::start(Duration::from_secs(3)).await?;
    let dead: SocketAddr = format!("127.0.0.1:{}", meshwarden_e2e::ports::free_port()).parse()?;
    let clusters = vec![("dead".to_string(), dead), ("slow".to_string(), slow.addr)];
    let s = Stack::start("spans-down", clusters).await?;
    s.apply(
        &[
            exporting(
                "dead",
                "/dead",
                "cluster: dead, maxBatch: 1, flushInterval: 10ms, timeout: 250ms",
            ),
            exporting(
                "slow",
                "/slow",
                "cluster: slow, maxBatch: 1, maxQueue: 1, flushInterval: 10ms, timeout: 10s",
            ),
        ],
        "/dead",
    )
    .await?;

    for i in 0..20u8 {
        for prefix in ["/dead", "/slow"] {
            let path = format!("{prefix}/{i}");
            let (status, _) = s.send(&path, &trace_id(2, i), &[]).await?;
            assert_eq!(
                status, 200,
                "{path} failed while the collector is down or slow"
            );
        }
    }
    wait_until(
        Duration::from_secs(15),
        "failures and drops are counted",
        || async {
            let failed = s.stat("spans_failed", "dead").await;
            let dropped = s.stat("spans_dropped", "slow").await;
            (failed >= 1 && dropped >= 1).then_some(())
        },
    )
    .await?;
    assert_eq!(s.stat("spans_exported", "dead").await, 0);
    // The slow collector does answer in the end: what it got is counted as exported.
    wait_until(
        Duration::from_secs(15),
        "the slow collector's answers",
        || async { (s.stat("spans_exported", "slow").await >= 1).then_some(()) },
    )
    .await?;
    assert!(
        slow.requests() <= 20,
        "no more calls than spans: {}",
        slow.requests()
    );
    Ok(())
}
