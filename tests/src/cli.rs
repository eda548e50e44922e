//! Runs the `meshwarden` CLI against a control plane.

use crate::paths::meshwarden_bin;
use std::process::Command;

/// Output of one CLI run.
#[derive(Debug, Clone)]
pub struct CliOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// The CLI bound to one control plane.
#[derive(Debug, Clone)]
pub struct Cli {
    pub server: String,
    /// Flags given before the subcommand (TLS, token).
    pub global_args: Vec<String>,
}

impl Cli {
    /// The same CLI with `args` added to its global flags.
    pub fn with_args(&self, args: &[String]) -> Cli {
        let mut cli = self.clone();
        cli.global_args.extend_from_slice(args);
        cli
    }

    /// Runs `meshwarden --server <server> <global args> <args>`.
    pub fn run(&self, args: &[&str]) -> CliOutput {
        let out = Command::new(meshwarden_bin())
            .arg("--server")
            .arg(&self.server)
            .args(&self.global_args)
            .env_remove("MESHWARDEN_TOKEN")
            .args(args)
            .output()
            .expect("run meshwarden CLI");
        CliOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Writes `yaml` to a temporary file and runs `apply -f` on it.
    pub fn apply_yaml(&self, yaml: &str) -> CliOutput {
        let file = tempfile::Builder::new()
            .suffix(".yaml")
            .tempfile()
            .expect("temp file");
        std::fs::write(file.path(), yaml).expect("write policy file");
        self.run(&["apply", "-f", &file.path().display().to_string()])
    }

    /// `status -o json`, parsed.
    pub fn status_json(&self) -> serde_json::Value {
        let out = self.run(&["status", "-o", "json"]);
        assert!(out.success, "meshwarden status failed: {}", out.stderr);
        serde_json::from_str(&out.stdout).expect("status -o json prints JSON")
    }
}
