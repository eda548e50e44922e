//! RateLimitPolicy `shedding` in a real Envoy (`--concurrency 2`, every request on a fresh
//! connection so both workers take part): the adaptive limit converges on an upstream whose
//! latency rises with concurrency and sheds the excess with 503 + `Retry-After`; the
//! utilization form admits its share of a declared capacity; a critical class is admitted
//! while normal requests are shed. Assertions are on counts, gauges and the upstream's
//! in-flight peak, never on timing.

use crate::support::{policy, WorkersStack};
use meshwarden_e2e::wait_until;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The shared stack, with this file's helpers.
struct Stack(WorkersStack);

impl std::ops::Deref for Stack {
    type Target = WorkersStack;
    fn deref(&self) -> &WorkersStack {
        &self.0
    }
}

/// One answer: status and `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    status: u16,
    retry_after: Option<String>,
}

async fn stack(node_id: &str) -> anyhow::Result<Arc<Stack>> {
    Ok(Arc::new(Stack(
        WorkersStack::start(node_id, Duration::from_secs(20)).await?,
    )))
}

impl Stack {
    /// Applies a RateLimitPolicy and waits until Envoy took it.
    async fn apply(&self, name: &str, spec: &str) -> anyhow::Result<()> {
        self.0.apply(&policy("RateLimitPolicy", name, spec)).await
    }

    /// GET `/work` with `headers` on a new connection.
    async fn get(&self, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
        let r = self.send("/work", headers).await?;
        Ok(Reply {
            status: r.status().as_u16(),
            retry_after: r
                .headers()
                .get("retry-after")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        })
    }

    /// `meshwarden_ratelimit_<metric>` of `policy`.
    async fn stat(&self, metric: &str, policy: &str) -> anyhow::Result<i64> {
        self.envoy
            .policy_stat(&format!("meshwarden_ratelimit_{metric}"), policy)
            .await
    }

    /// `meshwarden_ratelimit_shed_total` of `policy` and `class`.
    async fn shed(&self, policy: &str, class: &str) -> anyhow::Result<i64> {
        self.stat(&format!("shed_total.class.{class}"), policy)
            .await
    }

    /// `n` requests at once, each with `headers`; their replies.
    async fn burst(
        self: &Arc<Self>,
        n: usize,
        headers: &'static [(&'static str, &'static str)],
    ) -> anyhow::Result<Vec<Reply>> {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let s = self.clone();
                tokio::spawn(async move { s.get(headers).await })
            })
            .collect();
        let mut replies = Vec::new();
        for t in tasks {
            replies.push(t.await??);
        }
        Ok(replies)
    }
}

fn count(replies: &[Reply], status: u16) -> usize {
    replies.iter().filter(|r| r.status == status).count()
}

/// Latency `20 ms + 5 ms × in flight` at the upstream.
const RISING: &[(&str, &str)] = &[
    ("x-echo-delay-ms", "20"),
    ("x-echo-delay-per-inflight-ms", "5"),
];

#[tokio::test]
async fn the_adaptive_limit_converges_and_sheds_the_excess_with_503() -> anyhow::Result<()> {
    let s = stack("shed-adaptive").await?;
    s.apply(
        "adaptive",
        "match: {path: {prefix: /work}}\n\
         shedding:\n\
         \x20 adaptive: {minLimit: 2, initialLimit: 20, maxLimit: 200, minRttRequests: 10, sampleWindow: 100ms}",
    )
    .await?;
    // Bounded overload: 40 clients share a budget of 1600 requests, so all 40 keep
    // sending until it is spent; a shed client pauses 10 ms.
    const CLIENTS: usize = 40;
    let budget = Arc::new(AtomicUsize::new(1600));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (s, budget) = (s.clone(), budget.clone());
            tokio::spawn(async move {
                let mut replies = Vec::new();
                while budget
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let r = s.get(RISING).await?;
                    if r.status != 200 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    replies.push(r);
                }
                anyhow::Ok(replies)
            })
        })
        .collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.extend(t.await??);
    }
    let (ok, shed) = (count(&replies, 200), count(&replies, 503));
    assert_eq!(ok + shed, replies.len(), "only 200 and 503");
    assert!(ok > 0 && shed > 0, "{ok} admitted, {shed} shed");
    assert!(replies
        .iter()
        .filter(|r| r.status == 503)
        .all(|r| r.retry_after.as_deref() == Some("1")));
    let limit = s.stat("concurrency_limit", "adaptive").await?;
    eprintln!(
        "adaptive: {ok} admitted, {shed} shed, limit {limit}, upstream peak {}",
        s.upstream.peak_in_flight()
    );
    assert!(
        (3..CLIENTS as i64).contains(&limit),
        "the limit ({limit}) settles below the offered concurrency and above the floor (minLimit 2)"
    );
    assert!(
        s.upstream.peak_in_flight() < CLIENTS as u64,
        "the upstream never saw the whole load (peak {})",
        s.upstream.peak_in_flight()
    );
    assert_eq!(s.shed("adaptive", "default").await?, shed as i64);
    assert_eq!(
        s.stat("concurrency_limited_total", "adaptive").await?,
        shed as i64
    );
    Ok(())
}

#[tokio::test]
async fn utilization_admits_its_share_of_the_capacity() -> anyhow::Result<()> {
    let s = stack("shed-utilization").await?;
    s.apply(
        "pool",
        "match: {path: {prefix: /work}}\n\
         shedding:\n\
         \x20 utilization: {capacity: 10, threshold: {value: 80}}",
    )
    .await?;
    // 20 requests at once, each held 3 s by the upstream: all arrive while the first
    // admitted ones are still in flight.
    let replies = s.burst(20, &[("x-echo-delay-ms", "3000")]).await?;
    assert_eq!(count(&replies, 200), 8, "{replies:?}");
    assert_eq!(count(&replies, 503), 12);
    assert_eq!(s.upstream.peak_in_flight(), 8);
    assert_eq!(s.shed("pool", "default").await?, 12);
    assert_eq!(s.stat("concurrency_limit", "pool").await?, 8);
    Ok(())
}

#[tokio::test]
async fn a_critical_request_is_admitted_while_normal_ones_are_shed() -> anyhow::Result<()> {
    let s = stack("shed-classes").await?;
    s.apply(
        "tiers",
        "match: {path: {prefix: /work}}\n\
         shedding:\n\
         \x20 utilization: {capacity: 4}\n\
         \x20 defaultShare: {value: 50}\n\
         \x20 classes:\n\
         \x20 - name: critical\n\
         \x20   match: {headers: [{name: x-priority, exact: critical}]}\n\
         \x20 status: 429\n\
         \x20 retryAfter: 2s",
    )
    .await?;
    // Two slow normal requests fill the normal class's half of the limit.
    let slow = {
        let s = s.clone();
        tokio::spawn(async move { s.burst(2, &[("x-echo-delay-ms", "4000")]).await })
    };
    wait_until(Duration::from_secs(10), "two requests in flight", || {
        let s = s.clone();
        async move { (s.upstream.in_flight() == 2).then_some(()) }
    })
    .await?;
    let normal = s.get(&[]).await?;
    assert_eq!(
        normal,
        Reply {
            status: 429,
            retry_after: Some("2".into())
        }
    );
    let critical = s.get(&[("x-priority", "critical")]).await?;
    assert_eq!(
        critical.status, 200,
        "the critical class may use the whole limit"
    );
    assert!(slow.await??.iter().all(|r| r.status == 200));
    assert_eq!(s.shed("tiers", "default").await?, 1);
    assert_eq!(s.shed("tiers", "critical").await?, 0);
    let prometheus = s.envoy.prometheus().await?;
    let labelled = |class: &str, value: &str| {
        prometheus.lines().any(|l| {
            l.starts_with("meshwarden_ratelimit_shed_total{")
                && l.contains(&format!("class=\"{class}\""))
                && l.contains("policy=\"tiers\"")
                && l.ends_with(&format!("}} {value}"))
        })
    };
    assert!(
        labelled("default", "1") && labelled("critical", "0"),
        "the class is a label: {prometheus}"
    );
    Ok(())
}
