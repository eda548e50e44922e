//! The shipped Prometheus configuration and Grafana dashboard (`dashboards/`) against a real
//! Prometheus (Debian's `prometheus`) on loopback, scraping a real Envoy and control plane
//! under traffic: `promtool` accepts the configuration and rules, and every panel's query
//! returns a non-empty result.

use crate::support::{accepted_version, policy, wait_accepted_change};
use meshwarden_e2e::paths::repo_root;
use meshwarden_e2e::ports::free_port;
use meshwarden_e2e::process::ChildGuard;
use meshwarden_e2e::{wait_until, ControlPlane, EchoUpstream, Envoy, EnvoyOptions};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const NODE: &str = "dash-proxy";

/// Whether `bin` runs (`--version`).
fn available(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The shipped configuration, scraping these ports every second.
fn scrape_config(envoy_admin: u16, cp_http: u16) -> anyhow::Result<String> {
    let shipped = std::fs::read_to_string(repo_root().join("dashboards/prometheus.yml"))?;
    for needle in ["127.0.0.1:9901", "127.0.0.1:18001", "scrape_interval: 15s"] {
        anyhow::ensure!(
            shipped.contains(needle),
            "dashboards/prometheus.yml lost {needle:?}"
        );
    }
    Ok(shipped
        .replace("127.0.0.1:9901", &format!("127.0.0.1:{envoy_admin}"))
        .replace("127.0.0.1:18001", &format!("127.0.0.1:{cp_http}"))
        .replace("scrape_interval: 15s", "scrape_interval: 1s"))
}

/// `promtool check config` on `file` (which also checks its rule files).
fn promtool_check(file: &Path) -> anyhow::Result<()> {
    let out = Command::new("promtool")
        .arg("check")
        .arg("config")
        .arg(file)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "promtool check config {}: {}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Every panel query of the dashboard.
fn dashboard_queries() -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(repo_root().join("dashboards/meshwarden.json"))?;
    let dashboard: Value = serde_json::from_str(&text)?;
    let queries: Vec<String> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    anyhow::ensure!(
        queries.len() >= 7,
        "the dashboard has its panels: {queries:?}"
    );
    Ok(queries)
}

/// The result vector of an instant query.
async fn query(client: &reqwest::Client, port: u16, expr: &str) -> anyhow::Result<Vec<Value>> {
    let v: Value = client
        .get(format!("http://127.0.0.1:{port}/api/v1/query"))
        .query(&[("query", expr)])
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .json()
        .await?;
    anyhow::ensure!(v["status"] == "success", "query {expr}: {v}");
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

#[tokio::test]
async fn every_dashboard_panel_has_data_from_a_real_prometheus() -> anyhow::Result<()> {
    if !available("prometheus") || !available("promtool") {
        eprintln!(
            "\n*** SKIPPED every_dashboard_panel_has_data_from_a_real_prometheus: `prometheus` / `promtool` not found (Debian package `prometheus`; scripts/system-packages.sh installs it as root) ***\n"
        );
        return Ok(());
    }
    promtool_check(&repo_root().join("dashboards/prometheus.yml"))?;

    let cp = ControlPlane::start().await?;
    let up = EchoUpstream::start().await?;
    let shadow = EchoUpstream::start().await?;
    let opts = EnvoyOptions {
        node_id: NODE.into(),
        ..Default::default()
    };
    let envoy = Envoy::start(&cp, up.addr.port(), opts).await?;
    let cli = cp.cli();
    let before = accepted_version(&cli, NODE, crate::support::FILTER);
    let docs = [
        policy("TracePolicy", "tracing", "{}"),
        policy(
            "RateLimitPolicy",
            "enforced",
            "match: {path: {prefix: /limited}}\nrate: {requests: 5, unit: second}",
        ),
        policy(
            "RateLimitPolicy",
            "shadow",
            "rate: {requests: 5, unit: second}\ndryRun: true",
        ),
        policy(
            "FaultPolicy",
            "chaos",
            "match: {path: {prefix: /fault}}\nabort: {httpStatus: 503, percentage: {value: 50}}\ndelay: {fixedDelay: 1ms, percentage: {value: 50}}",
        ),
        policy(
            "CircuitBreakerPolicy",
            "breaker",
            "match: {path: {prefix: /breaker}}\nslidingWindow: {count: 2}\nwaitDurationInOpenState: 1s\npermittedNumberOfCallsInHalfOpenState: 1",
        ),
        policy(
            "RateLimitPolicy",
            "shedder",
            "match: {path: {prefix: /shed}}\nshedding: {adaptive: {minRttRequests: 5}}",
        ),
        policy(
            "MirrorPolicy",
            "candidate",
            &format!(
                "match: {{path: {{prefix: /mirror}}}}\nmirror: {{host: \"127.0.0.1:{}\"}}\ndiff: {{body: exact}}",
                shadow.addr.port()
            ),
        ),
    ];
    let out = cli.apply_yaml(&docs.join("---\n"));
    anyhow::ensure!(out.success, "apply failed: {}", out.stderr);
    wait_accepted_change(&cli, NODE, crate::support::FILTER, &before).await?;
    let out = cli.run(&["halt", "mirror", "--name", "probe", "-l", "zone=none"]);
    anyhow::ensure!(out.success, "halt failed: {}", out.stderr);

    let dir = tempfile::tempdir()?;
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, scrape_config(envoy.admin_port, cp.http_port)?)?;
    std::fs::copy(
        repo_root().join("dashboards/meshwarden-rules.yml"),
        dir.path().join("meshwarden-rules.yml"),
    )?;
    promtool_check(&config)?;
    let port = free_port();
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    let _prometheus = ChildGuard::spawn(&mut cmd, &dir.path().join("prometheus.log"))?;
    let client = reqwest::Client::new();
    wait_until(Duration::from_secs(30), "prometheus ready", || {
        let req = client
            .get(format!("http://127.0.0.1:{port}/-/ready"))
            .timeout(Duration::from_secs(1))
            .send();
        async move {
            req.await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        }
    })
    .await?;

    // Traffic of every kind: traces started, propagated and repaired; rate limits admitting
    // and limiting; faults; a breaker opening on failures; mirror copies compared (and
    // differing: the copy's host differs); an adaptive shedding limit measuring latency.
    let headers: [&[(&str, &str)]; 3] = [
        &[],
        &[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )],
        &[("traceparent", "00-bad")],
    ];
    for round in 0..40 {
        for path in ["/limited", "/fault", "/mirror", "/shed"] {
            envoy.get(path, headers[round % 3]).await?;
        }
        // A failing upstream behind a breaker: it opens, short-circuits, half-opens.
        envoy.get("/breaker", &[("x-echo-status", "503")]).await?;
        if round == 20 {
            // A change mid-way: its pushes are timed in the latency histogram.
            let out = cli.apply_yaml(&policy("TracePolicy", "tracing", "samplingPercentage: 50"));
            anyhow::ensure!(out.success, "apply failed: {}", out.stderr);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Each panel query returns data once enough samples are scraped.
    let queries = dashboard_queries()?;
    let empty = wait_until(
        Duration::from_secs(30),
        "every panel query has data",
        || {
            let (client, queries) = (client.clone(), queries.clone());
            async move {
                let mut empty = Vec::new();
                for q in &queries {
                    if query(&client, port, q).await.ok()?.is_empty() {
                        empty.push(q.clone());
                    }
                }
                empty.is_empty().then_some(())
            }
        },
    )
    .await;
    if empty.is_err() {
        let mut missing = Vec::new();
        for q in &queries {
            if query(&client, port, q).await?.is_empty() {
                missing.push(q.as_str());
            }
        }
        let envoy_metrics = envoy.prometheus().await?;
        let names: Vec<&str> = envoy_metrics
            .lines()
            .filter(|l| l.starts_with("meshwarden_"))
            .collect();
        anyhow::bail!("queries without data: {missing:#?}\nEnvoy exports: {names:#?}");
    }
    // Real values behind the queries, not only series at zero.
    let aborts = query(
        &client,
        port,
        "sum(meshwarden_fault_aborts_injected_total{policy=\"chaos\"})",
    )
    .await?;
    assert!(value(&aborts[0]) > 0.0, "{aborts:?}");
    let acked = query(
        &client,
        port,
        "sum(meshwarden_xds_push_latency_seconds_count)",
    )
    .await?;
    assert!(value(&acked[0]) > 0.0, "{acked:?}");
    let halts = query(&client, port, "meshwarden_halts{kind=\"MirrorPolicy\"}").await?;
    assert_eq!(value(&halts[0]), 1.0, "{halts:?}");
    Ok(())
}

/// The sample value of one instant-vector element.
fn value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}
