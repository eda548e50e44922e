"""Mirror safety: a mirror target that is down, black-holed or slow must not hurt the
primary request.

Four Envoys (`--concurrency 2`, admin on loopback) run the meshwarden mirror filter with a
static configuration and differ only in the mirror policy's target:

- `no mirror`: the same filter chain with an empty policy list (the baseline);
- `healthy`: a target answering at once (reference: the cost of mirroring itself);
- `down`: a closed port (connections refused);
- `black-holed`: a socket that accepts, reads and discards, and never answers (copies time
  out);
- `slow`: an Envoy answering after a 2 s fault delay.

Every proxy gets the same fixed-rate open-loop load (`meshwarden-load`), in interleaved
rounds, in the same run; each run's primary successes, failures and latency percentiles are
recorded with the filter's own counters (`meshwarden_mirror_*`, admin `/stats`).
"""

from __future__ import annotations

import json
import selectors
import subprocess
import tempfile
import socket
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import configs as C
from .accuracy import Proxy
from .load import LoadError
from .procs import Envoy, free_port

RATE = 200  # primary requests per second
CONNECTIONS = 16
SLOW_DELAY = "2s"
COPY_TIMEOUT = "3s"
COPY_TIMEOUT_S = 3.0
TARGET_CLUSTER = "mirror_target"
# Limits of the claim: "unchanged" allows for noise on a shared 2-core machine; a primary
# that waited for a copy would take >= 2 s (slow target) or the copy timeout.
P50_RATIO_MAX = 1.5
P99_RATIO_MAX = 2.0
MAX_PRIMARY_MS = 500
# How long past the copy timeout a run waits for its last copies to be counted.
SETTLE_GRACE_S = 7.0

MIRROR_SPEC = {
    "mirrors": [{"target": {"cluster": TARGET_CLUSTER}, "percentage": {"value": 100}}],
    "timeout": COPY_TIMEOUT,
}
SCENARIOS = ["no mirror", "healthy", "down", "black-holed", "slow"]
# The targets of the claim (healthy is a reference).
BAD_TARGETS = ["down", "black-holed", "slow"]
METRICS = ["mirrored", "errors", "skipped_queue_full", "skipped_rate_capped",
           "skipped_sampled_out"]
CLUSTER_STATS = ["upstream_cx_connect_fail", "upstream_rq_timeout", "upstream_rq_completed",
                 "upstream_rq_2xx"]
HCM_2XX = "http.proxy.downstream_rq_2xx"
HCM_TOTAL = "http.proxy.downstream_rq_completed"


@dataclass
class Settings:
    envoy: str
    wasm_dir: Path
    workdir: Path
    load_bin: str
    rounds: int = 3
    seconds: int = 5
    rate: int = RATE
    warmup_seconds: int = 1


def metric_name(metric: str) -> str:
    return f"wasmcustom.meshwarden_mirror_{metric}_total.policy.bench"


# ---- targets ---------------------------------------------------------------------------------

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


def closed_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    return free_port()


def targets_bootstrap(upstream_port: int, healthy_port: int, slow_port: int) -> dict:
    """One Envoy serving the primary upstream and the healthy mirror target (200 "ok" at
    once) and the slow mirror target (200 after a fixed delay)."""
    direct = {"match": {"prefix": "/"},
              "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}
    delay = {
        "name": "envoy.filters.http.fault",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
            "delay": {"fixed_delay": SLOW_DELAY, "percentage": C._percent(100)},
        },
    }
    return {"static_resources": {"listeners": [
        C._listener("upstream", upstream_port, direct, []),
        C._listener("healthy", healthy_port, direct, []),
        C._listener("slow", slow_port, direct, [delay]),
    ]}}


def proxy_bootstrap(wasm_dir: Path, with_mirror: bool, port: int, admin_port: int,
                    upstream_port: int, target_port: int) -> dict:
    flt = C.meshwarden_filter("mirror", wasm_dir)
    policies = [{"name": "bench", "match": {}, "spec": MIRROR_SPEC}] if with_mirror else []
    flt["typed_config"]["config"]["configuration"]["value"] = json.dumps(
        {"policies": policies}, separators=(",", ":"))
    route = {"match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "30s"}}
    target = C._cluster(TARGET_CLUSTER, target_port)
    target["connect_timeout"] = "0.25s"
    return {
        "admin": {"address": C._socket(admin_port)},
        "static_resources": {
            "listeners": [C._listener("proxy", port, route, [flt])],
            "clusters": [C._cluster("upstream", upstream_port), target],
        },
    }


# ---- measurement -----------------------------------------------------------------------------

def _counters(proxy: Proxy) -> dict[str, int]:
    c = proxy.counters()
    names = [HCM_2XX, HCM_TOTAL] + [metric_name(m) for m in METRICS] \
        + [f"cluster.{TARGET_CLUSTER}.{s}" for s in CLUSTER_STATS]
    return {n: c.get(n, 0) for n in names}


def open_loop(load_bin: str, url: str, seconds: int, rate: int) -> dict:
    """meshwarden-load at a fixed rate: request i is due at i/rate (open loop), latency
    counted from the due time (coordinated omission corrected). Its JSON, as written."""
    with tempfile.TemporaryDirectory(prefix="mwbench-mirror-") as tmp:
        out = Path(tmp) / "load.json"
        cmd = [load_bin, "--url", url, "--rate", str(rate), "--duration", str(seconds),
               "--connections", str(CONNECTIONS), "--json", str(out)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        if p.returncode != 0 or not out.is_file():
            raise LoadError(f"meshwarden-load failed ({p.returncode}): {p.stderr.strip()}")
        return json.loads(out.read_text())


def _us(v) -> float:
    return float(v) if isinstance(v, (int, float)) else float("nan")


def measure(proxy: Proxy, s: Settings, url: str) -> dict:
    before = _counters(proxy)
    r = open_loop(s.load_bin, url, s.seconds, s.rate)
    lat = r["corrected_us"]
    # Wait (bounded) until every copy sent has finished or failed in the target cluster, so
    # its outcome is counted here and no copy is still pending in the next scenario's run.
    ended = time.monotonic()
    deadline = ended + COPY_TIMEOUT_S + SETTLE_GRACE_S
    time.sleep(0.3)
    while True:
        after = _counters(proxy)
        d = {k: after[k] - before[k] for k in after}
        done = d[f"cluster.{TARGET_CLUSTER}.upstream_rq_completed"]
        if done >= d[metric_name("mirrored")] or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    settled = time.monotonic() - ended
    return {
        "requests": r["completed"],
        "failed": r["failed"] + r["non_2xx"] + r["skipped"],
        "achieved_rps": r["achieved_rps"],
        "p50_us": _us(lat["p50"]), "p90_us": _us(lat["p90"]), "p99_us": _us(lat["p99"]),
        "p999_us": _us(lat["p999"]), "max_us": _us(lat["max"]),
        "service_p50_us": _us(r["service_us"]["p50"]),
        "send_delay_p99_us": _us(r["send_delay_us"]["p99"]),
        "copies_settled_s": round(settled, 2),
        "envoy_2xx": d[HCM_2XX],
        "envoy_completed": d[HCM_TOTAL],
        "mirror": {m: d[metric_name(m)] for m in METRICS},
        "target_cluster": {x: d[f"cluster.{TARGET_CLUSTER}.{x}"] for x in CLUSTER_STATS},
    }


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def summarise(name: str, runs: list[dict], base: dict | None) -> dict:
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
        "mirror": {m: sum(r["mirror"][m] for r in runs) for m in METRICS},
        "target_cluster": {x: sum(r["target_cluster"][x] for r in runs) for x in CLUSTER_STATS},
    }
    out["all_succeeded"] = out["failed"] == 0 and out["envoy_2xx"] == out["requests"] > 0
    if base is not None:
        out["p50_ratio"] = out["p50_us"] / base["p50_us"] if base["p50_us"] else None
        out["p99_ratio"] = out["p99_us"] / base["p99_us"] if base["p99_us"] else None
        out["latency_unchanged"] = (
            out["p50_ratio"] is not None and out["p50_ratio"] <= P50_RATIO_MAX
            and out["p99_ratio"] is not None and out["p99_ratio"] <= P99_RATIO_MAX
            and out["max_us"] <= MAX_PRIMARY_MS * 1000)
    return out


# ---- driver ----------------------------------------------------------------------------------

def run(s: Settings, log: Callable[[str], None]) -> dict:
    s.workdir.mkdir(parents=True, exist_ok=True)
    up_port, healthy_port, slow_port = free_port(), free_port(), free_port()
    hole = BlackHole()
    down_port = closed_port()
    target_ports = {"no mirror": down_port, "healthy": healthy_port, "down": down_port, "black-holed": hole.port,
                    "slow": slow_port}
    targets = Envoy(s.envoy, "mirror-targets", targets_bootstrap(up_port, healthy_port, slow_port),
                    s.workdir, None, up_port)
    proxies: dict[str, Proxy] = {}
    urls: dict[str, str] = {}
    runs: dict[str, list[dict]] = {n: [] for n in SCENARIOS}
    try:
        targets.wait_ready()
        for i, name in enumerate(SCENARIOS):
            port, admin = free_port(), free_port()
            boot = proxy_bootstrap(s.wasm_dir, name != "no mirror", port, admin, up_port,
                                   target_ports[name])
            proxies[name] = Proxy(s.envoy, f"mirror-{i}", boot, s.workdir, admin)
            urls[name] = f"http://127.0.0.1:{port}/mirror-safety"
        for name in SCENARIOS:
            proxies[name].wait_ready()
        if s.warmup_seconds:
            for name in SCENARIOS:
                open_loop(s.load_bin, urls[name], s.warmup_seconds, s.rate)
            time.sleep(COPY_TIMEOUT_S + 0.5)
        for rnd in range(s.rounds):
            for name in SCENARIOS:
                r = measure(proxies[name], s, urls[name])
                runs[name].append(r)
                log(f"  round {rnd + 1} {name:<11} {r['requests']} req, {r['failed']} failed, "
                    f"p50 {r['p50_us']:.0f} µs p99 {r['p99_us']:.0f} µs max "
                    f"{r['max_us'] / 1000:.1f} ms; copies {r['mirror']['mirrored']} sent, "
                    f"{r['mirror']['errors']} errors (all counted {r['copies_settled_s']:.1f} s "
                    f"after the load)")
    finally:
        for p in proxies.values():
            p.stop()
        targets.stop()
        hole.stop()
    base = summarise("no mirror", runs["no mirror"], None)
    scenarios = [base] + [summarise(n, runs[n], base) for n in SCENARIOS[1:]]
    return {
        "rate_rps": s.rate, "seconds": s.seconds, "rounds": s.rounds,
        "connections": CONNECTIONS, "concurrency": 2,
        "copy_timeout": COPY_TIMEOUT, "slow_delay": SLOW_DELAY,
        "limits": {"p50_ratio_max": P50_RATIO_MAX, "p99_ratio_max": P99_RATIO_MAX,
                   "max_primary_ms": MAX_PRIMARY_MS},
        "policy": MIRROR_SPEC,
        "black_hole": {"accepted": hole.accepted, "bytes_read": hole.bytes_read},
        "scenarios": scenarios,
        "claim_holds": all(x["all_succeeded"] for x in scenarios)
        and all(x.get("latency_unchanged") for x in scenarios if x["scenario"] in BAD_TARGETS),
    }
