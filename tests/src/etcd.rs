//! A throwaway single-member `etcd` on loopback: its own ports and data directory, killed
//! on drop. It can be stopped and started again on the same data (an etcd restart). Set
//! `MESHWARDEN_ETCD` to use another binary than `etcd` from `PATH`.

use crate::ports::free_port;
use crate::process::ChildGuard;
use crate::wait::wait_until;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// How long a started etcd has to answer on its client port.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running (or stopped) etcd member.
pub struct Etcd {
    pub client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    child: Option<ChildGuard>,
}

fn etcd_bin() -> PathBuf {
    std::env::var_os("MESHWARDEN_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"))
}

/// Whether an etcd binary is available (tests that need one fail with a clear message
/// when it is not, instead of a spawn error).
pub fn available() -> bool {
    Command::new(etcd_bin())
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Etcd {
    /// Starts etcd and waits until it answers.
    pub async fn start() -> anyhow::Result<Self> {
        anyhow::ensure!(
            available(),
            "etcd is not installed (Debian package etcd-server; `make test` installs it as root)"
        );
        let mut etcd = Self {
            client_port: free_port(),
            peer_port: free_port(),
            dir: tempfile::tempdir()?,
            child: None,
        };
        etcd.launch().await?;
        Ok(etcd)
    }

    /// `etcd://127.0.0.1:PORT`, for `serve --store`.
    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client_port)
    }

    /// The etcd log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(etcd_bin());
        cmd.args(["--name", "meshwarden-test"])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("meshwarden-test={peer}")])
            // Debian's etcd 3.4 refuses to start on some architectures without this.
            .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
            .args(["--log-level", "warn"]);
        self.child = Some(ChildGuard::spawn(
            &mut cmd,
            &self.dir.path().join("etcd.log"),
        )?);
        let port = self.client_port;
        let ready = wait_until(READY_TIMEOUT, "etcd to answer /health", || async move {
            reqwest::get(format!("http://127.0.0.1:{port}/health"))
                .await
                .is_ok_and(|r| r.status().is_success())
                .then_some(())
        })
        .await;
        ready.map_err(|e| anyhow::anyhow!("{e}\n{}", self.log()))
    }

    /// Kills etcd (SIGKILL); its data stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// Starts it again on the same data and ports.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.launch().await
    }
}
