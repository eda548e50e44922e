//! CircuitBreakerPolicy in a real Envoy (`--concurrency 2`): a breaker opens when the
//! upstream fails (and, separately, when it is slow), answers its fallback without calling
//! the upstream while open, half-opens after the wait and closes after successful trials.
//! Every request goes on a fresh connection, so requests land on both workers: the
//! breaker only opens (and stays open for every request) because its state is shared.
//!
//! `meshwarden status` lists the breakers that are not closed, as the proxy reports them.
//!
//! The echo upstream fails or slows down on request (`x-echo-status`, `x-echo-delay-ms`)
//! and counts what reaches it.

use crate::support::{policy, WorkersStack};
use meshwarden_e2e::paths::{repo_root, wasm_dir};
use meshwarden_e2e::ports::free_port;
use meshwarden_e2e::static_envoy::StaticEnvoy;
use meshwarden_e2e::{wait_until, EchoUpstream, Envoy};
use serde_json::{json, Value};
use std::time::Duration;

/// The shared stack, with this file's helpers.
struct Stack(WorkersStack);

impl std::ops::Deref for Stack {
    type Target = WorkersStack;
    fn deref(&self) -> &WorkersStack {
        &self.0
    }
}

async fn stack(node_id: &str) -> anyhow::Result<Stack> {
    Ok(Stack(
        WorkersStack::start(node_id, Duration::from_secs(10)).await?,
    ))
}

struct Reply {
    status: u16,
    fallback_header: Option<String>,
    body: String,
}

impl Stack {
    /// GET `path` with `headers` on a new connection.
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
        let r = self.send(path, headers).await?;
        let status = r.status().as_u16();
        let fallback_header = r
            .headers()
            .get("x-fallback")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        Ok(Reply {
            status,
            fallback_header,
            body: r.text().await?,
        })
    }

    async fn stat(&self, metric: &str, policy: &str) -> anyhow::Result<i64> {
        let total = if metric == "state" || metric == "open_breakers" {
            ""
        } else {
            "_total"
        };
        self.envoy
            .policy_stat(
                &format!("meshwarden_circuitbreaker_{metric}{total}"),
                policy,
            )
            .await
    }

    /// Waits (bounded) until `metric` of `policy` reaches `value`: an outcome is recorded
    /// when its stream ends, a moment after the client has the answer.
    async fn wait_stat(&self, metric: &str, policy: &str, value: i64) -> anyhow::Result<()> {
        wait_until(
            Duration::from_secs(10),
            &format!("{metric} of {policy} = {value}"),
            || async move { (self.stat(metric, policy).await.ok()? == value).then_some(()) },
        )
        .await
    }
}

impl Stack {
    /// The breakers `status -o json` lists for this proxy: (policy, descriptor, state).
    fn open_breakers(&self) -> Vec<(String, String, String)> {
        let status = self.cp.cli().status_json();
        let Some(proxy) = status["proxies"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["nodeId"] == self.node_id.as_str())
        else {
            return Vec::new();
        };
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        proxy["openBreakers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| {
                (
                    text(&b["policy"]),
                    text(&b["descriptor"]),
                    text(&b["state"]),
                )
            })
            .collect()
    }

    /// Waits (bounded: the proxy looks every 500 ms) until `status` lists exactly `want`.
    async fn wait_status_breakers(&self, want: &[(&str, &str, &str)]) -> anyhow::Result<()> {
        let want: Vec<(String, String, String)> = want
            .iter()
            .map(|(p, d, s)| (p.to_string(), d.to_string(), s.to_string()))
            .collect();
        wait_until(
            Duration::from_secs(5),
            &format!("status lists the breakers {want:?}"),
            || async { (self.open_breakers() == want).then_some(()) },
        )
        .await
    }
}

const FALLBACK_BODY: &str = r#"{"items":[],"fallback":true}"#;

fn breaker_policy(name: &str, spec: &str) -> String {
    policy("CircuitBreakerPolicy", name, spec)
}

#[tokio::test]
async fn failures_open_the_breaker_the_fallback_spares_the_upstream_then_trials_close_it(
) -> anyhow::Result<()> {
    let s = stack("cb-failures").await?;
    s.apply(&breaker_policy(
        "orders",
        "match: {path: {prefix: /orders}}\n\
         slidingWindow: {count: 4}\n\
         minimumNumberOfCalls: 4\n\
         failureRateThreshold: {value: 50}\n\
         waitDurationInOpenState: 1s\n\
         permittedNumberOfCallsInHalfOpenState: 2\n\
         fallback:\n\
         \x20 httpStatus: 200\n\
         \x20 headers: {content-type: application/json, x-fallback: cached}\n\
         \x20 body: '{\"items\":[],\"fallback\":true}'",
    ))
    .await?;
    assert_eq!(s.stat("state", "orders").await?, 0);

    // The upstream starts failing: four 503s, on connections spread over both workers.
    for _ in 0..4 {
        let r = s.get("/orders", &[("x-echo-status", "503")]).await?;
        assert_eq!(r.status, 503);
        assert_eq!(r.fallback_header, None);
    }
    s.wait_stat("opened", "orders", 1).await?;
    assert_eq!(s.stat("state", "orders").await?, 2);
    assert_eq!(s.stat("failures", "orders").await?, 4);
    assert!(
        s.envoy.log().contains("breaker") && s.envoy.log().contains("closed -> open"),
        "the transition is logged"
    );

    // Open: every request, on either worker, gets the fallback; the upstream sees none.
    let seen = s.upstream.requests_with_path("/orders");
    for _ in 0..12 {
        let r = s.get("/orders", &[]).await?;
        assert_eq!(r.status, 200);
        assert_eq!(r.fallback_header.as_deref(), Some("cached"));
        assert_eq!(r.body, FALLBACK_BODY);
    }
    assert_eq!(
        s.upstream.requests_with_path("/orders"),
        seen,
        "upstream count flat"
    );
    assert_eq!(s.stat("short_circuited", "orders").await?, 12);
    // Other paths are not guarded.
    assert_eq!(s.get("/other", &[]).await?.status, 200);
    // `meshwarden status` shows the open breaker of this proxy. (Checked after the fallback
    // requests: the wait may be over by now, but with no request arriving the breaker
    // stays open until the next one.)
    s.wait_status_breakers(&[("orders", "", "open")]).await?;
    let table = s.cp.cli().run(&["status"]).stdout;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("BREAKER cb-failures orders open (")),
        "{table}"
    );

    // After the wait the breaker half-opens: two trials reach the (recovered) upstream.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..2 {
        let r = s.get("/orders", &[]).await?;
        assert_eq!(r.status, 200);
        assert_eq!(r.fallback_header, None, "a trial goes upstream");
    }
    assert_eq!(s.upstream.requests_with_path("/orders"), seen + 2);
    assert_eq!(s.stat("half_opened", "orders").await?, 1);
    s.wait_stat("closed", "orders", 1).await?;
    assert_eq!(s.stat("state", "orders").await?, 0);
    assert_eq!(s.stat("open_breakers", "orders").await?, 0);
    s.wait_status_breakers(&[]).await?;

    // Closed again: requests go upstream.
    for _ in 0..4 {
        let r = s.get("/orders", &[]).await?;
        assert_eq!((r.status, r.fallback_header), (200, None));
    }
    assert_eq!(s.upstream.requests_with_path("/orders"), seen + 6);
    Ok(())
}

#[tokio::test]
async fn a_slow_upstream_opens_the_breaker_and_failing_trials_reopen_it() -> anyhow::Result<()> {
    let s = stack("cb-slow").await?;
    s.apply(&breaker_policy(
        "search",
        "slidingWindow: {duration: 10s}\n\
         minimumNumberOfCalls: 3\n\
         slowCallDurationThreshold: 200ms\n\
         slowCallRateThreshold: {value: 60}\n\
         waitDurationInOpenState: 1s\n\
         permittedNumberOfCallsInHalfOpenState: 1",
    ))
    .await?;

    // Fast calls, then the upstream slows down: two slow calls of three trip it.
    assert_eq!(s.get("/search", &[]).await?.status, 200);
    for _ in 0..2 {
        let r = s.get("/search", &[("x-echo-delay-ms", "300")]).await?;
        assert_eq!(r.status, 200, "a slow call is still a success");
    }
    s.wait_stat("opened", "search", 1).await?;
    assert_eq!(s.stat("slow_calls", "search").await?, 2);
    assert_eq!(s.stat("failures", "search").await?, 0);

    // The default fallback: 503, without calling the upstream.
    let seen = s.upstream.requests_with_path("/search");
    for _ in 0..5 {
        let r = s.get("/search", &[]).await?;
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "circuit breaker open");
    }
    assert_eq!(s.upstream.requests_with_path("/search"), seen);

    // The trial is slow too: the breaker opens again for another wait.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = s.get("/search", &[("x-echo-delay-ms", "300")]).await?;
    assert_eq!(r.status, 200, "the trial went upstream");
    s.wait_stat("opened", "search", 2).await?;
    assert_eq!(s.get("/search", &[]).await?.status, 503);
    assert_eq!(s.upstream.requests_with_path("/search"), seen + 1);
    Ok(())
}

#[tokio::test]
async fn each_descriptor_value_has_its_own_breaker() -> anyhow::Result<()> {
    let s = stack("cb-tenants").await?;
    s.apply(&breaker_policy(
        "tenants",
        "descriptors: [{header: x-tenant}]\n\
         maxKeys: 8\n\
         slidingWindow: {count: 2}\n\
         minimumNumberOfCalls: 2\n\
         waitDurationInOpenState: 1m",
    ))
    .await?;
    for _ in 0..2 {
        let r = s
            .get("/t", &[("x-tenant", "a"), ("x-echo-status", "500")])
            .await?;
        assert_eq!(r.status, 500);
    }
    s.wait_stat("opened", "tenants", 1).await?;
    let seen = s.upstream.requests_with_path("/t");
    assert_eq!(s.get("/t", &[("x-tenant", "a")]).await?.status, 503);
    assert_eq!(s.get("/t", &[("x-tenant", "b")]).await?.status, 200);
    assert_eq!(s.upstream.requests_with_path("/t"), seen + 1);
    assert_eq!(s.stat("open_breakers", "tenants").await?, 1);
    s.wait_status_breakers(&[("tenants", "a", "open")]).await?;
    Ok(())
}

/// The `pluginConfig` of the shipped `meshwarden-circuitbreaker` WasmPlugin.
fn shipped_plugin_config() -> anyhow::Result<Value> {
    let path = repo_root().join("deploy/istio/wasmplugin/wasmplugins.yaml");
    let text = std::fs::read_to_string(&path)?;
    for part in text.split("\n---\n") {
        let doc: Value = serde_yaml::from_str(part)?;
        if doc["metadata"]["name"] == "meshwarden-circuitbreaker" {
            return Ok(doc["spec"]["pluginConfig"].clone());
        }
    }
    anyhow::bail!(
        "no meshwarden-circuitbreaker WasmPlugin in {}",
        path.display()
    )
}

#[tokio::test]
async fn the_single_purpose_module_runs_the_shipped_wasmplugin_policy() -> anyhow::Result<()> {
    let upstream = EchoUpstream::start().await?;
    let (admin_port, listen_port) = (free_port(), free_port());
    let module = wasm_dir().join("meshwarden_circuitbreaker.wasm");
    let filter = json!({
        "name": "bookinfo.meshwarden-circuitbreaker",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "bookinfo.meshwarden-circuitbreaker",
                "root_id": "meshwarden.circuitbreaker",
                "vm_config": {"runtime": "envoy.wasm.runtime.v8",
                              "code": {"local": {"filename": module.display().to_string()}}},
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": shipped_plugin_config()?.to_string()
                },
                "failure_policy": "FAIL_OPEN"
            }
        }
    });
    let yaml = StaticEnvoy {
        admin_port,
        listen_port,
        upstream_port: upstream.addr.port(),
        route_extra: json!({}),
        http_filters: vec![filter],
        clusters: vec![],
    }
    .bootstrap();
    let envoy =
        Envoy::start_bootstrap(tempfile::tempdir()?, &yaml, admin_port, listen_port, 2).await?;
    // 20 failing calls (the policy's minimum) open the breaker.
    for _ in 0..20 {
        let r = envoy.get("/reviews/1", &[("x-echo-status", "500")]).await?;
        assert_eq!(r.status().as_u16(), 500);
    }
    wait_until(Duration::from_secs(10), "the breaker opened", || async {
        let opened = envoy
            .policy_stat("meshwarden_circuitbreaker_opened_total", "reviews-breaker")
            .await
            .ok()?;
        (opened == 1).then_some(())
    })
    .await?;
    let seen = upstream.requests_with_path("/reviews/1");
    for _ in 0..5 {
        let r = envoy.get("/reviews/1", &[]).await?;
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.text().await?, r#"{"reviews": []}"#);
    }
    assert_eq!(
        upstream.requests_with_path("/reviews/1"),
        seen,
        "upstream count flat"
    );
    Ok(())
}
