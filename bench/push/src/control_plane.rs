//! The control plane under test: a `meshwarden serve` child process on free loopback ports,
//! its resource usage from `/proc`, and the policy change the benchmark applies.

use anyhow::{bail, Context};
use meshwarden_cp::api::pb::policy_service_client::PolicyServiceClient;
use meshwarden_cp::api::pb::{ApplyRequest, ListRequest};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

/// How long the control plane gets to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// `/proc/<pid>/stat` reports CPU time in ticks of 1/USER_HZ seconds; USER_HZ is 100.
const TICK_MS: f64 = 10.0;

/// Name of the policy the benchmark creates and then changes.
pub const POLICY_NAME: &str = "bench-trace";
/// Prefix of the response header the policy sets; the push number follows it, so a
/// simulated proxy can tell which change a configuration carries.
pub const MARKER: &[u8] = b"x-bench-";

/// A running `meshwarden serve`.
pub struct ControlPlane {
    child: Child,
    pid: u32,
    /// `http://127.0.0.1:<port>` of the gRPC listener (policy API and ADS).
    pub grpc_url: String,
    log: PathBuf,
}

/// Resource usage of a process at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// User + system CPU time consumed so far, milliseconds.
    pub cpu_ms: f64,
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a port")?;
    Ok(listener.local_addr()?.port())
}

impl ControlPlane {
    /// Starts `binary serve` with its store in `work_dir` (or the store `extra_args`
    /// name) and modules from `wasm_dir`, and waits until its policy API answers.
    pub async fn start(
        binary: &Path,
        wasm_dir: &Path,
        work_dir: &Path,
        extra_args: &[String],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(work_dir)
            .with_context(|| format!("cannot create {}", work_dir.display()))?;
        let (grpc, http) = (free_port()?, free_port()?);
        let log = work_dir.join("control-plane.log");
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let child = Command::new(binary)
            .arg("serve")
            .arg("--grpc-addr")
            .arg(format!("127.0.0.1:{grpc}"))
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{http}"))
            .arg("--data-dir")
            .arg(work_dir.join("store"))
            .arg("--wasm-dir")
            .arg(wasm_dir)
            .args(extra_args)
            // One log line per connecting proxy would be thousands of writes: warnings only.
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let pid = child.id().context("control plane exited at once")?;
        let mut cp = Self {
            child,
            pid,
            grpc_url: format!("http://127.0.0.1:{grpc}"),
            log,
        };
        cp.wait_ready().await?;
        Ok(cp)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "control plane exited ({status}) during startup:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(mut client) = self.policy_client().await {
                if client.0.list(ListRequest::default()).await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "control plane did not answer within {START_TIMEOUT:?}:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A policy API client on its own connection.
    pub async fn policy_client(&self) -> anyhow::Result<PolicyClient> {
        let channel = Channel::from_shared(self.grpc_url.clone())?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        Ok(PolicyClient(PolicyServiceClient::new(channel)))
    }

    /// Current resident memory and CPU time of the process.
    pub fn usage(&self) -> anyhow::Result<Usage> {
        usage_of(self.pid)
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The last lines of the control plane's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Stops the process (SIGTERM, then SIGKILL after a grace period).
    pub async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Current resident memory and CPU time of process `pid`.
pub fn usage_of(pid: u32) -> anyhow::Result<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid))?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/<pid>/status")?;
    if let Some(cpu_ms) = schedstat_cpu_ms(pid) {
        return Ok(Usage {
            rss_bytes: rss_kb * 1024,
            cpu_ms,
        });
    }
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').context("odd /proc/<pid>/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .context("short /proc/<pid>/stat")?
            .parse::<f64>()?)
    };
    // `rest` starts at field 3 (state), so field n is at index n - 3.
    let cpu_ticks = ticks(14 - 3)? + ticks(15 - 3)?;
    Ok(Usage {
        rss_bytes: rss_kb * 1024,
        cpu_ms: cpu_ticks * TICK_MS,
    })
}

/// CPU time of every thread in nanosecond resolution (`/proc/<pid>/task/*/schedstat`),
/// when the kernel provides it.
fn schedstat_cpu_ms(pid: u32) -> Option<f64> {
    let mut ns: u64 = 0;
    for task in std::fs::read_dir(format!("/proc/{}/task", pid)).ok()? {
        let path = task.ok()?.path().join("schedstat");
        let text = std::fs::read_to_string(path).ok()?;
        ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 / 1e6)
}

/// The policy API, used to make the change whose propagation is measured.
pub struct PolicyClient(PolicyServiceClient<Channel>);

impl PolicyClient {
    /// Creates or updates the benchmark's TracePolicy so that it carries push number `push`.
    pub async fn apply_push(&mut self, push: u64) -> anyhow::Result<()> {
        let doc = serde_json::json!({
            "apiVersion": "meshwarden.dev/v1alpha1",
            "kind": "TracePolicy",
            "metadata": {"name": POLICY_NAME},
            "spec": {
                "formats": ["w3c", "requestId"],
                "mode": "newSpan",
                "samplingPercentage": 100,
                "responseHeader": format!("{}{push}", String::from_utf8_lossy(MARKER)),
            }
        });
        self.0
            .apply(ApplyRequest {
                documents_json: vec![doc.to_string()],
                dry_run: false,
                ..Default::default()
            })
            .await
            .map_err(|s| anyhow::anyhow!("apply failed: {}", s.message()))?;
        Ok(())
    }
}
