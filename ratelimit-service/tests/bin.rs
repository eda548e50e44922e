//! The `meshwarden-ratelimit` binary: flags, a bad limits file, serving, SIGHUP reload and
//! SIGTERM shutdown.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use meshwarden_ratelimit_service::testing::RedisServer;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_meshwarden-ratelimit");

/// Kills the child on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn limits(requests: u32) -> String {
    format!(
        "domains:\n- domain: d\n  limits:\n  - name: l\n    descriptors: [{{key: k}}]\n    rate: {{requests: {requests}, unit: hour}}\n"
    )
}

fn run_to_end(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {sig}");
}

async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut buf))
        .await
        .expect("in time")
        .expect("read");
    buf
}

async fn remaining(grpc: &str) -> (i32, u32) {
    let mut c = RateLimitServiceClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect");
    let r = c
        .should_rate_limit(RateLimitRequest {
            domain: "d".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: "k".into(),
                    value: "v".into(),
                }],
                ..Default::default()
            }],
            hits_addend: 0,
        })
        .await
        .expect("decision")
        .into_inner();
    (r.overall_code, r.statuses[0].limit_remaining)
}

#[test]
fn bad_flags_and_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "domains:\n- domain: d\n  limits:\n  - name: l\n    descriptors: [{key: k}]\n    rate: {requests: 0, unit: hour}\n",
    )
    .unwrap();
    let (ok, err) = run_to_end(&["--config", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("domains[0].limits[0].rate.requests: must be from 1 to 1000000000, got 0"),
        "{err}"
    );
    let (ok, err) = run_to_end(&["--config", "/nonexistent.yaml"]);
    assert!(!ok);
    assert!(err.contains("read /nonexistent.yaml"), "{err}");
    let (ok, err) = run_to_end(&["--config", "x", "--redis-timeout", "50"]);
    assert!(!ok);
    assert!(err.contains("add a unit"), "{err}");
    let (ok, err) = run_to_end(&["--config", "x", "--failure-mode", "maybe"]);
    assert!(!ok);
    assert!(err.contains("allow") && err.contains("deny"), "{err}");
    // Limits come from a file or a URL: one of them, not both.
    let (ok, err) = run_to_end(&[]);
    assert!(!ok);
    assert!(err.contains("--config"), "{err}");
    let (ok, err) = run_to_end(&["--config", "x", "--config-url", "http://127.0.0.1:1/"]);
    assert!(!ok);
    assert!(err.contains("cannot be used with"), "{err}");
    let (ok, err) = run_to_end(&[
        "--config-url",
        "http://127.0.0.1:1/",
        "--config-poll",
        "10ms",
    ]);
    assert!(!ok);
    assert!(err.contains("must be from 100ms to 5m"), "{err}");
    let (ok, err) = run_to_end(&["--config-url", "https://cp.example/ratelimit/config"]);
    assert!(!ok);
    assert!(err.contains("only http:// URLs"), "{err}");
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write limits");
}

#[tokio::test]
async fn serves_reloads_on_sighup_and_stops_on_sigterm() {
    let redis = RedisServer::start().unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("limits.yaml");
    write(&config, &limits(5));
    let mut child = Guard(
        Command::new(BIN)
            .args(["--config", config.to_str().unwrap()])
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(["--redis", &redis.url(), "--redis-timeout", "200ms"])
            .args(["--failure-mode", "deny"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the binary"),
    );
    // "meshwarden-ratelimit: gRPC on A, HTTP on B, 1 domain(s)"
    let stdout = child.0.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .unwrap()
    .expect("banner");
    let grpc = line
        .split("gRPC on ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let http = line
        .split("HTTP on ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    assert!(http_get(&http, "/healthz")
        .await
        .starts_with("HTTP/1.1 200"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !http_get(&http, "/readyz").await.starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(remaining(&grpc).await, (Code::Ok as i32, 4));

    // A bigger limit: same bucket (1 used), 50 − 2 left after the next request.
    write(&config, &limits(50));
    signal(&child.0, "-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !http_get(&http, "/metrics")
        .await
        .contains("meshwarden_rls_config_reloads_total{result=\"ok\"} 1")
    {
        assert!(Instant::now() < deadline, "no reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(remaining(&grpc).await, (Code::Ok as i32, 48));

    // A bad file: counted, logged, the old limits stay.
    write(&config, "domains: [{domain: \"bad domain\"}]");
    signal(&child.0, "-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !http_get(&http, "/metrics")
        .await
        .contains("meshwarden_rls_config_reloads_total{result=\"error\"} 1")
    {
        assert!(Instant::now() < deadline, "no failed reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(remaining(&grpc).await, (Code::Ok as i32, 47));

    signal(&child.0, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut err = String::new();
    let _ = child.0.stderr.take().unwrap().read_to_string(&mut err);
    assert!(status.success(), "{status}: {err}");
    assert!(
        err.contains("limits not reloaded, keeping the old ones: domains[0].domain"),
        "{err}"
    );
}
