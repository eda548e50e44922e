//! RateLimitPolicy in a real Envoy (`--concurrency 2`): one token bucket for all workers
//! under 10x overload, per-key buckets, overrides, the key cap, the exact 429, gRPC,
//! dry run, and the concurrency limit against a slow upstream.

use meshwarden_e2e::{wait_until, ControlPlane, EchoUpstream, Envoy, EnvoyOptions};
use serde_json::Value;
use std::time::Duration;

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

/// A RateLimitPolicy document.
fn policy(name: &str, spec: &str) -> String {
    let body: Vec<String> = spec.lines().map(|l| format!("  {l}")).collect();
    format!(
        "apiVersion: meshwarden.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata:\n  name: {name}\nspec:\n{}\n",
        body.join("\n")
    )
}

fn filter_status(status: &Value, node_id: &str) -> Option<Value> {
    crate::support::filter_status(status, node_id, crate::support::FILTER)
}

fn field(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

impl Stack {
    /// Applies `yaml` and waits until Envoy accepted the rate-limit filter's new
    /// configuration (and its workers switched to it).
    async fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        let cli = self.cp.cli();
        let before = filter_status(&cli.status_json(), &self.node_id)
            .map(|f| field(&f, "acceptedVersion"))
            .unwrap_or_default();
        let out = cli.apply_yaml(yaml);
        anyhow::ensure!(out.success, "apply failed: {}", out.stderr);
        let node = self.node_id.clone();
        wait_until(
            Duration::from_secs(10),
            "ratelimit configuration accepted",
            || {
                let status = cli.status_json();
                let (node, before) = (node.clone(), before.clone());
                async move {
                    let f = filter_status(&status, &node)?;
                    let accepted = field(&f, "acceptedVersion");
                    (accepted != before
                        && accepted == field(&f, "sentVersion")
                        && field(&f, "lastError").is_empty())
                    .then_some(())
                }
            },
        )
        .await?;
        // The ACK precedes the workers' switch to the new configuration by a moment.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(())
    }

    /// A rate-limit metric of `policy` (`in_flight` is a gauge, the rest counters).
    async fn stat(&self, policy: &str, metric: &str) -> anyhow::Result<i64> {
        let total = if metric == "in_flight" { "" } else { "_total" };
        let name = format!("wasmcustom.meshwarden_ratelimit_{metric}{total}.policy.{policy}");
        self.envoy.stat(&name).await
    }

    /// GET `path` with `headers`; returns (status, lowercase headers, body).
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
        let r = self.envoy.get(path, headers).await?;
        Reply::read(r).await
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    async fn read(r: reqwest::Response) -> anyhow::Result<Self> {
        let status = r.status().as_u16();
        let headers = r
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        Ok(Self {
            status,
            headers,
            body: r.text().await?,
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// GETs `path` with each header set in turn, one request each, and counts the 200s.
async fn admitted(s: &Stack, path: &str, headers: &[Vec<(&str, &str)>]) -> anyhow::Result<usize> {
    let mut ok = 0;
    for h in headers {
        let r = s.get(path, h).await?;
        anyhow::ensure!(
            r.status == 200 || r.status == 429,
            "unexpected {} for {h:?}",
            r.status
        );
        ok += usize::from(r.status == 200);
    }
    Ok(ok)
}

#[tokio::test]
async fn ten_times_overload_admits_rate_times_duration_plus_burst() -> anyhow::Result<()> {
    let s = stack("rl-overload").await?;
    s.apply(&policy(
        "api",
        "rate: {requests: 100, unit: second}\nburst: 50",
    ))
    .await?;

    // 32 clients, each on its own connection (spread over both workers), each offering a
    // request every 32 ms: ~1000/s, 10x the rate, for 10 s.
    let run = crate::support::overload(
        &[s.envoy.url("/load")],
        32,
        Duration::from_millis(32),
        Duration::from_secs(10),
    )
    .await?;
    run.check("overload", 100.0, 50.0, 0.02, 8.0);
    let (ok, limited) = (run.ok, run.limited);
    // Envoy's own count agrees: every admitted request was decided by the policy.
    assert_eq!(s.stat("api", "allowed").await?, ok as i64);
    assert_eq!(s.stat("api", "limited").await?, limited as i64);
    assert_eq!(s.stat("api", "failures").await?, 0);
    Ok(())
}

#[tokio::test]
async fn keys_get_their_own_buckets_overrides_apply_and_the_key_cap_holds() -> anyhow::Result<()> {
    let s = stack("rl-keys").await?;
    s.apply(&policy(
        "tenants",
        "match: {path: {prefix: /tenants}}\n\
         rate: {requests: 3, unit: minute}\n\
         descriptors: [{header: x-tenant}]\n\
         overrides:\n\
         - match: {x-tenant: gold}\n\
         \x20 rate: {requests: 6, unit: minute}",
    ))
    .await?;
    s.apply(&policy(
        "flood",
        "match: {path: {prefix: /flood}}\n\
         rate: {requests: 1, unit: hour}\n\
         descriptors: [{clientAddress: {}}]\n\
         maxKeys: 20",
    ))
    .await?;

    let tenant = |t: &'static str, n: usize| vec![vec![("x-tenant", t)]; n];
    assert_eq!(admitted(&s, "/tenants", &tenant("a", 5)).await?, 3);
    assert_eq!(
        admitted(&s, "/tenants", &tenant("b", 5)).await?,
        3,
        "another key, another bucket"
    );
    assert_eq!(
        admitted(&s, "/tenants", &tenant("gold", 8)).await?,
        6,
        "the override applies"
    );
    assert_eq!(
        admitted(&s, "/tenants", &tenant("a", 1)).await?,
        0,
        "a's bucket is still empty"
    );

    // 400 new client addresses against maxKeys 20 at 1 request per hour: 20 addresses get
    // a bucket of their own, the rest share one overflow bucket (burst 1).
    let addrs: Vec<String> = (0..400)
        .map(|i| format!("198.51.{}.{}", i / 250, i % 250))
        .collect();
    let sets: Vec<Vec<(&str, &str)>> = addrs
        .iter()
        .map(|a| vec![("x-forwarded-for", a.as_str())])
        .collect();
    let flood = admitted(&s, "/flood", &sets).await?;
    let overflow = s.stat("flood", "overflow").await?;
    println!("key cap: {flood} of 400 new keys admitted, {overflow} overflowed");
    assert!(
        flood <= 20 + 1,
        "at most maxKeys own buckets plus the overflow burst: {flood}"
    );
    assert!(flood >= 15, "the slots were used: {flood}");
    assert!(overflow >= 400 - 20, "{overflow} requests overflowed");
    // A new key now lands in the drained overflow bucket.
    let late = admitted(&s, "/flood", &[vec![("x-forwarded-for", "203.0.113.200")]]).await?;
    assert_eq!(late, 0);
    Ok(())
}

const DOCS_BODY: &str = r#"{"type":"https://iana.org/assignments/http-problem-types#quota-exceeded","title":"Request cannot be satisfied as assigned quota has been exceeded","status":429,"detail":"Too many requests for policy docs: the limit is 2 requests per minute (burst 2); retry after 30 s.","policy":"docs","violated-policies":["docs"]}"#;

#[tokio::test]
async fn a_429_and_allowed_responses_carry_exactly_the_documented_headers() -> anyhow::Result<()> {
    let s = stack("rl-headers").await?;
    s.apply(&policy(
        "docs",
        "match: {path: {prefix: /docs}}\n\
         rate: {requests: 2, unit: minute}\n\
         responseHeaders: true\n\
         legacyHeaders: true",
    ))
    .await?;
    s.apply(&policy(
        "grpc",
        "match: {path: {prefix: /test.Echo/}}\n\
         rate: {requests: 1, unit: hour}",
    ))
    .await?;

    let first = s.get("/docs", &[]).await?;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("ratelimit-policy"), Some("\"docs\";q=2;w=60"));
    assert_eq!(first.header("ratelimit"), Some("\"docs\";r=1;t=30"));
    assert_eq!(first.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("1"));
    assert_eq!(first.header("x-ratelimit-reset"), Some("30"));
    let second = s.get("/docs", &[]).await?;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("ratelimit"), Some("\"docs\";r=0;t=30"));

    let r = s.get("/docs", &[]).await?;
    assert_eq!(r.status, 429);
    let mut names: Vec<&str> = r.headers.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "content-length",
            "content-type",
            "date",
            "ratelimit",
            "ratelimit-policy",
            "retry-after",
            "server",
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ]
    );
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.header("retry-after"), Some("30"));
    assert_eq!(r.header("ratelimit-policy"), Some("\"docs\";q=2;w=60"));
    assert_eq!(r.header("ratelimit"), Some("\"docs\";r=0;t=30"));
    assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(r.header("x-ratelimit-reset"), Some("30"));
    assert_eq!(r.body, DOCS_BODY);
    let parsed: Value = serde_json::from_str(&r.body)?;
    assert_eq!(parsed["violated-policies"][0], "docs");

    // gRPC: a real tonic client sees RESOURCE_EXHAUSTED once the bucket is empty.
    let first = grpc_call(&s.envoy, "/test.Echo/Say").await?;
    assert_ne!(first.code(), tonic::Code::ResourceExhausted, "{first:?}");
    let limited = grpc_call(&s.envoy, "/test.Echo/Say").await?;
    assert_eq!(
        limited.code(),
        tonic::Code::ResourceExhausted,
        "{limited:?}"
    );
    assert_eq!(
        limited.message(),
        "Too many requests for policy grpc: the limit is 1 request per hour (burst 1); retry after 3600 s."
    );
    assert_eq!(
        limited
            .metadata()
            .get("retry-after")
            .map(|v| v.to_str().unwrap_or_default()),
        Some("3600")
    );
    assert_eq!(s.stat("grpc", "limited").await?, 1);
    Ok(())
}

#[tokio::test]
async fn dry_run_rejects_nothing_and_counts_what_it_would_have_limited() -> anyhow::Result<()> {
    let s = stack("rl-dry").await?;
    s.apply(&policy(
        "shadow",
        "rate: {requests: 5, unit: minute}\ndryRun: true",
    ))
    .await?;
    let mut last = None;
    for _ in 0..30 {
        let r = s.get("/shadow", &[]).await?;
        assert_eq!(r.status, 200, "dry run never rejects");
        last = Some(r);
    }
    let last = last.expect("30 replies");
    assert_eq!(last.header("ratelimit-policy"), Some("\"shadow\";q=5;w=60"));
    assert!(
        last.header("ratelimit")
            .is_some_and(|v| v.starts_with("\"shadow\";r=0;t=")),
        "{last:?}"
    );
    assert_eq!(s.stat("shadow", "allowed").await?, 30);
    assert_eq!(s.stat("shadow", "shadow_limited").await?, 25);
    assert_eq!(s.stat("shadow", "limited").await?, 0);
    Ok(())
}

#[tokio::test]
async fn concurrency_limit_rejects_exactly_the_excess_and_recovers() -> anyhow::Result<()> {
    let s = stack("rl-conc").await?;
    s.apply(&policy("pool", "maxConcurrent: 5")).await?;

    // 12 requests at once, each on its own connection, against a 1 s upstream.
    let slow = |n: usize| {
        let url = s.envoy.url("/slow");
        let mut tasks = Vec::new();
        for _ in 0..n {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()?;
                let r = client
                    .get(&url)
                    .header("x-echo-delay-ms", "1000")
                    .send()
                    .await?;
                Reply::read(r).await
            }));
        }
        tasks
    };
    let tasks = slow(12);
    let in_flight = wait_until(Duration::from_secs(3), "5 in flight", || {
        let st = s.stat("pool", "in_flight");
        async move { st.await.ok().filter(|n| *n == 5) }
    })
    .await?;
    assert_eq!(in_flight, 5);
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await??);
    }
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let busy: Vec<&Reply> = replies.iter().filter(|r| r.status == 503).collect();
    assert_eq!(
        (ok, busy.len()),
        (5, 7),
        "exactly the requests above the limit are rejected"
    );
    let b = busy[0];
    assert_eq!(b.header("retry-after"), Some("1"));
    assert_eq!(b.header("content-type"), Some("application/problem+json"));
    assert_eq!(
        b.header("ratelimit-policy"),
        Some("\"pool/concurrent\";q=5;qu=\"concurrent-requests\"")
    );
    assert_eq!(b.header("ratelimit"), Some("\"pool/concurrent\";r=0"));
    assert_eq!(
        b.body,
        r#"{"type":"https://iana.org/assignments/http-problem-types#temporary-reduced-capacity","title":"Request cannot be satisfied due to temporary server capacity constraints","status":503,"detail":"Too many requests in flight for policy pool: the limit is 5 at once; retry after 1 s.","policy":"pool","violated-policies":["pool/concurrent"]}"#
    );
    assert_eq!(
        s.stat("pool", "in_flight").await?,
        0,
        "finished requests left"
    );
    assert_eq!(s.stat("pool", "concurrency_limited").await?, 7);

    // Clients that give up (stream reset) also leave.
    for _ in 0..3 {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(200))
            .build()?;
        let r = client
            .get(s.envoy.url("/slow"))
            .header("x-echo-delay-ms", "2000")
            .send()
            .await;
        assert!(r.is_err(), "the client timed out");
    }
    wait_until(Duration::from_secs(5), "reset requests released", || {
        let st = s.stat("pool", "in_flight");
        async move { st.await.ok().filter(|n| *n == 0) }
    })
    .await?;

    // Recovered: a full batch fits again.
    let mut ok = 0;
    for t in slow(5) {
        ok += usize::from(t.await??.status == 200);
    }
    assert_eq!(ok, 5);
    Ok(())
}

/// A unary call with an empty message (valid for any protobuf type); the proxy answers it.
#[derive(Clone, Copy, Default)]
struct Empty;

impl tonic::codec::Encoder for Empty {
    type Item = ();
    type Error = tonic::Status;
    fn encode(&mut self, _: (), _: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        Ok(())
    }
}

impl tonic::codec::Decoder for Empty {
    type Item = ();
    type Error = tonic::Status;
    fn decode(&mut self, _: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        Ok(Some(()))
    }
}

impl tonic::codec::Codec for Empty {
    type Encode = ();
    type Decode = ();
    type Encoder = Empty;
    type Decoder = Empty;
    fn encoder(&mut self) -> Empty {
        Empty
    }
    fn decoder(&mut self) -> Empty {
        Empty
    }
}

/// Calls `method` through the proxy with a real gRPC client; returns the failure status
/// (the echo upstream is not a gRPC server, so even an admitted call fails, differently).
async fn grpc_call(envoy: &Envoy, method: &'static str) -> anyhow::Result<tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(envoy.url(""))?
        .timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
    match grpc
        .unary::<(), (), _>(tonic::Request::new(()), path, Empty)
        .await
    {
        Ok(_) => anyhow::bail!("{method} unexpectedly succeeded"),
        Err(status) => Ok(status),
    }
}
