"""Envoy bootstraps for the data-path benchmark.

Every proxy configuration shares one listener, one route to a fast loopback upstream and the
router; they differ only in the HTTP filters (and, for native mirroring, the route's mirror
policy). Settings follow Envoy's own benchmarking advice: no request-id generation, no
dynamic stats, circuit breakers out of the way.
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


def wire_config(kind: str, with_policy: bool = True) -> str:
    """The JSON a meshwarden filter receives (filters/common/src/filter_config.rs)."""
    if not with_policy:
        return json.dumps({"policies": []})
    return json.dumps(
        {"policies": [{"name": "bench", "match": {}, "spec": MESHWARDEN_SPECS[kind]}]},
        separators=(",", ":"),
    )


def meshwarden_filter(kind: str, wasm_dir: Path, with_policy: bool = True) -> dict:
    """A meshwarden Wasm filter with a static configuration (no control plane)."""
    name = f"meshwarden.{kind}"
    return {
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": name,
                "vm_config": {
                    "vm_id": name,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(wasm_dir / f"meshwarden_{kind}.wasm")}},
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": wire_config(kind, with_policy),
                },
                # A broken VM must show up as errors, not as a fast pass-through.
                "failure_policy": "FAIL_CLOSED",
            },
        },
    }


# ---- configurations --------------------------------------------------------------------

@dataclass
class Config:
    """One proxy configuration under test."""

    name: str
    label: str
    group: str  # "bare" | "native" | "meshwarden"
    kinds: list[str] = field(default_factory=list)
    # Counterpart for ratios: the native config a meshwarden one is compared with.
    native: str | None = None


def all_configs() -> list[Config]:
    configs = [Config("bare", "bare (router only)", "bare")]
    for k in FILTER_ORDER:
        configs.append(Config(f"native-{k}", f"native {k}", "native", [k]))
    configs.append(Config("native-all", "native all four", "native", list(FILTER_ORDER)))
    for k in FILTER_ORDER:
        configs.append(Config(f"mw-{k}", f"meshwarden {k}", "meshwarden", [k], f"native-{k}"))
    configs.append(Config("mw-all", "meshwarden all four", "meshwarden", list(FILTER_ORDER),
                          "native-all"))
    return configs


def proxy_bootstrap(cfg: Config, port: int, upstream_port: int, sink_port: int,
                    wasm_dir: Path, with_policy: dict[str, bool]) -> dict:
    """The proxy's bootstrap for `cfg`. `with_policy[kind]` False gives a meshwarden filter
    an empty policy list (for pass-through builds that reject any policy)."""
    route: dict = {"match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "30s"}}
    filters: list[dict] = []
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
        else:
            filters.append(meshwarden_filter(kind, wasm_dir, with_policy.get(kind, True)))
    return {
        "static_resources": {
            "listeners": [_listener("proxy", port, route, filters)],
            "clusters": [_cluster("upstream", upstream_port), _cluster("mirror_sink", sink_port)],
        }
    }
