"""Capture safety: live request capture (CapturePolicy) must not change the primary
traffic's latency, whether its reports reach a live control plane, a closed port or a
socket that never answers.

Four Envoys (`--concurrency 2`, admin on loopback) run `meshwarden_capture.wasm` with a
static configuration and differ only in the capture policy and where its reports go
(`report.cluster`, an HTTP/2 cluster):

- `no capture`: the same filter chain with an empty policy list (the baseline);
- `capture 100 %`: every request captured (`samplingPercentage: 100`, `maxPerSecond` far
  above the rate) and reported to a real `meshwarden serve`, with one
  `meshwarden capture -o json` watching it;
- `control plane down`: the report cluster is a closed port (reports fail on connect);
- `black-holed`: a socket that accepts, reads and never answers (reports time out).

Every proxy gets the same fixed-rate open-loop load (`meshwarden-load`), in interleaved
rounds, in the same run (`safety`); each run's primary successes, failures and latency
percentiles are recorded with the filter's own counters (`meshwarden_capture_*`, admin
`/stats`).
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import configs as C
from . import safety
from .accuracy import Proxy
from .procs import Envoy, Proc, free_port, http_ok, wait_for
from .safety import (CONNECTIONS, LIMITS, BlackHole, closed_port, describe_primary,
                     interleave, open_loop, primary)

RATE = 200  # primary requests per second
NODE = "capture-bench"
POLICY = "bench"
REPORT_CLUSTER = "meshwarden_cp"
REPORT_TIMEOUT = "2s"
REPORT_TIMEOUT_S = 2.0
# The filter gives up a call unanswered this long past its timeout (report.rs LOST_AFTER_MS).
LOST_AFTER_S = 5.0
# How long past the report timeout a run waits for its summaries to be counted.
SETTLE_GRACE_S = 4.0
MAX_PER_SECOND = 10_000

CAPTURE_SPEC = {
    "samplingPercentage": 100,
    "maxPerSecond": MAX_PER_SECOND,
    "report": {"cluster": REPORT_CLUSTER, "timeout": REPORT_TIMEOUT},
}
BASELINE = "no capture"
LIVE = "capture 100 %"
SCENARIOS = [BASELINE, LIVE, "control plane down", "black-holed"]
# The targets of the claim: every configuration with capture on.
CAPTURING = SCENARIOS[1:]
METRICS = ["captured", "dropped", "failed"]
CLUSTER_STATS = ["upstream_cx_total", "upstream_cx_connect_fail", "upstream_rq_total",
                 "upstream_rq_completed", "upstream_rq_timeout"]
HCM_2XX = "http.proxy.downstream_rq_2xx"
HCM_TOTAL = "http.proxy.downstream_rq_completed"
CP_METRICS = ["meshwarden_capture_records_total", "meshwarden_capture_reports_total",
              "meshwarden_capture_proxy_dropped_total",
              "meshwarden_capture_refused_records_total",
              "meshwarden_capture_watcher_skipped_total"]


@dataclass
class Settings:
    envoy: str
    wasm_dir: Path
    workdir: Path
    load_bin: str
    meshwarden: str
    rounds: int = 3
    seconds: int = 5
    rate: int = RATE
    warmup_seconds: int = 1


def metric_name(metric: str) -> str:
    return f"wasmcustom.meshwarden_capture_{metric}_total.policy.{POLICY}"


# ---- bootstraps ------------------------------------------------------------------------------

def proxy_bootstrap(wasm_dir: Path, with_capture: bool, port: int, admin_port: int,
                    upstream_port: int, report_port: int) -> dict:
    flt = C.meshwarden_filter("capture", wasm_dir, False)
    policies = [{"name": POLICY, "match": {}, "spec": CAPTURE_SPEC}] if with_capture else []
    flt["typed_config"]["config"]["configuration"]["value"] = json.dumps(
        {"policies": policies}, separators=(",", ":"))
    route = {"match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "30s"}}
    # The control plane's gRPC port, as meshwarden's bootstrap declares `meshwarden_xds`.
    report = C._cluster(REPORT_CLUSTER, report_port)
    report["connect_timeout"] = "0.25s"
    report["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    return {
        "node": {"id": NODE, "cluster": "bench"},
        "admin": {"address": C._socket(admin_port)},
        "static_resources": {
            "listeners": [C._listener("proxy", port, route, [flt])],
            "clusters": [C._cluster("upstream", upstream_port), report],
        },
    }


# ---- the control plane and its watcher ------------------------------------------------------

class ControlPlane:
    """`meshwarden serve` on loopback (embedded store in the work directory) and one
    `meshwarden capture -o json` watching its capture stream."""

    def __init__(self, meshwarden: str, wasm_dir: Path, workdir: Path):
        self.grpc_port, self.http_port = free_port(), free_port()
        self.watch_out = workdir / "capture-watch.jsonl"
        self.proc = Proc("control-plane", [
            meshwarden, "serve", "--grpc-addr", f"127.0.0.1:{self.grpc_port}",
            "--http-addr", f"127.0.0.1:{self.http_port}", "--data-dir", str(workdir / "store"),
            "--wasm-dir", str(wasm_dir)], workdir)
        self.watch: Proc | None = None
        self.meshwarden = meshwarden
        self.workdir = workdir

    def wait_ready(self) -> None:
        wait_for("meshwarden serve", lambda: http_ok(f"http://127.0.0.1:{self.http_port}/readyz"),
                 self.proc, timeout=60.0)
        self.watch = Proc("capture-watch", [
            self.meshwarden, "--server", f"http://127.0.0.1:{self.grpc_port}", "capture",
            "-o", "json"], self.workdir)
        # The watcher prints to its log file (stdout and stderr); JSON lines are summaries.
        self.watch_out = self.watch.log_path

    def metrics(self) -> dict[str, float]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics",
                                        timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out: dict[str, float] = {}
        for name in CP_METRICS:
            m = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", text, re.M)
            if m:
                out[name] = float(m.group(1))
        return out

    def watched(self) -> dict:
        """What the watcher printed: summaries (JSON lines), by proxy and policy."""
        lines = 0
        ours = 0
        other = 0
        try:
            text = self.watch_out.read_text(errors="replace")
        except OSError:
            text = ""
        for line in text.splitlines():
            try:
                v = json.loads(line)
            except ValueError:
                other += 1
                continue
            lines += 1
            if isinstance(v, dict) and v.get("proxy") == NODE and v.get("policy") == POLICY:
                ours += 1
        return {"summaries": lines, "from_bench_policy": ours, "other_lines": other,
                "running_at_end": self.watch is not None and self.watch.proc.poll() is None}

    def stop(self) -> None:
        if self.watch is not None:
            self.watch.stop()
        self.proc.stop()


# ---- measurement -----------------------------------------------------------------------------

def _counters(proxy: Proxy) -> dict[str, int]:
    c = proxy.counters()
    names = [HCM_2XX, HCM_TOTAL] + [metric_name(m) for m in METRICS] \
        + [f"cluster.{REPORT_CLUSTER}.{s}" for s in CLUSTER_STATS]
    return {n: c.get(n, 0) for n in names}


def measure(proxy: Proxy, s: Settings, url: str, capturing: bool) -> dict:
    before = _counters(proxy)
    r = open_loop(s.load_bin, url, s.seconds, s.rate)
    # Every request is captured, so each ends up captured, dropped or failed: wait
    # (bounded) until all are counted, so none is still being reported in the next run.
    ended = time.monotonic()
    deadline = ended + REPORT_TIMEOUT_S + SETTLE_GRACE_S
    time.sleep(0.3)
    while True:
        after = _counters(proxy)
        d = {k: after[k] - before[k] for k in after}
        counted = sum(d[metric_name(m)] for m in METRICS)
        if not capturing or counted >= d[HCM_TOTAL] or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    return primary(r) | {
        "reports_settled_s": round(time.monotonic() - ended, 2),
        "envoy_2xx": d[HCM_2XX],
        "envoy_completed": d[HCM_TOTAL],
        "capture": {m: d[metric_name(m)] for m in METRICS},
        "report_cluster": {x: d[f"cluster.{REPORT_CLUSTER}.{x}"] for x in CLUSTER_STATS},
    }


def summarise(name: str, runs: list[dict], base: dict | None) -> dict:
    out = safety.summarise(name, runs, base)
    out["capture"] = {m: sum(r["capture"][m] for r in runs) for m in METRICS}
    out["report_cluster"] = {x: sum(r["report_cluster"][x] for r in runs)
                             for x in CLUSTER_STATS}
    return out


# ---- driver ----------------------------------------------------------------------------------

def run(s: Settings, log: Callable[[str], None]) -> dict:
    s.workdir.mkdir(parents=True, exist_ok=True)
    up_port = free_port()
    hole = BlackHole()
    down_port = closed_port()
    upstream = Envoy(s.envoy, "capture-upstream", C.upstream_bootstrap(up_port, free_port()),
                     s.workdir, None, up_port)
    cp = ControlPlane(s.meshwarden, s.wasm_dir, s.workdir)
    proxies: dict[str, Proxy] = {}
    urls: dict[str, str] = {}
    cp_before: dict[str, float] = {}
    try:
        upstream.wait_ready()
        cp.wait_ready()
        report_ports = {BASELINE: cp.grpc_port, LIVE: cp.grpc_port,
                        "control plane down": down_port, "black-holed": hole.port}
        for i, name in enumerate(SCENARIOS):
            port, admin = free_port(), free_port()
            boot = proxy_bootstrap(s.wasm_dir, name != BASELINE, port, admin, up_port,
                                   report_ports[name])
            proxies[name] = Proxy(s.envoy, f"capture-{i}", boot, s.workdir, admin)
            urls[name] = f"http://127.0.0.1:{port}/capture-safety"
        for name in SCENARIOS:
            proxies[name].wait_ready()
        if s.warmup_seconds:
            for name in SCENARIOS:
                open_loop(s.load_bin, urls[name], s.warmup_seconds, s.rate)
            time.sleep(REPORT_TIMEOUT_S + 0.5)
        cp_before = cp.metrics()
        runs = interleave(
            SCENARIOS, s.rounds,
            lambda name: measure(proxies[name], s, urls[name], name != BASELINE),
            lambda rnd, name, r: (
                f"  round {rnd + 1} {name:<18} {describe_primary(r)}; summaries "
                f"{r['capture']['captured']} captured, {r['capture']['dropped']} dropped, "
                f"{r['capture']['failed']} failed (counted {r['reports_settled_s']:.1f} s "
                f"after the load)"),
            log)
        # The watcher's last lines: a report takes a tick and the flush interval to arrive.
        time.sleep(1.0)
        cp_after = cp.metrics()
        live_total = proxies[LIVE].counters().get(metric_name("captured"), 0)
    finally:
        for p in proxies.values():
            p.stop()
        cp.stop()
        upstream.stop()
        hole.stop()
    watched = cp.watched()
    base = summarise(BASELINE, runs[BASELINE], None)
    scenarios = [base] + [summarise(n, runs[n], base) for n in SCENARIOS[1:]]
    return {
        "rate_rps": s.rate, "seconds": s.seconds, "rounds": s.rounds,
        "connections": CONNECTIONS, "concurrency": 2,
        "report_timeout": REPORT_TIMEOUT,
        "limits": dict(LIMITS),
        "policy": CAPTURE_SPEC,
        "black_hole": hole.figures(),
        "control_plane": {
            # Over the measured rounds (deltas of its /metrics).
            "metrics": {k: cp_after.get(k, 0) - cp_before.get(k, 0) for k in cp_after},
        },
        # Over the whole life of the live proxy, warm-up included (the watcher ran from the
        # start): summaries the control plane accepted vs those the watcher printed.
        "watcher": watched | {"live_proxy_captured_total": live_total},
        "scenarios": scenarios,
        "claim_holds": all(x["all_succeeded"] for x in scenarios)
        and all(x.get("latency_unchanged") for x in scenarios if x["scenario"] in CAPTURING),
    }
