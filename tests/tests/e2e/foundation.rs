//! Foundation: policies applied with the CLI reach the trace filter in a real Envoy over
//! ADS/ECDS, live, with ACK/NACK tracking, persistence and selectors.

use crate::support::{filter_status, is_uuid, parse_traceparent, trace_policy, FILTER};
use meshwarden_e2e::{ControlPlane, EchoUpstream, Envoy, EnvoyOptions, RecordedRequest};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

struct Stack {
    upstream: EchoUpstream,
    cp: ControlPlane,
    envoy: Envoy,
}

async fn stack(cp: ControlPlane, opts: EnvoyOptions) -> anyhow::Result<Stack> {
    let upstream = EchoUpstream::start().await?;
    let envoy = Envoy::start(&cp, upstream.addr.port(), opts).await?;
    Ok(Stack {
        upstream,
        cp,
        envoy,
    })
}

/// Sends one request through Envoy and returns it as the upstream saw it.
async fn through(
    s: &Stack,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(reqwest::Response, RecordedRequest)> {
    let resp = s.envoy.get(path, headers).await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "status {} for {path}",
        resp.status()
    );
    let seen = s
        .upstream
        .last_with_path(path)
        .ok_or_else(|| anyhow::anyhow!("upstream never saw {path}"))?;
    Ok((resp, seen))
}

fn str_field(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn trace_policy_takes_effect_within_a_second_and_keeps_incoming_traces() -> anyhow::Result<()>
{
    let s = stack(ControlPlane::start().await?, EnvoyOptions::default()).await?;

    // No policy: the filter is a pass-through.
    let (_, before) = through(&s, "/before", &[]).await?;
    assert!(before.header_all("traceparent").is_empty());
    assert!(before.header_all("x-request-id").is_empty());

    let applied =
        s.cp.cli()
            .apply_yaml(&trace_policy("everything", "formats: [w3c, requestId]"));
    assert!(applied.success, "apply failed: {}", applied.stderr);
    assert!(
        applied.stdout.contains("tracepolicy/everything created"),
        "{}",
        applied.stdout
    );
    let t0 = Instant::now();

    let mut n = 0;
    let seen = loop {
        n += 1;
        let path = format!("/after/{n}");
        let (_, seen) = through(&s, &path, &[]).await?;
        if seen.header("traceparent").is_some() {
            break seen;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "policy not in effect after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let tp = seen.header("traceparent").unwrap();
    assert!(
        parse_traceparent(&tp).is_some(),
        "invalid traceparent {tp:?}"
    );
    let rid = seen
        .header("x-request-id")
        .expect("exactly one x-request-id");
    assert!(is_uuid(&rid), "x-request-id {rid:?} is not a UUID");

    // A valid incoming trace keeps its trace id; this hop gets a new span id.
    let (_, seen) = through(&s, "/incoming", &[("traceparent", INCOMING)]).await?;
    let (trace, parent, flags) = parse_traceparent(&seen.header("traceparent").unwrap()).unwrap();
    assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(parent, "00f067aa0ba902b7");
    assert_eq!(flags, "01");

    // A duplicated, malformed traceparent restarts the trace and is replaced, not appended.
    let (_, seen) = through(
        &s,
        "/broken",
        &[
            ("traceparent", "00-XYZ-bad-01"),
            ("traceparent", INCOMING),
            ("tracestate", "a=b"),
        ],
    )
    .await?;
    let tps = seen.header_all("traceparent");
    assert_eq!(tps.len(), 1, "{tps:?}");
    assert!(parse_traceparent(&tps[0]).is_some());
    assert!(!tps[0].contains("4bf92f3577b34da6a3ce929d0e0e4736"));
    assert!(seen.header_all("tracestate").is_empty());

    // Every action shows in Envoy's Prometheus output, labelled by policy.
    let prom = s.envoy.prometheus().await?;
    for metric in ["started", "propagated", "repaired"] {
        let series = format!("meshwarden_trace_{metric}_total{{policy=\"everything\"}} ");
        let value: u64 = prom
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in Envoy's Prometheus output"));
        assert!(value >= 1, "{series}{value}");
    }

    // And the control plane reports itself.
    let (code, _) = s.cp.http_get("/healthz").await?;
    assert_eq!(code, 200);
    let (code, _) = s.cp.http_get("/readyz").await?;
    assert_eq!(code, 200);
    let (_, metrics) = s.cp.http_get("/metrics").await?;
    assert!(metrics.contains("meshwarden_"), "{metrics}");
    Ok(())
}

#[tokio::test]
async fn policy_change_applies_without_restart_and_status_shows_it_accepted() -> anyhow::Result<()>
{
    let s = stack(
        ControlPlane::start().await?,
        EnvoyOptions {
            node_id: "change-proxy".into(),
            ..Default::default()
        },
    )
    .await?;
    let cli = s.cp.cli();
    let pid = s.envoy.pid();

    assert!(
        cli.apply_yaml(&trace_policy("checkout", "formats: [w3c]"))
            .success
    );
    let first =
        meshwarden_e2e::wait_until(Duration::from_secs(5), "first version accepted", || {
            let status = cli.status_json();
            async move {
                let f = filter_status(&status, "change-proxy", FILTER)?;
                let accepted = str_field(&f, "acceptedVersion");
                (!accepted.is_empty() && accepted == str_field(&f, "sentVersion"))
                    .then_some(accepted)
            }
        })
        .await?;

    let out = cli.apply_yaml(&trace_policy(
        "checkout",
        "formats: [w3c, b3]\nresponseHeader: x-trace-id",
    ));
    assert!(out.success && out.stdout.contains("configured"), "{out:?}");
    let second = meshwarden_e2e::wait_until(Duration::from_secs(5), "new version accepted", || {
        let status = cli.status_json();
        let first = first.clone();
        async move {
            let f = filter_status(&status, "change-proxy", FILTER)?;
            let accepted = str_field(&f, "acceptedVersion");
            (accepted != first
                && accepted == str_field(&f, "sentVersion")
                && str_field(&f, "lastError").is_empty())
            .then_some(accepted)
        }
    })
    .await?;
    assert_ne!(first, second);

    // An ACK means the main thread took the configuration; each worker picks it up a
    // moment later, so poll until a request sees it.
    let (resp, seen) =
        meshwarden_e2e::wait_until(Duration::from_secs(5), "new config on the workers", || {
            let r = through(&s, "/changed", &[]);
            async move {
                let (resp, seen) = r.await.ok()?;
                resp.headers()
                    .contains_key("x-trace-id")
                    .then_some((resp, seen))
            }
        })
        .await?;
    let echoed = resp
        .headers()
        .get("x-trace-id")
        .expect("response echoes the trace id");
    let (trace, _, _) = parse_traceparent(&seen.header("traceparent").unwrap()).unwrap();
    assert_eq!(echoed.to_str()?, trace);
    let b3 = seen.header("b3").expect("b3 header injected");
    assert!(
        b3.starts_with(&trace),
        "b3 {b3:?} carries the same trace id {trace}"
    );
    assert_eq!(s.envoy.pid(), pid, "Envoy was not restarted");
    Ok(())
}

#[tokio::test]
async fn invalid_policy_is_rejected_with_the_field_and_changes_nothing() -> anyhow::Result<()> {
    let s = stack(ControlPlane::start().await?, EnvoyOptions::default()).await?;
    let cli = s.cp.cli();
    assert!(
        cli.apply_yaml(&trace_policy("keep", "formats: [w3c]"))
            .success
    );
    let before = cli.run(&["get", "tracepolicy", "keep", "-o", "json"]);
    assert!(before.success, "{before:?}");

    let bad = trace_policy("keep", "formats: [w3c]\nsamplingPercentage: 150");
    let out = cli.apply_yaml(&bad);
    assert!(!out.success, "an invalid policy must fail: {out:?}");
    assert!(
        out.stderr.contains("spec.samplingPercentage"),
        "error names the field: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("0 to 100"),
        "error names the problem: {}",
        out.stderr
    );

    // A second document that is invalid rejects the whole file: the valid one is not applied.
    let two = format!(
        "{}---\n{}",
        trace_policy("newcomer", "formats: [b3]"),
        trace_policy("other", "formats: [nope]")
    );
    let out = cli.apply_yaml(&two);
    assert!(!out.success);
    assert!(out.stderr.contains("spec.formats"), "{}", out.stderr);
    assert!(
        !cli.run(&["get", "tracepolicy", "newcomer"]).success,
        "nothing of a rejected file is applied"
    );

    let after = cli.run(&["get", "tracepolicy", "keep", "-o", "json"]);
    assert_eq!(
        before.stdout, after.stdout,
        "the applied policy is unchanged"
    );
    let (_, seen) = through(&s, "/still", &[]).await?;
    assert!(seen.header("traceparent").is_some());
    Ok(())
}

#[tokio::test]
async fn rejected_config_shows_as_nack_is_not_resent_and_traffic_keeps_flowing(
) -> anyhow::Result<()> {
    // The control plane serves modules from a private copy that the test can break.
    let modules = crate::support::module_copy()?;
    let cp = ControlPlane::start_with_wasm_dir(modules.path().to_path_buf()).await?;
    let s = stack(
        cp,
        EnvoyOptions {
            node_id: "nack-proxy".into(),
            ..Default::default()
        },
    )
    .await?;
    let cli = s.cp.cli();
    assert!(
        cli.apply_yaml(&trace_policy("good", "formats: [w3c]"))
            .success
    );
    meshwarden_e2e::wait_until(Duration::from_secs(5), "good config in effect", || {
        let r = through(&s, "/good", &[]);
        async move { r.await.ok()?.1.header("traceparent").map(|_| ()) }
    })
    .await?;

    // A module that cannot load: Envoy must reject the update.
    std::fs::write(modules.path().join("meshwarden.wasm"), b"this is not wasm")?;
    assert!(
        cli.apply_yaml(&trace_policy("good", "formats: [w3c, b3]"))
            .success
    );
    // Wait until the latest version sent is the NACKed one, and stays so (the module poll
    // may have pushed a version of its own just before the apply).
    let rejected_latest = || {
        let f = filter_status(&cli.status_json(), "nack-proxy", FILTER)?;
        let nacked = str_field(&f, "nackedVersion");
        (!str_field(&f, "lastError").is_empty() && nacked == str_field(&f, "sentVersion"))
            .then_some(f)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let nack = loop {
        if let Some(first) = rejected_latest() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            match rejected_latest() {
                Some(again)
                    if str_field(&again, "sentVersion") == str_field(&first, "sentVersion") =>
                {
                    break again
                }
                _ => continue,
            }
        }
        assert!(Instant::now() < deadline, "no NACK in status after 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        str_field(&nack, "lastError").contains(FILTER),
        "Envoy's message names the filter: {}",
        str_field(&nack, "lastError")
    );
    assert!(!str_field(&nack, "nackedVersion").is_empty());
    assert_ne!(
        str_field(&nack, "acceptedVersion"),
        str_field(&nack, "nackedVersion")
    );

    // Not re-sent in a loop: Envoy's count of rejected updates stays put.
    let fail_stat = format!("extension_config_discovery.http_filter.{FILTER}.config_fail");
    let fails = s.envoy.stat(&fail_stat).await?;
    assert!(fails >= 1, "Envoy counted the rejection");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        s.envoy.stat(&fail_stat).await?,
        fails,
        "the rejected version was sent again"
    );

    // Traffic flows on the last good config (w3c only, no b3).
    for i in 0..20 {
        let (_, seen) = through(&s, &format!("/after-nack/{i}"), &[]).await?;
        assert!(seen.header("traceparent").is_some());
        assert!(seen.header("b3").is_none());
    }
    Ok(())
}

#[tokio::test]
async fn control_plane_sigkill_loses_no_policy_and_no_request() -> anyhow::Result<()> {
    let mut s = stack(
        ControlPlane::start().await?,
        EnvoyOptions {
            node_id: "crash-proxy".into(),
            ..Default::default()
        },
    )
    .await?;
    let cli = s.cp.cli();
    let policies = format!(
        "{}---\n{}",
        trace_policy("crash-a", "formats: [w3c]\nmatch:\n  path: {prefix: /a}"),
        trace_policy("crash-b", "formats: [b3]")
    );
    assert!(cli.apply_yaml(&policies).success);
    meshwarden_e2e::wait_until(Duration::from_secs(5), "policies in effect", || {
        let r = through(&s, "/a/warm", &[]);
        async move { r.await.ok()?.1.header("traceparent").map(|_| ()) }
    })
    .await?;

    // Bounded load: at most 20 s and 20,000 requests.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let (client, url) = (s.envoy.client().clone(), s.envoy.url("/a/load"));
        tokio::spawn(async move {
            let started = Instant::now();
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(20) {
                    break;
                }
                match client
                    .get(&url)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };

    tokio::time::sleep(Duration::from_millis(300)).await;
    s.cp.kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during_outage = ok.load(Ordering::Relaxed);
    s.cp.restart().await?;

    let listed = cli.run(&["get", "tracepolicy", "-o", "json"]);
    assert!(listed.success, "{listed:?}");
    assert!(
        listed.stdout.contains("crash-a") && listed.stdout.contains("crash-b"),
        "{}",
        listed.stdout
    );
    meshwarden_e2e::wait_until(Duration::from_secs(30), "Envoy reconnected", || {
        let status = cli.status_json();
        async move {
            let f = filter_status(&status, "crash-proxy", FILTER)?;
            (!str_field(&f, "acceptedVersion").is_empty()).then_some(())
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    load.await?;

    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed during the outage"
    );
    assert!(
        ok.load(Ordering::Relaxed) > during_outage,
        "traffic flowed after the restart"
    );
    let (_, seen) = through(&s, "/b/after", &[]).await?;
    assert!(
        seen.header("b3").is_some(),
        "policies still enforced after restart"
    );
    Ok(())
}

#[tokio::test]
async fn proxies_get_policies_by_selector_over_sotw_and_delta() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let upstream = EchoUpstream::start().await?;
    let labels = |zone: &str| [("zone".to_string(), zone.to_string())].into();
    let eu = Envoy::start(
        &cp,
        upstream.addr.port(),
        EnvoyOptions {
            node_id: "eu-1".into(),
            labels: labels("eu"),
            delta: false,
            ..Default::default()
        },
    )
    .await?;
    let us = Envoy::start(
        &cp,
        upstream.addr.port(),
        EnvoyOptions {
            node_id: "us-1".into(),
            labels: labels("us"),
            delta: true,
            ..Default::default()
        },
    )
    .await?;

    let policies = format!(
        "{}---\n{}",
        trace_policy(
            "eu-trace",
            "selector:\n  labels: {zone: eu}\nformats: [w3c]\nresponseHeader: x-eu-trace"
        ),
        trace_policy(
            "us-trace",
            "selector:\n  labels: {zone: us}\nformats: [b3multi]"
        )
    );
    assert!(cp.cli().apply_yaml(&policies).success);

    let eu_seen = meshwarden_e2e::wait_until(Duration::from_secs(5), "eu policy", || {
        let r = eu.get("/eu", &[]);
        let up = &upstream;
        async move {
            let resp = r.await.ok()?;
            resp.headers().get("x-eu-trace")?;
            up.last_with_path("/eu")
        }
    })
    .await?;
    assert!(eu_seen.header("traceparent").is_some());
    assert!(eu_seen.header("x-b3-traceid").is_none());

    let us_seen = meshwarden_e2e::wait_until(Duration::from_secs(5), "us policy (delta)", || {
        let r = us.get("/us", &[]);
        let up = &upstream;
        async move {
            let resp = r.await.ok()?;
            (resp.headers().get("x-eu-trace").is_none()).then_some(())?;
            up.last_with_path("/us")
                .filter(|r| r.header("x-b3-traceid").is_some())
        }
    })
    .await?;
    assert!(us_seen.header("traceparent").is_none());
    assert!(us_seen.header("x-b3-spanid").is_some());
    Ok(())
}
