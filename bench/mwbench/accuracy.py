"""Rate-limit accuracy under overload: meshwarden's ratelimit filter and Envoy's native
local_ratelimit, each in its own Envoy (`--concurrency 2`, one bucket for both workers),
in the same run.

For each proxy the same policy (100 requests/s, burst 50) is offered ~10x its rate for the
run over many keep-alive connections, and the admitted count is compared with
rate x duration + burst. Admitted and limited requests are counted by Envoy itself
(admin `/stats`, deltas over the run) and by the client.
"""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import configs as C
from .load import LoadError, run_wrk
from .procs import Envoy, free_port

RATE_PER_SECOND = 100
BURST = 50
# The acceptance band: admitted within ±2 % of rate x duration + burst.
TOLERANCE = 0.02
OVERLOAD = 10  # offered rate ÷ limit for the paced runs
CONNECTIONS = 64
CONCURRENCY = 2
# Envoy rejects a local_ratelimit fill_interval below 50 ms, so 100/s is 5 tokens per 50 ms.
NATIVE_FILL_INTERVAL_S = 0.05
NATIVE_TOKENS_PER_FILL = round(RATE_PER_SECOND * NATIVE_FILL_INTERVAL_S)

MESHWARDEN_POLICY = {
    "policies": [{
        "name": "bench",
        "match": {},
        "spec": {"rate": {"requests": RATE_PER_SECOND, "unit": "second"}, "burst": BURST},
    }]
}
MW_ALLOWED = "wasmcustom.meshwarden_ratelimit_allowed_total.policy.bench"
MW_LIMITED = "wasmcustom.meshwarden_ratelimit_limited_total.policy.bench"
NATIVE_OK = "rl.http_local_rate_limit.ok"
NATIVE_LIMITED = "rl.http_local_rate_limit.rate_limited"
HCM_2XX = "http.proxy.downstream_rq_2xx"
HCM_4XX = "http.proxy.downstream_rq_4xx"
HCM_5XX = "http.proxy.downstream_rq_5xx"
HCM_TOTAL = "http.proxy.downstream_rq_completed"


@dataclass
class Settings:
    envoy: str
    wasm_dir: Path
    workdir: Path
    seconds: int = 10
    # meshwarden-load (open loop at a fixed rate); None skips the paced runs.
    load_bin: str | None = None
    # Also run closed-loop wrk (far more than 10x) as a second, harsher load shape.
    saturate: bool = True


# ---- bootstraps ------------------------------------------------------------------------------

def meshwarden_filter(wasm_dir: Path) -> dict:
    f = C.meshwarden_filter("ratelimit", wasm_dir)
    f["typed_config"]["config"]["configuration"]["value"] = json.dumps(
        MESHWARDEN_POLICY, separators=(",", ":"))
    return f


def native_filter() -> dict:
    return {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "rl",
            "token_bucket": {
                "max_tokens": BURST,
                "tokens_per_fill": NATIVE_TOKENS_PER_FILL,
                "fill_interval": f"{NATIVE_FILL_INTERVAL_S}s",
            },
            # One bucket for the whole proxy (both workers), like meshwarden's.
            "local_rate_limit_per_downstream_connection": False,
            "filter_enabled": {"runtime_key": "rl_enabled", "default_value": C._percent(100)},
            "filter_enforced": {"runtime_key": "rl_enforced", "default_value": C._percent(100)},
        },
    }


def proxy_bootstrap(flt: dict, port: int, admin_port: int, upstream_port: int) -> dict:
    route = {"match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "30s"}}
    return {
        "admin": {"address": C._socket(admin_port)},
        "static_resources": {
            "listeners": [C._listener("proxy", port, route, [flt])],
            "clusters": [C._cluster("upstream", upstream_port)],
        },
    }


# ---- processes -------------------------------------------------------------------------------

class Proxy:
    """The Envoy under test: `--concurrency 2`, not pinned, with an admin listener."""

    def __init__(self, envoy: str, name: str, bootstrap: dict, workdir: Path, admin_port: int):
        self.name = name
        self.admin = f"http://127.0.0.1:{admin_port}"
        self.log_path = workdir / f"{name}.log"
        config = workdir / f"{name}.json"
        config.write_text(json.dumps(bootstrap, indent=1))
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [envoy, "-c", str(config), "--concurrency", str(CONCURRENCY),
                 "--disable-hot-restart", "-l", "warning", "--component-log-level",
                 "wasm:warning"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.admin + path, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Waits for the admin `/ready` (LIVE): listeners and Wasm VMs are up. Sends nothing
        through the listener, so the bucket stays full."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: Envoy exited with {self.proc.returncode}:\n"
                                   + self.log_tail())
            try:
                if self._get("/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: not ready after {timeout:.0f}s:\n" + self.log_tail())

    def counters(self) -> dict[str, int]:
        status, text = self._get("/stats?format=json")
        if status != 200:
            raise RuntimeError(f"{self.name}: admin /stats answered {status}")
        return {s["name"]: s["value"] for s in json.loads(text).get("stats", [])
                if "name" in s and isinstance(s.get("value"), int)}

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


# ---- load --------------------------------------------------------------------------------------

def paced(load_bin: str, url: str, seconds: int) -> dict:
    """meshwarden-load: request i is due at i/rate (open loop), round-robin over the
    connections. The window is the due time of the last request: (n - 1) / rate."""
    rate = RATE_PER_SECOND * OVERLOAD
    with tempfile.TemporaryDirectory(prefix="mwbench-acc-") as tmp:
        out = Path(tmp) / "load.json"
        cmd = [load_bin, "--url", url, "--rate", str(rate), "--duration", str(seconds),
               "--connections", str(CONNECTIONS), "--json", str(out)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        if p.returncode != 0 or not out.is_file():
            raise LoadError(f"meshwarden-load failed ({p.returncode}): {p.stderr.strip()}")
        r = json.loads(out.read_text())
    sent = r["completed"]
    return {
        "generator": f"meshwarden-load --rate {rate} --connections {CONNECTIONS} "
                     f"--duration {seconds}",
        "window_s": (r["scheduled"] - 1) / rate,
        "client_requests": sent,
        "client_2xx": sent - r["failed"] - r["non_2xx"],
        "client_non_2xx": r["non_2xx"],
        "client_failed": r["failed"] + r["skipped"],
        "offered_rps": r["achieved_rps"],
        "send_delay_p99_us": r["send_delay_us"].get("p99"),
    }


def saturating(url: str, seconds: int) -> dict:
    """wrk closed loop: each connection sends its next request as soon as the previous
    answer arrives, far above 10x; the window is wrk's own run time."""
    r = run_wrk(url, seconds, CONNECTIONS, None)
    return {
        "generator": f"wrk -t1 -c{CONNECTIONS} -d{seconds}s (closed loop)",
        "window_s": r.seconds,
        "client_requests": r.requests,
        "client_2xx": r.requests - r.non_2xx,
        "client_non_2xx": r.non_2xx,
        "client_failed": r.socket_errors,
        "offered_rps": r.rps,
        "send_delay_p99_us": None,
    }


def measure(proxy: Proxy, kind: str, load: Callable[[], dict], settle: float) -> dict:
    time.sleep(settle)  # an idle bucket is full again (burst / rate = 0.5 s)
    before = proxy.counters()
    t0 = time.monotonic()
    run = load()
    wall = time.monotonic() - t0
    time.sleep(0.3)  # the last answers' stats are flushed per request; let them land
    after = proxy.counters()
    d = {k: after.get(k, 0) - before.get(k, 0)
         for k in (HCM_2XX, HCM_4XX, HCM_5XX, HCM_TOTAL, MW_ALLOWED, MW_LIMITED, NATIVE_OK,
                   NATIVE_LIMITED)}
    admitted, limited = d[HCM_2XX], d[HCM_4XX]
    expected = RATE_PER_SECOND * run["window_s"] + BURST
    filt_ok, filt_lim = ((d[MW_ALLOWED], d[MW_LIMITED]) if kind == "meshwarden"
                         else (d[NATIVE_OK], d[NATIVE_LIMITED]))
    return {
        **run,
        "wall_s": wall,
        "envoy_completed": d[HCM_TOTAL],
        "admitted": admitted,
        "limited": limited,
        "other_5xx": d[HCM_5XX],
        "filter_allowed": filt_ok,
        "filter_limited": filt_lim,
        "expected": expected,
        "error_pct": (admitted - expected) / expected * 100,
        "offered_x": run["offered_rps"] / RATE_PER_SECOND,
        "within_tolerance": abs(admitted - expected) <= TOLERANCE * expected,
        "client_agrees": run["client_2xx"] == admitted,
    }


# ---- driver ------------------------------------------------------------------------------------

def run(s: Settings, log: Callable[[str], None]) -> dict:
    s.workdir.mkdir(parents=True, exist_ok=True)
    up_port, sink_port = free_port(), free_port()
    upstream = Envoy(s.envoy, "acc-upstream", C.upstream_bootstrap(up_port, sink_port),
                     s.workdir, None, up_port)
    out: dict = {
        "rate_per_second": RATE_PER_SECOND, "burst": BURST, "tolerance_pct": TOLERANCE * 100,
        "seconds": s.seconds, "connections": CONNECTIONS, "concurrency": CONCURRENCY,
        "overload_target_x": OVERLOAD,
        "native_token_bucket": {"max_tokens": BURST, "tokens_per_fill": NATIVE_TOKENS_PER_FILL,
                                "fill_interval_s": NATIVE_FILL_INTERVAL_S},
        "meshwarden_policy": MESHWARDEN_POLICY["policies"][0]["spec"],
        "runs": [],
    }
    loads: list[tuple[str, Callable[[str], dict]]] = []
    if s.load_bin:
        loads.append(("paced 10x", lambda url: paced(s.load_bin, url, s.seconds)))
    if s.saturate:
        loads.append(("closed loop", lambda url: saturating(url, s.seconds)))
    if not loads:
        raise RuntimeError("no load generator (meshwarden-load missing and saturate off)")
    try:
        upstream.wait_ready()
        for kind, flt in (("meshwarden", meshwarden_filter(s.wasm_dir)),
                          ("native", native_filter())):
            port, admin = free_port(), free_port()
            proxy = Proxy(s.envoy, f"acc-{kind}", proxy_bootstrap(flt, port, admin, up_port),
                          s.workdir, admin)
            try:
                proxy.wait_ready()
                url = f"http://127.0.0.1:{port}/accuracy"
                for shape, load in loads:
                    r = measure(proxy, kind, lambda: load(url), settle=1.5)
                    r.update({"proxy": kind, "load": shape})
                    log(f"  {kind:<10} {shape:<11} offered {r['offered_rps']:>8,.0f}/s "
                        f"({r['offered_x']:.0f}x) over {r['window_s']:.2f}s: admitted "
                        f"{r['admitted']} (client {r['client_2xx']}), limited {r['limited']}, "
                        f"expected {r['expected']:.0f}, error {r['error_pct']:+.2f} %")
                    out["runs"].append(r)
            finally:
                proxy.stop()
    finally:
        upstream.stop()
    return out
