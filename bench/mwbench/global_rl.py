"""Global rate limits: what a `scope: global` decision adds to a request, and what the rate
limit service sustains.

- Latency and proxy CPU: one Envoy worker (pinned to CPU 0) with the ratelimit module and one
  policy that never limits, at a fixed rate (open loop, meshwarden-load): bare Envoy, a local
  limit, a global limit (a call-out to the service per request), and a global limit with a
  lease (`lease: {tokens: 100, maxAge: 1s}`: one call per 100 requests). The service and
  Redis run on loopback, unpinned (they share the machine's CPUs with the upstream and the
  load generator).
- Service throughput: `meshwarden-rls-load` (closed loop, tonic, 32 calls in flight over 4
  HTTP/2 connections, 1,000 distinct buckets) against `meshwarden-ratelimit` and
  `redis-server` on loopback, all on the machine's 2 cores: decisions per second, latency,
  and the CPU per decision of the service and of Redis.

Every process runs on loopback, every run is bounded in time (and the service load in
requests too).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import configs as C
from .load import run_open_loop
from .procs import Envoy, Proc, free_port, http_ok, wait_for

PROXY_CPU, OTHER_CPU = 0, 1
CONNECTIONS = 16
# Never limits: the benchmark measures the decision's cost, not rejections.
RATE = {"requests": 1_000_000, "unit": "second"}
LEASE = {"tokens": 100, "maxAge": "1s"}
POLICY = "global"
RLS_POLICY = "rls-bench"
READY_TIMEOUT = 120.0


@dataclass
class Settings:
    envoy: str
    wasm_dir: Path
    workdir: Path
    service_bin: str
    rls_load_bin: str
    load_bin: str
    redis_bin: str = "redis-server"
    seconds: int = 5
    rate: float = 500.0
    warmup_seconds: int = 1
    rls_seconds: float = 5.0
    rls_concurrency: int = 32
    rls_max_requests: int = 2_000_000


# ---- configurations --------------------------------------------------------------------

CONFIGS = [
    ("bare", "bare Envoy (router only)", None),
    ("local", "local limit (shared data)", {"rate": RATE}),
    ("global", "global limit (call per request)", {"rate": RATE, "scope": "global",
                                                    "timeout": "1s"}),
    ("global-lease", f"global limit, lease of {LEASE['tokens']}",
     {"rate": RATE, "scope": "global", "timeout": "1s", "lease": LEASE}),
]


def _rls_cluster(port: int) -> dict:
    c = C._cluster("meshwarden_ratelimit", port)
    c["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    return c


def proxy_bootstrap(spec: dict | None, port: int, upstream_port: int, rls_port: int,
                    wasm_dir: Path) -> dict:
    route = {"match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "30s"}}
    filters = []
    if spec is not None:
        wire = json.dumps({"policies": [{"name": POLICY, "match": {}, "spec": spec}]},
                          separators=(",", ":"))
        filters.append(C._wasm_filter("meshwarden.ratelimit", "meshwarden.ratelimit",
                                      "meshwarden.ratelimit",
                                      wasm_dir / "meshwarden_ratelimit.wasm", wire))
    return {"static_resources": {
        "listeners": [C._listener("proxy", port, route, filters)],
        "clusters": [C._cluster("upstream", upstream_port), _rls_cluster(rls_port)],
    }}


def limits_file() -> dict:
    """The service's limits: the proxies' policy, and the throughput run's per-tenant one."""
    def limit(name: str, keys: list[dict]) -> dict:
        return {"name": name, "descriptors": [{"key": "policy", "value": name}] + keys,
                "rate": RATE}
    return {"domains": [{"domain": "meshwarden", "limits": [
        limit(POLICY, []), limit(RLS_POLICY, [{"key": "x-tenant"}])]}]}


def _redis_up(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


# ---- runs ------------------------------------------------------------------------------

def _latency(s: Settings, name: str, spec: dict | None, upstream_port: int, rls_port: int,
             service: Proc, redis: Proc) -> dict:
    port = free_port()
    boot = proxy_bootstrap(spec, port, upstream_port, rls_port, s.wasm_dir)
    proxy = Envoy(s.envoy, f"global-{name}", boot, s.workdir, PROXY_CPU, port)
    url = f"http://127.0.0.1:{port}/bench"
    try:
        proxy.wait_ready(READY_TIMEOUT)
        if s.warmup_seconds > 0:
            run_open_loop(s.load_bin, url, s.warmup_seconds, s.rate, CONNECTIONS, OTHER_CPU)
        before = (proxy.cpu_seconds(), service.cpu_seconds(), redis.cpu_seconds())
        r = run_open_loop(s.load_bin, url, s.seconds, s.rate, CONNECTIONS, OTHER_CPU)
        after = (proxy.cpu_seconds(), service.cpu_seconds(), redis.cpu_seconds())
        if proxy.proc.poll() is not None:
            raise RuntimeError(f"proxy exited during the run:\n{proxy.log_tail()}")
        n = max(r.requests, 1)
        proxy_us, service_us, redis_us = ((a - b) / n * 1e6 for a, b in zip(after, before))
        return {"name": name, "rps_target": r.target_rps, "rps_achieved": round(r.achieved_rps, 1),
                "requests": r.requests, "failed": r.failed,
                "p50_us": r.corrected_p50, "p99_us": r.corrected_p99,
                "proxy_cpu_us_per_req": round(proxy_us, 2),
                "service_cpu_us_per_req": round(service_us, 2),
                "redis_cpu_us_per_req": round(redis_us, 2)}
    finally:
        proxy.stop()


def _throughput(s: Settings, rls_port: int, service: Proc, redis: Proc) -> dict:
    out_path = s.workdir / "rls-load.json"
    cmd = [s.rls_load_bin, "--addr", f"127.0.0.1:{rls_port}", "--concurrency",
           str(s.rls_concurrency), "--connections", "4", "--duration", str(s.rls_seconds),
           "--max-requests", str(s.rls_max_requests), "--policy", RLS_POLICY,
           "--json", str(out_path)]
    before = (service.cpu_seconds(), redis.cpu_seconds())
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=s.rls_seconds + 60)
    after = (service.cpu_seconds(), redis.cpu_seconds())
    if p.returncode != 0 or not out_path.is_file():
        raise RuntimeError(f"meshwarden-rls-load failed ({p.returncode}): {p.stderr.strip()}")
    r = json.loads(out_path.read_text())
    n = max(r["decisions"], 1)
    r["service_cpu_us_per_decision"] = round((after[0] - before[0]) / n * 1e6, 2)
    r["redis_cpu_us_per_decision"] = round((after[1] - before[1]) / n * 1e6, 2)
    return r


def run(s: Settings, log: Callable[[str], None]) -> dict:
    for binary in (s.service_bin, s.rls_load_bin, s.load_bin):
        if not Path(binary).is_file():
            raise RuntimeError(f"{binary} not found")
    if shutil.which(s.redis_bin) is None:
        raise RuntimeError(f"{s.redis_bin} not installed")
    s.workdir.mkdir(parents=True, exist_ok=True)
    redis_port, rls_port, http_port = free_port(), free_port(), free_port()
    upstream_port, sink_port = free_port(), free_port()
    redis = Proc("redis", [s.redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1",
                           "--save", "", "--appendonly", "no"], s.workdir)
    procs: list = [redis]
    try:
        wait_for("redis-server", lambda: _redis_up(redis_port), redis)
        limits = s.workdir / "limits.json"
        limits.write_text(json.dumps(limits_file()))
        service = Proc("ratelimit", [s.service_bin, "--config", str(limits), "--grpc-addr",
                                     f"127.0.0.1:{rls_port}", "--http-addr",
                                     f"127.0.0.1:{http_port}", "--redis",
                                     f"redis://127.0.0.1:{redis_port}", "--redis-timeout",
                                     "500ms"], s.workdir)
        procs.append(service)
        wait_for("meshwarden-ratelimit", lambda: http_ok(f"http://127.0.0.1:{http_port}/readyz"),
              service)
        upstream = Envoy(s.envoy, "global-upstream", C.upstream_bootstrap(upstream_port, sink_port),
                         s.workdir, OTHER_CPU, upstream_port)
        procs.append(upstream)
        upstream.wait_ready(READY_TIMEOUT)
        rows = []
        for name, label, spec in CONFIGS:
            log(f"  global rate limit latency: {label} at {s.rate:.0f} req/s for {s.seconds}s")
            row = _latency(s, name, spec, upstream_port, rls_port, service, redis)
            row["label"] = label
            log(f"    p50 {row['p50_us']:.0f} µs, p99 {row['p99_us']:.0f} µs, proxy "
                f"{row['proxy_cpu_us_per_req']} µs CPU/request, failed {row['failed']}")
            rows.append(row)
        log(f"  rate limit service throughput: {s.rls_concurrency} calls in flight for "
            f"{s.rls_seconds}s")
        tp = _throughput(s, rls_port, service, redis)
        log(f"    {tp['decisions_per_second']:.0f} decisions/s, p50 {tp['latency']['p50_ms']} ms, "
            f"p99 {tp['latency']['p99_ms']} ms, errors {tp['errors']}")
        return {"rate": s.rate, "seconds": s.seconds, "lease": LEASE, "latency": rows,
                "throughput": tp}
    finally:
        for p in reversed(procs):
            p.stop()

