//! Hostile input through Envoy to every filter (issue 12): with a trace, rate-limit, fault
//! and mirror policy applied, oversized and heavily repeated headers, non-UTF-8 header
//! bytes in every header a filter parses, a huge body through a mirror policy and a flood
//! of distinct rate-limit keys. After each, Envoy still serves, and its allocated memory
//! and resident set (which includes the Wasm VMs' linear memory) stay within
//! [`ALLOCATED_GROWTH_BOUND`] and [`RESIDENT_GROWTH_BOUND`] of what they were once the
//! policies were running.

use crate::support::{parse_traceparent, policy, trace_policy, wait_accepted_change, FILTER};
use meshwarden_e2e::raw_http::{get_request, send};
use meshwarden_e2e::{wait_until, ControlPlane, EchoUpstream, Envoy, EnvoyOptions};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most growth of Envoy's allocated memory (admin `/memory`) over the whole test, as the
/// README's limits document. The filters' shared state is bounded well below it (the
/// rate-limit key table is `maxKeys` fixed slots); the rest is Envoy's buffers and
/// connection state.
const ALLOCATED_GROWTH_BOUND: u64 = 16 << 20;
/// Most growth of Envoy's resident set over the whole test (Wasm linear memory included).
const RESIDENT_GROWTH_BOUND: u64 = 64 << 20;
/// Distinct rate-limit keys sent (if the time bound allows).
const FLOOD_KEYS: usize = 20_000;
/// How long the flood may take.
const FLOOD_TIME: Duration = Duration::from_secs(25);
/// `maxKeys` of the flooded policy.
const MAX_KEYS: usize = 1_000;
/// The huge request body.
const HUGE_BODY: usize = 8 << 20;

/// Envoy, its upstream, a mirror target, and the baseline memory figure.
struct Stack {
    cp: ControlPlane,
    up: EchoUpstream,
    shadow: EchoUpstream,
    envoy: Envoy,
    /// Allocated and resident bytes once the policies were running.
    baseline: (u64, u64),
}

impl Stack {
    async fn start() -> anyhow::Result<Self> {
        let cp = ControlPlane::start().await?;
        let up = EchoUpstream::start().await?;
        let shadow = EchoUpstream::start().await?;
        let envoy = Envoy::start(&cp, up.addr.port(), EnvoyOptions::default()).await?;
        let before = crate::support::accepted_version(&cp.cli(), "test-proxy", FILTER);
        let docs = [
            trace_policy("t", "formats: [w3c, b3, requestId]"),
            policy(
                "RateLimitPolicy",
                "tenants",
                &format!(
                    "match: {{path: {{prefix: /rl}}}}\nrate: {{requests: 1, unit: hour}}\ndescriptors: [{{header: x-tenant}}]\nmaxKeys: {MAX_KEYS}"
                ),
            ),
            policy(
                "FaultPolicy",
                "asked",
                "match: {path: {prefix: /f}}\nheaderControl: {enabled: true, anyCaller: true, maxDelay: 10ms}",
            ),
            policy(
                "MirrorPolicy",
                "copy",
                &format!(
                    "match: {{path: {{prefix: /m}}}}\nmirrors: [{{target: {{host: \"127.0.0.1:{}\"}}}}]\nmethods: [POST]\nmaxBodyBytes: 65536",
                    shadow.addr.port()
                ),
            ),
        ];
        let applied = cp.cli().apply_yaml(&docs.join("---\n"));
        anyhow::ensure!(applied.success, "{}", applied.stderr);
        wait_accepted_change(&cp.cli(), "test-proxy", FILTER, &before).await?;
        let mut s = Self {
            cp,
            up,
            shadow,
            envoy,
            baseline: (0, 0),
        };
        s.wait_for_mirror().await?;
        s.baseline = (s.envoy.memory_allocated().await?, s.envoy.resident_bytes()?);
        println!(
            "envoy with the policies running: {} KiB allocated, {} KiB resident",
            s.baseline.0 >> 10,
            s.baseline.1 >> 10
        );
        Ok(s)
    }

    /// Posts small bodies until a copy reaches the shadow (its cluster came over CDS).
    async fn wait_for_mirror(&self) -> anyhow::Result<()> {
        let c = self.envoy.client();
        wait_until(Duration::from_secs(20), "first mirrored copy", || async {
            let _ = c
                .post(self.envoy.url("/m/warmup"))
                .body("hello")
                .send()
                .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            (self.shadow.requests_with_path("/m/warmup") > 0).then_some(())
        })
        .await
        .map(|_| ())
    }

    /// Envoy still answers a plain request, and its memory is within bound; prints it.
    async fn check(&self, after: &str) -> anyhow::Result<()> {
        let status = self.envoy.get("/healthy", &[]).await?.status().as_u16();
        assert_eq!(status, 200, "Envoy serves after {after}");
        let allocated = self.envoy.memory_allocated().await?;
        let resident = self.envoy.resident_bytes()?;
        let (a0, r0) = self.baseline;
        println!(
            "after {after}: {} KiB allocated ({:+} KiB), {} KiB resident ({:+} KiB)",
            allocated >> 10,
            (allocated as i64 - a0 as i64) >> 10,
            resident >> 10,
            (resident as i64 - r0 as i64) >> 10
        );
        assert!(
            allocated <= a0 + ALLOCATED_GROWTH_BOUND,
            "after {after}: {allocated} bytes allocated, {a0} before"
        );
        assert!(
            resident <= r0 + RESIDENT_GROWTH_BOUND,
            "after {after}: {resident} bytes resident, {r0} before"
        );
        Ok(())
    }

    fn port(&self) -> u16 {
        self.envoy.listen_port
    }
}

#[tokio::test]
async fn hostile_headers_bodies_and_key_floods_are_answered_with_bounded_memory(
) -> anyhow::Result<()> {
    let s = Stack::start().await?;
    let started = Instant::now();

    // Oversized headers: Envoy's own limit (60 KiB of headers) answers 431 before any filter.
    let big = vec![b'a'; 70 * 1024];
    let status = send(s.port(), &get_request("/f/big", &[("x-big", &big)])).await?;
    assert_eq!(status, 431, "one oversized header");
    let kib = vec![b'b'; 1024];
    let many_big: Vec<(&str, &[u8])> = (0..80).map(|_| ("x-filler", kib.as_slice())).collect();
    assert_eq!(
        send(s.port(), &get_request("/f/big", &many_big)).await?,
        431
    );
    s.check("oversized headers").await?;

    // Repeated headers: within Envoy's count limit (100) every filter takes the first value;
    // above it Envoy answers 431.
    let mut repeated: Vec<(&str, &[u8])> = Vec::new();
    for _ in 0..15 {
        repeated.push((
            "traceparent",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        repeated.push(("b3", b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"));
        repeated.push(("x-request-id", b"3f2a6c1e-8b7d-4e2a-9c4b-1d2e3f4a5b6c"));
        repeated.push(("x-envoy-fault-abort-request", b"503"));
        repeated.push(("x-envoy-fault-abort-request-percentage", b"0"));
        repeated.push(("x-tenant", b"repeat"));
    }
    assert_eq!(
        send(s.port(), &get_request("/f/repeated", &repeated)).await?,
        200
    );
    assert_eq!(
        send(s.port(), &get_request("/rl/repeated", &repeated)).await?,
        200
    );
    let too_many: Vec<(&str, &[u8])> = (0..150).map(|_| ("x-tenant", &b"t"[..])).collect();
    assert_eq!(
        send(s.port(), &get_request("/rl/too-many", &too_many)).await?,
        431
    );
    s.check("repeated headers").await?;

    // Non-UTF-8 bytes in every header a filter parses: ignored as malformed (no fault, a
    // fresh trace), or used as opaque bytes (a rate-limit key), never a crash.
    let odd: [(&str, &[u8]); 7] = [
        (
            "traceparent",
            b"00-\xff\xfe4bf92f3577b34da6a3ce929d0e0e-00f067aa0ba902b7-01",
        ),
        ("tracestate", b"k=\xc3\x28"),
        ("b3", b"\x80\x81-\x82-1"),
        ("x-request-id", b"\xff\xfe\xfd"),
        ("x-envoy-fault-abort-request", b"\xff503"),
        ("x-envoy-fault-delay-request", b"5\xc0\xaf"),
        ("x-envoy-fault-abort-grpc-request", b"\xe2\x82"),
    ];
    assert_eq!(
        send(s.port(), &get_request("/f/odd-bytes", &odd)).await?,
        200
    );
    let seen =
        s.up.last_with_path("/f/odd-bytes")
            .expect("the request reached the upstream");
    let traceparent = seen.header("traceparent").unwrap_or_default();
    assert!(
        parse_traceparent(&traceparent).is_some(),
        "a malformed traceparent is replaced by a valid one: {traceparent:?}"
    );
    let tenant: [(&str, &[u8]); 1] = [("x-tenant", b"\xff\xfe\x80")];
    assert_eq!(send(s.port(), &get_request("/rl/odd", &tenant)).await?, 200);
    assert_eq!(
        send(s.port(), &get_request("/rl/odd", &tenant)).await?,
        429,
        "a non-UTF-8 key is a key like any other"
    );
    s.check("non-UTF-8 headers").await?;

    // A huge body through the mirror policy: the client's request goes through whole, no
    // copy is made (maxBodyBytes 64 KiB), and the buffer cap shows in memory.
    let reply = s
        .envoy
        .client()
        .post(s.envoy.url("/m/huge"))
        .body(vec![b'x'; HUGE_BODY])
        .timeout(Duration::from_secs(20))
        .send()
        .await?;
    assert_eq!(reply.status().as_u16(), 200);
    let echo: serde_json::Value = reply.json().await?;
    assert_eq!(
        echo["bodyBytes"], HUGE_BODY,
        "the primary got the whole body"
    );
    wait_until(Duration::from_secs(5), "the skip counted", || async {
        let n = s
            .envoy
            .policy_stat("meshwarden_mirror_skipped_body_too_large_total", "copy")
            .await
            .ok()?;
        (n >= 1).then_some(())
    })
    .await?;
    assert_eq!(s.shadow.requests_with_path("/m/huge"), 0);
    s.check("a huge body").await?;

    // A flood of distinct rate-limit keys: at most maxKeys own buckets, the rest share the
    // overflow bucket; nothing grows with the number of keys.
    let sent = flood(&s.envoy, FLOOD_KEYS, FLOOD_TIME).await;
    let overflow = s
        .envoy
        .policy_stat("meshwarden_ratelimit_overflow_total", "tenants")
        .await?;
    println!("key flood: {sent} distinct keys sent, {overflow} overflowed");
    assert!(
        sent >= 4 * MAX_KEYS,
        "too few keys sent to fill the table: {sent}"
    );
    // Keys beyond maxKeys share the overflow bucket (a few may instead meet a busy slot
    // under contention between workers).
    assert!(
        overflow as usize >= (sent - MAX_KEYS) * 9 / 10,
        "keys beyond maxKeys share the overflow bucket: {overflow} of {sent}"
    );
    s.check("a flood of distinct keys").await?;
    println!("hostile input: {:?}", started.elapsed());
    drop(s.cp);
    Ok(())
}

/// Sends up to `keys` requests with distinct `x-tenant` values, 16 at a time, for at most
/// `time`; returns how many were answered.
async fn flood(envoy: &Envoy, keys: usize, time: Duration) -> usize {
    let next = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + time;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (next, answered) = (next.clone(), answered.clone());
        let client = envoy.client().clone();
        let url = envoy.url("/rl/flood");
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys || Instant::now() >= deadline {
                    return;
                }
                let sent = client
                    .get(&url)
                    .header("x-tenant", format!("tenant-{i}"))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                if sent.is_ok() {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    answered.load(Ordering::Relaxed)
}
