//! Soak: policy churn, control-plane restarts (each one resets the proxy's ADS stream) and
//! steady traffic through a real Envoy. `make soak` runs it for 10 minutes
//! (`MESHWARDEN_SOAK_SECS=600`); `make test` runs 20 seconds of it. It ends with no failed
//! request that no policy asked for, every acknowledged apply present, and memory flat.

use crate::support::{trace_policy, SteadyTraffic};
use meshwarden_e2e::{ControlPlane, EchoUpstream, Envoy, EnvoyOptions};
use std::time::{Duration, Instant};

/// Resident memory of a process in MiB (0 if unknown).
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

const NAMES: usize = 5;

#[tokio::test]
async fn churn_restarts_and_traffic() -> anyhow::Result<()> {
    let secs: u64 = std::env::var("MESHWARDEN_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let total = Duration::from_secs(secs);
    let mut cp = ControlPlane::start().await?;
    let up = EchoUpstream::start().await?;
    let envoy = Envoy::start(&cp, up.addr.port(), EnvoyOptions::default()).await?;

    // At most ~200 requests a second, until stopped.
    let traffic = SteadyTraffic::start(
        envoy.client().clone(),
        envoy.url("/soak"),
        Duration::from_millis(5),
        secs * 250,
    );

    let started = Instant::now();
    let restarts_at = [0.2, 0.4, 0.6].map(|f| total.mul_f64(f));
    let mut restarts = 0;
    let mut acked: Vec<Option<u32>> = vec![None; NAMES];
    let (mut applies, mut refused) = (0u64, 0u64);
    let mut envoy_rss = Vec::new();
    let mut cp_rss_steady = None;
    let mut round = 0u32;
    while started.elapsed() < total {
        round += 1;
        let name = (round as usize) % NAMES;
        let sampling = round % 101;
        let out = cp.cli().apply_yaml(&trace_policy(
            &format!("soak-{name}"),
            &format!("samplingPercentage: {sampling}"),
        ));
        applies += 1;
        if out.success {
            acked[name] = Some(sampling);
        } else {
            refused += 1;
        }
        let elapsed = started.elapsed();
        if restarts < restarts_at.len() && elapsed >= restarts_at[restarts] {
            cp.restart().await?;
            restarts += 1;
        }
        if cp_rss_steady.is_none() && elapsed >= total.mul_f64(0.65) {
            cp_rss_steady = Some(rss_mib(cp.pid()));
        }
        if envoy_rss.is_empty() && elapsed >= total.mul_f64(0.1) {
            envoy_rss.push(rss_mib(envoy.pid()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (sent, failed) = traffic.stop().await?;
    envoy_rss.push(rss_mib(envoy.pid()));
    let cp_rss_end = rss_mib(cp.pid());

    // Every acknowledged apply is what the store holds now.
    let got: serde_json::Value =
        serde_json::from_str(&cp.cli().run(&["get", "-o", "json"]).stdout)?;
    let text = got.to_string();
    for (name, sampling) in acked.iter().enumerate() {
        let Some(sampling) = sampling else { continue };
        let policy = got
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["metadata"]["name"] == format!("soak-{name}").as_str());
        let policy = policy.unwrap_or_else(|| panic!("soak-{name} missing: {text}"));
        assert_eq!(
            policy["spec"]["samplingPercentage"].as_f64(),
            Some(f64::from(*sampling)),
            "soak-{name}"
        );
    }

    println!(
        "soak: {secs} s, {sent} requests, {failed} failed; {applies} applies ({refused} refused while the control plane restarted), {restarts} control-plane restarts; Envoy RSS {:.1} -> {:.1} MiB; control plane RSS {:.1} -> {:.1} MiB (after its last restart)",
        envoy_rss[0],
        envoy_rss[envoy_rss.len() - 1],
        cp_rss_steady.unwrap_or(0.0),
        cp_rss_end
    );
    if let Ok(path) = std::env::var("MESHWARDEN_SOAK_OUT") {
        let figures = serde_json::json!({
            "seconds": secs,
            "requests": sent,
            "failed": failed,
            "applies": applies,
            "applies_refused": refused,
            "control_plane_restarts": restarts,
            "envoy_rss_mib": [envoy_rss[0], envoy_rss[envoy_rss.len() - 1]],
            "control_plane_rss_mib": [cp_rss_steady.unwrap_or(0.0), cp_rss_end],
            "date": std::process::Command::new("date").arg("-u").arg("+%Y-%m-%d").output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default(),
            "commit": std::process::Command::new("git").args(["rev-parse", "--short", "HEAD"]).output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default(),
        });
        std::fs::write(&path, serde_json::to_string_pretty(&figures)?)?;
    }
    assert!(sent > secs * 10, "traffic ran");
    assert_eq!(failed, 0, "requests failed that no policy asked to fail");
    let envoy_growth = envoy_rss[envoy_rss.len() - 1] - envoy_rss[0];
    assert!(
        envoy_growth < 64.0,
        "Envoy memory grew {envoy_growth:.1} MiB"
    );
    if let Some(steady) = cp_rss_steady {
        assert!(
            cp_rss_end - steady < 64.0,
            "control plane memory grew {:.1} MiB",
            cp_rss_end - steady
        );
    }
    Ok(())
}
