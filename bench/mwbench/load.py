"""Load generators: wrk (closed loop, maximum throughput) and meshwarden-load (open loop at a
fixed rate, latency corrected for coordinated omission), with h2load --rps as a fallback.
Without wrk, `run_closed_loop` saturates with meshwarden-load instead, so a machine with only
the project's own tools can run every benchmark (figures then say which generator ran)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .procs import pin


class LoadError(RuntimeError):
    pass


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    non_2xx: int
    socket_errors: int


def _int(pattern: str, text: str, default: int = 0) -> int:
    m = re.search(pattern, text)
    return int(m.group(1)) if m else default


def run_wrk(url: str, seconds: int, connections: int, cpu: int | None) -> WrkResult:
    """Closed loop: `connections` connections each sending the next request as soon as the
    previous response arrives, for `seconds`."""
    cmd = pin(cpu) + ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
    if out.returncode != 0:
        raise LoadError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout}")
    text = out.stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise LoadError(f"cannot read wrk output:\n{text}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(3)]
    requests, secs = int(m.group(1)), float(m.group(2)) * scale
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return WrkResult(
        requests=requests,
        seconds=secs,
        rps=requests / secs if secs else 0.0,
        non_2xx=_int(r"Non-2xx or 3xx responses: (\d+)", text),
        socket_errors=sum(int(x) for x in errors.groups()) if errors else 0,
    )


# Requests per second far above what one Envoy worker on this host serves: meshwarden-load's
# connections then always have a request due, which makes its open loop a closed one.
SATURATING_RPS = 1_000_000.0


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_closed_loop(url: str, seconds: int, connections: int, cpu: int | None,
                    load_bin: str | None) -> WrkResult:
    """Maximum throughput: wrk if installed, else meshwarden-load at a saturating rate
    (each connection sends its next request as soon as the previous answer arrives)."""
    if wrk_available() or not load_bin:
        return run_wrk(url, seconds, connections, cpu)
    with tempfile.TemporaryDirectory(prefix="mwbench-closed-") as tmp:
        out_path = Path(tmp) / "load.json"
        cmd = pin(cpu) + [load_bin, "--url", url, "--rate", f"{SATURATING_RPS:.0f}",
                          "--duration", str(seconds), "--connections", str(connections),
                          "--json", str(out_path)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        if out.returncode != 0 or not out_path.is_file():
            raise LoadError(f"meshwarden-load failed ({out.returncode}): {out.stderr.strip()}")
        r = json.loads(out_path.read_text())
    return WrkResult(requests=r["completed"], seconds=float(seconds),
                     rps=r["completed"] / seconds if seconds else 0.0,
                     non_2xx=r["non_2xx"], socket_errors=r["failed"])


@dataclass
class RateResult:
    target_rps: float
    achieved_rps: float
    requests: int
    failed: int
    # Latency in microseconds. `corrected_*` counts from when each request was due (open
    # loop, coordinated omission corrected); `service_*` from when it was written.
    corrected_p50: float
    corrected_p90: float
    corrected_p99: float
    corrected_p999: float
    service_p50: float
    service_p99: float
    # How late the generator wrote requests (its own scheduling noise); NaN for h2load.
    send_delay_p99: float


def percentile(sorted_values: list, q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return float(sorted_values[rank - 1])


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) else float("nan")


def run_open_loop(load_bin: str, url: str, seconds: int, rps: float, connections: int,
                  cpu: int | None) -> RateResult:
    """Fixed rate with meshwarden-load: request i is due at i/rps whatever happened before
    (open loop); latency is counted from the due time."""
    with tempfile.TemporaryDirectory(prefix="mwbench-load-") as tmp:
        out_path = Path(tmp) / "load.json"
        cmd = pin(cpu) + [load_bin, "--url", url, "--rate", f"{rps:.3f}", "--duration",
                          str(seconds), "--connections", str(connections), "--json",
                          str(out_path)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        if out.returncode != 0 or not out_path.is_file():
            raise LoadError(f"meshwarden-load failed ({out.returncode}): {out.stderr.strip()}")
        r = json.loads(out_path.read_text())
    c, sv, sd = r["corrected_us"], r["service_us"], r["send_delay_us"]
    return RateResult(
        target_rps=r["target_rps"], achieved_rps=r["achieved_rps"], requests=r["completed"],
        failed=r["failed"] + r["non_2xx"] + r["skipped"],
        corrected_p50=_num(c["p50"]), corrected_p90=_num(c["p90"]),
        corrected_p99=_num(c["p99"]), corrected_p999=_num(c["p999"]),
        service_p50=_num(sv["p50"]), service_p99=_num(sv["p99"]),
        send_delay_p99=_num(sd["p99"]),
    )


def run_fixed_rate(url: str, seconds: int, rps: float, connections: int,
                   cpu: int | None) -> RateResult:
    """Fallback without meshwarden-load: h2load (HTTP/1.1) with `connections` clients each
    sending rps/connections requests per second. h2load releases each client's due requests
    on a ~10 ms timer, so requests leave in bursts: latency includes that queueing and is not
    corrected for coordinated omission."""
    per_client = max(rps / connections, 1.0)
    with tempfile.TemporaryDirectory(prefix="mwbench-h2load-") as tmp:
        log = Path(tmp) / "requests.tsv"
        cmd = pin(cpu) + [
            "h2load", "--h1", "-t1", f"-c{connections}", f"--rps={per_client:.3f}",
            f"-D{seconds}", f"--log-file={log}", url,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
        if out.returncode != 0:
            raise LoadError(f"h2load failed ({out.returncode}): {out.stderr.strip() or out.stdout}")
        latencies: list[int] = []
        failed = 0
        starts: list[int] = []
        for line in log.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) < 3:
                continue
            start, status, lat = int(parts[0]), int(parts[1]), int(parts[2])
            starts.append(start)
            if 200 <= status < 300:
                latencies.append(lat)
            else:
                failed += 1
    summary = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                        r"(\d+) failed, (\d+) errored", out.stdout)
    if summary:
        failed = max(failed, int(summary.group(5)) + int(summary.group(6)))
    requests = len(latencies) + failed
    span = (max(starts) - min(starts)) / 1e6 if len(starts) > 1 else float(seconds)
    latencies.sort()
    p = [percentile(latencies, q) for q in (50, 90, 99, 99.9)]
    return RateResult(
        target_rps=per_client * connections,
        achieved_rps=requests / span if span > 0 else 0.0,
        requests=requests, failed=failed,
        corrected_p50=p[0], corrected_p90=p[1], corrected_p99=p[2], corrected_p999=p[3],
        service_p50=p[0], service_p99=p[2], send_delay_p99=float("nan"),
    )
