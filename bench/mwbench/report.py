"""docs/benchmarks.md and the latency chart, written from the results."""

from __future__ import annotations

import html
import json
import math

from .targets import finite


def _n(v, digits: int = 0) -> str:
    if not finite(v):
        return "–"
    return f"{v:,.{digits}f}"


def _ratio(a, b) -> str:
    if not (finite(a) and finite(b)) or b == 0:
        return "–"
    return f"{a / b:.2f}"


def _status(met) -> str:
    """`met` is True, False, None (not measured) or "measured" (a figure with no target)."""
    return {True: "met", False: "**missed**", None: "not measured", "measured": "measured"}[met]


# ---- chart -----------------------------------------------------------------------------

def latency_svg(datapath: dict) -> str:
    """Horizontal bars of p50/p90/p99 latency at the fixed rate, one group per config."""
    rows = [c for c in datapath.get("configs", []) if c.get("median")]
    colors = {"p50_us": "#4c78a8", "p90_us": "#f58518", "p99_us": "#e45756"}
    label_w, bar_h, gap, width = 190, 9, 10, 900
    plot_w = width - label_w - 90
    top = 50
    height = top + len(rows) * (3 * bar_h + gap) + 40
    vmax = max([c["median"].get("p99_us", 0) for c in rows] + [1])
    scale = plot_w / vmax
    rate = datapath.get("fixed_rate_rps", 0)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="20" font-size="15" font-weight="bold">Latency per configuration at '
        f'{rate:,.0f} req/s (fixed rate, open loop), microseconds</text>',
    ]
    x = label_w
    for i, (k, col) in enumerate(colors.items()):
        out.append(f'<rect x="{x + i * 70}" y="30" width="10" height="10" fill="{col}"/>'
                   f'<text x="{x + i * 70 + 14}" y="39">{k[:3]}</text>')
    y = top
    for c in rows:
        m = c["median"]
        out.append(f'<text x="{label_w - 8}" y="{y + 2 * bar_h}" text-anchor="end">'
                   f'{html.escape(c["label"])}</text>')
        for j, (k, col) in enumerate(colors.items()):
            v = m.get(k, 0)
            w = max(v * scale, 1) if finite(v) else 0
            by = y + j * bar_h
            out.append(f'<rect x="{label_w}" y="{by}" width="{w:.1f}" height="{bar_h - 1}" '
                       f'fill="{col}"/>')
            out.append(f'<text x="{label_w + w + 4:.1f}" y="{by + bar_h - 1}" font-size="9">'
                       f'{_n(v)}</text>')
        y += 3 * bar_h + gap
    out.append(f'<line x1="{label_w}" y1="{top - 4}" x2="{label_w}" y2="{y}" stroke="#333"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ---- markdown ----------------------------------------------------------------------------

def _datapath_section(dp: dict) -> list[str]:
    configs = {c["name"]: c for c in dp.get("configs", [])}
    bare = (configs.get("bare") or {}).get("median") or {}
    gen = ("`meshwarden-load --rate <rate>`" if dp.get("generator") == "meshwarden-load"
           else "`h2load --h1 --rps` (fallback: bursty, uncorrected)")
    floor = (configs.get("noop") or {}).get("median") or {}
    closed = (f"`wrk -t1 -c{dp.get('connections')} -d{dp.get('closed_seconds')}s`"
              if dp.get("closed_loop_generator", "wrk") == "wrk"
              else f"`meshwarden-load` at a saturating rate ({dp.get('connections')} "
                   f"connections, {dp.get('closed_seconds')} s; wrk was not installed)")
    lines = [
        "## 1. Data path: meshwarden filters vs bare Envoy vs Envoy's native filters",
        "",
        f"One Envoy worker (`--concurrency 1`, pinned to CPU 0) proxies HTTP/1.1 to a loopback "
        f"upstream (a second Envoy answering with `direct_response`, pinned to CPU 1 with the "
        f"load generator). {dp.get('rounds', 0)} interleaved rounds per configuration; each "
        f"figure is the median of the rounds. Closed loop (maximum throughput): "
        f"{closed}. Fixed rate "
        f"(latency), open loop: {gen} with {dp.get('connections')} connections for "
        f"{dp.get('open_seconds')} s at {_n(dp.get('fixed_rate_rps'))} req/s "
        f"= {dp.get('fixed_rate_fraction_of_bare_max', 0.5):.0%} of bare Envoy's maximum in the "
        f"first round; p50/p90/p99/p99.9 count from when each request was due (corrected for "
        f"coordinated omission), `service p99` from when it was written. CPU per request = the proxy "
        f"process's CPU time (all threads, `/proc/<pid>/task/*/schedstat`) during the run "
        f"divided by the requests served. The floor is a no-op Rust proxy-wasm filter that "
        f"reads one request header (`bench/noop-filter`). meshwarden layouts: **combined** = "
        f"`meshwarden.wasm`, one filter running trace → rate limit → fault → mirror in one pass; "
        f"**separate** = four filters, all `meshwarden.wasm` under one `vm_id` (one VM per "
        f"worker) with root ids `meshwarden.<kind>`; the per-kind rows use the single-purpose "
        f"modules `meshwarden_<kind>.wasm`. \"Empty lists\" = the same filters with no policy.",
        "",
        "| configuration | max req/s | CPU µs/req at max | CPU µs/req at fixed rate | added CPU µs/req vs bare | p50 µs | p90 µs | p99 µs | p99.9 µs | service p99 µs | send delay p99 µs | rate achieved | other load (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratio_rows = []
    for c in dp.get("configs", []):
        m = c.get("median") or {}
        if c.get("memory_only"):
            continue
        if c.get("failed") and not m:
            lines.append(f"| {c['label']} | failed: {c['failed'].splitlines()[0][:120]} |"
                         + " |" * 11)
            continue
        nat = (configs.get(c.get("native") or "") or {}).get("median") or {}
        added = (m.get("cpu_us_per_req_fixed", math.nan) - bare.get("cpu_us_per_req_fixed", math.nan))
        flag = " ⚠" if c.get("notes") or c.get("failed") else ""
        lines.append(
            f"| {c['label']}{flag} | {_n(m.get('max_rps'))} "
            f"| {_n(m.get('cpu_us_per_req_max'), 1)} | {_n(m.get('cpu_us_per_req_fixed'), 1)} "
            f"| {'–' if c['name'] == 'bare' else _n(added, 1)} "
            f"| {_n(m.get('p50_us'))} | {_n(m.get('p90_us'))} | {_n(m.get('p99_us'))} "
            f"| {_n(m.get('p999_us'))} | {_n(m.get('service_p99_us'))} "
            f"| {_n(m.get('send_delay_p99_us'))} "
            f"| {_n(m.get('fixed_rps_achieved'))} | {_n(m.get('other_load_cores'), 2)} |")
        if c["name"] == "bare":
            continue
        cells = []
        for key in ("max_rps", "cpu_us_per_req_max", "cpu_us_per_req_fixed", "p50_us", "p99_us"):
            cells.append(_ratio(m.get(key), bare.get(key)))
            cells.append(_ratio(m.get(key), nat.get(key)) if nat else "–")
        for key in ("cpu_us_per_req_max", "cpu_us_per_req_fixed"):
            above = m.get(key, math.nan) - floor.get(key, math.nan)
            cells.append("–" if c["group"] in ("bare", "native", "noop") else f"{_n(above, 1)}")
        ratio_rows.append(f"| {c['label']}{flag} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Ratios (configuration ÷ bare, and meshwarden ÷ its native counterpart; for req/s "
        "higher is better, for CPU and latency lower is better):",
        "",
        "| configuration | req/s ÷ bare | req/s ÷ native | CPU/req at max ÷ bare | CPU/req at max ÷ native | CPU/req fixed ÷ bare | CPU/req fixed ÷ native | p50 ÷ bare | p50 ÷ native | p99 ÷ bare | p99 ÷ native | CPU µs/req above the no-op floor, at max | at fixed rate |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ] + ratio_rows
    notes = [(c["label"], n) for c in dp.get("configs", []) for n in c.get("notes", [])]
    notes += [(c["label"], "FAILED: " + c["failed"].splitlines()[0])
              for c in dp.get("configs", []) if c.get("failed")]
    if notes:
        lines += ["", "⚠ Notes:", ""]
        lines += [f"- {label}: {n}" for label, n in notes]
    lines += ["", "![latency per configuration](../bench/latency.svg)", ""]
    lines += _memory_section(dp) + _scaling_section(dp) + _calls_section(dp)
    lines += ["Native equivalents and meshwarden policies used:", "",
              "| filter | Envoy native stand-in | meshwarden policy (`spec`) |", "|---|---|---|"]
    native = {
        "trace": "`header_mutation` adding `traceparent` and `x-request-id` from `%UNIQUE_ID%` when absent",
        "ratelimit": "`local_ratelimit`, token bucket 1,000,000/s, enabled and enforced",
        "fault": "`fault` with delay 250 ms and abort 503, both at 0 %",
        "mirror": "route `request_mirror_policies` to a second cluster, 1 %",
    }
    import json as _json
    for k, spec in (dp.get("policies") or {}).items():
        lines.append(f"| {k} | {native.get(k, '')} | `{_json.dumps(spec, separators=(',', ':'))}` |")
    return lines


def _memory_section(dp: dict) -> list[str]:
    rows = [c for c in dp.get("configs", []) if c.get("memory") or c.get("failed")]
    if not any(c.get("memory") for c in rows):
        return []
    bare = next((c.get("memory") or {} for c in rows if c["name"] == "bare"), {})
    lo, hi = (dp.get("concurrency") or [1, 4])[:2]
    lines = [
        "### Memory",
        "",
        f"Envoy's VmRSS (`/proc/<pid>/status`) after {max(dp.get('warmup_seconds') or 0, 1)} s "
        f"of warm-up traffic (wrk, {dp.get('connections')} connections) and a "
        f"0.5 s pause: at `--concurrency {lo}` in the process of the load runs (read before "
        f"them), at `--concurrency {hi}` in a separate start; median of "
        f"{dp.get('rounds')} round(s). Rows with N policies per kind have N − 1 policies "
        f"matching exact paths no request has, then the benchmark's policy.",
        "",
        f"| configuration | RSS at {lo} worker | at {hi} workers | added over bare at {lo} "
        f"| added over bare at {hi} | per additional worker | added per additional worker over bare |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in rows:
        m = c.get("memory") or {}
        if not m:
            lines.append(f"| {c['label']} | failed: {(c.get('failed') or '').splitlines()[0][:120]} |"
                         + " |" * 5)
            continue
        a1 = m.get("concurrency_1_mib", math.nan) - bare.get("concurrency_1_mib", math.nan)
        a4 = m.get("concurrency_4_mib", math.nan) - bare.get("concurrency_4_mib", math.nan)
        pw = m.get("per_extra_worker_mib", math.nan)
        apw = pw - bare.get("per_extra_worker_mib", math.nan)
        is_bare = c["name"] == "bare"
        lines.append(
            f"| {c['label']} | {_n(m.get('concurrency_1_mib'), 1)} MiB "
            f"| {_n(m.get('concurrency_4_mib'), 1)} MiB "
            f"| {'–' if is_bare else _n(a1, 1) + ' MiB'} | {'–' if is_bare else _n(a4, 1) + ' MiB'} "
            f"| {_n(pw, 2)} MiB | {'–' if is_bare else _n(apw, 2) + ' MiB'} |")
    return lines + [""]


def _scaling_section(dp: dict) -> list[str]:
    configs = {c["name"]: c for c in dp.get("configs", [])}
    ns = dp.get("scaling") or []
    names = [(n, "mw-combined" if n == 1 else f"mw-combined-p{n}") for n in ns]
    present = [(n, configs[name]) for n, name in names if name in configs]
    if len(present) < 2 and not any(c.get("configure") for _, c in present):
        return []
    base = (configs.get("mw-combined") or {}).get("median") or {}
    base_mem = (configs.get("mw-combined") or {}).get("memory") or {}
    lines = [
        "### Scaling with the number of policies (combined module)",
        "",
        "N policies per kind (4 N in all): N − 1 match exact paths no request has "
        "(`/nomatch-<i>`), the last (the benchmark's policy) matches every request, so only "
        "the last in evaluation order matches. Configuration time: the proxy started with "
        "`--component-log-level wasm:debug` and microsecond log timestamps; per VM, from "
        "Envoy's `Thread-Local Wasm created` line to the module's `configured` line on the same "
        "thread, i.e. instantiating the VM (`_initialize`, `proxy_on_vm_start`) plus "
        "`on_configure` (parsing and compiling 4 N policies, defining their metrics). Envoy "
        "configures one VM per worker on the worker's thread (the figure shown) and, at load, "
        "one or two on the main thread (the largest shown); `ready` is from the process start "
        "to the first proxied 200, which includes compiling the module in V8. Median of "
        f"{dp.get('rounds')} start(s).",
        "",
        "| policies per kind | CPU µs/req at max | ÷ 1 policy | CPU µs/req at fixed rate | ÷ 1 policy "
        "| RSS at 1 worker | added over 1 policy | configure: worker VM | main-thread VM | ready after |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, c in present:
        m, mem, cf = c.get("median") or {}, c.get("memory") or {}, c.get("configure") or {}
        if c.get("failed") and not m:
            lines.append(f"| {n:,} | failed: {c['failed'].splitlines()[0][:160]} |" + " |" * 8)
            continue
        lines.append(
            f"| {n:,} | {_n(m.get('cpu_us_per_req_max'), 1)} "
            f"| {_ratio(m.get('cpu_us_per_req_max'), base.get('cpu_us_per_req_max'))} "
            f"| {_n(m.get('cpu_us_per_req_fixed'), 1)} "
            f"| {_ratio(m.get('cpu_us_per_req_fixed'), base.get('cpu_us_per_req_fixed'))} "
            f"| {_n(mem.get('concurrency_1_mib'), 1)} MiB "
            f"| {_n(mem.get('concurrency_1_mib', math.nan) - base_mem.get('concurrency_1_mib', math.nan), 1)} MiB "
            f"| {_n(cf.get('worker_ms'), 1)} ms | {_n(cf.get('main_ms'), 1)} ms "
            f"| {_n(cf.get('ready_s'), 2)} s |")
    return lines + [""]


def _calls_section(dp: dict) -> list[str]:
    rows = [c for c in dp.get("configs", []) if c.get("host_calls")]
    if not rows:
        return []
    lines = [
        "### Host calls per request",
        "",
        f"Each meshwarden configuration started once more with modules built with "
        f"`--features meshwarden-filter-runtime/count-host-calls` (in `target/bench-calls`): "
        f"the runtime counts every call it makes to the host and records, at the end of each "
        f"stream, the count since its previous record in the histogram "
        f"`meshwarden_host_calls_per_request`. {dp.get('calls_requests', 0):,} sequential "
        f"requests on one keep-alive connection; the figure is the growth of the histogram's "
        f"sum over those requests divided by their number (with separate filters in one VM "
        f"each filter records, so there are several records per request; their sum is the "
        f"request's calls). Envoy's histogram bins are exact below 100; above, a bin is 10 wide "
        f"and its midpoint is used (\"≈\" where that could move the mean by 0.05 or more). The no-op floor makes one host call per request "
        f"(`get_http_request_header_bytes`) by construction; Envoy's native filters make none. Calls "
        f"made outside a request (timer ticks, call-out responses) are counted in the next "
        f"request's record, so the mean includes them and the most frequent record is the "
        f"typical request alone.",
        "",
        "| configuration | host calls per request (mean) | most frequent non-zero record | records per request | calls per record: records |",
        "|---|---:|---:|---:|---|",
    ]
    for c in rows:
        h = c["host_calls"]
        if h.get("error"):
            lines.append(f"| {c['label']} | failed: {h['error'].splitlines()[0][:120]} | | | |")
            continue
        dist = ", ".join(f"{k}: {v:,}" for k, v in h.get("distribution", {}).items())
        lines.append(f"| {c['label']} | {'' if h.get('exact') else '≈ '}{_n(h.get('per_request'), 1)} "
                     f"| {_n(h.get('most_frequent'), 0)} "
                     f"| {_n(h.get('records_per_request'), 2)} | {dist} |")
    return lines + [""]


def _profile_section(dp: dict) -> list[str]:
    prof = dp.get("profiles") or {}
    if not prof:
        return []
    configs = {c["name"]: c for c in dp.get("configs", [])}
    groups = sorted({g for p in prof.values() for g in p.get("percent", {})})
    lines = [
        "### Where the proxy's CPU goes",
        "",
        "`perf record -e cpu-clock -F 1999 -p <proxy>` during a closed-loop run. Envoy's "
        "release binary is stripped, so samples are grouped by where the code lives, converted "
        "to µs per request with the CPU-per-request figure at maximum load.",
        "",
        "| configuration | samples | " + " | ".join(groups) + " |",
        "|---|---:|" + "---:|" * len(groups),
    ]
    for name, p in prof.items():
        cpu = ((configs.get(name) or {}).get("median") or {}).get("cpu_us_per_req_max", math.nan)
        cells = []
        for g in groups:
            pct = p.get("percent", {}).get(g, 0.0)
            cells.append(f"{pct:.1f} % ({_n(pct / 100 * cpu, 1)} µs)")
        lines.append(f"| {configs.get(name, {}).get('label', name)} | {p.get('samples', 0):,} | "
                     + " | ".join(cells) + " |")
    return lines + [""]


def _push_section(push: dict) -> list[str]:
    lines = [
        "## 2. Control plane: time for a policy change to reach N proxies",
        "",
        "`meshwarden-push-bench` (crate `bench/push`) starts a fresh release `meshwarden serve` "
        "per N, applies a TracePolicy, connects N simulated proxies over ADS (state of the "
        f"world; {push.get('streams_per_connection', 100)} streams per HTTP/2 connection), each "
        "subscribing to the four `meshwarden.*` ECDS resources and ACKing every response. It "
        f"then changes the policy {push.get('pushes', 0)} times through the gRPC policy API and "
        "measures, from the moment the Apply call is made, when each proxy has received the new "
        "version and sent its ACK. Memory = control-plane VmRSS after all N connected minus "
        "before, divided by N. The simulated proxies run on the same 2 cores as the control "
        "plane.",
        "",
        "| proxies | connections | all connected in | change: first proxy | p50 | p90 | p99 | max (all N) | apply RPC | CPU per change: CP / simulated proxies | CP RSS idle → connected | per proxy |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in push.get("runs", []):
        a = r["push"]["acked"]
        applies = [p["apply_ms"] for p in r["push"].get("per_push", []) if p.get("apply_ms")]
        apply_ms = sorted(applies)[len(applies) // 2] if applies else math.nan
        firsts = sorted(p["acked"].get("min_ms") or math.nan for p in r["push"].get("per_push", []))
        first = firsts[len(firsts) // 2] if firsts else math.nan
        lines.append(
            f"| {r['proxies']:,} | {r['connections']} | {_n(r['connect']['acked']['max_ms'], 0)} ms "
            f"| {_n(first, 1)} ms | {_n(a['p50_ms'], 1)} ms | {_n(a['p90_ms'], 1)} ms | {_n(a['p99_ms'], 1)} ms "
            f"| {_n(a['max_ms'], 1)} ms | {_n(apply_ms, 1)} ms "
            f"| {_n(r['push']['cp_cpu_ms_median'], 0)} / "
            f"{_n(r['push'].get('client_cpu_ms_median', math.nan), 0)} ms "
            f"| {r['cp_rss_idle_bytes'] / 1048576:.1f} → {r['cp_rss_connected_bytes'] / 1048576:.1f} MiB "
            f"| {r['cp_rss_per_proxy_bytes'] / 1000:.1f} KB |")
    prof = push.get("cp_profile")
    if prof:
        n = max((r["proxies"] for r in push.get("runs", [])), default=0)
        lines += [
            "",
            f"Control-plane CPU during the {n:,}-proxy changes (`perf record -e cpu-clock -F 999 "
            f"-p <meshwarden serve>`, {prof.get('samples', 0):,} samples), by owner: "
            + ", ".join(f"{c} {p:.1f} %" for c, p in prof.get("by_crate", [])[:10]) + ".",
            "",
            "| top symbols | % |",
            "|---|---:|",
        ]
        lines += [f"| `{s.removeprefix('[.] ').strip()}` | {p:.1f} |"
                  for s, p in prof.get("top_symbols", [])[:12]]
    if push.get("error"):
        lines += ["", f"⚠ The push benchmark failed: {push['error']}"]
    return lines + [""]


def _sizes_section(sizes: dict) -> list[str]:
    prof = sizes.get("profile") or {}
    settings = ", ".join(f"{k} = {v}" for k, v in prof.items() if k != "inherits") or "see Cargo.toml"
    lines = [
        "## 3. Module sizes",
        "",
        f"Built with `cargo build --profile wasm --target wasm32-wasip1` ({settings}) in "
        "`target/wasm32-wasip1/wasm/`, then `wasm-opt -Oz` by `scripts/package-wasm.sh` into "
        "`target/filters/` (`meshwarden_module.wasm` → `meshwarden.wasm`, "
        "`meshwarden_<kind>_module.wasm` → `meshwarden_<kind>.wasm`). Targets after wasm-opt: "
        "the combined module < 250 KB, each single-purpose module < 150 KB (KB = 1,000 bytes).",
        "",
        "| module | package | before wasm-opt | after wasm-opt | target | saved | gzip -9 | code section | data section | functions |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in sizes.get("modules", []):
        u, o = m.get("unoptimised_bytes"), m.get("optimised_bytes")
        sec = m.get("sections", {})
        saved = f"{(1 - o / u) * 100:.0f} %" if u and o else "–"
        limit = m.get("limit_bytes")
        verdict = "" if not (o and limit) else (" (met)" if o < limit else " (**missed**)")
        lines.append(
            f"| {m.get('module') or 'meshwarden_' + m['filter'] + '.wasm'} | `{m.get('package', '')}` "
            f"| {_n(u)} B | {_n(o)} B | < {_n(limit)} B{verdict} | {saved} "
            f"| {_n(m.get('optimised_gzip_bytes'))} B | {_n(sec.get('code'))} B "
            f"| {_n(sec.get('data'))} B | {_n(m.get('functions'))} |")
    attr = sizes.get("attribution") or {}
    if attr:
        lines += [
            "",
            "Code bytes per crate (unstripped build of the same sources, before wasm-opt; "
            "function names from the Wasm `name` section):",
            "",
        ]
        for f, rows in attr.items():
            total = sum(b for _, b in rows) or 1
            top = ", ".join(f"{c} {b / 1000:.0f} KB" for c, b in rows[:8])
            name = "meshwarden.wasm" if f == "meshwarden" else f"meshwarden_{f}.wasm"
            lines.append(f"- {name}: {top}")
    return lines + [""]


def _accuracy_section(acc: dict) -> list[str]:
    if acc.get("error") and not acc.get("runs"):
        return ["## 4. Rate-limit accuracy under overload", "",
                f"⚠ The accuracy benchmark failed: {acc['error']}", ""]
    tb = acc.get("native_token_bucket") or {}
    tol = acc.get("tolerance_pct", 2.0)
    lines = [
        "## 4. Rate-limit accuracy under overload: meshwarden vs Envoy's local_ratelimit",
        "",
        f"Issue 4's acceptance figure. Target: **admitted within ±{tol:.0f} % of rate × duration "
        f"+ burst**. In one run ({acc.get('generated', '?')}, commit "
        f"`{acc.get('git_commit', '?')}`), two proxies in turn, each an Envoy with "
        f"`--concurrency {acc.get('concurrency')}` in front of the loopback upstream, limited to "
        f"{acc.get('rate_per_second')} requests/s with burst {acc.get('burst')}, one bucket for "
        f"the whole proxy (both workers):",
        "",
        "- meshwarden: `meshwarden_ratelimit.wasm` loaded statically with the policy "
        f"`{json.dumps(acc.get('meshwarden_policy'), separators=(',', ':'))}` (token bucket in "
        f"proxy-wasm shared data, compare-and-swap across workers);",
        f"- native: `envoy.filters.http.local_ratelimit`, `max_tokens` {tb.get('max_tokens')}, "
        f"`tokens_per_fill` {tb.get('tokens_per_fill')} every {tb.get('fill_interval_s', 0) * 1000:.0f} ms "
        f"(Envoy rejects a fill interval below 50 ms, so 1 token per 10 ms is not possible), "
        f"`local_rate_limit_per_downstream_connection: false`, enabled and enforced 100 %.",
        "",
        f"Load over {acc.get('connections')} keep-alive connections for {acc.get('seconds')} s: "
        f"**paced 10×**, `meshwarden-load` open loop at {acc.get('overload_target_x', 10)} × the "
        f"rate (request i due at i / rate; the window is the last request's due time); "
        f"**closed loop**, `wrk` sending as fast as answers come back (hundreds of times the "
        f"rate; the window is wrk's run time). Admitted = Envoy's `downstream_rq_2xx`, limited "
        f"= `downstream_rq_4xx` (all 429), deltas of the admin `/stats` over the run; the "
        f"client's own 2xx count and the filter's own counters are shown beside them. Expected "
        f"= rate × window + burst (the bucket starts full).",
        "",
        f"| proxy | load | offered req/s | × rate | window s | admitted (Envoy) | admitted (client) "
        f"| admitted (filter) | limited | expected | error | within ±{tol:.0f} % |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in acc.get("runs", []):
        lines.append(
            f"| {r['proxy']} | {r['load']} | {_n(r['offered_rps'])} | {r['offered_x']:.0f}× "
            f"| {r['window_s']:.3f} | {r['admitted']:,} | {r['client_2xx']:,} "
            f"| {r['filter_allowed']:,} | {r['limited']:,} | {r['expected']:,.1f} "
            f"| **{r['error_pct']:+.2f} %** | {'yes' if r['within_tolerance'] else '**no**'} |")
    rate = acc.get("rate_per_second") or 0
    lines += [
        "",
        f"How exact the figures can be: the window's edges are set by the client's clock, not "
        f"the proxy's, so scheduling jitter of δ at either edge moves the expected count by "
        f"± rate × δ (at {rate}/s, 10 ms of jitter is ±{rate * 0.01:.0f} request"
        f"{'' if rate * 0.01 == 1 else 's'}); a bucket that refills in steps (native: "
        f"{tb.get('tokens_per_fill')} tokens per {tb.get('fill_interval_s', 0) * 1000:.0f} ms) "
        f"adds up to one step. In the closed-loop runs wrk stops reading while requests are "
        f"still in flight, so Envoy's and the filter's counts can exceed the client's by one "
        f"or two; the paced runs wait for every answer.",
        "",
    ]
    if acc.get("error"):
        lines += [f"⚠ The accuracy benchmark failed: {acc['error']}", ""]
    return lines


def _mirror_section(mir: dict) -> list[str]:
    if mir.get("error") and not mir.get("scenarios"):
        return ["## 5. Mirror safety", "", f"⚠ The mirror-safety benchmark failed: {mir['error']}",
                ""]
    lim = mir.get("limits") or {}
    lines = [
        "## 5. Mirror safety: a bad mirror target never hurts the primary",
        "",
        f"Issue 5's claim: **with the mirror target down, black-holed or slow, every primary "
        f"request still succeeds and its latency is unchanged against a no-mirror run**. In one "
        f"run ({mir.get('generated', '?')}, commit `{mir.get('git_commit', '?')}`), five Envoys "
        f"(`--concurrency {mir.get('concurrency')}`) with `meshwarden_mirror.wasm` loaded "
        f"statically in front of the loopback upstream; the baseline has the same filter with "
        f"an empty policy list, the others mirror 100 % of requests "
        f"(`{json.dumps(mir.get('policy'), separators=(',', ':'))}`) to a static cluster that "
        f"answers at once (**healthy**: the cost of mirroring itself, for reference) or is "
        f"**down** (closed port), **black-holed** (a socket that accepts and reads but never "
        f"answers: copies time out after {mir.get('copy_timeout')}) or **slow** (answers after "
        f"{mir.get('slow_delay')}).",
        "",
        f"Load: `meshwarden-load` open loop at {mir.get('rate_rps')} req/s over "
        f"{mir.get('connections')} keep-alive connections, {mir.get('seconds')} s per run, "
        f"{mir.get('rounds')} round(s) interleaved across the proxies; latency counted from "
        f"each request's due time (coordinated omission corrected), median over rounds; the "
        f"ratios are the median of each round's ratio to the baseline of the same round (the "
        f"machine's load drifts between rounds, alike for the proxies of one round); after "
        f"each run the driver waits (at most the copy timeout + 7 s) until the target cluster "
        f"has finished every copy sent, so each copy's outcome is counted in its run and none "
        f"is pending in the next. Copies: the filter's own counters "
        f"(`meshwarden_mirror_{{mirrored,errors,skipped_*}}_total`, admin `/stats`, deltas over "
        f"the runs). \"Unchanged\" here means p50 within {lim.get('p50_ratio_max')}× and p99 "
        f"within {lim.get('p99_ratio_max')}× of the baseline (noise allowance on a shared "
        f"2-core machine) and no primary slower than {lim.get('max_primary_ms')} ms (one that "
        f"waited for a copy would take {mir.get('slow_delay')} or {mir.get('copy_timeout')}).",
        "",
        "| mirror target | primary requests | failed | p50 µs | p90 µs | p99 µs | max ms "
        "| p50 / no mirror | p99 / no mirror | copies sent | copy errors | copies skipped "
        "| succeeded, latency unchanged |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in mir.get("scenarios", []):
        m = s.get("mirror") or {}
        skipped = sum(v for k, v in m.items() if k.startswith("skipped"))
        ok = s.get("all_succeeded") and s.get("latency_unchanged", True)
        verdict = {"no mirror": "baseline, ", "healthy": "reference, "}.get(s["scenario"], "") \
            + ("yes" if ok else "**no**")
        p50r, p99r = s.get("p50_ratio"), s.get("p99_ratio")
        lines.append(
            f"| {s['scenario']} | {s['requests']:,} | {s['failed']:,} | {_n(s['p50_us'])} "
            f"| {_n(s['p90_us'])} | {_n(s['p99_us'])} | {_n(s['max_us'] / 1000, 1)} "
            f"| {f'{p50r:.2f}' if finite(p50r) else '–'} | {f'{p99r:.2f}' if finite(p99r) else '–'} "
            f"| {m.get('mirrored', 0):,} | {m.get('errors', 0):,} | {skipped:,} | {verdict} |")
    verdict = "holds" if mir.get("claim_holds") else "**does not hold**"
    by = {s["scenario"]: s for s in mir.get("scenarios", [])}
    p99s = [by[n]["p99_ratio"] for n in ("down", "black-holed", "slow")
            if n in by and finite(by[n].get("p99_ratio"))]
    healthy = (by.get("healthy") or {}).get("p99_ratio")
    cost = (f" The tail does move: p99 is {min(p99s):.2f}–{max(p99s):.2f}× the baseline with a "
            f"bad target and {healthy:.2f}× with a healthy one, so the shift is the proxy's own "
            f"work of sending a copy of every request (100 %) on the same workers, not waiting "
            f"for the target (none waited: the slowest primary took well under the copy timeout)."
            if p99s and finite(healthy) else "")
    lines += [
        "",
        f"The claim {verdict} in this run. Copies to the down target fail on connect, to the "
        f"black hole at the copy timeout, and to the slow target succeed after the delay; all "
        f"of it happens in call-outs owned by the filter's root context, so the primary "
        f"request never waits for them." + cost,
        "",
    ]
    if mir.get("error"):
        lines += [f"⚠ The mirror-safety benchmark failed: {mir['error']}", ""]
    return lines



def _capture_section(cap: dict) -> list[str]:
    if cap.get("error") and not cap.get("scenarios"):
        return ["## 8. Capture safety", "",
                f"⚠ The capture-safety benchmark failed: {cap['error']}", ""]
    lim = cap.get("limits") or {}
    lines = [
        "## 8. Capture safety: live capture never slows the primary traffic",
        "",
        f"CapturePolicy's claim: **the primary traffic's latency is unchanged** while requests "
        f"are captured and reported, and when the control plane they are reported to is down "
        f"or black-holed. In one run ({cap.get('generated', '?')}, commit "
        f"`{cap.get('git_commit', '?')}`), four Envoys (`--concurrency {cap.get('concurrency')}`) "
        f"with `meshwarden_capture.wasm` loaded statically in front of the loopback upstream; "
        f"the baseline has the same filter with an empty policy list, the others capture every "
        f"request (`{json.dumps(cap.get('policy'), separators=(',', ':'))}`) and report them "
        f"(unary gRPC `CaptureService.Report` from the root context's tick, over an HTTP/2 "
        f"cluster) to a live `meshwarden serve` (**capture 100 %**), to a closed port "
        f"(**control plane down**: reports fail on connect) or to a socket that accepts and "
        f"reads but never answers (**black-holed**: reports time out after "
        f"{cap.get('report_timeout')}).",
        "",
        f"Load: `meshwarden-load` open loop at {cap.get('rate_rps')} req/s over "
        f"{cap.get('connections')} keep-alive connections, {cap.get('seconds')} s per run, "
        f"{cap.get('rounds')} round(s) interleaved across the proxies; latency counted from "
        f"each request's due time (coordinated omission corrected), median over rounds; the "
        f"ratios are the median of each round's ratio to the baseline of the same round (the "
        f"machine's load drifts between rounds, alike for the proxies of one round); after "
        f"each run the driver waits (at most the report timeout + 4 s) until every summary is "
        f"counted as captured, dropped or failed. Summaries: the filter's own counters "
        f"(`meshwarden_capture_{{captured,dropped,failed}}_total`, admin `/stats`, deltas over "
        f"the runs). \"Unchanged\" uses the mirror-safety limits: p50 within "
        f"{lim.get('p50_ratio_max')}× and p99 within {lim.get('p99_ratio_max')}× of the "
        f"baseline and no primary slower than {lim.get('max_primary_ms')} ms.",
        "",
        "| configuration | primary requests | failed | p50 µs | p90 µs | p99 µs | max ms "
        "| p50 / no capture | p99 / no capture | captured | dropped | failed reports "
        "| succeeded, latency unchanged |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in cap.get("scenarios", []):
        c = s.get("capture") or {}
        ok = s.get("all_succeeded") and s.get("latency_unchanged", True)
        verdict = ("baseline, " if s["scenario"] == "no capture" else "") \
            + ("yes" if ok else "**no**")
        p50r, p99r = s.get("p50_ratio"), s.get("p99_ratio")
        lines.append(
            f"| {s['scenario']} | {s['requests']:,} | {s['failed']:,} | {_n(s['p50_us'])} "
            f"| {_n(s['p90_us'])} | {_n(s['p99_us'])} | {_n(s['max_us'] / 1000, 1)} "
            f"| {f'{p50r:.2f}' if finite(p50r) else '–'} | {f'{p99r:.2f}' if finite(p99r) else '–'} "
            f"| {c.get('captured', 0):,} | {c.get('dropped', 0):,} | {c.get('failed', 0):,} "
            f"| {verdict} |")
    verdict = "holds" if cap.get("claim_holds") else "**does not hold**"
    w = cap.get("watcher") or {}
    cpm = (cap.get("control_plane") or {}).get("metrics") or {}
    lines += ["", f"The claim {verdict} in this run."]
    if cpm:
        lines[-1] += (
            f" Over the measured rounds the control plane took "
            f"{cpm.get('meshwarden_capture_records_total', 0):,.0f} summaries in "
            f"{cpm.get('meshwarden_capture_reports_total', 0):,.0f} reports "
            f"(`meshwarden_capture_records_total`, `..._reports_total`; refused "
            f"{cpm.get('meshwarden_capture_refused_records_total', 0):,.0f}).")
    if w:
        lines[-1] += (
            f" One `meshwarden capture -o json` watched the live control plane from before "
            f"the first request: it printed {w.get('summaries', 0):,} summaries "
            f"({w.get('from_bench_policy', 0):,} of the benchmark's proxy and policy) against "
            f"{w.get('live_proxy_captured_total', 0):,} the live proxy counted as captured over "
            f"its life (warm-up included)"
            + (f"; summaries the watcher skipped for being slow in the rounds: "
               f"{cpm.get('meshwarden_capture_watcher_skipped_total', 0):,.0f} "
               f"(`meshwarden_capture_watcher_skipped_total`)" if cpm else "") + ".")
    lines.append("")
    if cap.get("error"):
        lines += [f"⚠ The capture-safety benchmark failed: {cap['error']}", ""]
    return lines


def _soak_section(soak: dict) -> list[str]:
    env, cp = soak.get("envoy_rss_mib", [0, 0]), soak.get("control_plane_rss_mib", [0, 0])
    return [
        "## 6. Soak: policy churn, control-plane restarts and traffic (`make soak`)",
        "",
        f"Measured {soak.get('date', '?')} at commit `{soak.get('commit', '?')}` by `make soak` "
        "(`tests/tests/e2e/soak.rs`; figures in `bench/soak.json`): one Envoy "
        "(`--concurrency 2`), steady GETs every 5 ms, a policy apply every ~0.1 s, and the "
        "control plane SIGKILLed and restarted at 20 %, 40 % and 60 % of the run (each restart "
        "resets the proxy's ADS stream).",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| duration | {soak.get('seconds')} s |",
        f"| requests / failed (no policy asked for a failure) | {soak.get('requests')} / {soak.get('failed')} |",
        f"| applies / refused | {soak.get('applies')} / {soak.get('applies_refused')} |",
        f"| control-plane restarts | {soak.get('control_plane_restarts')} |",
        f"| Envoy RSS at 10 % → end | {env[0]:.1f} → {env[1]:.1f} MiB |",
        f"| control-plane RSS at 65 % → end (same process) | {cp[0]:.1f} → {cp[1]:.1f} MiB |",
        "",
        "Every acknowledged apply was in the store at the end (checked by the test).",
        "",
    ]


def _global_section(g: dict) -> list[str]:
    title = "## 7. Global rate limits: added latency, proxy CPU, service throughput"
    if g.get("error"):
        return [title, "", f"⚠ The global rate limit benchmark failed: {g['error']}", ""]
    rows = {r["name"]: r for r in g.get("latency", [])}
    bare, local = rows.get("bare", {}), rows.get("local", {})
    lease = g.get("lease") or {}
    lines = [
        title,
        "",
        f"Measured {g.get('generated', '?')} at commit `{g.get('git_commit', '?')}` "
        f"(`bench/mwbench/global_rl.py`). One Envoy worker (`--concurrency 1`, pinned to CPU 0) "
        f"with `meshwarden_ratelimit.wasm` and one policy matching every request that never "
        f"limits; {g.get('rate', 0):.0f} req/s for {g.get('seconds')} s, open loop "
        f"(`meshwarden-load`, latency from each request's due time). `meshwarden-ratelimit` "
        f"(release build) and `redis-server` run on loopback, unpinned, sharing the 2 cores with "
        f"the upstream and the load generator. The lease row uses `lease: {{tokens: "
        f"{lease.get('tokens')}, maxAge: {lease.get('maxAge')}}}`.",
        "",
        "| configuration | p50 µs | p99 µs | p50 − bare µs | p99 − bare µs | p50 / local | "
        "proxy CPU µs/req | CPU − bare µs | service CPU µs/req | Redis CPU µs/req | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in g.get("latency", []):
        lines.append(
            f"| {r.get('label', r['name'])} | {_n(r.get('p50_us'))} | {_n(r.get('p99_us'))} "
            f"| {_n(r.get('p50_us', 0) - bare.get('p50_us', 0))} "
            f"| {_n(r.get('p99_us', 0) - bare.get('p99_us', 0))} "
            f"| {_ratio(r.get('p50_us'), local.get('p50_us'))} "
            f"| {_n(r.get('proxy_cpu_us_per_req'), 1)} "
            f"| {_n(r.get('proxy_cpu_us_per_req', 0) - bare.get('proxy_cpu_us_per_req', 0), 1)} "
            f"| {_n(r.get('service_cpu_us_per_req'), 1)} | {_n(r.get('redis_cpu_us_per_req'), 1)} "
            f"| {r.get('failed', 0)} |")
    tp = g.get("throughput") or {}
    lat = tp.get("latency") or {}
    lines += [
        "",
        f"**Service throughput** (`meshwarden-rls-load`: {tp.get('concurrency')} calls in flight "
        f"over {tp.get('connections')} HTTP/2 connections, one descriptor per call over 1,000 "
        f"buckets, closed loop, {tp.get('seconds')} s; service, Redis and the load generator on "
        f"the same 2 cores):",
        "",
        "| decisions/s | p50 ms | p99 ms | errors | service CPU µs/decision | Redis CPU µs/decision |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {_n(tp.get('decisions_per_second'))} | {_n(lat.get('p50_ms'), 2)} "
        f"| {_n(lat.get('p99_ms'), 2)} | {tp.get('errors', '–')} "
        f"| {_n(tp.get('service_cpu_us_per_decision'), 1)} "
        f"| {_n(tp.get('redis_cpu_us_per_decision'), 1)} |",
        "",
    ]
    if g.get("note"):
        lines += [f"**Noise:** {g['note']}", ""]
    return lines


def markdown(results: dict) -> str:
    m = results.get("machine", {})
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`bench/bench.py`); raw figures in "
        "[`bench/results.json`](../bench/results.json). Do not edit by hand: rerun `make bench`.",
        "",
        f"- Date: {results.get('generated')}",
        f"- Commit: `{results.get('git_commit', '?')}`"
        + (" (with uncommitted changes in the work tree)" if results.get("git_dirty") else ""),
        f"- Machine: {m.get('cpus')} CPUs ({m.get('cpu_model')}), {m.get('memory_gib')} GiB, "
        f"Linux {m.get('kernel')}",
        f"- Envoy: {results.get('envoy_version')} (V8 Wasm runtime)",
        f"- Load average before / after: {m.get('loadavg_start')} / {m.get('loadavg_end')}",
        "",
    ]
    noise = results.get("noise_note")
    if noise:
        lines += [f"**Noise:** {noise}", ""]
    lines += ["## Targets", "", "| target | figure | status | detail |", "|---|---|---|---|"]
    for t in results.get("targets", []):
        lines.append(f"| {t['target']} | {t['figure']} | {_status(t['met'])} | {t['detail']} |")
    lines.append("")
    analysis = results.get("analysis") or []
    if analysis:
        lines += ["### What dominates the cost", ""] + [f"- {a}" for a in analysis] + [""]
    dp = results.get("datapath") or {}
    if dp:
        lines += _datapath_section(dp) + [""] + _profile_section(dp)
    if results.get("push"):
        lines += _push_section(results["push"])
    if results.get("sizes"):
        lines += _sizes_section(results["sizes"])
    if results.get("accuracy"):
        lines += _accuracy_section(results["accuracy"])
    if results.get("mirror"):
        lines += _mirror_section(results["mirror"])
    if results.get("soak"):
        lines += _soak_section(results["soak"])
    if results.get("global"):
        lines += _global_section(results["global"])
    if results.get("capture"):
        lines += _capture_section(results["capture"])
    lines += ["## Method notes and caveats", ""] + [f"- {c}" for c in results.get("caveats", [])]
    lines += ["", "## Commands", "", "```sh"] + results.get("commands", []) + ["```", ""]
    return "\n".join(lines)
