//! meshwarden inside an Istio-shaped sidecar: the filters inserted exactly as the shipped
//! EnvoyFilter says, configured over the standalone ECDS (state of the world and delta),
//! modules fetched over HTTP from the control plane, policies selected by namespace and
//! workload labels, metrics labelled through the shipped bootstrap override.

use crate::oci::{wasmplugin_envoy_yaml, ModuleCode};
use crate::support::{policy, SteadyTraffic};
use meshwarden_e2e::istio::{Sidecar, SidecarOptions, SERVICE_PORT, SHADOW_SERVICE};
use meshwarden_e2e::ports::free_port;
use meshwarden_e2e::Envoy;
use meshwarden_e2e::{wait_until, ControlPlane, EchoUpstream};
use serde_json::Value;
use std::time::Duration;

/// What every test here starts: a control plane, the app and its shadow, and a sidecar of
/// a `reviews` pod in namespace `bookinfo`.
struct Mesh {
    cp: ControlPlane,
    app: EchoUpstream,
    shadow: EchoUpstream,
    sidecar: Sidecar,
}

async fn mesh(options: SidecarOptions) -> anyhow::Result<Mesh> {
    let cp = ControlPlane::start().await?;
    let app = EchoUpstream::start().await?;
    let shadow = EchoUpstream::start().await?;
    let sidecar = Sidecar::start(&cp, app.addr.port(), shadow.addr.port(), options).await?;
    Ok(Mesh {
        cp,
        app,
        shadow,
        sidecar,
    })
}

fn reviews(delta: bool) -> SidecarOptions {
    SidecarOptions {
        delta,
        ..SidecarOptions::new(
            "reviews-v1-0",
            "bookinfo",
            &[("app", "reviews"), ("version", "v1")],
        )
    }
}

/// The selector every policy for the reviews workload carries.
const REVIEWS: &str = "selector: {namespaces: [bookinfo], labels: {app: reviews}}";

fn reviews_policies() -> String {
    [
        policy(
            "TracePolicy",
            "reviews-trace",
            &format!("{REVIEWS}\nformats: [w3c]\nresponseHeader: x-trace-id"),
        ),
        policy(
            "RateLimitPolicy",
            "reviews-limit",
            &format!("{REVIEWS}\nmatch: {{path: {{exact: /limited}}}}\nrate: {{requests: 1, unit: minute}}\nburst: 1"),
        ),
        policy(
            "FaultPolicy",
            "reviews-abort",
            &format!("{REVIEWS}\nmatch: {{path: {{prefix: /abort}}}}\nabort: {{httpStatus: 418, percentage: {{value: 100}}}}"),
        ),
        policy(
            "MirrorPolicy",
            "reviews-mirror",
            &format!("{REVIEWS}\nmatch: {{path: {{prefix: /mirror}}}}\nmirrors:\n- target: {{service: {{host: {SHADOW_SERVICE}, port: {SERVICE_PORT}}}}}"),
        ),
        // Same namespace, other workload: must not reach this sidecar.
        policy(
            "FaultPolicy",
            "ratings-abort",
            "selector: {namespaces: [bookinfo], labels: {app: ratings}}\nmatch: {path: {prefix: /ratings}}\nabort: {httpStatus: 503, percentage: {value: 100}}",
        ),
    ]
    .join("---\n")
}

impl Mesh {
    fn apply(&self, yaml: &str) {
        let out = self.cp.cli().apply_yaml(yaml);
        assert!(out.success, "apply failed: {}\n{}", out.stderr, out.stdout);
    }

    async fn status(&self, path: &str) -> u16 {
        match self.sidecar.envoy.get(path, &[]).await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Waits until `path` answers `status` (the configuration reached the sidecar).
    async fn wait_status(&self, path: &str, status: u16) -> anyhow::Result<()> {
        let waited = wait_until(
            Duration::from_secs(20),
            &format!("{path} -> {status}"),
            || async move { (self.status(path).await == status).then_some(()) },
        )
        .await;
        if let Err(e) = waited {
            anyhow::bail!(
                "{e}\n--- envoy log ---\n{}\n--- cp log ---\n{}",
                self.sidecar.envoy.log(),
                self.cp.log()
            );
        }
        Ok(())
    }

    /// Waits until status shows every `(filter, policy)` pair accepted by the sidecar.
    async fn wait_accepted(&self, pairs: &[(&str, &str)]) -> anyhow::Result<()> {
        let waited = wait_until(
            Duration::from_secs(30),
            "policies accepted by the sidecar",
            || async {
                pairs
                    .iter()
                    .all(|(filter, policy)| {
                        self.filter_row(filter).is_some_and(|f| {
                            f["acceptedPolicies"]
                                .as_array()
                                .is_some_and(|a| a.iter().any(|p| p == policy))
                        })
                    })
                    .then_some(())
            },
        )
        .await;
        if let Err(e) = waited {
            anyhow::bail!(
                "{e}\n--- status ---\n{:#}\n--- envoy log ---\n{}\n--- cp log ---\n{}",
                self.cp.cli().status_json(),
                self.sidecar.envoy.log(),
                self.cp.log()
            );
        }
        Ok(())
    }

    /// The status rows of this sidecar's open streams.
    fn proxy_rows(&self) -> Vec<Value> {
        let status = self.cp.cli().status_json();
        let id = self.sidecar.options.node_id();
        status["proxies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["nodeId"] == id.as_str() && p["connected"] == true)
            .cloned()
            .collect()
    }

    /// The status entry of filter `name` on this sidecar.
    fn filter_row(&self, name: &str) -> Option<Value> {
        self.proxy_rows().into_iter().find_map(|p| {
            p["filters"]
                .as_array()?
                .iter()
                .find(|f| f["name"] == name)
                .cloned()
        })
    }
}

async fn enforces_every_kind_by_namespace_and_labels(delta: bool) -> anyhow::Result<()> {
    let m = mesh(reviews(delta)).await?;
    // Before any policy: traffic flows (pass-through defaults, no warming on meshwarden).
    assert_eq!(m.status("/hello").await, 200);
    m.apply(&reviews_policies());
    m.wait_accepted(&[
        ("meshwarden.trace", "reviews-trace"),
        ("meshwarden.ratelimit", "reviews-limit"),
        ("meshwarden.fault", "reviews-abort"),
        ("meshwarden.mirror", "reviews-mirror"),
    ])
    .await?;
    // An ACK precedes the workers' switch to the new configuration by a moment.
    m.wait_status("/abort/x", 418).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Trace: the trace id is echoed and the app sees a traceparent.
    let r = m.sidecar.envoy.get("/traced", &[]).await?;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-trace-id"), "{:?}", r.headers());
    let seen = m.app.last_with_path("/traced").expect("app saw /traced");
    assert!(seen.header("traceparent").is_some());

    // Rate limit: one request per minute on /limited.
    assert_eq!(m.status("/limited").await, 200);
    assert_eq!(m.status("/limited").await, 429);

    // Mirror: a copy reaches the shadow service through Istio's outbound cluster.
    assert_eq!(m.status("/mirror/1").await, 200);
    let copied = wait_until(Duration::from_secs(10), "mirrored copy", || async {
        m.shadow.last_with_path("/mirror/1").map(|_| ())
    })
    .await;
    if let Err(e) = copied {
        anyhow::bail!("{e}\n--- envoy log ---\n{}", m.sidecar.envoy.log());
    }

    // Another workload's policy is not enforced here.
    assert_eq!(m.status("/ratings/1").await, 200);

    // The listener was never rejected, and status names the standalone service.
    let stats = m.sidecar.envoy.stats().await?;
    assert_eq!(
        stats
            .get("listener_manager.lds.update_rejected")
            .copied()
            .unwrap_or(0),
        0
    );
    let rows = m.proxy_rows();
    assert!(rows.len() >= 4, "one ECDS stream per filter: {rows:#?}");
    assert!(
        rows.iter()
            .all(|p| p["transport"] == "ecds"
                && p["protocol"] == if delta { "delta" } else { "sotw" })
    );
    let fault = m.filter_row("meshwarden.fault").expect("fault filter row");
    assert_eq!(
        fault["acceptedPolicies"],
        serde_json::json!(["reviews-abort"])
    );

    // Metrics reach Prometheus output with the policy label (shipped bootstrap override).
    let prom = m.sidecar.envoy.prometheus().await?;
    assert!(
        prom.lines()
            .any(|l| l
                .starts_with("meshwarden_fault_aborts_injected_total{policy=\"reviews-abort\"}")),
        "{}",
        prom.lines()
            .filter(|l| l.contains("meshwarden"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

#[tokio::test]
async fn sidecar_over_standalone_ecds_sotw_enforces_every_kind() -> anyhow::Result<()> {
    enforces_every_kind_by_namespace_and_labels(false).await
}

#[tokio::test]
async fn sidecar_over_standalone_ecds_delta_enforces_every_kind() -> anyhow::Result<()> {
    enforces_every_kind_by_namespace_and_labels(true).await
}

#[tokio::test]
async fn sidecar_takes_changes_live_shows_nacks_and_survives_a_killed_control_plane(
) -> anyhow::Result<()> {
    // The control plane serves modules from a private copy the test can break.
    let modules = crate::support::module_copy()?;
    let cp = ControlPlane::start_with_wasm_dir(modules.path().to_path_buf()).await?;
    let app = EchoUpstream::start().await?;
    let shadow = EchoUpstream::start().await?;
    let options = SidecarOptions {
        remote_modules: false,
        ..reviews(true)
    };
    let sidecar = Sidecar::start(&cp, app.addr.port(), shadow.addr.port(), options).await?;
    let mut m = Mesh {
        cp,
        app,
        shadow,
        sidecar,
    };
    let pid = m.sidecar.envoy.pid();
    let abort = |status: u16| {
        policy(
            "FaultPolicy",
            "reviews-abort",
            &format!("{REVIEWS}\nmatch: {{path: {{prefix: /abort}}}}\nabort: {{httpStatus: {status}, percentage: {{value: 100}}}}"),
        )
    };
    m.apply(&abort(418));
    m.wait_status("/abort/x", 418).await?;
    // A change reaches the sidecar without a restart.
    m.apply(&abort(451));
    m.wait_status("/abort/x", 451).await?;
    assert_eq!(m.sidecar.envoy.pid(), pid);

    // A module that cannot load: the sidecar rejects the update, status shows the NACK,
    // and the last good configuration keeps serving.
    std::fs::write(modules.path().join("meshwarden.wasm"), b"not wasm")?;
    m.apply(&abort(452));
    wait_until(Duration::from_secs(20), "NACK in status", || async {
        let f = m.filter_row("meshwarden.fault")?;
        (!f["lastError"].as_str().unwrap_or_default().is_empty()).then_some(())
    })
    .await?;
    assert_eq!(
        m.status("/abort/x").await,
        451,
        "last good configuration serves"
    );

    // SIGKILL the control plane under traffic: no request fails.
    let traffic = SteadyTraffic::start(
        m.sidecar.envoy.client().clone(),
        m.sidecar.envoy.url("/steady"),
        Duration::from_millis(5),
        2_000,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    m.cp.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (sent, failed) = traffic.stop().await?;
    assert!(sent > 20, "traffic ran");
    assert_eq!(
        failed, 0,
        "requests failed while the control plane was gone"
    );
    assert_eq!(m.status("/abort/x").await, 451, "policies stay in force");
    Ok(())
}

#[tokio::test]
async fn remote_code_from_the_control_plane_is_checked_by_sha256() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let app = EchoUpstream::start().await?;
    // The control plane serves the module it advertises: meshwarden.wasm (its fault stage
    // runs under root id `meshwarden.fault`).
    let module = std::fs::read(meshwarden_e2e::paths::wasm_dir().join("meshwarden.wasm"))?;
    let sha256 = hex_sha256(&module);
    let config = serde_json::json!({"policies": [{
        "name": "teapot",
        "match": {"path": {"prefix": "/abort"}},
        "spec": {"abort": {"httpStatus": 418, "percentage": {"value": 100}}}
    }]});
    let uri = format!("http://meshwarden/modules/{sha256}.wasm");
    let start = |sha: String| {
        let (config, uri) = (config.clone(), uri.clone());
        let (cp_port, app_port) = (cp.http_port, app.addr.port());
        async move {
            let (admin, listen) = (free_port(), free_port());
            let code = ModuleCode::Remote {
                uri: &uri,
                sha256: &sha,
                port: cp_port,
            };
            let yaml = wasmplugin_envoy_yaml(code, &config, admin, listen, app_port);
            Envoy::start_bootstrap(tempfile::tempdir()?, &yaml, admin, listen, 1).await
        }
    };
    // The right hash: the module is fetched from the control plane and enforces.
    let good = start(sha256.clone()).await?;
    assert_eq!(good.get("/abort/x", &[]).await?.status(), 418);
    assert_eq!(good.get("/other", &[]).await?.status(), 200);
    // A wrong hash: Envoy refuses the module; FAIL_OPEN lets traffic through unfiltered.
    let wrong = start("0".repeat(64)).await?;
    assert_eq!(wrong.get("/abort/x", &[]).await?.status(), 200);
    assert!(
        app.last_with_path("/abort/x").is_some(),
        "the request reached the app"
    );
    Ok(())
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test]
async fn sidecar_reports_captures_and_open_breakers_through_the_shipped_cluster(
) -> anyhow::Result<()> {
    // Neither policy names a report cluster: the shipped EnvoyFilter's `meshwarden_xds`
    // cluster carries both kinds of report to the control plane.
    let m = mesh(reviews(true)).await?;
    m.apply(
        &[
            policy(
                "CapturePolicy",
                "reviews-capture",
                &format!("{REVIEWS}\nmatch: {{path: {{prefix: /seen}}}}"),
            ),
            policy(
                "CircuitBreakerPolicy",
                "reviews-breaker",
                &format!(
                    "{REVIEWS}\nmatch: {{path: {{prefix: /fragile}}}}\n\
                     slidingWindow: {{count: 2}}\nminimumNumberOfCalls: 2\n\
                     waitDurationInOpenState: 1m"
                ),
            ),
        ]
        .join("---\n"),
    );
    m.wait_accepted(&[
        ("meshwarden.capture", "reviews-capture"),
        ("meshwarden.circuitbreaker", "reviews-breaker"),
    ])
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    for _ in 0..3 {
        assert_eq!(m.status("/seen").await, 200);
    }
    let envoy = &m.sidecar.envoy;
    let captured = wait_until(Duration::from_secs(10), "captures accepted", || async {
        let n = envoy
            .policy_stat("meshwarden_capture_captured_total", "reviews-capture")
            .await
            .ok()?;
        (n >= 3).then_some(())
    })
    .await;
    if let Err(e) = captured {
        anyhow::bail!("{e}\n--- envoy log ---\n{}", envoy.log());
    }

    for _ in 0..2 {
        let r = envoy.get("/fragile", &[("x-echo-status", "503")]).await?;
        assert_eq!(r.status().as_u16(), 503);
    }
    let listed = wait_until(
        Duration::from_secs(10),
        "open breaker in status",
        || async {
            m.proxy_rows().iter().find_map(|p| {
                let b = p["openBreakers"].as_array()?.first()?.clone();
                (b["policy"] == "reviews-breaker" && b["state"] == "open").then_some(())
            })
        },
    )
    .await;
    if let Err(e) = listed {
        anyhow::bail!(
            "{e}\n--- status ---\n{:#}\n--- envoy log ---\n{}",
            m.cp.cli().status_json(),
            envoy.log()
        );
    }
    // One BREAKER line, though the sidecar has one status row per ECDS stream.
    let table = m.cp.cli().run(&["status"]).stdout;
    let lines = table.lines().filter(|l| l.starts_with("BREAKER ")).count();
    assert_eq!(lines, 1, "{table}");
    Ok(())
}
