//! A `meshwarden serve` process with its own data directory and ports.

use crate::cli::Cli;
use crate::paths::{meshwarden_bin, wasm_dir};
use crate::ports::free_port;
use crate::process::ChildGuard;
use crate::wait::wait_until;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A running control plane. Killed when dropped; its data directory lives as long as it.
pub struct ControlPlane {
    pub grpc_port: u16,
    pub http_port: u16,
    pub wasm_dir: PathBuf,
    dir: tempfile::TempDir,
    /// `--data-dir`; inside `dir` unless the test chose one.
    data_dir: PathBuf,
    child: Option<ChildGuard>,
    /// Extra `serve` flags.
    args: Vec<String>,
    /// How the harness reaches a TLS HTTP port (`None`: clear text).
    http_tls: Option<tokio_rustls::TlsConnector>,
    /// Global CLI flags (TLS, token) for [`ControlPlane::cli`].
    cli_args: Vec<String>,
}

impl ControlPlane {
    /// Starts a control plane serving the built modules.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with_wasm_dir(wasm_dir()).await
    }

    /// Starts a control plane serving modules from `wasm_dir`.
    pub async fn start_with_wasm_dir(wasm_dir: PathBuf) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let data_dir = dir.path().join("data");
        Self::start_in(data_dir, wasm_dir, dir).await
    }

    /// Starts a control plane with its store in `data_dir` (e.g. on a small filesystem);
    /// `dir` keeps its log.
    pub async fn start_in(
        data_dir: PathBuf,
        wasm_dir: PathBuf,
        dir: tempfile::TempDir,
    ) -> anyhow::Result<Self> {
        let mut cp = Self {
            grpc_port: free_port(),
            http_port: free_port(),
            wasm_dir,
            dir,
            data_dir,
            child: None,
            args: Vec::new(),
            http_tls: None,
            cli_args: Vec::new(),
        };
        cp.launch().await?;
        Ok(cp)
    }

    /// Starts a control plane with extra `serve` flags: `http_tls` reaches its HTTP port if
    /// the flags turn TLS on, and `cli_args` are the CLI's global flags for [`Self::cli`].
    pub async fn start_with_args(
        args: Vec<String>,
        http_tls: Option<tokio_rustls::TlsConnector>,
        cli_args: Vec<String>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut cp = Self {
            grpc_port: free_port(),
            http_port: free_port(),
            wasm_dir: wasm_dir(),
            data_dir: dir.path().join("data"),
            dir,
            child: None,
            args,
            http_tls,
            cli_args,
        };
        cp.launch().await?;
        Ok(cp)
    }

    /// The data directory (the embedded store).
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone()
    }

    /// The process id (0 once killed).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(ChildGuard::pid).unwrap_or(0)
    }

    /// The process log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("meshwarden.log")).unwrap_or_default()
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(meshwarden_bin());
        cmd.arg("serve")
            .arg("--grpc-addr")
            .arg(format!("127.0.0.1:{}", self.grpc_port))
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--wasm-dir")
            .arg(&self.wasm_dir)
            .args(&self.args)
            .env("RUST_LOG", "info");
        let log = self.dir.path().join("meshwarden.log");
        self.child = Some(ChildGuard::spawn(&mut cmd, &log)?);
        let ready = wait_until(Duration::from_secs(20), "control plane /readyz", || async {
            let (status, _) = self.http_get("/readyz").await.ok()?;
            (status == 200).then_some(())
        })
        .await;
        if let Err(e) = ready {
            anyhow::bail!("{e}\n--- control plane log ---\n{}", self.log());
        }
        Ok(())
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }

    /// Starts again on the same ports and data directory.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.launch().await
    }

    /// The CLI bound to this control plane.
    pub fn cli(&self) -> Cli {
        Cli {
            server: format!("http://127.0.0.1:{}", self.grpc_port),
            global_args: self.cli_args.clone(),
        }
    }

    /// GET a path on the HTTP (metrics/health) port.
    pub async fn http_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        if let Some(tls) = &self.http_tls {
            return crate::tls::https_get(tls, self.http_port, path).await;
        }
        let r = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}{path}", self.http_port))
            .timeout(Duration::from_secs(5))
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.text().await?))
    }
}
