"""Load generators: wrk (closed loop, maximum throughput) and h2load --rps (fixed rate, per
request latency from its log file)."""

from __future__ import annotations

import re
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


@dataclass
class RateResult:
    target_rps: float
    achieved_rps: float
    requests: int
    failed: int
    latencies_us: list[int]  # sorted, successful requests only


def percentile(sorted_values: list, q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return float(sorted_values[rank - 1])


def run_fixed_rate(url: str, seconds: int, rps: float, connections: int,
                   cpu: int | None) -> RateResult:
    """Fixed rate: h2load (HTTP/1.1) with `connections` clients each sending rps/connections
    requests per second for `seconds`; latency of every request from h2load's log."""
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
    return RateResult(
        target_rps=per_client * connections,
        achieved_rps=requests / span if span > 0 else 0.0,
        requests=requests,
        failed=failed,
        latencies_us=latencies,
    )
