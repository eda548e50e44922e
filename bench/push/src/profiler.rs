//! An optional `perf record` of the control plane while changes are pushed.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `perf record -p <pid>`.
pub struct Profiler {
    child: Child,
}

impl Profiler {
    /// Starts sampling `pid` (cpu-clock, 999 Hz) into `out`; `None` (with
    /// a warning) when perf cannot be started.
    pub fn start(pid: u32, out: &Path) -> Option<Self> {
        let child = Command::new("perf")
            .args(["record", "-e", "cpu-clock", "-F", "999", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(child) => {
                // perf needs a moment to attach before the interesting part starts.
                std::thread::sleep(Duration::from_millis(300));
                Some(Self { child })
            }
            Err(e) => {
                eprintln!("warning: cannot start perf ({e}); no control-plane profile");
                None
            }
        }
    }

    /// Stops sampling (SIGINT, so perf writes its file) and waits up to 30 s.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
