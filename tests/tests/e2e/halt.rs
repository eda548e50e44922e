//! `meshwarden halt` / `resume` under traffic in a real Envoy: injection stops within a
//! second of the halt and comes back within a second of the resume; the halt shows in
//! `status`, `get` and `/metrics`, survives a control-plane restart, is kept by the proxy
//! while the control plane is down, and a halt scoped to other proxies changes nothing here.

use crate::support::{accepted_version, policy, wait_accepted_change};
use meshwarden_e2e::{ControlPlane, EchoUpstream, Envoy, EnvoyOptions};
use serde_json::Value;
use std::time::{Duration, Instant};

const NODE: &str = "halt-eu";

/// Sends requests back to back until one answers `want` (bounded by 5 s); the time it took.
async fn until_status(envoy: &Envoy, want: u16) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if envoy.get("/chaos", &[]).await?.status().as_u16() == want {
            return Ok(start.elapsed());
        }
    }
    anyhow::bail!("no {want} within 5 s")
}

/// Statuses of `n` requests.
async fn statuses(envoy: &Envoy, n: usize) -> anyhow::Result<Vec<u16>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(envoy.get("/chaos", &[]).await?.status().as_u16());
    }
    Ok(out)
}

#[tokio::test]
async fn halt_stops_injection_within_a_second_persists_and_resume_restores_it() -> anyhow::Result<()>
{
    let mut cp = ControlPlane::start().await?;
    let up = EchoUpstream::start().await?;
    let opts = EnvoyOptions {
        node_id: NODE.into(),
        labels: [("zone".to_string(), "eu".to_string())].into(),
        ..Default::default()
    };
    let envoy = Envoy::start(&cp, up.addr.port(), opts).await?;
    let cli = cp.cli();
    let before = accepted_version(&cli, NODE, "meshwarden.fault");
    let out = cli.apply_yaml(&policy(
        "FaultPolicy",
        "chaos",
        "match: {path: {prefix: /chaos}}\nabort: {httpStatus: 503, percentage: {value: 100}}",
    ));
    anyhow::ensure!(out.success, "apply failed: {}", out.stderr);
    wait_accepted_change(&cli, NODE, "meshwarden.fault", &before).await?;
    until_status(&envoy, 503).await?;

    // Halt: the aborts stop within a second, and stay stopped.
    let out = cli.run(&["halt", "--reason", "game day over"]);
    assert!(out.success, "{}", out.stderr);
    let took = until_status(&envoy, 200).await?;
    eprintln!("halt: injection stopped {took:?} after `meshwarden halt` returned");
    assert!(took < Duration::from_secs(1), "halt took {took:?}");
    assert!(statuses(&envoy, 20).await?.iter().all(|&s| s == 200));
    assert_eq!(
        out.stdout,
        "halt/default in force: fault,mirror suspended on every proxy\n"
    );

    // Shown by status, get and the metrics; the policy itself is untouched.
    let status = cli.status_json();
    assert_eq!(status["halts"][0]["name"], "default");
    assert_eq!(status["halts"][0]["reason"], "game day over");
    let table = cli.run(&["status"]).stdout;
    assert!(table.starts_with("HALT "), "{table}");
    let get = cli.run(&["get"]).stdout;
    assert!(get.contains("FaultPolicy   chaos"), "{get}");
    assert!(
        get.contains("\ndefault   fault,mirror   every proxy"),
        "{get}"
    );
    let halts: Value = serde_json::from_str(&cli.run(&["get", "halt", "-o", "json"]).stdout)?;
    assert_eq!(
        halts[0]["kinds"],
        serde_json::json!(["FaultPolicy", "MirrorPolicy"])
    );
    let (_, metrics) = cp.http_get("/metrics").await?;
    assert!(
        metrics
            .lines()
            .any(|l| l == "meshwarden_halts{kind=\"FaultPolicy\"} 1"),
        "{metrics}"
    );

    // The proxy keeps the halt it received while the control plane is gone, and the halt
    // is still in force after a restart.
    cp.kill9();
    assert!(statuses(&envoy, 10).await?.iter().all(|&s| s == 200));
    cp.restart().await?;
    let halts: Value = serde_json::from_str(&cli.run(&["get", "halt", "-o", "json"]).stdout)?;
    assert_eq!(halts[0]["name"], "default", "{halts}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(statuses(&envoy, 10).await?.iter().all(|&s| s == 200));

    // Resume: injection is back within a second.
    let out = cli.run(&["resume"]);
    assert_eq!(out.stdout, "halt/default lifted\n", "{}", out.stderr);
    let took = until_status(&envoy, 503).await?;
    eprintln!("resume: injection back {took:?} after `meshwarden resume` returned");
    assert!(took < Duration::from_secs(1), "resume took {took:?}");
    assert!(statuses(&envoy, 10).await?.iter().all(|&s| s == 503));

    // A halt for other proxies leaves this one alone.
    let out = cli.run(&["halt", "fault", "--name", "us-only", "-l", "zone=us"]);
    assert!(out.success, "{}", out.stderr);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(statuses(&envoy, 10).await?.iter().all(|&s| s == 503));
    let out = cli.run(&["resume", "nope"]);
    assert!(!out.success && out.stderr.contains("no halt named \"nope\""));
    let out = cli.run(&["halt", "ratelimit"]);
    assert!(
        !out.success && out.stderr.contains("cannot be halted"),
        "{}",
        out.stderr
    );
    Ok(())
}
