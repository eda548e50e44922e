//! The global rate limit service behind Envoy's native `envoy.filters.http.ratelimit`
//! filter: a route's `rate_limits` turns `x-tenant` into a `tenant` descriptor, Envoy asks
//! the service (in-process, over a static HTTP/2 cluster), the service decides in a real
//! `redis-server`. Requests over a tenant's limit get 429 with the service's headers and
//! problem body; tenants and overrides are independent; with Redis gone the service's
//! failure mode (allow) answers, not Envoy's error path.

use meshwarden_e2e::ports::free_port;
use meshwarden_e2e::static_envoy::{static_cluster, StaticEnvoy};
use meshwarden_e2e::{wait_until, EchoUpstream, Envoy};
use meshwarden_ratelimit_service::testing::{command, RedisServer};
use meshwarden_ratelimit_service::{
    FailureMode, LimitsConfig, Server, ServerOptions, StoreOptions,
};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const LIMITS: &str = r#"
domains:
- domain: e2e
  limits:
  - name: per-tenant
    descriptors: [{key: tenant}]
    rate: {requests: 5, unit: minute}
    legacyHeaders: true
    overrides:
    - match: {tenant: gold}
      rate: {requests: 10, unit: minute}
"#;

fn envoy_yaml(admin_port: u16, listen_port: u16, upstream_port: u16, rls: SocketAddr) -> String {
    StaticEnvoy {
        admin_port,
        listen_port,
        upstream_port,
        route_extra: json!({"rate_limits": [{"actions": [
            {"request_headers": {"header_name": "x-tenant", "descriptor_key": "tenant"}}
        ]}]}),
        http_filters: vec![json!({
            "name": "envoy.filters.http.ratelimit",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
                "domain": "e2e",
                "timeout": "2s",
                "failure_mode_deny": true,
                "rate_limit_service": {
                    "transport_api_version": "V3",
                    "grpc_service": {"envoy_grpc": {"cluster_name": "ratelimit"}}
                }
            }
        })],
        clusters: vec![static_cluster("ratelimit", rls.port(), true)],
    }
    .bootstrap()
}

async fn status(envoy: &Envoy, tenant: Option<&str>) -> anyhow::Result<u16> {
    let headers: Vec<(&str, &str)> = tenant.map(|t| ("x-tenant", t)).into_iter().collect();
    Ok(envoy.get("/api", &headers).await?.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_native_ratelimit_filter_with_the_global_service() -> anyhow::Result<()> {
    let mut redis =
        RedisServer::start().map_err(|e| anyhow::anyhow!("this test needs redis-server: {e}"))?;
    let config = LimitsConfig::parse(LIMITS)?;
    let service = Server::start(
        ServerOptions {
            grpc_addr: "127.0.0.1:0".parse()?,
            http_addr: "127.0.0.1:0".parse()?,
            redis: StoreOptions {
                url: redis.url(),
                timeout: Duration::from_millis(50),
                connect_timeout: Duration::from_millis(500),
                max_in_flight: 256,
            },
            failure_mode: FailureMode::Allow,
            key_prefix: "e2e:".into(),
            health_interval: Duration::from_millis(100),
        },
        &config,
    )
    .await?;
    let upstream = EchoUpstream::start().await?;
    let (admin_port, listen_port) = (free_port(), free_port());
    let yaml = envoy_yaml(
        admin_port,
        listen_port,
        upstream.addr.port(),
        service.grpc_addr,
    );
    let envoy =
        Envoy::start_bootstrap(tempfile::tempdir()?, &yaml, admin_port, listen_port, 2).await?;

    // Tenant a: 5 per minute (burst 5), then 429 with the service's headers and body.
    for i in 0..5 {
        assert_eq!(
            status(&envoy, Some("a")).await?,
            200,
            "tenant a request {i}"
        );
    }
    let r = envoy.get("/api", &[("x-tenant", "a")]).await?;
    assert_eq!(r.status().as_u16(), 429);
    let h = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(h("x-envoy-ratelimited").as_deref(), Some("true"));
    assert_eq!(
        h("content-type").as_deref(),
        Some("application/problem+json")
    );
    let retry: u64 = h("retry-after").unwrap_or_default().parse()?;
    assert!((1..=12).contains(&retry), "retry-after {retry}");
    assert_eq!(
        h("ratelimit-policy").as_deref(),
        Some("\"per-tenant\";q=5;w=60")
    );
    assert_eq!(
        h("ratelimit"),
        Some(format!("\"per-tenant\";r=0;t={retry}"))
    );
    assert_eq!(h("x-ratelimit-limit").as_deref(), Some("5"));
    assert_eq!(h("x-ratelimit-remaining").as_deref(), Some("0"));
    let body: Value = r.json().await?;
    assert_eq!(body["status"], 429);
    assert_eq!(body["policy"], "per-tenant");
    assert_eq!(body["violated-policies"], serde_json::json!(["per-tenant"]));
    assert_eq!(status(&envoy, Some("a")).await?, 429);

    // Tenant b is independent; gold has its override (10).
    for i in 0..5 {
        assert_eq!(
            status(&envoy, Some("b")).await?,
            200,
            "tenant b request {i}"
        );
    }
    assert_eq!(status(&envoy, Some("b")).await?, 429);
    for i in 0..10 {
        assert_eq!(status(&envoy, Some("gold")).await?, 200, "gold request {i}");
    }
    assert_eq!(status(&envoy, Some("gold")).await?, 429);
    // No x-tenant: no descriptor, no call, no limit.
    for _ in 0..8 {
        assert_eq!(status(&envoy, None).await?, 200);
    }
    assert_eq!(upstream.requests().len(), 5 + 5 + 10 + 8);

    // Every call reached a decision (no RLS errors: failure_mode_deny would have 500'd).
    let stats = envoy.stats().await?;
    let stat = |name: &str| stats.get(name).copied().unwrap_or(0);
    assert_eq!(stat("cluster.upstream.ratelimit.ok"), 20, "{stats:?}");
    assert_eq!(stat("cluster.upstream.ratelimit.over_limit"), 4);
    assert_eq!(stat("cluster.upstream.ratelimit.error"), 0);
    // The buckets are in Redis.
    assert_eq!(
        command(redis.port(), "EXISTS e2e:e2e|per-tenant|tenant=a")?,
        ":1"
    );

    // Redis gone: the service answers with its failure mode (allow) within its timeout,
    // so Envoy sees OK decisions, not errors.
    redis.stop();
    let started = Instant::now();
    for i in 0..5 {
        assert_eq!(
            status(&envoy, Some("a")).await?,
            200,
            "failure-mode request {i}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(envoy.stat("cluster.upstream.ratelimit.error").await?, 0);

    // Redis back (empty): limits apply again.
    redis.restart()?;
    wait_until(
        Duration::from_secs(10),
        "the service to reach Redis",
        || {
            let store = service.limiter().store();
            async move { store.is_up().then_some(()) }
        },
    )
    .await?;
    for i in 0..5 {
        assert_eq!(
            status(&envoy, Some("c")).await?,
            200,
            "tenant c request {i}"
        );
    }
    assert_eq!(status(&envoy, Some("c")).await?, 429);

    drop(envoy);
    service.shutdown().await;
    Ok(())
}
