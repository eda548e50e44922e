"""Data-path benchmark: one Envoy worker with each filter configuration, against a fast
loopback upstream; maximum throughput (closed loop) and latency at a fixed rate (open loop),
with the proxy's CPU time per request. Besides:

- memory: the proxy's VmRSS after warm-up traffic at `--concurrency 1` (the load run's own
  process, read right after its warm-up) and at `--concurrency 4` (a separate start with the
  same warm-up), every round;
- host calls per request: each meshwarden configuration once more with the modules built
  with `count-host-calls` (histogram `meshwarden_host_calls_per_request`, read from the
  admin `/stats` before and after a fixed number of requests);
- configuration time: the combined module with 1 ... 1,000 policies per kind started with
  `wasm` debug logs and microsecond timestamps; from each VM's `Thread-Local Wasm created`
  line to the module's `configured` line on the same thread (VM start + `on_configure`).
"""

from __future__ import annotations

import datetime
import http.client
import json
import re
import statistics
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field, asdict
from pathlib import Path
from typing import Callable

from . import configs as C
from . import profile as P
from .load import LoadError, run_closed_loop, run_fixed_rate, run_open_loop, wrk_available
from .procs import (TIMED_LOG_FORMAT, Envoy, children_cpu_seconds, free_port,
                    system_busy_seconds)

# CPU layout on a 2-core machine: the proxy under test alone on CPU 0; the upstream and the
# load generator share CPU 1.
PROXY_CPU = 0
OTHER_CPU = 1
CONNECTIONS = 16
# Fraction of bare Envoy's maximum throughput used for the fixed-rate latency runs.
FIXED_RATE_FRACTION = 0.5
# More failed requests than this fraction make a measurement invalid.
MAX_ERROR_RATIO = 0.001
# Worker counts of the memory measurements.
CONCURRENCY_LOW, CONCURRENCY_HIGH = 1, 4
# Requests sent through each configuration for the host-call counts.
CALLS_REQUESTS = 1000
# A proxy start compiles the Wasm modules (seconds on a busy CPU) and, with 1,000 policies
# per kind, configures them: allow for it.
READY_TIMEOUT = 180.0
MIB = 1048576
# Pause between warm-up traffic and reading VmRSS (V8 finishes tier-up compilation and frees
# its scratch memory in background threads).
RSS_SETTLE_SECONDS = 0.5


@dataclass
class Settings:
    envoy: str
    wasm_dir: Path
    workdir: Path
    rounds: int = 3
    closed_seconds: int = 3
    open_seconds: int = 3
    warmup_seconds: int = 1
    only: list[str] | None = None
    # The open-loop generator (meshwarden-load); None falls back to h2load --rps.
    load_bin: str | None = None
    # Configurations to profile with perf after the measurements (skipped without perf).
    profile: list[str] = field(default_factory=lambda: ["bare", "native-all", "noop",
                                                         "mw-combined"])
    profile_seconds: int = 3
    # The floor's module (bench/noop-filter); None: the `noop` configuration fails.
    noop_module: Path | None = None
    # Modules built with `count-host-calls`; None skips the host-call counts.
    calls_dir: Path | None = None
    calls_requests: int = CALLS_REQUESTS
    # RSS at --concurrency 4 (a second start per configuration and round).
    memory: bool = True
    # Configuration time of the combined module with SCALING policies per kind.
    configure_time: bool = True
    # Share of failed requests that makes a measurement invalid. The smoke run (a debug
    # build on shared cores, fixed rate possibly above a configuration's capacity) only
    # checks that every configuration serves; a broken filter fails nearly every request.
    max_error_ratio: float = MAX_ERROR_RATIO
    # Whether fixed-rate failures count against a configuration (not in the smoke run,
    # where the rate may be above what a configuration serves on a loaded machine).
    fixed_rate_errors_count: bool = True


@dataclass
class Sample:
    """One measurement of one configuration."""

    max_rps: float = 0.0
    cpu_us_per_req_max: float = 0.0
    proxy_cores_max: float = 0.0
    fixed_rps_target: float = 0.0
    fixed_rps_achieved: float = 0.0
    p50_us: float = 0.0
    p90_us: float = 0.0
    p99_us: float = 0.0
    p999_us: float = 0.0
    service_p50_us: float = 0.0
    service_p99_us: float = 0.0
    send_delay_p99_us: float = 0.0
    cpu_us_per_req_fixed: float = 0.0
    other_load_cores: float = 0.0
    errors: int = 0
    # Of `errors`, those of the fixed-rate run (late or unsent requests count there).
    fixed_rate_errors: int = 0
    requests: int = 0
    # VmRSS after the warm-up (after the closed-loop run when there is no warm-up).
    rss_mib: float = 0.0


@dataclass
class ConfigResult:
    name: str
    label: str
    group: str
    kinds: list[str]
    native: str | None
    layout: str | None = None
    policies: int = 0
    memory_only: bool = False
    samples: list[Sample] = field(default_factory=list)
    # Per round: {"concurrency_1_mib": ..., "concurrency_4_mib": ...}
    memory: list[dict] = field(default_factory=list)
    host_calls: dict | None = None
    configure: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed: str | None = None

    def median(self) -> dict:
        if not self.samples:
            return {}
        keys = asdict(self.samples[0]).keys()
        return {k: statistics.median(getattr(s, k) for s in self.samples) for k in keys}

    def memory_median(self) -> dict:
        out = {}
        for key in ("concurrency_1_mib", "concurrency_4_mib"):
            vals = [m[key] for m in self.memory if m.get(key)]
            if vals:
                out[key] = statistics.median(vals)
        if len(out) == 2:
            out["per_extra_worker_mib"] = (out["concurrency_4_mib"] - out["concurrency_1_mib"]) / (
                CONCURRENCY_HIGH - CONCURRENCY_LOW)
        return out

    def configure_median(self) -> dict:
        out = {}
        for key in ("worker_ms", "main_ms", "ready_s"):
            vals = [c[key] for c in self.configure if c.get(key) is not None]
            if vals:
                out[key] = statistics.median(vals)
        return out


class Meter:
    """CPU used by the proxy, the upstream, the load generator and everything else."""

    def __init__(self, proxy: Envoy, upstream: Envoy):
        self.proxy, self.upstream = proxy, upstream

    def __enter__(self):
        self.t = time.monotonic()
        self.p = self.proxy.cpu_seconds()
        self.u = self.upstream.cpu_seconds()
        self.c = children_cpu_seconds()
        self.s = system_busy_seconds()
        return self

    def __exit__(self, *exc):
        self.elapsed = time.monotonic() - self.t
        self.proxy_cpu = self.proxy.cpu_seconds() - self.p
        ours = self.proxy_cpu + (self.upstream.cpu_seconds() - self.u) + (
            children_cpu_seconds() - self.c)
        other = (system_busy_seconds() - self.s) - ours
        self.other_cores = max(other, 0.0) / self.elapsed if self.elapsed else 0.0
        return False


def _bootstrap(cfg: C.Config, s: Settings, port: int, upstream_port: int, sink_port: int,
               wasm_dir: Path | None = None, admin_port: int | None = None) -> dict:
    return C.proxy_bootstrap(cfg, port, upstream_port, sink_port, wasm_dir or s.wasm_dir,
                             s.noop_module, admin_port)


def _measure(cfg: C.Config, s: Settings, upstream: Envoy, upstream_port: int, sink_port: int,
             fixed_rate: Callable[[float], float]) -> Sample:
    port = free_port()
    boot = _bootstrap(cfg, s, port, upstream_port, sink_port)
    proxy = Envoy(s.envoy, f"proxy-{cfg.name}", boot, s.workdir, PROXY_CPU, port)
    url = f"http://127.0.0.1:{port}/bench"
    try:
        proxy.wait_ready(READY_TIMEOUT)
        out = Sample()
        if s.warmup_seconds > 0:
            run_closed_loop(url, s.warmup_seconds, CONNECTIONS, OTHER_CPU, s.load_bin)
            time.sleep(RSS_SETTLE_SECONDS)
            out.rss_mib = proxy.rss_bytes() / MIB
        with Meter(proxy, upstream) as m:
            wrk = run_closed_loop(url, s.closed_seconds, CONNECTIONS, OTHER_CPU, s.load_bin)
        if not out.rss_mib:
            out.rss_mib = proxy.rss_bytes() / MIB
        out.max_rps = wrk.rps
        out.cpu_us_per_req_max = m.proxy_cpu / max(wrk.requests, 1) * 1e6
        out.proxy_cores_max = m.proxy_cpu / m.elapsed
        out.errors += wrk.non_2xx + wrk.socket_errors
        out.requests += wrk.requests
        rate = fixed_rate(wrk.rps)
        with Meter(proxy, upstream) as m2:
            if s.load_bin:
                fixed = run_open_loop(s.load_bin, url, s.open_seconds, rate, CONNECTIONS,
                                      OTHER_CPU)
            else:
                fixed = run_fixed_rate(url, s.open_seconds, rate, CONNECTIONS, OTHER_CPU)
        out.fixed_rps_target = fixed.target_rps
        out.fixed_rps_achieved = fixed.achieved_rps
        out.p50_us, out.p90_us = fixed.corrected_p50, fixed.corrected_p90
        out.p99_us, out.p999_us = fixed.corrected_p99, fixed.corrected_p999
        out.service_p50_us, out.service_p99_us = fixed.service_p50, fixed.service_p99
        out.send_delay_p99_us = fixed.send_delay_p99
        out.cpu_us_per_req_fixed = m2.proxy_cpu / max(fixed.requests, 1) * 1e6
        out.other_load_cores = (m.other_cores * m.elapsed + m2.other_cores * m2.elapsed) / (
            m.elapsed + m2.elapsed)
        out.errors += fixed.failed
        out.fixed_rate_errors = fixed.failed
        out.requests += fixed.requests
        if proxy.proc.poll() is not None:
            raise RuntimeError(f"proxy exited during the run:\n{proxy.log_tail()}")
        return out
    finally:
        proxy.stop()


def _memory(cfg: C.Config, s: Settings, upstream_port: int, sink_port: int,
            concurrency: int) -> float:
    """VmRSS (MiB) of a fresh proxy with `concurrency` workers after warm-up traffic (the
    same warm-up as the load runs: wrk, 16 connections, spread over the workers)."""
    port = free_port()
    boot = _bootstrap(cfg, s, port, upstream_port, sink_port)
    proxy = Envoy(s.envoy, f"memory-{cfg.name}-c{concurrency}", boot, s.workdir, PROXY_CPU,
                  port, concurrency=concurrency)
    try:
        proxy.wait_ready(READY_TIMEOUT)
        run_closed_loop(f"http://127.0.0.1:{port}/bench", max(s.warmup_seconds, 1), CONNECTIONS,
                        OTHER_CPU, s.load_bin)
        if proxy.proc.poll() is not None:
            raise RuntimeError(f"proxy exited during warm-up:\n{proxy.log_tail()}")
        time.sleep(RSS_SETTLE_SECONDS)
        return proxy.rss_bytes() / MIB
    finally:
        proxy.stop()


def _histogram_totals(admin_port: int, name: str) -> list[dict]:
    """The cumulative buckets of histogram `name` (admin /stats, detailed buckets). With
    `stats_flush_on_admin`, each admin read starts a merge of the workers' histograms and
    answers with the previous merge: read once, let the merge finish, read again."""
    url = (f"http://127.0.0.1:{admin_port}/stats?format=json&histogram_buckets=detailed"
           f"&filter={name}")
    with urllib.request.urlopen(url, timeout=10) as r:
        r.read()
    time.sleep(0.5)
    with urllib.request.urlopen(url, timeout=10) as r:
        doc = json.loads(r.read())
    for block in doc.get("stats", []):
        hist = block.get("histograms")
        if not isinstance(hist, dict):
            continue
        for d in hist.get("details", []):
            if d.get("name", "").endswith(name):
                return d.get("totals", [])
    return []


def _bucket_delta(before: list[dict], after: list[dict]) -> dict[tuple[float, float], int]:
    def key(b: dict) -> tuple[float, float]:
        return (float(b["lower_bound"]), float(b["width"]))
    out = {key(b): int(b["count"]) for b in after}
    for b in before:
        out[key(b)] = out.get(key(b), 0) - int(b["count"])
    return {k: v for k, v in out.items() if v > 0}


def _host_calls(cfg: C.Config, s: Settings, upstream_port: int, sink_port: int) -> dict:
    """Host calls per request of `cfg` with the `count-host-calls` modules: the growth of the
    `meshwarden_host_calls_per_request` histogram over `calls_requests` requests. Each VM
    records, at the end of each of its filters' streams, the calls made since its previous
    record, so the sum over records is every call the filters made. Envoy's histogram bins
    are exact for integers below 100 (width 1 or less); above, a bin is 10 wide and its
    midpoint is used."""
    assert s.calls_dir is not None
    port, admin = free_port(), free_port()
    boot = _bootstrap(cfg, s, port, upstream_port, sink_port, s.calls_dir, admin)
    proxy = Envoy(s.envoy, f"calls-{cfg.name}", boot, s.workdir, PROXY_CPU, port)
    name = "meshwarden_host_calls_per_request"
    try:
        proxy.wait_ready(READY_TIMEOUT)
        before = _histogram_totals(admin, name)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        bad = 0
        try:
            for _ in range(s.calls_requests):
                conn.request("GET", "/bench")
                r = conn.getresponse()
                r.read()
                bad += r.status != 200
        finally:
            conn.close()
        # Streams end (and record) just after their response is sent: let the last finish.
        time.sleep(0.2)
        after = _histogram_totals(admin, name)
    finally:
        proxy.stop()
    delta = _bucket_delta(before, after)
    records = sum(delta.values())
    total = sum(c * (lo if w <= 1 else lo + w / 2) for (lo, w), c in delta.items())
    n = s.calls_requests
    # Largest error of the mean from using the midpoints of bins wider than 1.
    max_error = sum(c * w / 2 for (_, w), c in delta.items() if w > 1) / n if n else 0.0
    # The typical request: the most frequent non-zero record (calls made outside a request,
    # on timer ticks or call-out responses, are counted in the next request's record).
    nonzero = {k: c for k, c in delta.items() if k[0] > 0}
    mode = max(nonzero, key=lambda k: nonzero[k])[0] if nonzero else 0.0
    return {
        "requests": n, "non_200": bad, "records": records, "most_frequent": mode,
        "per_request": total / n if n else 0.0, "records_per_request": records / n if n else 0.0,
        "max_error": max_error, "exact": max_error < 0.05,
        "distribution": {f"{lo:g}" + ("" if w <= 1 else f"-{lo + w:g}"): c
                         for (lo, w), c in sorted(delta.items())},
    }


_LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\]\[(\d+)\]\[(\w+)\]\[(\w+)\] (.*)$")
# The module's info line after a successful on_configure ("meshwarden: configured", or
# "meshwarden filter: configured with N policies (...)").
_CONFIGURED = re.compile(r"wasm log .*\bconfigured\b")
_REJECTED = re.compile(r"wasm log .*(reject|invalid|error)", re.I)


def configure_times(log_text: str) -> dict:
    """From an Envoy log (TIMED_LOG_FORMAT, `wasm` at debug): per VM, the time from
    `Thread-Local Wasm created` to the module's `configured` line on the same thread, split
    into the main thread's VMs (checked at load) and the workers'."""
    main_tid = None
    pending: dict[str, datetime.datetime] = {}
    main_ms: list[float] = []
    worker_ms: list[float] = []
    rejected = []
    for line in log_text.splitlines():
        m = _LOG_LINE.match(line)
        if not m:
            continue
        ts = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
        tid, msg = m.group(2), m.group(5)
        if main_tid is None and "initializing epoch" in msg:
            main_tid = tid
        if "Thread-Local Wasm created" in msg:
            pending[tid] = ts
        elif _CONFIGURED.search(msg) and "rejected" not in msg and tid in pending:
            ms = (ts - pending.pop(tid)).total_seconds() * 1000
            (main_ms if tid == main_tid else worker_ms).append(ms)
        elif _REJECTED.search(msg):
            rejected.append(msg[:300])
    return {"main_ms_all": main_ms, "worker_ms_all": worker_ms,
            "main_ms": max(main_ms) if main_ms else None,
            "worker_ms": max(worker_ms) if worker_ms else None, "rejected": rejected[:3]}


def _configure(cfg: C.Config, s: Settings, upstream_port: int, sink_port: int) -> dict:
    port = free_port()
    boot = _bootstrap(cfg, s, port, upstream_port, sink_port)
    proxy = Envoy(s.envoy, f"configure-{cfg.name}", boot, s.workdir, PROXY_CPU, port,
                  log_args=["-l", "info", "--component-log-level", "wasm:debug",
                            "--log-format", TIMED_LOG_FORMAT])
    try:
        ready = proxy.wait_ready(READY_TIMEOUT)
    except RuntimeError:
        proxy.stop()
        out = configure_times(proxy.log_path.read_text(errors="replace"))
        raise RuntimeError("does not start: " + ("; ".join(out["rejected"]) or proxy.log_tail()))
    proxy.stop()
    out = configure_times(proxy.log_path.read_text(errors="replace"))
    out["ready_s"] = ready
    return out


def _profiles(s: Settings, results: list[ConfigResult], cfgs: dict[str, C.Config],
              upstream_port: int, sink_port: int, log: Callable[[str], None]) -> dict:
    if not s.profile or not P.available():
        return {}
    out = {}
    ok = {r.name for r in results if not r.failed}
    for name in s.profile:
        if name not in ok:
            continue
        port = free_port()
        boot = _bootstrap(cfgs[name], s, port, upstream_port, sink_port)
        proxy = Envoy(s.envoy, f"profile-{name}", boot, s.workdir, PROXY_CPU, port)
        try:
            proxy.wait_ready(READY_TIMEOUT)
            url = f"http://127.0.0.1:{port}/bench"
            run_closed_loop(url, 1, CONNECTIONS, OTHER_CPU, s.load_bin)
            out[name] = P.profile(proxy.pid, url, s.profile_seconds, CONNECTIONS, OTHER_CPU,
                                  s.load_bin)
            log(f"  profile {name}: {out[name]}")
        except (RuntimeError, LoadError, OSError, subprocess.SubprocessError) as e:
            log(f"  profile {name} failed: {e}")
        finally:
            proxy.stop()
    return out


def _failure(msg: str) -> str:
    """A failure message led by the module's own reason when it rejected its configuration."""
    m = re.search(r"configuration rejected: (.*)", msg)
    return f"the module rejects the configuration: {m.group(1).strip()}\n{msg}" if m else msg


def _selected(c: C.Config, only: list[str] | None) -> bool:
    return not only or c.name in only or c.name == "bare"


def run(s: Settings, log: Callable[[str], None]) -> dict:
    """Runs every configuration `s.rounds` times (interleaved, so slow drifts in machine load
    hit all alike) and returns per-configuration medians and raw samples, then the host-call
    counts and the configuration times."""
    s.workdir.mkdir(parents=True, exist_ok=True)
    upstream_port, sink_port = free_port(), free_port()
    upstream = Envoy(s.envoy, "upstream", C.upstream_bootstrap(upstream_port, sink_port),
                     s.workdir, OTHER_CPU, upstream_port)
    cfgs = {c.name: c for c in C.all_configs()}
    results = [ConfigResult(c.name, c.label, c.group, c.kinds, c.native, c.layout,
                            c.policies if c.group == "meshwarden" else 0, c.memory_only)
               for c in C.all_configs() if _selected(c, s.only)]
    profiles: dict = {}
    fixed: dict[str, float] = {}
    try:
        upstream.wait_ready()
        for r in results:
            if r.group == "noop" and (s.noop_module is None or not s.noop_module.is_file()):
                r.failed = (f"no-op module {s.noop_module} not built (cargo build --profile wasm "
                            f"--target wasm32-wasip1 -p meshwarden-noop-filter)")

        def fixed_rate_for(name: str) -> Callable[[float], float]:
            """The fixed rate: set by the first bare run (which comes first in every round)."""
            def f(max_rps: float) -> float:
                if "rate" not in fixed and name == "bare":
                    fixed["rate"] = FIXED_RATE_FRACTION * max_rps
                if "rate" not in fixed:
                    raise RuntimeError("bare Envoy was not measured; no fixed rate")
                return fixed["rate"]
            return f

        for rnd in range(s.rounds):
            for r in results:
                if r.failed:
                    continue
                cfg = cfgs[r.name]
                mem: dict = {}
                try:
                    if r.memory_only:
                        mem["concurrency_1_mib"] = _memory(cfg, s, upstream_port, sink_port,
                                                           CONCURRENCY_LOW)
                    else:
                        sample = _measure(cfg, s, upstream, upstream_port, sink_port,
                                          fixed_rate_for(r.name))
                        mem["concurrency_1_mib"] = sample.rss_mib
                    if s.memory or r.memory_only:
                        mem["concurrency_4_mib"] = _memory(cfg, s, upstream_port, sink_port,
                                                           CONCURRENCY_HIGH)
                except (RuntimeError, LoadError, OSError) as e:
                    r.failed = _failure(str(e))
                    log(f"  {r.name}: FAILED: {r.failed}")
                    continue
                r.memory.append(mem)
                rss = (f"RSS {mem['concurrency_1_mib']:.1f} MiB"
                       + (f" / {mem['concurrency_4_mib']:.1f} MiB at {CONCURRENCY_HIGH} workers"
                          if "concurrency_4_mib" in mem else ""))
                if r.memory_only:
                    log(f"  round {rnd + 1} {r.name:<18} {rss}")
                    continue
                r.samples.append(sample)
                counted = sample.errors - (0 if s.fixed_rate_errors_count
                                           else sample.fixed_rate_errors)
                bad = counted > s.max_error_ratio * max(sample.requests, 1)
                if bad and not r.failed:
                    r.failed = f"{sample.errors} of {sample.requests} requests failed"
                log(f"  round {rnd + 1} {r.name:<18} max {sample.max_rps:8.0f} req/s "
                    f"({sample.cpu_us_per_req_max:5.1f} us CPU/req, proxy {sample.proxy_cores_max:.2f} cores) | "
                    f"@{sample.fixed_rps_achieved:6.0f} req/s p50 {sample.p50_us:5.0f} "
                    f"p99 {sample.p99_us:6.0f} us, {sample.cpu_us_per_req_fixed:5.1f} us CPU/req"
                    f" | {rss} | other load {sample.other_load_cores:.2f} cores"
                    + (f" | {sample.errors} errors" if sample.errors else ""))
        if s.calls_dir is not None:
            log(f"host calls per request ({s.calls_requests} requests, modules in {s.calls_dir})")
            for r in results:
                if r.group != "meshwarden" or r.failed:
                    continue
                try:
                    r.host_calls = _host_calls(cfgs[r.name], s, upstream_port, sink_port)
                except (RuntimeError, OSError, http.client.HTTPException, ValueError) as e:
                    r.host_calls = {"error": str(e)[-1000:]}
                    log(f"  {r.name}: host-call count failed: {e}")
                    continue
                h = r.host_calls
                log(f"  {r.name:<18} {h['per_request']:6.1f} calls/request"
                    f" (± {h['max_error']:.2f}; {h['records_per_request']:.0f} records/request,"
                    f" {h['non_200']} not 200): {h['distribution']}")
        if s.configure_time:
            names = [C.scaling_config(n) for n in C.SCALING]
            chosen = [r for r in results if r.name in names and not r.failed]
            if chosen:
                log("configuration time (VM start + on_configure, from Envoy's wasm debug log)")
            for rnd in range(s.rounds):
                for r in chosen:
                    try:
                        c = _configure(cfgs[r.name], s, upstream_port, sink_port)
                    except (RuntimeError, OSError) as e:
                        r.notes.append(f"configuration time not measured: {str(e)[:300]}")
                        log(f"  {r.name}: configuration time not measured: {e}")
                        chosen = [x for x in chosen if x is not r]
                        continue
                    r.configure.append(c)
                    log(f"  round {rnd + 1} {r.name:<18} worker VM {c['worker_ms'] or 0:8.1f} ms,"
                        f" main thread {c['main_ms'] or 0:8.1f} ms, ready after {c['ready_s']:.2f} s")
        profiles = _profiles(s, results, cfgs, upstream_port, sink_port, log)
    finally:
        upstream.stop()
    return {
        "generator": "meshwarden-load" if s.load_bin else "h2load",
        "closed_loop_generator": "wrk" if wrk_available() or not s.load_bin
        else "meshwarden-load (saturating)",
        "profiles": profiles,
        "fixed_rate_rps": fixed.get("rate", 0.0),
        "fixed_rate_fraction_of_bare_max": FIXED_RATE_FRACTION,
        "connections": CONNECTIONS,
        "rounds": s.rounds,
        "closed_seconds": s.closed_seconds,
        "open_seconds": s.open_seconds,
        "warmup_seconds": s.warmup_seconds,
        "concurrency": [CONCURRENCY_LOW, CONCURRENCY_HIGH],
        "calls_requests": s.calls_requests if s.calls_dir is not None else 0,
        "scaling": C.SCALING,
        "memory_policies": C.MEMORY_POLICIES,
        "policies": {k: C.MESHWARDEN_SPECS[k] for k in C.FILTER_ORDER},
        "configs": [
            {
                "name": r.name, "label": r.label, "group": r.group, "kinds": r.kinds,
                "native": r.native, "layout": r.layout, "policies": r.policies,
                "memory_only": r.memory_only, "notes": r.notes, "failed": r.failed,
                "median": r.median(), "samples": [asdict(x) for x in r.samples],
                "memory": r.memory_median(), "memory_samples": r.memory,
                "host_calls": r.host_calls,
                "configure": r.configure_median(), "configure_samples": r.configure,
            }
            for r in results
        ],
    }
