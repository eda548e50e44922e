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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import configs as C
from .accuracy import Proxy
from .procs import Envoy, free_port
from . import safety
from .safety import (CONNECTIONS, LIMITS, BlackHole, closed_port, describe_primary,
                     interleave, open_loop, primary)

RATE = 200  # primary requests per second
SLOW_DELAY = "2s"
COPY_TIMEOUT = "3s"
COPY_TIMEOUT_S = 3.0
TARGET_CLUSTER = "mirror_target"
# Limits of the claim (safety.LIMITS): a primary that waited for a copy would take >= 2 s
# (slow target) or the copy timeout.
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


def measure(proxy: Proxy, s: Settings, url: str) -> dict:
    before = _counters(proxy)
    r = open_loop(s.load_bin, url, s.seconds, s.rate)
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
    return primary(r) | {
        "copies_settled_s": round(settled, 2),
        "envoy_2xx": d[HCM_2XX],
        "envoy_completed": d[HCM_TOTAL],
        "mirror": {m: d[metric_name(m)] for m in METRICS},
        "target_cluster": {x: d[f"cluster.{TARGET_CLUSTER}.{x}"] for x in CLUSTER_STATS},
    }


def summarise(name: str, runs: list[dict], base: dict | None) -> dict:
    out = safety.summarise(name, runs, base)
    out["mirror"] = {m: sum(r["mirror"][m] for r in runs) for m in METRICS}
    out["target_cluster"] = {x: sum(r["target_cluster"][x] for r in runs) for x in CLUSTER_STATS}
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
        runs = interleave(
            SCENARIOS, s.rounds, lambda name: measure(proxies[name], s, urls[name]),
            lambda rnd, name, r: (
                f"  round {rnd + 1} {name:<11} {describe_primary(r)}; copies "
                f"{r['mirror']['mirrored']} sent, {r['mirror']['errors']} errors (all counted "
                f"{r['copies_settled_s']:.1f} s after the load)"),
            log)
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
        "limits": dict(LIMITS),
        "policy": MIRROR_SPEC,
        "black_hole": hole.figures(),
        "scenarios": scenarios,
        "claim_holds": all(x["all_succeeded"] for x in scenarios)
        and all(x.get("latency_unchanged") for x in scenarios if x["scenario"] in BAD_TARGETS),
    }
