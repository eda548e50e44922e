//! CapturePolicy in a real Envoy: the proxy reports sampled request summaries to the
//! control plane from its root context, and `meshwarden capture -o json` streams them
//! (the CLI runs as a child process; its lines are read with bounded waits).

use crate::support::{accepted_version, policy, wait_accepted_change, FILTER};
use meshwarden_e2e::paths::meshwarden_bin;
use meshwarden_e2e::{wait_until, ControlPlane, EchoUpstream, Envoy, EnvoyOptions};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const NODE: &str = "capture-proxy";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

struct Stack {
    _upstream: EchoUpstream,
    cp: ControlPlane,
    envoy: Envoy,
}

async fn stack(spec: &str) -> anyhow::Result<Stack> {
    let cp = ControlPlane::start().await?;
    let upstream = EchoUpstream::start().await?;
    let opts = EnvoyOptions {
        node_id: NODE.into(),
        ..Default::default()
    };
    let envoy = Envoy::start(&cp, upstream.addr.port(), opts).await?;
    let cli = cp.cli();
    let before = accepted_version(&cli, NODE, FILTER);
    let out = cli.apply_yaml(&policy("CapturePolicy", "cap", spec));
    anyhow::ensure!(out.success, "apply failed: {}", out.stderr);
    wait_accepted_change(&cli, NODE, FILTER, &before).await?;
    // The ACK precedes the workers' switch to the new configuration by a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(Stack {
        _upstream: upstream,
        cp,
        envoy,
    })
}

impl Stack {
    /// The proxy's capture counters and log lines, for a failure message.
    async fn diagnose(&self) -> String {
        let stats: Vec<String> = self
            .envoy
            .stats()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k.contains("capture"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let log: Vec<String> = self
            .envoy
            .log()
            .lines()
            .filter(|l| l.contains("capture") || l.contains("grpc"))
            .take(20)
            .map(str::to_string)
            .collect();
        let cp: Vec<String> = self
            .cp
            .log()
            .lines()
            .filter(|l| l.contains("capture"))
            .take(5)
            .map(str::to_string)
            .collect();
        format!(
            "stats: {stats:?}\nenvoy log:\n{}\ncontrol plane log:\n{}",
            log.join("\n"),
            cp.join("\n")
        )
    }
}

/// A running `meshwarden capture -o json`; its stdout lines arrive on a channel. Killed
/// when dropped.
struct Watch {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Watch {
    fn start(cp: &ControlPlane) -> anyhow::Result<Self> {
        let mut child = Command::new(meshwarden_bin())
            .args(["--server", &cp.cli().server, "capture", "-o", "json"])
            .env_remove("MESHWARDEN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Self { child, lines })
    }

    /// Records received until `done` says so, or until `timeout` (then an error).
    fn until(
        &self,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> anyhow::Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while !done(&got) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => got.push(v),
                Err(_) => {
                    anyhow::bail!("capture stream: condition not met in {timeout:?}; got {got:?}")
                }
            }
        }
        Ok(got)
    }

    /// Everything received within `window` (for counting after traffic stopped).
    fn drain(&self, window: Duration) -> Vec<Value> {
        let deadline = Instant::now() + window;
        let mut got = Vec::new();
        while let Ok(v) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            got.push(v);
        }
        got
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn has_path(records: &[Value], path: &str) -> bool {
    records.iter().any(|r| r["path"] == path)
}

#[tokio::test]
async fn requests_stream_live_redacted_and_late_joiners_get_the_held_ones() -> anyhow::Result<()> {
    let s = stack("headers: [authorization, user-agent]\nmaxPerSecond: 1000").await?;
    let watch = Watch::start(&s.cp)?;
    // The watch is connected once a first request shows.
    let marker = wait_until(
        Duration::from_secs(10),
        "the watch sees traffic",
        || async {
            s.envoy.get("/capture/first", &[]).await.ok()?;
            let got = watch.drain(Duration::from_millis(300));
            has_path(&got, "/capture/first").then_some(())
        },
    )
    .await;
    if let Err(e) = marker {
        anyhow::bail!("{e}\n{}", s.diagnose().await);
    }
    let headers = [
        ("authorization", "Bearer s3cret-token"),
        ("traceparent", TRACEPARENT),
    ];
    for i in 0..5 {
        let r = s
            .envoy
            .get(&format!("/capture/{i}?key=hidden"), &headers)
            .await?;
        assert_eq!(r.status(), 200);
    }
    // Each shows within the flush interval (200 ms) and a tick; 5 s bounds a busy machine.
    let got = watch.until(Duration::from_secs(5), |g| {
        (0..5).all(|i| has_path(g, &format!("/capture/{i}")))
    })?;
    let r = got.iter().find(|r| r["path"] == "/capture/0").unwrap();
    assert_eq!(r["method"], "GET");
    assert_eq!(r["status"], 200);
    assert_eq!(r["proxy"], NODE);
    assert_eq!(r["policy"], "cap");
    assert_eq!(r["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(r["durationNanos"].as_u64().unwrap() > 0);
    let auth: Vec<&Value> = r["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["name"] == "authorization")
        .collect();
    assert_eq!(auth.len(), 1);
    assert_eq!(auth[0]["value"], "[redacted]");
    let text = serde_json::to_string(&got)?;
    assert!(
        !text.contains("s3cret"),
        "the credential never appears: {text}"
    );
    assert!(!text.contains("hidden"), "nor the query");

    // A late joiner gets what the control plane holds, then live ones.
    let late = Watch::start(&s.cp)?;
    late.until(Duration::from_secs(5), |g| {
        (0..5).all(|i| has_path(g, &format!("/capture/{i}")))
    })?;
    s.envoy.get("/capture/after", &[]).await?;
    late.until(Duration::from_secs(5), |g| has_path(g, "/capture/after"))?;
    Ok(())
}

#[tokio::test]
async fn sampling_zero_captures_nothing_and_the_rate_cap_counts_the_rest() -> anyhow::Result<()> {
    // /none: never sampled; /burst: 20 per second per proxy; /mark: everything.
    let s = stack("maxPerSecond: 20\nmatch:\n  path:\n    regex: '^/(burst|mark)/.*'").await?;
    let cli = s.cp.cli();
    let before = accepted_version(&cli, NODE, FILTER);
    let none = policy(
        "CapturePolicy",
        "none",
        "samplingPercentage: 0\nmatch:\n  path:\n    prefix: /none",
    );
    let out = cli.apply_yaml(&none);
    anyhow::ensure!(out.success, "apply failed: {}", out.stderr);
    wait_accepted_change(&cli, NODE, FILTER, &before).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let watch = Watch::start(&s.cp)?;
    wait_until(
        Duration::from_secs(10),
        "the watch sees traffic",
        || async {
            s.envoy.get("/mark/first", &[]).await.ok()?;
            has_path(&watch.drain(Duration::from_millis(300)), "/mark/first").then_some(())
        },
    )
    .await?;
    // Past the second of the marker requests, so the burst has its own allowance.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    for i in 0..20 {
        s.envoy.get(&format!("/none/{i}"), &[]).await?;
    }
    let started = Instant::now();
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (client, url) = (
            s.envoy.client().clone(),
            s.envoy.url(&format!("/burst/{i}")),
        );
        burst.spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) });
    }
    let statuses = burst.join_all().await;
    let seconds = started.elapsed().as_secs_f64().ceil() as usize + 1;
    assert!(
        statuses.iter().all(|s| matches!(s, Ok(200))),
        "{statuses:?}"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.envoy.get("/mark/last", &[]).await?;
    let got = watch.until(Duration::from_secs(5), |g| has_path(g, "/mark/last"))?;
    assert!(
        !got.iter()
            .any(|r| r["path"].as_str().unwrap_or("").starts_with("/none")),
        "0% captures nothing"
    );
    let captured = got
        .iter()
        .filter(|r| r["path"].as_str().unwrap_or("").starts_with("/burst"))
        .count();
    // 20 per started second of the burst (one second, or two if it straddled a boundary).
    assert!(
        (20..=20 * seconds).contains(&captured),
        "{captured} of the burst captured over at most {seconds} windows"
    );
    let dropped = s
        .envoy
        .policy_stat("meshwarden_capture_dropped_total", "cap")
        .await?;
    assert_eq!(
        dropped as usize + captured,
        200,
        "the rest dropped and counted"
    );
    Ok(())
}
