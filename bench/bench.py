#!/usr/bin/env python3
"""meshwarden benchmarks: data path (Envoy + filters), control-plane push latency, module sizes,
rate-limit accuracy under overload (meshwarden vs Envoy's local_ratelimit), mirror safety
(primary latency with a down, black-holed or slow mirror target vs no mirror), capture safety
(primary latency with live capture reporting to a live, down or black-holed control plane vs
no capture), global rate
limits (added latency and proxy CPU of a global decision with and without a lease, and the
rate limit service's decisions per second).

    python3 bench/bench.py            full run; writes bench/results.json, bench/latency.svg
                                      and docs/benchmarks.md (`make bench`)
    python3 bench/bench.py --smoke    a few seconds of every benchmark, results to a temp dir,
                                      no timing assertions (`make bench-smoke`)
    python3 bench/bench.py --parts accuracy --merge
                                      rerun one part; the other parts' figures are kept from
                                      the existing bench/results.json

Exit status: 0 when every component started and every benchmark ran (whether or not the
targets were met), 1 otherwise. Only loopback addresses are used; every run is bounded.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mwbench import (accuracy, capture_safety, datapath, global_rl, mirror_safety,  # noqa: E402
                     profile, report, sizes, targets)
from mwbench.procs import envoy_version  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FILTERS = ["trace", "capture", "ratelimit", "circuitbreaker", "fault", "mirror"]
# The combined module first, then the single-purpose ones (sizes.module_files).
MODULES = ["meshwarden"] + FILTERS


def log(msg: str) -> None:
    print(msg, flush=True)


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) / 1048576
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gib": round(mem, 1),
            "kernel": platform.release(), "loadavg_start": loadavg()}


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


# ---- parts -------------------------------------------------------------------------------

def run_push(a: argparse.Namespace, work: Path, replicas: int = 1, proxies: str = "") -> dict:
    """The push benchmark: one control plane on its embedded store, or `replicas` replicas
    sharing a real etcd (started by the benchmark) with the fleet spread over them."""
    binary = Path(a.push_bench)
    if not binary.is_file():
        return {"error": f"{binary} not found (cargo build --release -p meshwarden-push-bench)"}
    if replicas > 1 and not shutil.which("etcd"):
        return {"error": "etcd not installed (Debian package etcd-server)"}
    out = work / f"push-{replicas}.json"
    cmd = [str(binary), "--meshwarden", str(a.meshwarden), "--wasm-dir", str(a.wasm_dir),
           "--proxies", proxies or a.proxies, "--pushes", str(a.pushes), "--json", str(out),
           "--replicas", str(replicas)]
    perf_data = work / "control-plane.perf"
    if replicas == 1 and not a.smoke and profile.available():
        cmd += ["--perf-data", str(perf_data)]
    log("push benchmark: " + " ".join(cmd))
    try:
        proc = subprocess.run(cmd, timeout=a.push_timeout, text=True, capture_output=True)
    except subprocess.TimeoutExpired:
        return {"error": f"push benchmark did not finish within {a.push_timeout}s"}
    for line in proc.stdout.splitlines():
        log("  " + line)
    if proc.returncode != 0 or not out.is_file():
        return {"error": (proc.stderr.strip() or f"exit status {proc.returncode}")[-2000:]}
    result = json.loads(out.read_text())
    if perf_data.is_file():
        try:
            result["cp_profile"] = profile.symbols(perf_data)
        except (OSError, subprocess.SubprocessError) as e:
            log(f"  control-plane profile unreadable: {e}")
    return result


def run_sizes(a: argparse.Namespace) -> dict:
    rows = sizes.measure(Path(a.build_dir), Path(a.wasm_dir), MODULES)
    for r in rows:
        log(f"  {r['module']:<26} {r.get('unoptimised_bytes', 0):>8} B -> "
            f"{r.get('optimised_bytes', 0):>8} B after wasm-opt (target < {r['limit_bytes']:,} B)")
    out: dict = {"modules": rows, "profile": wasm_profile()}
    if a.attribute_sizes:
        out["attribution"] = attribute_sizes()
    return out


def wasm_profile() -> dict:
    """The `[profile.wasm]` settings of the workspace Cargo.toml (simple `key = value` lines)."""
    out: dict = {}
    try:
        text = (ROOT / "Cargo.toml").read_text()
    except OSError:
        return out
    section = False
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("["):
            section = line == "[profile.wasm]"
        elif section and "=" in line:
            k, v = (x.strip() for x in line.split("=", 1))
            out[k] = v.strip('"')
    return out


def attribute_sizes() -> dict:
    """Builds the modules once more without stripping (own target dir) and sums code bytes
    per crate from the function names."""
    target = ROOT / "target" / "bench-names"
    env = dict(os.environ, CARGO_TARGET_DIR=str(target), CARGO_PROFILE_WASM_STRIP="debuginfo")
    log("size attribution: unstripped builds in " + str(target))
    built = []
    for f in MODULES:
        # One package at a time, so a module that does not compile only loses its own row.
        cmd = ["cargo", "build", "--profile", "wasm", "--target", "wasm32-wasip1",
               "-p", sizes.module_files(f)["package"]]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=900)
        except subprocess.TimeoutExpired:
            log(f"  {f}: unstripped build timed out")
            continue
        if proc.returncode != 0:
            log(f"  {f}: unstripped build failed:\n" + proc.stderr[-800:])
            continue
        built.append(f)
    out = {}
    for f in built:
        module = target / "wasm32-wasip1" / "wasm" / sizes.module_files(f)["built"]
        if module.is_file():
            out[f] = sizes.attribute(module)
    return out


def host_call_modules(a: argparse.Namespace) -> Path | None:
    """The modules built with `count-host-calls` (own target dir, so the normal modules stay
    untouched), packaged like `make wasm` does; None if the build fails."""
    if a.calls_dir:
        return Path(a.calls_dir)
    target = ROOT / "target" / "bench-calls"
    env = dict(os.environ, CARGO_TARGET_DIR=str(target))
    cmd = ["cargo", "build", "--profile", "wasm", "--target", "wasm32-wasip1"]
    for m in MODULES:
        cmd += ["-p", sizes.module_files(m)["package"]]
    cmd += ["--features", "meshwarden-filter-runtime/count-host-calls"]
    log("host-call counting build: " + " ".join(cmd) + f" (CARGO_TARGET_DIR={target})")
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=1800)
        if proc.returncode != 0:
            log("  host-call build failed:\n" + proc.stderr[-1500:])
            return None
        out = target / "filters"
        pkg = subprocess.run([str(ROOT / "scripts/package-wasm.sh"),
                              str(target / "wasm32-wasip1" / "wasm"), str(out), *MODULES],
                             cwd=ROOT, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        log("  host-call build timed out")
        return None
    if pkg.returncode != 0:
        log("  packaging the host-call modules failed:\n" + pkg.stderr[-1500:])
        return None
    return out


def run_accuracy(a: argparse.Namespace, work: Path) -> dict:
    load_bin = Path(a.load_bin or Path(a.push_bench).parent / "meshwarden-load")
    if not load_bin.is_file():
        log(f"warning: {load_bin} not found; accuracy runs only the closed-loop (wrk) load")
    if shutil.which("wrk") is None and not load_bin.is_file():
        return {"error": "neither meshwarden-load nor wrk is available"}
    s = accuracy.Settings(envoy=a.envoy, wasm_dir=Path(a.wasm_dir), workdir=work / "accuracy",
                          seconds=a.accuracy_seconds,
                          load_bin=str(load_bin) if load_bin.is_file() else None,
                          saturate=shutil.which("wrk") is not None)
    log(f"rate-limit accuracy: {a.accuracy_seconds}s per run, meshwarden and native")
    try:
        out = accuracy.run(s, log)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        return {"error": str(e)[-2000:]}
    out["generated"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out["git_commit"] = git("rev-parse", "--short", "HEAD")
    return out


def run_mirror(a: argparse.Namespace, work: Path) -> dict:
    load_bin = Path(a.load_bin or Path(a.push_bench).parent / "meshwarden-load")
    if not load_bin.is_file():
        return {"error": f"{load_bin} not found (cargo build --release -p meshwarden-push-bench)"}
    s = mirror_safety.Settings(envoy=a.envoy, wasm_dir=Path(a.wasm_dir), workdir=work / "mirror",
                               load_bin=str(load_bin), rounds=a.rounds, seconds=a.mirror_seconds,
                               rate=a.mirror_rate, warmup_seconds=0 if a.smoke else 1)
    log(f"mirror safety: {a.rounds} round(s) of {a.mirror_seconds}s at {a.mirror_rate} req/s, "
        f"no mirror / healthy / down / black-holed / slow target")
    try:
        out = mirror_safety.run(s, log)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        return {"error": str(e)[-2000:]}
    out["generated"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out["git_commit"] = git("rev-parse", "--short", "HEAD")
    return out


def run_capture(a: argparse.Namespace, work: Path) -> dict:
    load_bin = Path(a.load_bin or Path(a.push_bench).parent / "meshwarden-load")
    if not load_bin.is_file():
        return {"error": f"{load_bin} not found (cargo build --release -p meshwarden-push-bench)"}
    if not Path(a.meshwarden).is_file():
        return {"error": f"{a.meshwarden} not found (cargo build --release -p meshwarden-control-plane)"}
    s = capture_safety.Settings(envoy=a.envoy, wasm_dir=Path(a.wasm_dir),
                                workdir=work / "capture", load_bin=str(load_bin),
                                meshwarden=str(a.meshwarden), rounds=a.rounds,
                                seconds=a.capture_seconds, rate=a.capture_rate,
                                warmup_seconds=0 if a.smoke else 1)
    log(f"capture safety: {a.rounds} round(s) of {a.capture_seconds}s at {a.capture_rate} req/s, "
        f"no capture / capture 100 % to a live control plane / control plane down / black-holed")
    try:
        out = capture_safety.run(s, log)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        return {"error": str(e)[-2000:]}
    out["generated"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out["git_commit"] = git("rev-parse", "--short", "HEAD")
    return out


def run_global(a: argparse.Namespace, work: Path) -> dict:
    bin_dir = Path(a.push_bench).parent
    s = global_rl.Settings(
        envoy=a.envoy, wasm_dir=Path(a.wasm_dir), workdir=work / "global",
        service_bin=a.ratelimit_service or str(bin_dir / "meshwarden-ratelimit"),
        rls_load_bin=a.rls_load or str(bin_dir / "meshwarden-rls-load"),
        load_bin=a.load_bin or str(bin_dir / "meshwarden-load"),
        seconds=a.global_seconds, rls_seconds=float(a.global_seconds),
        warmup_seconds=0 if a.smoke else 1)
    if a.smoke:
        s.rate, s.rls_max_requests = 200.0, 20_000
    log(f"global rate limits: {s.seconds}s per configuration at {s.rate:.0f} req/s, "
        f"then the service's throughput for {s.rls_seconds}s")
    try:
        out = global_rl.run(s, log)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        return {"error": str(e)[-2000:]}
    out["generated"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out["git_commit"] = git("rev-parse", "--short", "HEAD")
    if a.global_note:
        out["note"] = a.global_note
    return out


def merge(old: dict, new: dict, parts: set[str]) -> dict:
    """The previous results with the parts just measured replaced. The header (date, commit,
    machine) stays the previous run's; each rerun part carries its own date and commit."""
    out = dict(old)
    for part in ("datapath", "push", "sizes", "accuracy", "mirror", "capture", "global"):
        if part in parts and part in new:
            out[part] = new[part]
    if "push" in parts and "push_replicas" in new:
        out["push_replicas"] = new["push_replicas"]
    prefixes = {"datapath": ("data path", "wrk ", "h2load "), "push": ("push",),
                "sizes": ("modules not built",), "accuracy": ("accuracy",),
                "mirror": ("mirror",), "capture": ("capture",), "global": ("global",)}
    rerun = tuple(x for part in parts for x in prefixes.get(part, ()))
    out["failures"] = [f for f in old.get("failures") or [] if not f.startswith(rerun)] \
        + list(new.get("failures") or [])
    out["merged_parts"] = sorted(set(old.get("merged_parts") or []) | (parts & set(new)))
    return out


# ---- analysis ------------------------------------------------------------------------------

def analysis(results: dict) -> list[str]:
    """Plain-language findings computed from the figures."""
    out: list[str] = []
    dp = results.get("datapath") or {}
    cfg = {c["name"]: c for c in dp.get("configs", []) if c.get("median")}
    every = {c["name"]: c for c in dp.get("configs", [])}
    bare = cfg.get("bare", {}).get("median", {})
    b = bare.get("cpu_us_per_req_fixed")
    if b:
        parts = []
        for k in ["trace", "ratelimit", "fault", "mirror"]:
            mw, nat = cfg.get(f"mw-{k}"), cfg.get(f"native-{k}")
            if mw and nat:
                parts.append(f"{k}: meshwarden_{k}.wasm {mw['median']['cpu_us_per_req_fixed'] - b:+.1f} µs, "
                             f"native {nat['median']['cpu_us_per_req_fixed'] - b:+.1f} µs")
        for name, what in (("native-all", "native all four"), ("noop", "no-op Wasm floor"),
                           ("mw-separate", "meshwarden four separate filters (one VM)"),
                           ("mw-separate-empty", "the same with empty lists"),
                           ("mw-combined", "meshwarden combined"),
                           ("mw-combined-empty", "combined with empty lists")):
            if name in cfg:
                parts.append(f"{what} {cfg[name]['median']['cpu_us_per_req_fixed'] - b:+.1f} µs")
        spread = [x["cpu_us_per_req_fixed"] for x in cfg["bare"].get("samples", [])]
        noise = (f" Round-to-round, bare Envoy's own figure ranged {min(spread):.1f}–"
                 f"{max(spread):.1f} µs: differences smaller than that spread are noise."
                 if len(spread) > 1 else "")
        out.append(f"Proxy CPU per request at the fixed rate, added to bare Envoy's {b:.1f} µs: "
                   + "; ".join(parts) + "." + noise)
        cores = bare.get("proxy_cores_max", 0)
        if cores < 0.9:
            out.append(f"At maximum load the bare proxy used only {cores:.2f} of its core: the "
                       f"upstream and the load generator (sharing the other core) limit max "
                       f"req/s, so throughput ratios understate the filters' cost; CPU per "
                       f"request is the figure to compare.")
    sep, comb = cfg.get("mw-separate"), cfg.get("mw-combined")
    if sep and comb:
        d = sep["median"]["cpu_us_per_req_max"] - comb["median"]["cpu_us_per_req_max"]
        out.append(f"Layouts: four separate filters sharing one VM cost {d:+.1f} µs/request at "
                   f"saturation against the combined filter "
                   f"({sep['median']['cpu_us_per_req_max']:.1f} vs "
                   f"{comb['median']['cpu_us_per_req_max']:.1f} µs): the "
                   f"{'combined' if d > 0 else 'separate'} layout is the cheaper one in this run.")
    calls = {n: c["host_calls"]["per_request"] for n, c in every.items()
             if (c.get("host_calls") or {}).get("per_request") is not None}
    if calls:
        out.append("Host calls per request (count-host-calls build): "
                   + ", ".join(f"{every[n]['label']} {v:.1f}" for n, v in calls.items())
                   + "; the no-op floor makes 1.")
    rate = dp.get("fixed_rate_rps") or 0
    mw_all, nat_all = cfg.get("mw-combined"), cfg.get("native-all")
    if rate and mw_all and bare.get("max_rps") and bare.get("p99_us"):
        m = mw_all["median"]
        out.append(
            f"Latency: at the fixed {rate:,.0f} req/s, bare Envoy runs at "
            f"{rate / bare['max_rps']:.0%} of its maximum and the combined meshwarden filter at "
            f"{rate / m['max_rps']:.0%} of its"
            + (f" (native: {rate / nat_all['median']['max_rps']:.0%})" if nat_all else "")
            + f"; the p99 of {m['p99_us']:,.0f} µs ({m['p99_us'] / bare['p99_us']:.1f}× bare) "
            f"is mostly requests queued behind others on the one busy worker, which grows "
            f"steeply as utilisation rises — the per-request CPU added by the filter is "
            f"{m['cpu_us_per_req_fixed'] - b:.0f} µs.")
    prof = dp.get("profiles") or {}
    jit = "V8-compiled Wasm code (anonymous memory)"
    host = "envoy binary (C++, host functions, V8 runtime)"
    if "mw-combined" in prof and "bare" in prof and "mw-combined" in cfg:
        cm = cfg["mw-combined"]["median"]["cpu_us_per_req_max"]
        cb = bare.get("cpu_us_per_req_max", 0)
        pm, pb = prof["mw-combined"]["percent"], prof["bare"]["percent"]
        guest = pm.get(jit, 0) / 100 * cm
        host_m, host_b = pm.get(host, 0) / 100 * cm, pb.get(host, 0) / 100 * cb
        grew = host_m - host_b
        where = ("at the host/guest boundary (host calls, copies in and out of the VM) more "
                 "than in the filters' own logic") if grew > guest else \
            "in the filters' own (guest) code more than at the host/guest boundary"
        n_calls = calls.get("mw-combined")
        out.append(f"Combined filter: {cm - cb:.1f} µs more CPU per request than bare at maximum "
                   f"load; the Wasm guest code itself (V8-compiled) is {guest:.1f} µs of it, "
                   f"the envoy binary (proxy-wasm host functions, header map access, V8 "
                   f"runtime) grows by {grew:.1f} µs and the kernel by "
                   f"{pm.get('kernel', 0) / 100 * cm - pb.get('kernel', 0) / 100 * cb:.1f} µs "
                   f"(mirror copies, more upstream traffic): the cost sits {where}"
                   + (f"; it makes {n_calls:.1f} host calls per request." if n_calls is not None
                      else "."))
    top = max(dp.get("scaling") or [1])
    big, one = every.get(f"mw-combined-p{top}") or {}, every.get("mw-combined") or {}
    if big.get("failed"):
        out.append(f"Scaling: the combined module with {top:,} policies per kind was not "
                   f"measured: {big['failed'].splitlines()[0][:300]}")
    elif big.get("configure") and one.get("configure"):
        w1, wn = one["configure"].get("worker_ms"), big["configure"].get("worker_ms")
        if w1 is not None and wn is not None:
            out.append(f"Configuration: a worker's VM start + on_configure takes {wn:.1f} ms with "
                       f"{top:,} policies per kind against {w1:.1f} ms with 1: while it runs, "
                       f"that worker serves no request.")
    push = results.get("push") or {}
    replicated = results.get("push_replicas") or {}
    for r in push.get("runs", []) + replicated.get("runs", []):
        firsts = sorted(p["acked"].get("min_ms") or 0 for p in r["push"]["per_push"])
        first = firsts[len(firsts) // 2] if firsts else 0
        applies = sorted(p["apply_ms"] for p in r["push"]["per_push"])
        apply_ms = applies[len(applies) // 2] if applies else 0
        a = r["push"]["acked"]
        cpu = r["push"]["cp_cpu_ms_median"] or 0
        where = (f" spread over {replicated.get('replicas')} replicas sharing etcd (applied on "
                 f"one; the others follow through their etcd watch)"
                 if r in replicated.get("runs", []) else " on one control plane (embedded store)")
        out.append(
            f"{r['proxies']:,} proxies{where}: p99 {a['p99_ms']:.1f} ms, control-plane memory "
            f"{(r.get('cp_rss_per_proxy_bytes') or 0) / 1000:.1f} KB per proxy. "
            f"The Apply call (validation + durable store commit) "
            f"takes {apply_ms:.1f} ms; the snapshot is published as soon as the store has "
            f"committed (leading edge: SnapshotterConfig.quiet only coalesces the later changes "
            f"of a burst), so the first proxy has ACKed after {first:.1f} ms, half of them "
            f"after {a['p50_ms']:.1f} ms, the last after {a['max_ms']:.1f} ms: the fan-out to "
            f"every stream takes {a['max_ms'] - first:.0f} ms"
            f"; the control plane spends {cpu:.0f} ms of CPU per change "
            f"({cpu * 1000 / r['proxies']:.0f} µs per proxy) and the simulated proxies, on "
            f"the same 2 cores, {r['push'].get('client_cpu_ms_median') or 0:.0f} ms.")
    prof = push.get("cp_profile")
    if prof and prof.get("by_crate"):
        owners = ", ".join(f"{c} {p:.0f} %" for c, p in prof["by_crate"][:6])
        syms = ", ".join(f"`{sym.removeprefix('[.] ').strip()}` {p:.1f} %"
                         for sym, p in prof.get("top_symbols", [])[:5])
        out.append(f"Control-plane CPU per change goes to: {owners}; top symbols: {syms}. "
                   f"Each stream wakes on the snapshot, composes and encodes its four "
                   f"resources, and records sent/accepted versions in the proxy registry: "
                   f"the cost is per proxy, so it grows linearly with the fleet.")
    attr = (results.get("sizes") or {}).get("attribution") or {}
    mods = {m["filter"]: m for m in (results.get("sizes") or {}).get("modules", [])}
    if attr:
        f = max(attr, key=lambda k: mods.get(k, {}).get("optimised_bytes", 0))
        total = sum(bts for _, bts in attr[f]) or 1
        top = ", ".join(f"{c} {bts / 1000:.0f} KB ({bts / total:.0%})" for c, bts in attr[f][:5])
        own = {k: sum(b for c, b in rows if c.startswith("meshwarden")) for k, rows in attr.items()}
        tot = {k: sum(b for _, b in rows) or 1 for k, rows in attr.items()}
        share = ", ".join(f"{k} {own[k] / 1000:.0f} of {tot[k] / 1000:.0f} KB" for k in attr)
        name = sizes.module_files(f)["packaged"]
        others = sorted({c for rows in attr.values() for c, _ in rows[:6]
                         if not c.startswith("meshwarden")})
        out.append(
            f"Module size: in {name} (largest) the code bytes go to {top}. The meshwarden "
            f"crates' own share of each module: {share} of code, before wasm-opt; the crates "
            f"that are large in every module: {', '.join(others)}. Generic code is counted "
            f"under the crate that defines it.")
    return out


CAVEATS = [
    "The machine has 2 CPUs shared with whatever else runs on it (here: other developers' "
    "builds and tests). The `other load` column is the CPU time used by everything but the "
    "proxy, the upstream and the load generator during each run, in cores; where it is "
    "well above 0, throughput and latency are disturbed. Rounds are interleaved across "
    "configurations and medians reported, so drifts hit all configurations alike.",
    "CPU per request is the most robust cost figure: it counts only the proxy's own threads. "
    "Maximum req/s depends on the other core too (upstream + load generator share CPU 1).",
    "Latency is measured open loop with `meshwarden-load` (in `bench/push`): request i is "
    "due at i/rate, spread round-robin over 16 keep-alive connections with one thread each; "
    "a connection whose previous response is late sends late, and latency is counted from "
    "the due time, so stalls are not hidden (coordinated omission corrected, as wrk2 and "
    "oha --latency-correction do). wrk2 is not in Debian and oha would pull a large build; "
    "h2load --rps was tried first but releases each connection's due requests on a ~10 ms "
    "timer, i.e. in bursts of back-to-back requests, which measured its own queueing (p50 "
    "~650 µs even straight to the upstream, against ~55 µs with meshwarden-load). "
    "`send delay p99` is how late requests left: waiting for the previous response on the "
    "same connection (the queueing that closed-loop tools hide) plus the generator's own "
    "wake-up lateness on the shared CPU; it is part of the corrected figures, and "
    "`service p99` (from the moment a request was written) is shown beside them.",
    "At the fixed rate requests arrive one at a time, so each pays its own event-loop "
    "wake-up and socket system calls: CPU per request there is about twice the figure at "
    "saturation, where Envoy handles several requests per wake-up. Both are reported; the "
    "added cost of a filter is the difference to bare Envoy at the same rate.",
    "Closed-loop (wrk) figures are at saturation and show capacity, not latency.",
    "Native stand-ins are not feature-identical: header_mutation only writes formatter "
    "values (no parsing of incoming trace context, no sampling decision); local_ratelimit is "
    "per-process token bucket like meshwarden's; the fault filters never fire (0 %); both "
    "mirrors copy 1 % of requests to a sink cluster.",
    "The push benchmark's proxies are simulated ADS clients: they ACK as soon as a response "
    "is decoded. A real Envoy also applies the configuration (on_configure in each Wasm VM) "
    "before it ACKs, which adds its own time per proxy but no control-plane load.",
    "Control-plane memory per proxy is the VmRSS growth divided by N: it includes per-stream "
    "state, the HTTP/2 connection buffers and allocator slack.",
    "Envoy RSS includes what V8 keeps of compiling each module (once per process; the VMs "
    "of the workers are clones of it, each with its own linear memory), so a larger module "
    "costs RSS at every worker count. RSS moves by about 1 MiB between starts of the same "
    "configuration, so the per-worker figure (the difference over 3 workers) is only good "
    "to a few tenths of a MiB.",
    "Host calls are counted in a separate build (`count-host-calls`, a thread-local "
    "increment per call) that is never timed; the timed runs use the normal modules.",
    "Configuration time is measured at startup with a static configuration; an ECDS update "
    "runs the same `on_configure` on each worker's thread, which serves no request meanwhile.",
]


def commands(a: argparse.Namespace) -> list[str]:
    return [
        "make bench          # = make wasm build; cargo build --release -p meshwarden-control-plane -p meshwarden-push-bench -p meshwarden-ratelimit-service; cargo build --profile wasm --target wasm32-wasip1 -p meshwarden-noop-filter; python3 bench/bench.py --attribute-sizes ...",
        "make bench-smoke    # a few seconds of every benchmark, no timing assertions",
        "# data path, per configuration (proxy pinned to CPU 0, upstream + load generator to CPU 1):",
        "taskset -c 0 envoy -c <config>.json --concurrency 1 --disable-hot-restart",
        "taskset -c 1 wrk -t1 -c16 -d<s>s http://127.0.0.1:<port>/bench",
        "taskset -c 1 target/release/meshwarden-load --url http://127.0.0.1:<port>/bench --rate <rate> --duration <s> --connections 16",
        "taskset -c 0 envoy -c <config>.json --concurrency 4 --disable-hot-restart   # RSS at 4 workers, after 1 s of wrk",
        "# host calls per request (bench.py builds these into target/bench-calls):",
        "CARGO_TARGET_DIR=target/bench-calls cargo build --profile wasm --target wasm32-wasip1 -p meshwarden-module -p meshwarden-trace-module -p meshwarden-ratelimit-module -p meshwarden-fault-module -p meshwarden-mirror-module --features meshwarden-filter-runtime/count-host-calls",
        "scripts/package-wasm.sh target/bench-calls/wasm32-wasip1/wasm target/bench-calls/filters meshwarden trace fault mirror ratelimit",
        "curl 'http://127.0.0.1:<admin>/stats?format=json&histogram_buckets=detailed&filter=meshwarden_host_calls_per_request'",
        "# configuration time: envoy ... -l info --component-log-level wasm:debug --log-format '[%Y-%m-%d %T.%f][%t][%l][%n] %v'",
        "# control plane:",
        "target/release/meshwarden-push-bench --meshwarden target/release/meshwarden --wasm-dir target/filters --proxies 100,1000,5000,10000 --pushes 5",
        "target/release/meshwarden-push-bench ... --proxies 1000 --replicas 3   # 3 replicas sharing a real etcd",
        "# sizes:",
        "scripts/package-wasm.sh target/wasm32-wasip1/wasm target/filters meshwarden trace fault mirror ratelimit",
        "# rate-limit accuracy (each proxy: envoy --concurrency 2, 100/s burst 50):",
        "target/release/meshwarden-load --url http://127.0.0.1:<port>/accuracy --rate 1000 --duration 10 --connections 64",
        "wrk -t1 -c64 -d10s http://127.0.0.1:<port>/accuracy",
        "python3 bench/bench.py --parts accuracy --merge   # this part alone, other figures kept",
        "# mirror safety (each proxy: envoy --concurrency 2, mirror filter, 100 % to one target):",
        "target/release/meshwarden-load --url http://127.0.0.1:<port>/mirror-safety --rate 200 --duration 5 --connections 16",
        "python3 bench/bench.py --parts mirror --merge",
        "# capture safety (each proxy: envoy --concurrency 2, capture filter, 100 % reported to target/release/meshwarden serve, a closed port or a black hole):",
        "target/release/meshwarden-load --url http://127.0.0.1:<port>/capture-safety --rate 200 --duration 5 --connections 16",
        "target/release/meshwarden --server http://127.0.0.1:<grpc port> capture -o json   # the watcher",
        "python3 bench/bench.py --parts capture --merge",
        "# global rate limits (redis-server and target/release/meshwarden-ratelimit on loopback):",
        "taskset -c 1 target/release/meshwarden-load --url http://127.0.0.1:<port>/bench --rate 500 --duration 5 --connections 16",
        "target/release/meshwarden-rls-load --addr 127.0.0.1:<grpc port> --concurrency 32 --connections 4 --duration 5 --policy rls-bench",
        "python3 bench/bench.py --parts global --merge",
    ]


SOAK_JSON = ROOT / "bench/soak.json"


def write_outputs(results: dict, json_path: Path, svg_path: Path, md_path: Path) -> None:
    json_path.write_text(json.dumps(_finite(results), indent=1) + "\n")
    if results.get("datapath"):
        svg_path.write_text(report.latency_svg(results["datapath"]))
    # The soak's figures come from `make soak` (bench/soak.json), rendered with the rest.
    page = dict(results)
    if not results.get("smoke") and SOAK_JSON.exists():
        page["soak"] = json.loads(SOAK_JSON.read_text())
    md_path.write_text(report.markdown(page))


def derive(results: dict, a: argparse.Namespace) -> None:
    """Everything computed from the measurements: noise note, targets, analysis, text."""
    dp_cfgs = (results.get("datapath") or {}).get("configs", [])
    other = [x.get("other_load_cores", 0) for c in dp_cfgs for x in c.get("samples", [])]
    if other:
        busy = sum(1 for o in other if o >= 0.2)
        results["noise_note"] = (
            f"while the data-path runs were measured, other processes on the machine used a "
            f"median of {sorted(other)[len(other) // 2]:.2f} cores (max {max(other):.2f}) of "
            f"the 2; {busy} of {len(other)} runs had more than 0.2 cores of such load. "
            f"Medians over the interleaved rounds damp this; the `other load` column is the "
            f"median per configuration, results.json has every run.")
    results["targets"] = targets.evaluate(results)
    results["analysis"] = analysis(results)
    results["caveats"] = CAVEATS
    results["commands"] = commands(a)


def _finite(v):
    """NaN and infinities become null, so results.json is strict JSON; paths inside the
    repository become relative, so the file reads the same from any clone."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, str):
        return v.replace(str(ROOT) + "/", "")
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


# ---- main ----------------------------------------------------------------------------------

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny run of every benchmark")
    p.add_argument("--parts", default="datapath,push,sizes,accuracy,mirror,capture,global")
    p.add_argument("--global-seconds", type=int, default=5,
                   help="length of each global rate limit run (1 with --smoke)")
    p.add_argument("--global-note", default="",
                   help="a note on the machine's load printed with the global rate limit figures")
    p.add_argument("--ratelimit-service", default="",
                   help="meshwarden-ratelimit (default: next to --push-bench)")
    p.add_argument("--rls-load", default="",
                   help="meshwarden-rls-load (default: next to --push-bench)")
    p.add_argument("--accuracy-seconds", type=int, default=10,
                   help="length of each rate-limit accuracy run (2 with --smoke)")
    p.add_argument("--mirror-seconds", type=int, default=5,
                   help="length of each mirror-safety load run (1 with --smoke)")
    p.add_argument("--mirror-rate", type=int, default=mirror_safety.RATE,
                   help="primary requests per second in the mirror-safety runs")
    p.add_argument("--capture-seconds", type=int, default=5,
                   help="length of each capture-safety load run (1 with --smoke)")
    p.add_argument("--capture-rate", type=int, default=capture_safety.RATE,
                   help="primary requests per second in the capture-safety runs")
    p.add_argument("--merge", action="store_true",
                   help="keep the figures of parts not rerun from the existing results.json")
    p.add_argument("--envoy", default=str(ROOT / ".venv/bin/envoy"))
    p.add_argument("--wasm-dir", default=str(ROOT / "target/filters"))
    p.add_argument("--build-dir", default=str(ROOT / "target/wasm32-wasip1/wasm"))
    p.add_argument("--meshwarden", default=str(ROOT / "target/release/meshwarden"))
    p.add_argument("--push-bench", default=str(ROOT / "target/release/meshwarden-push-bench"))
    p.add_argument("--load-bin", default="",
                   help="open-loop generator (default: meshwarden-load next to --push-bench; "
                        "h2load --rps if missing)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=3, help="length of each load run")
    p.add_argument("--proxies", default="100,1000,5000,10000")
    p.add_argument("--replica-proxies", default="1000",
                   help="fleet sizes of the push benchmark with 3 replicas on etcd")
    p.add_argument("--pushes", type=int, default=5)
    p.add_argument("--push-timeout", type=int, default=600)
    p.add_argument("--only", default="",
                   help="comma-separated data-path configurations (bare is always included): "
                        + ", ".join(c.name for c in datapath.C.all_configs()))
    p.add_argument("--noop-wasm", default="",
                   help="the floor's module (default: meshwarden_noop_filter.wasm in --build-dir; "
                        "cargo build --profile wasm --target wasm32-wasip1 -p meshwarden-noop-filter)")
    p.add_argument("--calls-dir", default="",
                   help="modules built with count-host-calls (default: built into "
                        "target/bench-calls; not used with --smoke)")
    p.add_argument("--no-host-calls", action="store_true", help="skip the host-call counts")
    p.add_argument("--no-memory", action="store_true",
                   help=f"skip the RSS runs at --concurrency {datapath.CONCURRENCY_HIGH}")
    p.add_argument("--no-configure-time", action="store_true",
                   help="skip the configuration-time runs (1 ... 1,000 policies per kind)")
    p.add_argument("--attribute-sizes", action="store_true",
                   help="also build unstripped modules and attribute code size to crates")
    p.add_argument("--render-only", action="store_true",
                   help="re-derive analysis and rewrite the report from an existing results.json")
    p.add_argument("--out-dir", default="",
                   help="where results go (default: bench/ and docs/; a temp dir with --smoke)")
    a = p.parse_args()

    parts = set(a.parts.split(","))
    profile_seconds = 3
    only = [x for x in a.only.split(",") if x] or None
    warmup = 1
    if a.smoke:
        a.rounds, a.seconds, a.proxies, a.pushes, warmup = 1, 1, "10", 2, 0
        a.replica_proxies = "10"
        a.push_timeout = min(a.push_timeout, 60)
        a.accuracy_seconds = min(a.accuracy_seconds, 2)
        a.mirror_seconds = min(a.mirror_seconds, 1)
        a.capture_seconds = min(a.capture_seconds, 1)
        a.global_seconds = min(a.global_seconds, 1)
        only = only or ["bare", "native-all", "mw-combined"]
        profile_seconds = 1
        # No counting build, no second start per configuration, no configuration-time runs.
        a.no_host_calls = a.no_memory = a.no_configure_time = True
    known = {c.name for c in datapath.C.all_configs()}
    if only and set(only) - known:
        p.error("unknown data-path configuration(s): " + ", ".join(sorted(set(only) - known)))
    if a.out_dir:
        out_dir = Path(a.out_dir)
        json_path, svg_path, md_path = out_dir / "results.json", out_dir / "latency.svg", out_dir / "benchmarks.md"
    elif a.smoke:
        out_dir = Path(tempfile.mkdtemp(prefix="mwbench-smoke-"))
        json_path, svg_path, md_path = out_dir / "results.json", out_dir / "latency.svg", out_dir / "benchmarks.md"
    else:
        json_path, svg_path, md_path = ROOT / "bench/results.json", ROOT / "bench/latency.svg", ROOT / "docs/benchmarks.md"
    for path in (json_path, svg_path, md_path):
        path.parent.mkdir(parents=True, exist_ok=True)

    if a.render_only:
        results = json.loads(json_path.read_text())
        derive(results, a)
        write_outputs(results, json_path, svg_path, md_path)
        return 0
    started = time.monotonic()
    failures: list[str] = []
    if "datapath" in parts:
        # wrk (closed loop) and h2load (open-loop fallback) are optional when the project's own
        # meshwarden-load is built: it stands in for both (`mwbench.load.run_closed_loop`).
        load_bin = Path(a.load_bin or Path(a.push_bench).parent / "meshwarden-load")
        needed = [] if load_bin.is_file() else ["wrk", "h2load"]
        for tool in needed:
            if shutil.which(tool) is None:
                failures.append(f"{tool} not installed and {load_bin} not built "
                                f"(apt-get install wrk nghttp2-client, or build meshwarden-load)")
        if load_bin.is_file() and shutil.which("wrk") is None:
            log("note: wrk not installed; the closed-loop (maximum req/s) runs use "
                "meshwarden-load at a saturating rate instead")
    if parts & {"datapath", "accuracy", "mirror", "capture", "global"} and not Path(a.envoy).exists():
        failures.append(f"Envoy not found at {a.envoy} (make envoy)")
    results: dict = {
        "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "smoke": a.smoke,
        "machine": machine(),
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "envoy_version": envoy_version(a.envoy),
    }
    if failures:
        for f in failures:
            log("error: " + f)
        return 1
    with tempfile.TemporaryDirectory(prefix="mwbench-") as tmp:
        work = Path(tmp)
        if "sizes" in parts:
            log("module sizes")
            results["sizes"] = run_sizes(a)
            missing = [m["filter"] for m in results["sizes"]["modules"] if "optimised_bytes" not in m]
            if missing:
                failures.append("modules not built: " + ", ".join(missing) + " (make wasm)")
        if "datapath" in parts and not failures:
            log(f"data path: {a.rounds} round(s) of {a.seconds}s runs")
            load_bin = Path(a.load_bin or Path(a.push_bench).parent / "meshwarden-load")
            if not load_bin.is_file():
                log(f"warning: {load_bin} not found; latency falls back to h2load --rps "
                    f"(bursty, not corrected for coordinated omission)")
            calls_dir = None
            if not a.no_host_calls:
                calls_dir = host_call_modules(a)
                if calls_dir is None:
                    failures.append("data path: host-call counting modules not built")
            s = datapath.Settings(envoy=a.envoy, wasm_dir=Path(a.wasm_dir), workdir=work / "dp",
                                  rounds=a.rounds, closed_seconds=a.seconds,
                                  open_seconds=a.seconds, warmup_seconds=warmup, only=only,
                                  profile_seconds=profile_seconds,
                                  load_bin=str(load_bin) if load_bin.is_file() else None,
                                  noop_module=Path(a.noop_wasm or Path(a.build_dir) /
                                                   "meshwarden_noop_filter.wasm"),
                                  calls_dir=calls_dir, memory=not a.no_memory,
                                  configure_time=not a.no_configure_time)
            if a.smoke:
                s.profile = ["mw-combined"]
                s.max_error_ratio = 0.05
                s.fixed_rate_errors_count = False
            try:
                results["datapath"] = datapath.run(s, log)
            except (RuntimeError, OSError) as e:
                failures.append(f"data path: {e}")
            for c in (results.get("datapath") or {}).get("configs", []):
                if c.get("failed"):
                    failures.append(f"data path {c['name']}: {c['failed'].splitlines()[0]}")
        if "push" in parts:
            results["push"] = run_push(a, work)
            if results["push"].get("error"):
                failures.append("push: " + results["push"]["error"])
            results["push_replicas"] = run_push(a, work, replicas=3, proxies=a.replica_proxies)
            if results["push_replicas"].get("error"):
                failures.append("push (3 replicas on etcd): " + results["push_replicas"]["error"])
        if "accuracy" in parts:
            results["accuracy"] = run_accuracy(a, work)
            if results["accuracy"].get("error"):
                failures.append("accuracy: " + results["accuracy"]["error"])
        if "mirror" in parts:
            results["mirror"] = run_mirror(a, work)
            if results["mirror"].get("error"):
                failures.append("mirror: " + results["mirror"]["error"])
        if "capture" in parts:
            results["capture"] = run_capture(a, work)
            if results["capture"].get("error"):
                failures.append("capture: " + results["capture"]["error"])
        if "global" in parts:
            results["global"] = run_global(a, work)
            if results["global"].get("error"):
                failures.append("global: " + results["global"]["error"])
    results["machine"]["loadavg_end"] = loadavg()
    results["failures"] = failures
    if a.merge and json_path.is_file():
        results = merge(json.loads(json_path.read_text()), results, parts)
    derive(results, a)
    elapsed = round(time.monotonic() - started, 1)
    if not a.merge:
        results["elapsed_seconds"] = elapsed
    write_outputs(results, json_path, svg_path, md_path)
    log(f"wrote {json_path}, {md_path}" + (f", {svg_path}" if results.get("datapath") else ""))
    for t in [] if a.smoke else results["targets"]:
        log(f"  target {t['id']}: {t['figure']} -> "
            f"{ {True: 'met', False: 'MISSED', None: 'not measured', 'measured': 'measured'}[t['met']]}")
    log(f"done in {elapsed}s")
    if failures:
        for f in failures:
            log("error: " + f)
        return 1
    if a.smoke and not a.out_dir:
        shutil.rmtree(json_path.parent, ignore_errors=True)  # keep smoke results only on failure
    return 0


if __name__ == "__main__":
    sys.exit(main())
