"""The project's performance targets, checked against the results."""

from __future__ import annotations

import math

SIZE_LIMIT_BYTES = 150_000  # "150 KB", read strictly as 150,000 bytes
MEMORY_LIMIT_BYTES = 50_000  # "50 KB" per connected proxy
PUSH_LIMITS_MS = {1000: 100.0, 5000: 1000.0}
BARE_MAX_LOSS = 0.10


def _cfg(datapath: dict, name: str) -> dict | None:
    for c in datapath.get("configs", []):
        if c["name"] == name and c.get("median") and not c.get("failed"):
            return c
    return None


def _target(tid: str, text: str, figure: str, met: bool | None, detail: str = "") -> dict:
    return {"id": tid, "target": text, "figure": figure, "met": met, "detail": detail}


def evaluate(results: dict) -> list[dict]:
    out = []
    dp = results.get("datapath") or {}
    bare, native, mw = _cfg(dp, "bare"), _cfg(dp, "native-all"), _cfg(dp, "mw-all")
    if mw and native:
        r = mw["median"]["max_rps"] / native["median"]["max_rps"]
        cost = mw["median"]["cpu_us_per_req_fixed"] - native["median"]["cpu_us_per_req_fixed"]
        out.append(_target(
            "datapath-vs-native", "all four filters: max throughput / Envoy native equivalents >= 1.0",
            f"{r:.2f}", r >= 1.0,
            "" if r >= 1.0 else f"missed by {(1 - r) * 100:.0f} %; the four Wasm filters cost "
            f"{cost:+.1f} us of proxy CPU per request more than the native filters"))
    else:
        out.append(_target("datapath-vs-native", "all four filters vs native >= 1.0", "n/a", None,
                           "not measured (a configuration failed)"))
    if mw and bare:
        r = mw["median"]["max_rps"] / bare["median"]["max_rps"]
        added = mw["median"]["cpu_us_per_req_fixed"] - bare["median"]["cpu_us_per_req_fixed"]
        out.append(_target(
            "datapath-vs-bare", "all four filters: max throughput at most 10 % below bare Envoy",
            f"{(1 - r) * 100:.0f} % below bare (ratio {r:.2f})", r >= 1 - BARE_MAX_LOSS,
            "" if r >= 1 - BARE_MAX_LOSS else
            f"missed by {((1 - BARE_MAX_LOSS) - r) * 100:.0f} points; the filters add "
            f"{added:.1f} us of proxy CPU per request to bare Envoy's "
            f"{bare['median']['cpu_us_per_req_fixed']:.1f} us"))
    else:
        out.append(_target("datapath-vs-bare", "all four within 10 % of bare", "n/a", None,
                           "not measured"))
    runs = {r["proxies"]: r for r in (results.get("push") or {}).get("runs", [])}
    for n, limit in PUSH_LIMITS_MS.items():
        r = runs.get(n)
        if not r:
            out.append(_target(f"push-{n}", f"change reaches {n:,} proxies, p99 < {limit:.0f} ms",
                               "n/a", None, "not measured"))
            continue
        p99 = r["push"]["acked"]["p99_ms"]
        mx = r["push"]["acked"]["max_ms"]
        out.append(_target(
            f"push-{n}", f"change reaches {n:,} proxies, p99 < {limit:.0f} ms",
            f"p99 {p99:.1f} ms (max {mx:.1f} ms)", p99 < limit,
            "" if p99 < limit else f"missed by {p99 - limit:.0f} ms ({p99 / limit:.1f}x)"))
    if runs:
        n = max(runs)
        per = runs[n]["cp_rss_per_proxy_bytes"]
        out.append(_target(
            "push-memory", "control-plane memory < 50 KB per connected proxy",
            f"{per / 1000:.1f} KB at {n:,} proxies", per < MEMORY_LIMIT_BYTES,
            "" if per < MEMORY_LIMIT_BYTES else
            f"missed by {(per - MEMORY_LIMIT_BYTES) / 1000:.1f} KB per proxy"))
    out += _accuracy(results.get("accuracy") or {})
    out += _mirror(results.get("mirror") or {})
    mods = (results.get("sizes") or {}).get("modules", [])
    for m in mods:
        size = m.get("optimised_bytes")
        if size is None:
            out.append(_target(f"size-{m['filter']}", f"meshwarden_{m['filter']}.wasm < 150 KB",
                               "missing", False, "module not built"))
            continue
        met = size < SIZE_LIMIT_BYTES
        out.append(_target(
            f"size-{m['filter']}", f"meshwarden_{m['filter']}.wasm < 150 KB",
            f"{size / 1000:.1f} KB", met,
            "" if met else f"missed by {(size - SIZE_LIMIT_BYTES) / 1000:.1f} KB "
            f"({size / SIZE_LIMIT_BYTES:.1f}x)"))
    return out


def _accuracy(acc: dict) -> list[dict]:
    """Issue 4: under 10x overload, admitted within ±2 % of rate x duration + burst
    (meshwarden; the native figure is shown beside it for comparison)."""
    runs = acc.get("runs") or []
    if not runs:
        return []
    tol = acc.get("tolerance_pct", 2.0)
    text = (f"rate limit under overload: admitted within ±{tol:.0f} % of rate × duration + "
            f"burst ({acc.get('rate_per_second')}/s, burst {acc.get('burst')}, "
            f"--concurrency {acc.get('concurrency')})")
    out = []
    for r in runs:
        if r["proxy"] != "meshwarden":
            continue
        native = next((n for n in runs if n["proxy"] == "native" and n["load"] == r["load"]), None)
        out.append(_target(
            f"ratelimit-accuracy-{r['load'].split()[0]}", f"{text}, {r['load']}",
            f"{r['admitted']:,} admitted, expected {r['expected']:,.0f} "
            f"({r['error_pct']:+.2f} %) at {r['offered_x']:.0f}× the rate",
            bool(r["within_tolerance"]),
            (f"native local_ratelimit in the same run: {n['admitted']:,} vs "
             f"{n['expected']:,.0f} ({n['error_pct']:+.2f} %)" if (n := native) else "")))
    return out


def _mirror(mir: dict) -> list[dict]:
    """Issue 5: with the mirror target down, black-holed or slow, every primary request
    succeeds and its latency is unchanged against no mirror (same run)."""
    out = []
    for s in mir.get("scenarios") or []:
        if s["scenario"] in ("no mirror", "healthy"):
            continue
        ok = bool(s["all_succeeded"] and s.get("latency_unchanged"))
        p50r, p99r = s.get("p50_ratio") or math.nan, s.get("p99_ratio") or math.nan
        out.append(_target(
            f"mirror-safety-{s['scenario'].replace(' ', '-')}",
            f"mirror target {s['scenario']}: every primary succeeds, latency unchanged vs no "
            f"mirror",
            f"{s['requests'] - s['failed']:,}/{s['requests']:,} succeeded, p50 "
            f"{p50r:.2f}×, p99 {p99r:.2f}×, max {s['max_us'] / 1000:.1f} ms",
            ok, f"{s['mirror']['mirrored']:,} copies sent, {s['mirror']['errors']:,} failed"))
    return out


def finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)
