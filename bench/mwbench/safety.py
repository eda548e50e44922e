"""Shared by the "the primary traffic does not notice" benchmarks (mirror safety, capture):
fixed-rate open-loop runs with `meshwarden-load`, interleaved rounds over several proxies
in the same run, a black-hole socket and a closed port to point a side channel at, and the
latency summary compared with a baseline proxy measured in the same run.
"""

from __future__ import annotations

import json
import selectors
import socket
import statistics
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Callable

from .load import LoadError
from .procs import free_port

CONNECTIONS = 16
# Limits of "unchanged": noise allowance on a shared 2-core machine; a primary that waited
# for its side channel (a copy, a report) would take the side channel's timeout (seconds).
P50_RATIO_MAX = 1.5
P99_RATIO_MAX = 2.0
MAX_PRIMARY_MS = 500
LIMITS = {"p50_ratio_max": P50_RATIO_MAX, "p99_ratio_max": P99_RATIO_MAX,
          "max_primary_ms": MAX_PRIMARY_MS}


# ---- side-channel targets --------------------------------------------------------------------

class BlackHole:
    """Accepts connections and reads (discarding) everything; never writes a byte."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1024)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.bytes_read = 0
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.listener, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._serve, name="black-hole", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.2):
                sock = key.fileobj
                if sock is self.listener:
                    try:
                        conn, _ = self.listener.accept()
                    except OSError:
                        continue
                    conn.setblocking(False)
                    self._sel.register(conn, selectors.EVENT_READ)
                    self.accepted += 1
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if data:
                    self.bytes_read += len(data)
                else:
                    self._sel.unregister(sock)
                    sock.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()
        self._sel.close()

    def figures(self) -> dict:
        return {"accepted": self.accepted, "bytes_read": self.bytes_read}


def closed_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    return free_port()


# ---- load ------------------------------------------------------------------------------------

def open_loop(load_bin: str, url: str, seconds: int, rate: int,
              connections: int = CONNECTIONS) -> dict:
    """meshwarden-load at a fixed rate: request i is due at i/rate (open loop), latency
    counted from the due time (coordinated omission corrected). Its JSON, as written."""
    with tempfile.TemporaryDirectory(prefix="mwbench-safety-") as tmp:
        out = Path(tmp) / "load.json"
        cmd = [load_bin, "--url", url, "--rate", str(rate), "--duration", str(seconds),
               "--connections", str(connections), "--json", str(out)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        if p.returncode != 0 or not out.is_file():
            raise LoadError(f"meshwarden-load failed ({p.returncode}): {p.stderr.strip()}")
        return json.loads(out.read_text())


def _us(v) -> float:
    return float(v) if isinstance(v, (int, float)) else float("nan")


def primary(r: dict) -> dict:
    """The primary traffic's figures of one meshwarden-load run."""
    lat = r["corrected_us"]
    return {
        "requests": r["completed"],
        "failed": r["failed"] + r["non_2xx"] + r["skipped"],
        "achieved_rps": r["achieved_rps"],
        "p50_us": _us(lat["p50"]), "p90_us": _us(lat["p90"]), "p99_us": _us(lat["p99"]),
        "p999_us": _us(lat["p999"]), "max_us": _us(lat["max"]),
        "service_p50_us": _us(r["service_us"]["p50"]),
        "send_delay_p99_us": _us(r["send_delay_us"]["p99"]),
    }


def interleave(names: list[str], rounds: int, measure: Callable[[str], dict],
               describe: Callable[[int, str, dict], str], log: Callable[[str], None]
               ) -> dict[str, list[dict]]:
    """`rounds` rounds, each measuring every proxy once in `names` order (so slow drifts of
    the machine's load touch every configuration alike)."""
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for rnd in range(rounds):
        for name in names:
            r = measure(name)
            runs[name].append(r)
            log(describe(rnd, name, r))
    return runs


def describe_primary(r: dict) -> str:
    return (f"{r['requests']} req, {r['failed']} failed, p50 {r['p50_us']:.0f} µs p99 "
            f"{r['p99_us']:.0f} µs max {r['max_us'] / 1000:.1f} ms")


# ---- summary ---------------------------------------------------------------------------------

def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _paired_ratio(runs: list[dict], base_runs: list[dict], key: str) -> float | None:
    """The median over rounds of this round's figure / the baseline's in the same round:
    rounds are interleaved, so a drift of the machine's load between rounds (which moves
    every configuration of a round alike) cancels out, where a ratio of medians taken
    from different rounds would carry it."""
    ratios = [r[key] / b[key] for r, b in zip(runs, base_runs) if b[key]]
    return statistics.median(ratios) if ratios else None


def summarise(name: str, runs: list[dict], base: dict | None) -> dict:
    """Primary figures over the rounds (sums of counts, medians of percentiles, the
    largest max) and, against `base` (the baseline's summary), the ratios (median of the
    per-round ratios, see `_paired_ratio`) and the verdict `latency_unchanged`."""
    out = {
        "scenario": name,
        "runs": runs,
        "requests": sum(r["requests"] for r in runs),
        "failed": sum(r["failed"] for r in runs),
        "envoy_2xx": sum(r["envoy_2xx"] for r in runs),
        "p50_us": _median(runs, "p50_us"),
        "p90_us": _median(runs, "p90_us"),
        "p99_us": _median(runs, "p99_us"),
        "max_us": max(r["max_us"] for r in runs),
    }
    out["all_succeeded"] = out["failed"] == 0 and out["envoy_2xx"] == out["requests"] > 0
    if base is not None:
        out["p50_ratio"] = _paired_ratio(runs, base["runs"], "p50_us")
        out["p99_ratio"] = _paired_ratio(runs, base["runs"], "p99_us")
        out["latency_unchanged"] = (
            out["p50_ratio"] is not None and out["p50_ratio"] <= P50_RATIO_MAX
            and out["p99_ratio"] is not None and out["p99_ratio"] <= P99_RATIO_MAX
            and out["max_us"] <= MAX_PRIMARY_MS * 1000)
    return out
