//! The service against a real `redis-server` on loopback (started per test on a free port
//! with its own temporary directory, killed at the end): GCRA exactness, independent
//! buckets, overrides, all-or-nothing decisions, and the failure mode when Redis is slow,
//! down, or back.

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use meshwarden_ratelimit_service::testing::{command, descriptor, request, RedisServer};
use meshwarden_ratelimit_service::{
    FailureMode, LimitsConfig, Server, ServerOptions, StoreOptions,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

type Client = RateLimitServiceClient<Channel>;

const OK: i32 = Code::Ok as i32;
const OVER: i32 = Code::OverLimit as i32;
const PREFIX: &str = "it:";

fn redis() -> RedisServer {
    RedisServer::start().unwrap_or_else(|e| panic!("cannot start redis-server: {e}"))
}

fn options(
    redis_url: &str,
    timeout: Duration,
    max_in_flight: usize,
    mode: FailureMode,
) -> ServerOptions {
    ServerOptions {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        redis: StoreOptions {
            url: redis_url.to_string(),
            timeout,
            connect_timeout: Duration::from_millis(500),
            max_in_flight,
        },
        failure_mode: mode,
        key_prefix: PREFIX.into(),
        health_interval: Duration::from_millis(100),
    }
}

async fn start(opts: ServerOptions, limits: &str) -> (Server, Client) {
    let config = LimitsConfig::parse(limits).expect("valid limits");
    let server = Server::start(opts, &config).await.expect("service starts");
    let client = RateLimitServiceClient::connect(format!("http://{}", server.grpc_addr))
        .await
        .expect("connect to the service");
    (server, client)
}

async fn ask(client: &mut Client, req: RateLimitRequest) -> RateLimitResponse {
    client
        .should_rate_limit(req)
        .await
        .expect("ShouldRateLimit answers")
        .into_inner()
}

async fn one(client: &mut Client, domain: &str, kv: &[(&str, &str)]) -> RateLimitResponse {
    ask(client, request(domain, vec![descriptor(kv)])).await
}

fn header<'a>(r: &'a RateLimitResponse, name: &str) -> Option<&'a str> {
    r.response_headers_to_add
        .iter()
        .find(|h| h.key == name)
        .map(|h| h.value.as_str())
}

/// A decision Redis made (the failure mode sets no `duration_until_reset`).
fn from_redis(r: &RateLimitResponse) -> bool {
    r.statuses
        .iter()
        .any(|s| s.current_limit.is_some() && s.duration_until_reset.is_some())
}

/// `GET path` on the HTTP port: (status, body).
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect HTTP");
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("HTTP answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of one metric line (`name{labels}` exactly), 0 if absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Tests that measure time run one at a time: on two shared cores, a test that freezes
/// Redis under 200 concurrent calls would otherwise skew another's clock.
static TIMING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What a tight loop of decisions saw.
#[derive(Debug)]
struct Run {
    admitted: u64,
    calls: u64,
    /// From before the first call to after the last answer.
    elapsed: Duration,
    /// From the first answer to the last call sent: every decision in between was made
    /// by Redis inside the loop, so the bucket was drained all that time.
    inner: Duration,
}

impl Run {
    /// `burst + rate × time`, with the time measured around the loop (`inner`: from the
    /// first answer to the last call, so that a stall of the test's own client before the
    /// first answer or after the last call does not count as time the bucket refilled
    /// while being asked).
    fn expected(&self, burst: f64, rate: f64) -> f64 {
        burst + rate * self.inner.as_secs_f64()
    }

    /// The most a bucket can ever give in `elapsed`, plus the token in progress.
    fn ceiling(&self, burst: f64, rate: f64) -> f64 {
        burst + rate * self.elapsed.as_secs_f64() + 1.0
    }
}

/// `tasks` clients asking for `kv` back to back for `run`.
async fn hammer(client: &Client, kv: &[(&str, &str)], tasks: usize, run: Duration) -> Run {
    let started = Instant::now();
    let deadline = started + run;
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let mut c = client.clone();
            let req = request("rate", vec![descriptor(kv)]);
            tokio::spawn(async move {
                let (mut ok, mut calls) = (0u64, 0u64);
                let (mut first_answer, mut last_sent) = (None, started);
                while Instant::now() < deadline {
                    last_sent = Instant::now();
                    let r = ask(&mut c, req.clone()).await;
                    first_answer.get_or_insert_with(Instant::now);
                    assert!(from_redis(&r), "a decision without Redis: {r:?}");
                    calls += 1;
                    if r.overall_code == OK {
                        ok += 1;
                    }
                }
                (ok, calls, first_answer.unwrap_or(started), last_sent)
            })
        })
        .collect();
    let (mut admitted, mut calls) = (0, 0);
    let (mut first_answer, mut last_sent) = (None::<Instant>, started);
    for h in handles {
        let (o, c, f, l) = h.await.expect("client task");
        admitted += o;
        calls += c;
        first_answer = Some(first_answer.map_or(f, |x| x.min(f)));
        last_sent = last_sent.max(l);
    }
    let inner = last_sent.saturating_duration_since(first_answer.unwrap_or(started));
    Run {
        admitted,
        calls,
        elapsed: started.elapsed(),
        inner,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcra_admits_burst_plus_rate_times_elapsed() {
    let _serial = TIMING.lock().await;
    let redis = redis();
    let limits = r#"
domains:
- domain: rate
  limits:
  - name: hundred
    descriptors: [{key: k}]
    rate: {requests: 100, unit: second}
    burst: 50
  - name: third
    descriptors: [{key: t}]
    rate: {requests: 3, unit: second}
"#;
    let opts = options(
        &redis.url(),
        Duration::from_millis(500),
        512,
        FailureMode::Deny,
    );
    let (server, mut client) = start(opts, limits).await;
    // Warm up: the connection and the script cache.
    assert!(from_redis(
        &one(&mut client, "rate", &[("k", "warm")]).await
    ));

    for (label, key, tasks) in [("1 client", "seq", 1), ("4 concurrent clients", "par", 4)] {
        let run = hammer(&client, &[("k", key)], tasks, Duration::from_secs(2)).await;
        let expected = run.expected(50.0, 100.0);
        let err = (run.admitted as f64 - expected) / expected;
        eprintln!(
            "100/s burst 50, {label}: {} admitted of {} calls in {:?} ({:?} between first answer and last call); expected {expected:.1} ({:+.2} %)",
            run.admitted,
            run.calls,
            run.elapsed,
            run.inner,
            err * 100.0
        );
        assert!(
            run.calls as f64 > expected * 2.0,
            "the loop must outpace the rate: {run:?}"
        );
        assert!(err.abs() <= 0.02, "{run:?}: expected {expected:.1}");
        // Never more than a bucket can give (the script is atomic across clients).
        assert!(
            run.admitted as f64 <= run.ceiling(50.0, 100.0),
            "{run:?} above the ceiling"
        );
    }

    // An emission interval that is not a whole number of microseconds (1/3 s).
    let run = hammer(&client, &[("t", "x")], 1, Duration::from_millis(2500)).await;
    let expected = run.expected(3.0, 3.0);
    eprintln!(
        "3/s burst 3: {} admitted in {:?}; expected {expected:.2}",
        run.admitted, run.elapsed
    );
    assert!(
        (run.admitted as f64 - expected).abs() <= 1.0,
        "{run:?}: expected {expected:.2}"
    );

    let (_, text) = http_get(server.http_addr, "/metrics").await;
    assert!(
        metric(
            &text,
            "meshwarden_rls_decisions_total{domain=\"rate\",outcome=\"ok\"}"
        ) > 0.0
    );
    assert!(
        metric(
            &text,
            "meshwarden_rls_decisions_total{domain=\"rate\",outcome=\"over_limit\"}"
        ) > 0.0
    );
    assert_eq!(
        metric(&text, "meshwarden_rls_redis_errors_total{kind=\"timeout\"}"),
        0.0
    );
    assert!(
        metric(&text, "meshwarden_rls_redis_duration_seconds_count") > 1000.0,
        "{text}"
    );
    server.shutdown().await;
    drop(redis);
}

const SEMANTICS: &str = r#"
domains:
- domain: edge
  limits:
  - name: per-tenant
    descriptors: [{key: tenant}]
    rate: {requests: 5, unit: minute}
    overrides:
    - match: {tenant: gold}
      rate: {requests: 20, unit: minute}
    - match: {tenant: tiny}
      rate: {requests: 5, unit: minute}
      burst: 2
    responseHeaders: true
  - name: per-ip
    descriptors: [{key: ip}]
    rate: {requests: 1, unit: hour}
    legacyHeaders: true
  - name: shadow
    descriptors: [{key: shadow}]
    rate: {requests: 1, unit: hour}
    dryRun: true
"#;

#[tokio::test]
async fn tenants_overrides_hits_and_all_or_nothing() {
    let redis = redis();
    let opts = options(
        &redis.url(),
        Duration::from_millis(500),
        64,
        FailureMode::Deny,
    );
    let (server, mut client) = start(opts, SEMANTICS).await;

    // Tenant a: 5 per minute, burst 5, counting down; then 429 material.
    for left in (0..5).rev() {
        let r = one(&mut client, "edge", &[("tenant", "a")]).await;
        assert_eq!(r.overall_code, OK);
        let s = &r.statuses[0];
        assert_eq!(s.limit_remaining, left);
        let limit = s.current_limit.as_ref().unwrap();
        assert_eq!(
            (limit.name.as_str(), limit.requests_per_unit, limit.unit),
            ("per-tenant", 5, 2)
        );
        // responseHeaders: true → the fields on allowed answers too.
        assert_eq!(
            header(&r, "ratelimit-policy"),
            Some("\"per-tenant\";q=5;w=60")
        );
        assert_eq!(
            header(&r, "ratelimit"),
            Some(format!("\"per-tenant\";r={left};t=12").as_str())
        );
    }
    let r = one(&mut client, "edge", &[("tenant", "a")]).await;
    assert_eq!(r.overall_code, OVER);
    assert_eq!(r.statuses[0].code, OVER);
    assert_eq!(r.statuses[0].limit_remaining, 0);
    // Full again in 5 × 12 s (less the time the test took).
    let reset = r.statuses[0].duration_until_reset.unwrap();
    assert!((55..=60).contains(&reset.seconds), "{reset:?}");
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!((10..=12).contains(&retry), "retry-after {retry}");
    assert_eq!(header(&r, "content-type"), Some("application/problem+json"));
    assert_eq!(
        header(&r, "ratelimit"),
        Some(format!("\"per-tenant\";r=0;t={retry}").as_str())
    );
    let body: serde_json::Value = serde_json::from_slice(&r.raw_body).unwrap();
    assert_eq!(body["policy"], "per-tenant");
    assert_eq!(
        body["detail"],
        format!("Too many requests for policy per-tenant: the limit is 5 requests per minute (burst 5); retry after {retry} s.")
    );

    // Tenant b has its own bucket.
    for _ in 0..5 {
        assert_eq!(
            one(&mut client, "edge", &[("tenant", "b")])
                .await
                .overall_code,
            OK
        );
    }
    assert_eq!(
        one(&mut client, "edge", &[("tenant", "b")])
            .await
            .overall_code,
        OVER
    );

    // Overrides: gold 20, tiny burst 2.
    for i in 0..20 {
        let r = one(&mut client, "edge", &[("tenant", "gold")]).await;
        assert_eq!(r.overall_code, OK, "gold request {i}");
    }
    assert_eq!(
        one(&mut client, "edge", &[("tenant", "gold")])
            .await
            .overall_code,
        OVER
    );
    let r = one(&mut client, "edge", &[("tenant", "tiny")]).await;
    assert_eq!(r.statuses[0].limit_remaining, 1);
    assert_eq!(
        one(&mut client, "edge", &[("tenant", "tiny")])
            .await
            .overall_code,
        OK
    );
    assert_eq!(
        one(&mut client, "edge", &[("tenant", "tiny")])
            .await
            .overall_code,
        OVER
    );

    // hits_addend: 3 of 5, then 3 do not fit (and are not charged), then 2 do.
    let mut req = request("edge", vec![descriptor(&[("tenant", "c")])]);
    req.hits_addend = 3;
    let r = ask(&mut client, req.clone()).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 2));
    let r = ask(&mut client, req.clone()).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OVER, 2));
    req.hits_addend = 2;
    let r = ask(&mut client, req.clone()).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 0));
    // A refund (negative hits) gives tokens back; descriptor-level hits beat the request's.
    let mut refund = descriptor(&[("tenant", "c")]);
    refund.is_negative_hits = true;
    refund.hits_addend = Some(UInt64Value { value: 4 });
    let r = ask(&mut client, request("edge", vec![refund])).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 4));
    // Hits 0: a look that changes nothing.
    let mut peek = descriptor(&[("tenant", "c")]);
    peek.hits_addend = Some(UInt64Value { value: 0 });
    let r = ask(&mut client, request("edge", vec![peek])).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 4));

    // All or nothing: tenant d fits, ip 1 does not the second time; d is not charged.
    let both = || {
        request(
            "edge",
            vec![descriptor(&[("tenant", "d")]), descriptor(&[("ip", "1")])],
        )
    };
    let r = ask(&mut client, both()).await;
    assert_eq!(r.overall_code, OK);
    assert_eq!(r.statuses[0].limit_remaining, 4);
    let r = ask(&mut client, both()).await;
    assert_eq!(r.overall_code, OVER);
    assert_eq!((r.statuses[0].code, r.statuses[0].limit_remaining), (OK, 4));
    assert_eq!(r.statuses[1].code, OVER);
    // The violated limit's headers only; legacy headers from per-ip.
    assert_eq!(
        header(&r, "ratelimit-policy"),
        Some("\"per-ip\";q=1;w=3600")
    );
    assert_eq!(header(&r, "x-ratelimit-limit"), Some("1"));
    assert_eq!(header(&r, "x-ratelimit-remaining"), Some("0"));
    let r = one(&mut client, "edge", &[("tenant", "d")]).await;
    assert_eq!(r.statuses[0].limit_remaining, 3);

    // Dry run: over its limit, never OVER_LIMIT overall; its own status says it is over
    // (what meshwarden's filter counts as shadow-limited).
    let mut codes = Vec::new();
    for _ in 0..3 {
        let r = one(&mut client, "edge", &[("shadow", "s")]).await;
        assert_eq!(r.overall_code, OK);
        codes.push(r.statuses[0].code);
    }
    assert_eq!(codes.last(), Some(&OVER), "{codes:?}");
    // Descriptors without a limit and unknown domains: OK.
    let r = one(&mut client, "edge", &[("nothing", "x")]).await;
    assert_eq!((r.overall_code, r.statuses.len()), (OK, 1));
    assert!(r.statuses[0].current_limit.is_none());
    assert_eq!(
        one(&mut client, "elsewhere", &[("tenant", "a")])
            .await
            .overall_code,
        OK
    );

    // Keys expire when their bucket would be full again: tenant a in ≤ 60 s.
    let pttl = command(
        redis.port(),
        &format!("PTTL {PREFIX}edge|per-tenant|tenant=a"),
    )
    .unwrap();
    let ms: i64 = pttl.trim_start_matches(':').parse().unwrap();
    assert!((50_000..=60_001).contains(&ms), "PTTL {pttl}");
    // A full bucket is no key at all (tenant c after the refund is not full: it has a key).
    assert_eq!(
        command(
            redis.port(),
            &format!("EXISTS {PREFIX}edge|per-tenant|tenant=never")
        )
        .unwrap(),
        ":0"
    );

    // Redis forgot the script (restart, SCRIPT FLUSH): EVAL takes over, decisions go on.
    assert_eq!(command(redis.port(), "SCRIPT FLUSH").unwrap(), "+OK");
    let r = one(&mut client, "edge", &[("tenant", "e")]).await;
    assert!(from_redis(&r));
    assert_eq!(r.statuses[0].limit_remaining, 4);
    let r = one(&mut client, "edge", &[("tenant", "e")]).await;
    assert_eq!(r.statuses[0].limit_remaining, 3);

    let (status, text) = http_get(server.http_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metric(&text, "meshwarden_rls_descriptors_total{domain=\"edge\",limit=\"shadow\",result=\"dry_run_over_limit\"}") >= 2.0, "{text}");
    assert!(
        metric(
            &text,
            "meshwarden_rls_decisions_total{domain=\"(unconfigured)\",outcome=\"ok\"}"
        ) >= 1.0
    );
    assert_eq!(
        metric(&text, "meshwarden_rls_redis_errors_total{kind=\"timeout\"}"),
        0.0
    );
    assert_eq!(http_get(server.http_addr, "/healthz").await.0, 200);
    assert_eq!(http_get(server.http_addr, "/readyz").await.0, 200);
    server.shutdown().await;
}

const FAILURE: &str = r#"
domains:
- domain: f
  limits:
  - name: open
    descriptors: [{key: open}]
    rate: {requests: 3, unit: hour}
  - name: closed
    descriptors: [{key: closed}]
    rate: {requests: 3, unit: hour}
    failureMode: deny
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_gives_the_failure_mode_in_time_then_limits_resume() {
    let _serial = TIMING.lock().await;
    let mut redis = redis();
    let timeout = Duration::from_millis(50);
    let opts = options(&redis.url(), timeout, 64, FailureMode::Allow);
    let (server, mut client) = start(opts, FAILURE).await;
    wait_until(Duration::from_secs(5), "ready", || async {
        http_get(server.http_addr, "/readyz").await.0 == 200
    })
    .await;
    // Exhaust a bucket while Redis is up.
    for _ in 0..3 {
        assert_eq!(
            one(&mut client, "f", &[("open", "x")]).await.overall_code,
            OK
        );
    }
    assert_eq!(
        one(&mut client, "f", &[("open", "x")]).await.overall_code,
        OVER
    );

    redis.stop();
    let bound = timeout * 10;
    for i in 0..20 {
        let t = Instant::now();
        let r = one(&mut client, "f", &[("open", "x")]).await;
        let took = t.elapsed();
        assert!(took < bound, "allow decision {i} took {took:?}");
        assert_eq!(r.overall_code, OK, "failure mode allow");
        assert!(!from_redis(&r));
        let t = Instant::now();
        let r = one(&mut client, "f", &[("closed", "x")]).await;
        let took = t.elapsed();
        assert!(took < bound, "deny decision {i} took {took:?}");
        assert_eq!(r.overall_code, OVER, "failure mode deny");
        assert_eq!(header(&r, "retry-after"), Some("1"));
    }
    wait_until(Duration::from_secs(5), "not ready", || async {
        http_get(server.http_addr, "/readyz").await.0 == 503
    })
    .await;

    // Back (empty: nothing persisted): the service reconnects by itself.
    redis.restart().expect("redis restarts on its port");
    let mut c = client.clone();
    wait_until(
        Duration::from_secs(10),
        "decisions from Redis again",
        || {
            let mut c = c.clone();
            async move { from_redis(&one(&mut c, "f", &[("open", "probe")]).await) }
        },
    )
    .await;
    for _ in 0..3 {
        let r = one(&mut c, "f", &[("closed", "y")]).await;
        assert!(from_redis(&r));
        assert_eq!(r.overall_code, OK);
    }
    assert_eq!(
        one(&mut c, "f", &[("closed", "y")]).await.overall_code,
        OVER
    );
    wait_until(Duration::from_secs(5), "ready again", || async {
        http_get(server.http_addr, "/readyz").await.0 == 200
    })
    .await;

    let (_, text) = http_get(server.http_addr, "/metrics").await;
    assert!(
        metric(
            &text,
            "meshwarden_rls_decisions_total{domain=\"f\",outcome=\"failure_allowed\"}"
        ) >= 20.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "meshwarden_rls_decisions_total{domain=\"f\",outcome=\"failure_denied\"}"
        ) >= 20.0
    );
    let errors = metric(
        &text,
        "meshwarden_rls_redis_errors_total{kind=\"connection\"}",
    ) + metric(&text, "meshwarden_rls_redis_errors_total{kind=\"timeout\"}");
    assert!(errors >= 40.0, "{text}");
    assert_eq!(metric(&text, "meshwarden_rls_redis_up"), 1.0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_redis_times_out_and_sheds_excess_at_once() {
    let _serial = TIMING.lock().await;
    let redis = redis();
    // 100 ms here: 200 calls at once on two shared cores take a while to even be sent.
    let timeout = Duration::from_millis(100);
    let opts = options(&redis.url(), timeout, 8, FailureMode::Allow);
    let (server, client) = start(opts, FAILURE).await;
    let mut c = client.clone();
    assert!(from_redis(&one(&mut c, "f", &[("open", "warm")]).await));

    redis.pause().expect("SIGSTOP redis");
    // One at a time: each waits for the timeout, then gets the failure mode.
    for kv in [("open", "one"), ("closed", "one")] {
        let t = Instant::now();
        let r = one(&mut c, "f", &[kv]).await;
        let took = t.elapsed();
        assert!(
            took >= timeout && took < timeout * 10,
            "{kv:?} took {took:?}"
        );
        assert_eq!(r.overall_code, if kv.0 == "open" { OK } else { OVER });
    }
    // A caller with a deadline shorter than the timeout (Envoy sends `grpc-timeout`)
    // still gets the failure mode's answer, not DEADLINE_EXCEEDED: Redis only gets 3/4 of
    // the deadline.
    let mut req = tonic::Request::new(request("f", vec![descriptor(&[("closed", "deadline")])]));
    req.set_timeout(Duration::from_millis(80));
    let r = c
        .should_rate_limit(req)
        .await
        .expect("an answer within the caller's deadline")
        .into_inner();
    assert_eq!(r.overall_code, OVER);

    // 200 decisions at once while Redis answers nothing: 8 wait for the timeout, the rest
    // get the failure mode at once; none waits longer than 10 × the timeout.
    let started = Instant::now();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let mut c = client.clone();
            tokio::spawn(async move {
                let kv = if i % 2 == 0 {
                    ("open", "s")
                } else {
                    ("closed", "s")
                };
                let t = Instant::now();
                let r = one(&mut c, "f", &[kv]).await;
                (kv.0, r.overall_code, t.elapsed())
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for t in tasks {
        let (kind, code, took) = t.await.unwrap();
        slowest = slowest.max(took);
        assert_eq!(code, if kind == "open" { OK } else { OVER });
    }
    let all = started.elapsed();
    eprintln!("200 decisions with Redis frozen: slowest {slowest:?}, all in {all:?}");
    assert!(slowest < timeout * 10, "slowest decision took {slowest:?}");
    let (_, text) = http_get(server.http_addr, "/metrics").await;
    let timeouts = metric(&text, "meshwarden_rls_redis_errors_total{kind=\"timeout\"}");
    let shed = metric(
        &text,
        "meshwarden_rls_redis_errors_total{kind=\"overloaded\"}",
    );
    eprintln!("timeouts {timeouts}, shed {shed}");
    assert!(timeouts >= 1.0 && shed >= 1.0, "{text}");
    assert_eq!(timeouts + shed, 203.0);

    redis.resume().expect("SIGCONT redis");
    wait_until(
        Duration::from_secs(10),
        "decisions from Redis again",
        || {
            let mut c = client.clone();
            async move { from_redis(&one(&mut c, "f", &[("open", "after")]).await) }
        },
    )
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn starts_while_redis_is_down_and_connects_when_it_comes() {
    let mut redis = redis();
    redis.stop();
    let opts = options(
        &redis.url(),
        Duration::from_millis(50),
        64,
        FailureMode::Deny,
    );
    let (server, mut client) = start(opts, FAILURE).await;
    let r = one(&mut client, "f", &[("open", "x")]).await;
    assert_eq!(r.overall_code, OVER, "server failure mode deny");
    assert_eq!(http_get(server.http_addr, "/readyz").await.0, 503);
    redis.restart().expect("redis starts");
    wait_until(Duration::from_secs(10), "ready", || async {
        http_get(server.http_addr, "/readyz").await.0 == 200
    })
    .await;
    let r = one(&mut client, "f", &[("open", "x")]).await;
    assert!(from_redis(&r));
    assert_eq!(r.overall_code, OK);
    server.shutdown().await;
}
