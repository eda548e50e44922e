//! Operator-facing behaviour of the control plane process: structured logs.

use meshwarden_e2e::paths::{meshwarden_bin, wasm_dir};
use meshwarden_e2e::ports::free_port;
use meshwarden_e2e::process::ChildGuard;
use meshwarden_e2e::wait_until;
use std::process::Command;
use std::time::Duration;

#[tokio::test]
async fn json_logs_are_one_object_per_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("cp.log");
    let mut cmd = Command::new(meshwarden_bin());
    cmd.args(["serve", "--log-format", "json", "--grpc-addr"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--http-addr")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--wasm-dir")
        .arg(wasm_dir());
    let _cp = ChildGuard::spawn(&mut cmd, &log)?;
    let text = wait_until(Duration::from_secs(20), "gRPC listening logged", || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).ok()?;
            text.contains("gRPC (policy API").then_some(text)
        }
    })
    .await?;
    let mut lines = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| anyhow::anyhow!("not JSON: {line:?}: {e}"))?;
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines >= 2, "{text}");
    assert!(
        text.contains(r#""message":"policy store loaded""#),
        "{text}"
    );
    Ok(())
}
