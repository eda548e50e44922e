//! The two filter layouts against one control plane: the combined filter (the default,
//! every stage in one pass) and separate filters sharing one Wasm VM per worker enforce the
//! same policies the same way.

use crate::support::{filter_status, policy, trace_policy, FILTER};
use meshwarden_e2e::{wait_until, ControlPlane, EchoUpstream, Envoy, EnvoyOptions, Layout};
use std::time::Duration;

/// One policy of every kind (the mirror copies to the upstream itself).
fn every_kind(mirror_port: u16) -> String {
    [
        trace_policy("t", "formats: [w3c]"),
        policy(
            "RateLimitPolicy",
            "rl",
            "match: {path: {prefix: /limited}}\nrate: {requests: 1, unit: minute}\nburst: 1",
        ),
        policy(
            "FaultPolicy",
            "f",
            "match: {path: {prefix: /abort}}\nabort: {httpStatus: 418, percentage: {value: 100}}",
        ),
        policy(
            "MirrorPolicy",
            "m",
            &format!(
                "match: {{path: {{prefix: /copied}}}}\nmirrors:\n- target: {{host: \"127.0.0.1:{mirror_port}\"}}"
            ),
        ),
        policy(
            "CircuitBreakerPolicy",
            "cb",
            "match: {path: {prefix: /breaker}}\nslidingWindow: {count: 1}\nwaitDurationInOpenState: 1m",
        ),
        policy("CapturePolicy", "cap", "match: {path: {prefix: /captured}}"),
    ]
    .join("---\n")
}

/// Checks every kind's effect through `envoy` (paths carry `tag`, so proxies sharing the
/// upstream do not see each other's copies).
async fn enforces_every_kind(envoy: &Envoy, up: &EchoUpstream, tag: &str) -> anyhow::Result<()> {
    let traced = envoy.get(&format!("/plain/{tag}"), &[]).await?;
    assert_eq!(traced.status(), 200);
    let seen = up
        .last_with_path(&format!("/plain/{tag}"))
        .expect("reached the upstream");
    assert!(seen.header("traceparent").is_some(), "trace stage ran");
    assert_eq!(
        envoy.get(&format!("/abort/{tag}"), &[]).await?.status(),
        418
    );
    assert_eq!(
        envoy.get(&format!("/limited/{tag}"), &[]).await?.status(),
        200
    );
    assert_eq!(
        envoy.get(&format!("/limited/{tag}"), &[]).await?.status(),
        429
    );
    let breaker = format!("/breaker/{tag}");
    let failed = envoy.get(&breaker, &[("x-echo-status", "500")]).await?;
    assert_eq!(failed.status(), 500);
    // The failure is recorded when its stream ends, a moment after the answer.
    wait_until(Duration::from_secs(5), "the breaker's fallback", || async {
        let r = envoy.get(&breaker, &[]).await.ok()?;
        (r.status() == 503 && r.text().await.ok()? == "circuit breaker open").then_some(())
    })
    .await?;
    // The summary reaches the control plane (counted when it accepted the report).
    assert_eq!(
        envoy.get(&format!("/captured/{tag}"), &[]).await?.status(),
        200
    );
    wait_until(Duration::from_secs(5), "the captured summary", || async {
        let n = envoy
            .policy_stat("meshwarden_capture_captured_total", "cap")
            .await
            .ok()?;
        (n >= 1).then_some(())
    })
    .await?;
    let path = format!("/copied/{tag}");
    assert_eq!(envoy.get(&path, &[]).await?.status(), 200);
    wait_until(Duration::from_secs(5), "the mirror copy", || async {
        (up.requests_with_path(&path) >= 2).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn combined_and_separate_filters_enforce_the_same_policies_in_one_vm() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let up = EchoUpstream::start().await?;
    let applied = cp.cli().apply_yaml(&every_kind(up.addr.port()));
    assert!(applied.success, "{}", applied.stderr);
    let start = |node: &str, layout: Layout| {
        Envoy::start(
            &cp,
            up.addr.port(),
            EnvoyOptions {
                node_id: node.into(),
                layout,
                ..Default::default()
            },
        )
    };
    let combined = start("combined", Layout::Combined).await?;
    let separate = start("separate", Layout::Separate).await?;
    enforces_every_kind(&combined, &up, "c").await?;
    enforces_every_kind(&separate, &up, "s").await?;

    // Status: one row for the combined filter, one per kind for separate ones.
    let status = cp.cli().status_json();
    let row = filter_status(&status, "combined", FILTER).expect("combined row");
    assert_eq!(row["acceptedPolicies"].as_array().map(Vec::len), Some(6));
    for name in Layout::Separate.filter_names() {
        let row = filter_status(&status, "separate", &name).expect("separate row");
        assert_eq!(
            row["acceptedPolicies"].as_array().map(Vec::len),
            Some(1),
            "{name}"
        );
    }

    // Five separate filters run in as many VMs as the one combined filter: one per worker
    // (and one on the main thread), not one per filter.
    let vms = "wasm.envoy.wasm.runtime.v8.active";
    let (one, five) = (combined.stat(vms).await?, separate.stat(vms).await?);
    assert!(one >= 1, "{vms} = {one}");
    assert_eq!(five, one, "separate filters share the VMs");
    Ok(())
}
