"""Processes of the benchmark: Envoy instances pinned to a CPU, their CPU time, and the
machine's other load."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpus() -> int:
    return len(os.sched_getaffinity(0))


def pin(cpu: int | None) -> list[str]:
    """A taskset prefix pinning to `cpu` (none when there is one CPU or no taskset)."""
    if cpu is None or cpus() < 2 or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", str(cpu)]


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of every thread of `pid`, from /proc.

    Uses schedstat (nanoseconds) where the kernel has it, else utime+stime (ticks)."""
    total_ns = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total_ns += int(f.read().split()[0])
        return total_ns / 1e9
    except (OSError, ValueError, IndexError):
        pass
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def system_busy_seconds() -> float:
    """CPU time all processes on the machine have used (user+nice+system+irq+softirq+steal)."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    vals = [int(x) for x in parts]
    busy = vals[0] + vals[1] + vals[2] + vals[5] + vals[6] + (vals[7] if len(vals) > 7 else 0)
    return busy / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU time of this process's finished (waited-for) children, e.g. load generators."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` (VmRSS in /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no VmRSS for {pid}")


# Log format with microsecond timestamps and thread ids (for timing lines in the log).
TIMED_LOG_FORMAT = "[%Y-%m-%d %T.%f][%t][%l][%n] %v"


class Envoy:
    """One Envoy process (`--concurrency 1` unless told otherwise, no hot restart), pinned to
    a CPU. `log_args` replaces the default warning-level logging."""

    def __init__(self, envoy: str, name: str, bootstrap: dict, workdir: Path, cpu: int | None,
                 probe_port: int, concurrency: int = 1, log_args: list[str] | None = None):
        self.name = name
        self.workdir = workdir
        self.config_path = workdir / f"{name}.json"
        self.log_path = workdir / f"{name}.log"
        # Compact JSON: a configuration with thousands of policies is large enough already.
        self.config_path.write_text(json.dumps(bootstrap, separators=(",", ":")))
        self.probe_port = probe_port
        self.started = time.monotonic()
        log = open(self.log_path, "w")
        cmd = pin(cpu) + [
            envoy, "-c", str(self.config_path), "--concurrency", str(concurrency),
            "--disable-hot-restart",
        ] + (log_args if log_args is not None else
             ["-l", "warning", "--component-log-level", "wasm:warning"])
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Waits until the listener answers 200 and returns the seconds since the start;
        raises if Envoy exits or times out."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.probe_port}/ready-probe"
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: Envoy exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - self.started
                    last = f"status {r.status}"
            except urllib.error.HTTPError as e:
                last = f"status {e.code}"
            except (OSError, urllib.error.URLError) as e:
                last = str(e)
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: not ready after {timeout:.0f}s ({last}):\n"
                           f"{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class Proc:
    """A helper process (a service, a CLI) with its output in `<workdir>/<name>.log`."""

    def __init__(self, name: str, cmd: list[str], workdir: Path):
        self.log_path = workdir / f"{name}.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.proc.pid)

    def tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-10:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def wait_for(what: str, ok: Callable[[], bool], proc: Proc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.proc.returncode}:\n{proc.tail()}")
        try:
            if ok():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s:\n{proc.tail()}")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.status == 200


def envoy_version(envoy: str) -> str:
    try:
        out = subprocess.run([envoy, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.strip().split("version:")[-1].strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
