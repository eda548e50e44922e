//! Faults survived (issue 11): NACK memory that outlasts streams and processes, a store that
//! checks itself and recovers from a full disk, and a proxy that serves at once while the
//! control plane is down.

use crate::support::{module_copy, trace_policy, wait_traced};
use meshwarden_e2e::paths::{meshwarden_bin, wasm_dir};
use meshwarden_e2e::{wait_until, ControlPlane, EchoUpstream, Envoy, EnvoyOptions};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The filter's status row of a connected proxy.
fn trace_row(cp: &ControlPlane, node: &str) -> Option<Value> {
    crate::support::filter_status(&cp.cli().status_json(), node, crate::support::FILTER)
}

fn field(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_nack_is_remembered_across_reconnects_restarts_and_fresh_proxies() -> anyhow::Result<()> {
    let modules = module_copy()?;
    let mut cp = ControlPlane::start_with_wasm_dir(modules.path().to_path_buf()).await?;
    let up = EchoUpstream::start().await?;
    let opts = |id: &str| EnvoyOptions {
        node_id: id.into(),
        ..Default::default()
    };
    let a = Envoy::start(&cp, up.addr.port(), opts("nack-a")).await?;
    assert!(
        cp.cli()
            .apply_yaml(&trace_policy("t", "formats: [w3c]"))
            .success
    );
    wait_traced(&a, &up, "trace policy on nack-a").await?;

    // A valid module that refuses the configuration (the single-purpose fault module
    // expects its own section, not the combined one): the next version is NACKed.
    std::fs::copy(
        modules.path().join("meshwarden_fault.wasm"),
        modules.path().join("meshwarden.wasm"),
    )?;
    let nack = wait_until(Duration::from_secs(20), "NACK in status", || async {
        let row = trace_row(&cp, "nack-a")?;
        (!field(&row, "lastError").is_empty()).then_some(row)
    })
    .await?;
    let rejected = field(&nack, "nackedVersion");
    assert!(!rejected.is_empty());

    // The control plane restarts; the proxy reconnects: the NACK is still shown, and the
    // rejected version is not sent again.
    cp.restart().await?;
    let row = wait_until(
        Duration::from_secs(20),
        "nack-a back with its NACK",
        || async {
            let row = trace_row(&cp, "nack-a")?;
            (field(&row, "nackedVersion") == rejected).then_some(row)
        },
    )
    .await?;
    assert!(!field(&row, "lastError").is_empty());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let row = trace_row(&cp, "nack-a").expect("nack-a connected");
    assert_ne!(
        field(&row, "sentVersion"),
        rejected,
        "rejected version re-sent: {row:#}"
    );
    wait_traced(&a, &up, "nack-a keeps its last good configuration").await?;

    // A proxy that starts now gets the last version proxies accepted, not the rejected one.
    let b = Envoy::start(&cp, up.addr.port(), opts("nack-b")).await?;
    wait_traced(&b, &up, "fresh proxy enforces the last accepted version").await?;
    let row = trace_row(&cp, "nack-b").expect("nack-b connected");
    assert_ne!(field(&row, "sentVersion"), rejected);
    assert!(field(&row, "lastError").is_empty(), "{row:#}");
    Ok(())
}

#[tokio::test]
async fn traffic_flows_at_once_with_the_control_plane_down_and_policies_return_fast(
) -> anyhow::Result<()> {
    let mut cp = ControlPlane::start().await?;
    let up = EchoUpstream::start().await?;
    assert!(
        cp.cli()
            .apply_yaml(&trace_policy("t", "formats: [w3c]"))
            .success
    );
    cp.kill9();

    let started = Instant::now();
    let opts = EnvoyOptions {
        wait_for_config: false,
        ..Default::default()
    };
    let envoy = Envoy::start(&cp, up.addr.port(), opts).await?;
    wait_until(Duration::from_secs(10), "first request through", || async {
        envoy
            .get("/first", &[])
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| ())
    })
    .await?;
    println!(
        "traffic flowed {} ms after Envoy was started with the control plane down",
        started.elapsed().as_millis()
    );

    cp.restart().await?;
    let back = Instant::now();
    wait_traced(&envoy, &up, "policies after the control plane returned").await?;
    println!(
        "policies (first Wasm VMs of this proxy) enforced {} ms after the control plane was ready again",
        back.elapsed().as_millis()
    );

    // An outage of a proxy that has its policies: after the return, a change is enforced
    // as soon as the proxy reconnected (backoff at most 1 s).
    cp.kill9();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cp.restart().await?;
    let back = Instant::now();
    assert!(
        cp.cli()
            .apply_yaml(&trace_policy(
                "t",
                "formats: [w3c]\nresponseHeader: x-after-outage"
            ))
            .success
    );
    wait_until(
        Duration::from_secs(10),
        "change after the outage",
        || async {
            let r = envoy.get("/after", &[]).await.ok()?;
            r.headers().contains_key("x-after-outage").then_some(())
        },
    )
    .await?;
    println!(
        "a change made when the control plane returned was enforced {} ms later",
        back.elapsed().as_millis()
    );
    Ok(())
}

/// Runs `meshwarden serve` on `data_dir` and expects it to refuse to start.
fn serve_refuses(data_dir: &Path) -> anyhow::Result<String> {
    let out = Command::new("timeout")
        .arg("20")
        .arg(meshwarden_bin())
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--wasm-dir")
        .arg(wasm_dir())
        .output()?;
    anyhow::ensure!(
        !out.status.success() && out.status.code() != Some(124),
        "serve did not refuse the store: {:?}",
        out.status
    );
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn zero_byte_and_altered_stores_are_refused_with_a_clear_error() -> anyhow::Result<()> {
    let mut cp = ControlPlane::start().await?;
    let policies: String = (0..5)
        .map(|i| trace_policy(&format!("p{i}"), "samplingPercentage: 10"))
        .collect::<Vec<_>>()
        .join("---\n");
    assert!(cp.cli().apply_yaml(&policies).success);
    cp.kill9();
    let db = cp.data_dir().join("meshwarden.redb");
    let clean = std::fs::read(&db)?;

    std::fs::write(&db, b"")?;
    let err = serve_refuses(&cp.data_dir())?;
    assert!(
        err.contains("empty (0 bytes)") && err.contains("Restore"),
        "{err}"
    );

    // A digit altered inside a record (the JSON and the policy stay valid).
    let pos = clean
        .windows(b"\"samplingPercentage\":10".len())
        .position(|w| w == b"\"samplingPercentage\":10")
        .expect("record text in the file");
    let mut altered = clean.clone();
    altered[pos + b"\"samplingPercentage\":1".len()] = b'5';
    std::fs::write(&db, &altered)?;
    let err = serve_refuses(&cp.data_dir())?;
    assert!(
        err.contains("checksum mismatch") || err.contains("damaged"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // The intact file serves again.
    std::fs::write(&db, &clean)?;
    cp.restart().await?;
    let out = cp.cli().run(&["get", "-o", "json"]);
    assert!(out.success && out.stdout.contains("p4"), "{out:?}");
    Ok(())
}

/// A small tmpfs for the store, unmounted on drop; `None` where mounting is not allowed.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then_some(Self(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).output();
    }
}

#[tokio::test]
async fn a_full_disk_is_reported_and_writes_recover_when_space_returns() -> anyhow::Result<()> {
    let Some(disk) = SmallDisk::mount("8m") else {
        println!("skipped: cannot mount a tmpfs here (needs root and mount permission)");
        return Ok(());
    };
    let data = disk.0.path().join("data");
    let cp = ControlPlane::start_in(data.clone(), wasm_dir(), tempfile::tempdir()?).await?;
    assert!(cp.cli().apply_yaml(&trace_policy("before", "{}")).success);

    // Fill the disk.
    let filler = disk.0.path().join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=64"])
        .arg(format!("of={}", filler.display()))
        .output();
    let big = "x".repeat(200_000);
    let mut refused = None;
    for i in 0..20 {
        let doc = format!(
            "apiVersion: meshwarden.dev/v1alpha1\nkind: TracePolicy\nmetadata:\n  name: full-{i}\n  labels: {{pad: \"{}\"}}\nspec: {{}}\n",
            &big[..60]
        );
        let out = cp.cli().apply_yaml(&format!(
            "{doc}---\n{}",
            trace_policy(
                &format!("big-{i}"),
                &format!("responseHeader: x-{}", &big[..50])
            )
        ));
        if !out.success {
            refused = Some(out.stderr);
            break;
        }
    }
    let refused = refused.expect("a write failed on the full disk");
    assert!(refused.contains("store"), "{refused}");
    let (code, body) = cp.http_get("/readyz").await?;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("store"), "{body}");
    let (_, metrics) = cp.http_get("/metrics").await?;
    assert!(metrics.contains("meshwarden_store_healthy 0"), "{metrics}");

    // Space returns: writes work again without a restart.
    std::fs::remove_file(&filler)?;
    let pid = cp.pid();
    wait_until(Duration::from_secs(20), "store recovered", || async {
        let (code, _) = cp.http_get("/readyz").await.ok()?;
        (code == 200).then_some(())
    })
    .await?;
    assert!(cp.cli().apply_yaml(&trace_policy("after", "{}")).success);
    assert_eq!(cp.pid(), pid, "no restart");
    let out = cp.cli().run(&["get", "-o", "json"]);
    assert!(out.stdout.contains("before") && out.stdout.contains("after"));
    Ok(())
}
