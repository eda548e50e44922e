"""Data-path benchmark: one Envoy worker with each filter configuration, against a fast
loopback upstream; maximum throughput (closed loop) and latency at a fixed rate (open loop),
with the proxy's CPU time per request."""

from __future__ import annotations

import statistics
import subprocess
import time
from dataclasses import dataclass, field, asdict
from pathlib import Path
from typing import Callable

from . import configs as C
from . import profile as P
from .load import LoadError, run_closed_loop, run_fixed_rate, run_open_loop, wrk_available
from .procs import Envoy, children_cpu_seconds, free_port, system_busy_seconds

# CPU layout on a 2-core machine: the proxy under test alone on CPU 0; the upstream and the
# load generator share CPU 1.
PROXY_CPU = 0
OTHER_CPU = 1
CONNECTIONS = 16
# Fraction of bare Envoy's maximum throughput used for the fixed-rate latency runs.
FIXED_RATE_FRACTION = 0.5
# More failed requests than this fraction make a measurement invalid.
MAX_ERROR_RATIO = 0.001


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
    profile: list[str] = field(default_factory=lambda: ["bare", "native-all", "mw-all"])
    profile_seconds: int = 3


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
    requests: int = 0


@dataclass
class ConfigResult:
    name: str
    label: str
    group: str
    kinds: list[str]
    native: str | None
    samples: list[Sample] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed: str | None = None

    def median(self) -> dict:
        if not self.samples:
            return {}
        keys = asdict(self.samples[0]).keys()
        return {k: statistics.median(getattr(s, k) for s in self.samples) for k in keys}


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


def _probe_policies(s: Settings, kinds: list[str], upstream_port: int, sink_port: int,
                    log: Callable[[str], None]) -> tuple[dict[str, bool], dict[str, str]]:
    """Which meshwarden filters accept their benchmark policy. A pass-through build rejects
    any policy (Envoy then refuses to start); such a filter is measured with an empty policy
    list and flagged. A filter that fails even then is broken."""
    with_policy: dict[str, bool] = {}
    broken: dict[str, str] = {}
    # Usually every module takes its policy: one start checks them all.
    port = free_port()
    every = C.Config("probe-all", "all", "meshwarden", list(kinds))
    proxy = Envoy(s.envoy, "probe-all", C.proxy_bootstrap(every, port, upstream_port, sink_port,
                                                          s.wasm_dir, {}), s.workdir, PROXY_CPU, port)
    try:
        proxy.wait_ready(timeout=60)
        return {k: True for k in kinds}, broken
    except RuntimeError:
        pass
    finally:
        proxy.stop()
    for kind in kinds:
        for attempt in (True, False):
            cfg = C.Config(f"probe-{kind}", kind, "meshwarden", [kind])
            port = free_port()
            boot = C.proxy_bootstrap(cfg, port, upstream_port, sink_port, s.wasm_dir,
                                     {kind: attempt})
            proxy = Envoy(s.envoy, f"probe-{kind}", boot, s.workdir, PROXY_CPU, port)
            try:
                proxy.wait_ready(timeout=60)
                with_policy[kind] = attempt
                if not attempt:
                    log(f"  meshwarden {kind}: the module rejects a {kind} policy "
                        f"(pass-through build); measured with an empty policy list")
                break
            except RuntimeError as e:
                if not attempt:
                    broken[kind] = str(e)
            finally:
                proxy.stop()
    return with_policy, broken


def _measure(cfg: C.Config, s: Settings, upstream: Envoy, upstream_port: int, sink_port: int,
             with_policy: dict[str, bool], fixed_rate: Callable[[float], float]) -> Sample:
    port = free_port()
    boot = C.proxy_bootstrap(cfg, port, upstream_port, sink_port, s.wasm_dir, with_policy)
    proxy = Envoy(s.envoy, f"proxy-{cfg.name}", boot, s.workdir, PROXY_CPU, port)
    url = f"http://127.0.0.1:{port}/bench"
    try:
        proxy.wait_ready()
        if s.warmup_seconds > 0:
            run_closed_loop(url, s.warmup_seconds, CONNECTIONS, OTHER_CPU, s.load_bin)
        out = Sample()
        with Meter(proxy, upstream) as m:
            wrk = run_closed_loop(url, s.closed_seconds, CONNECTIONS, OTHER_CPU, s.load_bin)
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
        out.requests += fixed.requests
        if proxy.proc.poll() is not None:
            raise RuntimeError(f"proxy exited during the run:\n{proxy.log_tail()}")
        return out
    finally:
        proxy.stop()


def _profiles(s: Settings, results: list[ConfigResult], cfgs: dict[str, C.Config],
              upstream_port: int, sink_port: int, with_policy: dict[str, bool],
              log: Callable[[str], None]) -> dict:
    if not s.profile or not P.available():
        return {}
    out = {}
    ok = {r.name for r in results if not r.failed}
    for name in s.profile:
        if name not in ok:
            continue
        port = free_port()
        boot = C.proxy_bootstrap(cfgs[name], port, upstream_port, sink_port, s.wasm_dir,
                                 with_policy)
        proxy = Envoy(s.envoy, f"profile-{name}", boot, s.workdir, PROXY_CPU, port)
        try:
            proxy.wait_ready()
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


def run(s: Settings, log: Callable[[str], None]) -> dict:
    """Runs every configuration `s.rounds` times (interleaved, so slow drifts in machine load
    hit all alike) and returns per-configuration medians and raw samples."""
    s.workdir.mkdir(parents=True, exist_ok=True)
    upstream_port, sink_port = free_port(), free_port()
    upstream = Envoy(s.envoy, "upstream", C.upstream_bootstrap(upstream_port, sink_port),
                     s.workdir, OTHER_CPU, upstream_port)
    results = [ConfigResult(c.name, c.label, c.group, c.kinds, c.native) for c in C.all_configs()
               if not s.only or c.name in s.only or c.name == "bare"]
    try:
        upstream.wait_ready()
        log("probing meshwarden modules")
        with_policy, broken = _probe_policies(s, C.FILTER_ORDER, upstream_port, sink_port, log)
        cfgs = {c.name: c for c in C.all_configs()}
        for r in results:
            for k in r.kinds:
                if r.group == "meshwarden" and not with_policy.get(k, True):
                    r.notes.append(f"{k}: pass-through build (rejects any policy); "
                                   f"measured with an empty policy list")
                if r.group == "meshwarden" and k in broken:
                    r.failed = f"meshwarden {k} module does not load: {broken[k]}"
        fixed: dict[str, float] = {}

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
                try:
                    sample = _measure(cfgs[r.name], s, upstream, upstream_port, sink_port,
                                      with_policy, fixed_rate_for(r.name))
                except (RuntimeError, LoadError) as e:
                    r.failed = str(e)
                    log(f"  {r.name}: FAILED: {e}")
                    continue
                r.samples.append(sample)
                bad = sample.errors > MAX_ERROR_RATIO * max(sample.requests, 1)
                if bad and not r.failed:
                    r.failed = f"{sample.errors} of {sample.requests} requests failed"
                log(f"  round {rnd + 1} {r.name:<16} max {sample.max_rps:8.0f} req/s "
                    f"({sample.cpu_us_per_req_max:5.1f} us CPU/req, proxy {sample.proxy_cores_max:.2f} cores) | "
                    f"@{sample.fixed_rps_achieved:6.0f} req/s p50 {sample.p50_us:5.0f} "
                    f"p99 {sample.p99_us:6.0f} us, {sample.cpu_us_per_req_fixed:5.1f} us CPU/req"
                    f" | other load {sample.other_load_cores:.2f} cores"
                    + (f" | {sample.errors} errors" if sample.errors else ""))
        profiles = _profiles(s, results, cfgs, upstream_port, sink_port, with_policy, log)
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
        "policies": {k: C.MESHWARDEN_SPECS[k] for k in C.FILTER_ORDER},
        "configs": [
            {
                "name": r.name, "label": r.label, "group": r.group, "kinds": r.kinds,
                "native": r.native, "notes": r.notes, "failed": r.failed,
                "median": r.median(), "samples": [asdict(x) for x in r.samples],
            }
            for r in results
        ],
    }
