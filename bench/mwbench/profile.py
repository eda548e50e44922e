"""Where a proxy's CPU goes: a `perf record` of the proxy under closed-loop load, broken
down by where the sampled code lives. Envoy's release binary is stripped, so samples are
grouped by object, not symbol: the envoy binary (C++ filters, the proxy-wasm host functions
and the V8 runtime), anonymous executable memory (code V8 compiled from the Wasm modules),
the kernel and libc."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from .load import run_closed_loop


def available() -> bool:
    if shutil.which("perf") is None:
        return False
    try:
        out = subprocess.run(["perf", "stat", "-e", "cpu-clock", "true"], capture_output=True,
                             timeout=20)
        return out.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _group(dso: str) -> str:
    d = dso.strip()
    if d.startswith("[kernel") or d == "[vdso]":
        return "kernel"
    if d == "envoy" or d.endswith("/envoy"):
        return "envoy binary (C++, host functions, V8 runtime)"
    if d.startswith("libc") or d.startswith("libm") or d.startswith("ld-linux") or \
            d.startswith("libpthread"):
        return "libc"
    if d in ("[unknown]", "//anon") or d.startswith("[JIT]") or d.startswith("[anon") or \
            d.startswith("perf-") or d.startswith("memfd:"):
        return "V8-compiled Wasm code (anonymous memory)"
    return "other"


def profile(pid: int, url: str, seconds: int, connections: int, cpu: int | None,
            load_bin: str | None = None) -> dict:
    """Samples `pid` at 1999 Hz while wrk (or meshwarden-load, see `run_closed_loop`) loads
    `url`; returns the share of samples per group (percent) and the number of samples."""
    with tempfile.TemporaryDirectory(prefix="mwbench-perf-") as tmp:
        data = Path(tmp) / "perf.data"
        rec = subprocess.Popen(
            ["perf", "record", "-e", "cpu-clock", "-F", "1999", "-p", str(pid), "-o", str(data),
             "--", "sleep", str(seconds)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        load = threading.Thread(target=run_closed_loop,
                                args=(url, seconds + 1, connections, cpu, load_bin))
        load.start()
        try:
            rec.wait(timeout=seconds + 30)
        finally:
            load.join(timeout=seconds + 60)
        out = subprocess.run(
            ["perf", "report", "-i", str(data), "--stdio", "--sort", "dso", "--no-children"],
            capture_output=True, text=True, timeout=120)
    shares: dict[str, float] = {}
    raw: dict[str, float] = {}
    samples = 0
    for line in out.stdout.splitlines():
        m = re.match(r"#\s*Samples:\s*(\d+)([KM]?)", line)
        if m:
            samples = int(m.group(1)) * {"": 1, "K": 1000, "M": 1000000}[m.group(2)]
            continue
        m = re.match(r"\s*([\d.]+)%\s+(.+)$", line)
        if m:
            raw[m.group(2).strip()] = float(m.group(1))
            g = _group(m.group(2))
            shares[g] = shares.get(g, 0.0) + float(m.group(1))
    top = sorted(raw.items(), key=lambda kv: -kv[1])[:12]
    return {"samples": samples, "percent": {k: round(v, 2) for k, v in shares.items()},
            "by_object": dict(top)}


def _crate(symbol: str) -> str:
    """Rough owner of a demangled symbol: the first path segment, `<T as Trait>` -> T."""
    s = symbol.strip()
    if s.startswith("[k]"):
        return "kernel"
    s = s.removeprefix("[.]").strip().lstrip("<&*_ ")
    for prefix in ("mut ", "dyn "):
        s = s.removeprefix(prefix)
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(::)?", s)
    if not m:
        return "other"
    if not m.group(2):
        if re.match(r"_*(mem|str|int_malloc|int_free|int_realloc|malloc|free|cfree|realloc|"
                    r"calloc|unlink_chunk|malloc_consolidate)", s):
            return "libc (allocator, memcmp/memmove)"
        return "other (unresolved)"
    return m.group(1)


def symbols(data: Path, top: int = 15) -> dict:
    """Flat profile of a perf.data file: the top symbols and the share per crate."""
    out = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children",
                          "--sort", "symbol"], capture_output=True, text=True, timeout=300)
    rows: list[tuple[str, float]] = []
    samples = 0
    for line in out.stdout.splitlines():
        m = re.match(r"#\s*Samples:\s*(\d+)([KM]?)", line)
        if m:
            samples = int(m.group(1)) * {"": 1, "K": 1000, "M": 1000000}[m.group(2)]
            continue
        m = re.match(r"\s*([\d.]+)%\s+(\[[.k]\].*)$", line)
        if m:
            rows.append((m.group(2).strip(), float(m.group(1))))
    crates: dict[str, float] = {}
    for sym, pct in rows:
        c = _crate(sym)
        crates[c] = crates.get(c, 0.0) + pct
    return {
        "samples": samples,
        "top_symbols": [[s[:140], p] for s, p in rows[:top]],
        "by_crate": sorted(([c, round(p, 2)] for c, p in crates.items()), key=lambda x: -x[1])[:12],
    }
