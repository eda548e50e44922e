"""Envoy bootstraps for the data-path benchmark.

Every proxy configuration shares one listener, one route to a fast loopback upstream and the
router; they differ only in the HTTP filters (and, for native mirroring, the route's mirror
policy). Settings follow Envoy's own benchmarking advice: no request-id generation, no
dynamic stats, circuit breakers out of the way.

meshwarden layouts (module names from `scripts/package-wasm.sh`):

- combined: `meshwarden.wasm`, root id `meshwarden`, one filter running trace → rate limit →
  fault → mirror in one pass; configuration `{"trace": {"policies": [...]}, ...}`;
- separate: four filters, all `meshwarden.wasm` under one `vm_id` (one VM per worker), root
  ids `meshwarden.<kind>`, each configured `{"policies": [...]}`;
- single: `meshwarden_<kind>.wasm`, the single-purpose module of one kind, alone.

Policies per kind: 1 is the benchmark's policy (matches every request); N > 1 puts N - 1
policies matching exact paths no request has (`/nomatch-<i>`) before it, so only the last
in evaluation order matches; 0 is an empty list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

# Policies ("realistic", and chosen so no request is ever rejected or delayed).
MIRROR_PERCENT = 1
RATE_LIMIT_PER_SECOND = 1_000_000
FAULT_DELAY = "250ms"

# meshwarden policy specs, as the control plane would send them (wire JSON `spec`).
MESHWARDEN_SPECS = {
    "trace": {"formats": ["w3c", "requestId"], "mode": "newSpan", "samplingPercentage": 100},
    "fault": {
        "delay": {"fixedDelay": FAULT_DELAY, "percentage": {"value": 0}},
        "abort": {"httpStatus": 503, "percentage": {"value": 0}},
    },
    "ratelimit": {"rate": {"requests": RATE_LIMIT_PER_SECOND, "unit": "second"}},
    "mirror": {
        "mirrors": [{"target": {"cluster": "mirror_sink"}, "percentage": {"value": MIRROR_PERCENT}}]
    },
}

# Same order as the control plane's bootstrap (control-plane/src/bootstrap.rs FILTER_ORDER).
FILTER_ORDER = ["trace", "ratelimit", "fault", "mirror"]

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
        "dynamic_stats": False,
    },
}
HUNDRED = "HUNDRED"


def _percent(n: int) -> dict:
    return {"numerator": n, "denominator": HUNDRED}


def _socket(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _cluster(name: str, port: int) -> dict:
    limit = 1_000_000
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": limit,
                    "max_pending_requests": limit,
                    "max_requests": limit,
                    "max_retries": limit,
                }
            ]
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(port)}}]}],
        },
    }


def _listener(name: str, port: int, route: dict, filters: list[dict]) -> dict:
    return {
        "name": name,
        "address": _socket(port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": HCM,
                            "stat_prefix": name,
                            "codec_type": "HTTP1",
                            "generate_request_id": False,
                            "route_config": {
                                "name": name,
                                "virtual_hosts": [
                                    {"name": "all", "domains": ["*"], "routes": [route]}
                                ],
                            },
                            "http_filters": filters + [ROUTER],
                        },
                    }
                ]
            }
        ],
    }


def upstream_bootstrap(port: int, sink_port: int) -> dict:
    """A tiny, fast upstream: Envoy answering 200 "ok" itself, on two ports (the second is
    the mirror sink)."""

    def direct(name: str, p: int) -> dict:
        route = {
            "match": {"prefix": "/"},
            "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
        }
        return _listener(name, p, route, [])

    return {"static_resources": {"listeners": [direct("upstream", port), direct("sink", sink_port)]}}


# ---- filters ---------------------------------------------------------------------------

def native_filter(kind: str) -> dict | None:
    """Envoy's own filter standing in for a meshwarden filter (None: done on the route)."""
    if kind == "trace":
        # Stand-in for trace injection: add a W3C traceparent and an x-request-id when
        # absent, each value computed per request by Envoy's formatter.
        def add(key: str, value: str) -> dict:
            return {"append": {"header": {"key": key, "value": value},
                               "append_action": "ADD_IF_ABSENT"}}

        return {
            "name": "envoy.filters.http.header_mutation",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                "mutations": {
                    "request_mutations": [
                        add("traceparent", "00-%UNIQUE_ID%-01"),
                        add("x-request-id", "%UNIQUE_ID%"),
                    ]
                },
            },
        }
    if kind == "fault":
        return {
            "name": "envoy.filters.http.fault",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                "delay": {"fixed_delay": "0.25s", "percentage": _percent(0)},
                "abort": {"http_status": 503, "percentage": _percent(0)},
            },
        }
    if kind == "ratelimit":
        return {
            "name": "envoy.filters.http.local_ratelimit",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                "stat_prefix": "rl",
                "token_bucket": {
                    "max_tokens": RATE_LIMIT_PER_SECOND,
                    "tokens_per_fill": RATE_LIMIT_PER_SECOND,
                    "fill_interval": "1s",
                },
                "filter_enabled": {"runtime_key": "rl_enabled", "default_value": _percent(100)},
                "filter_enforced": {"runtime_key": "rl_enforced", "default_value": _percent(100)},
            },
        }
    if kind == "mirror":
        return None
    raise ValueError(kind)


def policies(kind: str, n: int) -> list[dict]:
    """`n` policies of `kind`; only the last (the benchmark's, matching everything) matches
    the benchmark's requests."""
    if n <= 0:
        return []
    spec = MESHWARDEN_SPECS[kind]
    out = [{"name": f"nomatch-{i}", "match": {"path": {"exact": f"/nomatch-{i}"}}, "spec": spec}
           for i in range(1, n)]
    return out + [{"name": "bench", "match": {}, "spec": spec}]


def wire_config(kind: str, n: int | bool = 1) -> str:
    """The JSON one stage's filter receives (filters/common/src/filter_config.rs). `n` is
    the number of policies (True/False: the benchmark's policy / an empty list)."""
    n = int(n)
    return json.dumps({"policies": policies(kind, n)}, separators=(",", ":"))


def combined_wire_config(n: int = 1) -> str:
    """The combined module's configuration: one section per stage."""
    return json.dumps({k: {"policies": policies(k, n)} for k in FILTER_ORDER},
                      separators=(",", ":"))


def _wasm_filter(name: str, root_id: str, vm_id: str, code: Path, configuration: str | None) -> dict:
    config: dict = {
        "name": name,
        "root_id": root_id,
        "vm_config": {
            "vm_id": vm_id,
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": str(code)}},
        },
        # A broken VM must show up as errors, not as a fast pass-through.
        "failure_policy": "FAIL_CLOSED",
    }
    if configuration is not None:
        config["configuration"] = {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                   "value": configuration}
    return {
        "name": name,
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                         "config": config},
    }


def meshwarden_filter(kind: str, wasm_dir: Path, with_policy: int | bool = True) -> dict:
    """The single-purpose module of `kind` (`meshwarden_<kind>.wasm`, its own VM) with a
    static configuration (no control plane)."""
    name = f"meshwarden.{kind}"
    return _wasm_filter(name, name, name, wasm_dir / f"meshwarden_{kind}.wasm",
                        wire_config(kind, with_policy))


def separate_filter(kind: str, wasm_dir: Path, n: int = 1) -> dict:
    """One stage of the combined module as its own filter: root id `meshwarden.<kind>`, and
    the same code and `vm_id` as the other three, so they share one VM per worker."""
    name = f"meshwarden.{kind}"
    return _wasm_filter(name, name, "meshwarden", wasm_dir / "meshwarden.wasm",
                        wire_config(kind, n))


def combined_filter(wasm_dir: Path, n: int = 1) -> dict:
    """The combined module: every stage in one filter, one pass per request."""
    return _wasm_filter("meshwarden", "meshwarden", "meshwarden", wasm_dir / "meshwarden.wasm",
                        combined_wire_config(n))


def noop_filter(module: Path) -> dict:
    """The floor: a Rust proxy-wasm filter reading one request header (bench/noop-filter)."""
    return _wasm_filter("noop", "noop", "noop", module, None)


# ---- configurations --------------------------------------------------------------------

# Policies per kind in the scaling runs (1 is the combined configuration itself).
SCALING = [1, 10, 100, 1000]
# Policies per kind in the memory-only runs.
MEMORY_POLICIES = 100


@dataclass
class Config:
    """One proxy configuration under test."""

    name: str
    label: str
    group: str  # "bare" | "native" | "noop" | "meshwarden"
    kinds: list[str] = field(default_factory=list)
    # Counterpart for ratios: the native config a meshwarden one is compared with.
    native: str | None = None
    # meshwarden only: "single" (meshwarden_<kind>.wasm), "separate" or "combined".
    layout: str | None = None
    # meshwarden only: policies per kind (1 = the benchmark's; 0 = empty lists).
    policies: int = 1
    # Only memory is measured (no load runs).
    memory_only: bool = False


def all_configs() -> list[Config]:
    configs = [Config("bare", "bare (router only)", "bare")]
    for k in FILTER_ORDER:
        configs.append(Config(f"native-{k}", f"native {k}", "native", [k]))
    configs.append(Config("native-all", "native all four", "native", list(FILTER_ORDER)))
    configs.append(Config("noop", "no-op Wasm filter (floor)", "noop"))
    for k in FILTER_ORDER:
        configs.append(Config(f"mw-{k}", f"meshwarden {k} (meshwarden_{k}.wasm)", "meshwarden",
                              [k], f"native-{k}", "single"))
    four = list(FILTER_ORDER)
    configs += [
        Config("mw-separate", "meshwarden four separate filters (one VM)", "meshwarden", four,
               "native-all", "separate"),
        Config("mw-separate-empty", "meshwarden four separate filters, empty lists",
               "meshwarden", four, "native-all", "separate", 0),
        Config("mw-combined", "meshwarden combined", "meshwarden", four, "native-all",
               "combined"),
        Config("mw-combined-empty", "meshwarden combined, empty lists", "meshwarden", four,
               "native-all", "combined", 0),
    ]
    for n in SCALING[1:]:
        configs.append(Config(f"mw-combined-p{n}", f"meshwarden combined, {n:,} policies per kind",
                              "meshwarden", four, "native-all", "combined", n))
    configs.append(Config(f"mw-separate-p{MEMORY_POLICIES}",
                          f"meshwarden four separate filters, {MEMORY_POLICIES} policies per kind",
                          "meshwarden", four, "native-all", "separate", MEMORY_POLICIES,
                          memory_only=True))
    return configs


def scaling_config(n: int) -> str:
    """The configuration name of the combined module with `n` policies per kind."""
    return "mw-combined" if n == 1 else f"mw-combined-p{n}"


def proxy_bootstrap(cfg: Config, port: int, upstream_port: int, sink_port: int,
                    wasm_dir: Path, noop_module: Path | None = None,
                    admin_port: int | None = None) -> dict:
    """The proxy's bootstrap for `cfg`; with `admin_port`, an admin listener whose /stats
    merges the workers' histograms when read."""
    route: dict = {"match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "30s"}}
    filters: list[dict] = []
    if cfg.group == "noop":
        if noop_module is None:
            raise RuntimeError("no no-op module given")
        filters.append(noop_filter(noop_module))
    elif cfg.group == "meshwarden" and cfg.layout == "combined":
        filters.append(combined_filter(wasm_dir, cfg.policies))
    for kind in cfg.kinds:
        if cfg.group == "native":
            f = native_filter(kind)
            if f is not None:
                filters.append(f)
            elif kind == "mirror":
                route["route"]["request_mirror_policies"] = [
                    {
                        "cluster": "mirror_sink",
                        "runtime_fraction": {"default_value": _percent(MIRROR_PERCENT)},
                    }
                ]
        elif cfg.group == "meshwarden" and cfg.layout == "separate":
            filters.append(separate_filter(kind, wasm_dir, cfg.policies))
        elif cfg.group == "meshwarden" and cfg.layout == "single":
            filters.append(meshwarden_filter(kind, wasm_dir, cfg.policies))
    boot: dict = {
        "static_resources": {
            "listeners": [_listener("proxy", port, route, filters)],
            "clusters": [_cluster("upstream", upstream_port), _cluster("mirror_sink", sink_port)],
        }
    }
    if admin_port is not None:
        boot["admin"] = {"address": _socket(admin_port)}
        boot["stats_flush_on_admin"] = True
    return boot
