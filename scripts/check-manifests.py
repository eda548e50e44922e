#!/usr/bin/env python3
"""Checks the Kubernetes manifests under deploy/ offline.

Every folder with a kustomization.yaml is rendered with `kubectl kustomize DIR`; each
resulting document is then checked:

- built-in kinds (Namespace, ServiceAccount, Deployment, Service, PersistentVolumeClaim,
  ConfigMap, ...) against the Kubernetes JSON schemas bundled with the PyPI package
  `kubernetes-validate` (strict: unknown fields are errors), plus a few cross-resource
  rules (Service selectors and target ports, PVC and ServiceAccount references);
- Istio's EnvoyFilter (networking.istio.io/v1alpha3) and WasmPlugin
  (extensions.istio.io/v1alpha1) with rules written from Istio's API reference
  (istio/api `networking/v1alpha3/envoy_filter.proto`, `extensions/v1alpha1/wasm.proto`
  and the generated CRDs): allowed fields, enum values, and meshwarden's own rules for the
  ECDS config source, the filter order and the plugin configuration.

Every problem is printed as `FILE: KIND/NAME: field.path: problem`; the exit status is 1
when there is any, 2 when the check itself cannot run. Usage:

    scripts/check-manifests.py [--root deploy] [--kubernetes-version 1.37.0] [--kubectl kubectl]

Needs Python 3.11, PyYAML and kubernetes-validate (scripts/requirements-manifests.txt).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

# --------------------------------------------------------------------------------------
# Problems


@dataclass(frozen=True)
class Problem:
    file: str
    kind: str
    name: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.kind}/{self.name}: {self.path or '-'}: {self.message}"


class Reporter:
    """Collects the problems of one document."""

    def __init__(self, file: str, doc: Any):
        self.file = file
        meta = doc.get("metadata") if isinstance(doc, dict) else None
        self.kind = str(doc.get("kind", "?")) if isinstance(doc, dict) else "?"
        self.name = str(meta.get("name", "?")) if isinstance(meta, dict) else "?"
        self.problems: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(self.file, self.kind, self.name, path, message))


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


# --------------------------------------------------------------------------------------
# Generic structural helpers

INT32 = (-(2**31), 2**31 - 1)


def camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def field(obj: dict, snake: str) -> tuple[str | None, Any]:
    """Looks up a protobuf field in a Struct written for protojson, which accepts both the
    original (snake_case) and the JSON (camelCase) name. Returns (key used, value)."""
    for key in (snake, camel(snake)):
        if key in obj:
            return key, obj[key]
    return None, None


def check_object(rep: Reporter, path: str, value: Any) -> bool:
    if not isinstance(value, dict):
        rep.add(path, f"must be an object, got {type_name(value)}")
        return False
    return True


def check_list(rep: Reporter, path: str, value: Any) -> bool:
    if not isinstance(value, list):
        rep.add(path, f"must be a list, got {type_name(value)}")
        return False
    return True


def check_string(rep: Reporter, path: str, value: Any, required: bool = False) -> bool:
    if not isinstance(value, str):
        rep.add(path, f"must be a string, got {type_name(value)}")
        return False
    if required and not value:
        rep.add(path, "must not be empty")
        return False
    return True


def check_int(rep: Reporter, path: str, value: Any, lo: int, hi: int) -> bool:
    if isinstance(value, bool) or not isinstance(value, int):
        rep.add(path, f"must be an integer, got {type_name(value)}")
        return False
    if not lo <= value <= hi:
        rep.add(path, f"must be from {lo} to {hi}, got {value}")
        return False
    return True


def check_enum(rep: Reporter, path: str, value: Any, allowed: Iterable[str]) -> bool:
    allowed = list(allowed)
    if value not in allowed:
        rep.add(path, f"must be one of {', '.join(allowed)}, got {value!r}")
        return False
    return True


def check_fields(rep: Reporter, path: str, obj: dict, allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    for key in obj:
        if key not in allowed:
            rep.add(join(path, key), f"unknown field (allowed: {', '.join(allowed)})")


def check_string_map(rep: Reporter, path: str, value: Any) -> None:
    if check_object(rep, path, value):
        for k, v in value.items():
            if not isinstance(v, str):
                rep.add(join(path, k), f"must be a string, got {type_name(v)}")


def type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def check_metadata(rep: Reporter, doc: dict) -> None:
    meta = doc.get("metadata")
    if not check_object(rep, "metadata", meta):
        return
    name = meta.get("name")
    if check_string(rep, "metadata.name", name, required=True) and not DNS1123_SUBDOMAIN.match(name):
        rep.add("metadata.name", f"{name!r} is not a DNS-1123 subdomain")
    if "namespace" in meta and check_string(rep, "metadata.namespace", meta["namespace"], required=True):
        if not DNS1123_LABEL.match(meta["namespace"]):
            rep.add("metadata.namespace", f"{meta['namespace']!r} is not a DNS-1123 label")


DNS1123_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^(?=.{1,63}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# meshwarden's PolicyName (filters/common/src/names.rs).
POLICY_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")

# Shared by EnvoyFilter and WasmPlugin (istio/api type/v1beta1/selector.proto + CRD).
TARGET_REF_FIELDS = ["group", "kind", "name", "namespace"]
TARGET_REF_GROUP = re.compile(r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
TARGET_REF_KIND = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")


def check_target_ref(rep: Reporter, path: str, ref: Any) -> None:
    if not check_object(rep, path, ref):
        return
    check_fields(rep, path, ref, TARGET_REF_FIELDS)
    for key in ("kind", "name"):
        if key not in ref:
            rep.add(join(path, key), "required")
        else:
            check_string(rep, join(path, key), ref[key], required=True)
    if isinstance(ref.get("kind"), str) and not TARGET_REF_KIND.match(ref["kind"]):
        rep.add(join(path, "kind"), f"{ref['kind']!r} is not a valid kind")
    if "group" in ref and check_string(rep, join(path, "group"), ref["group"]):
        if not TARGET_REF_GROUP.match(ref["group"]):
            rep.add(join(path, "group"), f"{ref['group']!r} is not a valid API group")
    if ref.get("namespace"):
        rep.add(join(path, "namespace"), "cross-namespace references are not supported (leave empty)")


def check_target_refs(rep: Reporter, path: str, refs: Any) -> None:
    if not check_list(rep, path, refs):
        return
    if len(refs) > 16:
        rep.add(path, f"at most 16 entries, got {len(refs)}")
    for i, ref in enumerate(refs):
        check_target_ref(rep, join(path, i), ref)


# --------------------------------------------------------------------------------------
# EnvoyFilter (networking.istio.io/v1alpha3), from istio/api envoy_filter.proto

EF_APPLY_TO = ["INVALID", "LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER",
               "ROUTE_CONFIGURATION", "VIRTUAL_HOST", "HTTP_ROUTE", "CLUSTER",
               "EXTENSION_CONFIG", "BOOTSTRAP", "LISTENER_FILTER"]
EF_CONTEXT = ["ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY", "WAYPOINT"]
EF_OPERATION = ["INVALID", "MERGE", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER",
                "INSERT_FIRST", "REPLACE", "MERGE_AND_REPLACE_LIST"]
EF_FILTER_CLASS = ["UNSPECIFIED", "AUTHN", "AUTHZ", "STATS"]
EF_ROUTE_ACTION = ["ANY", "ROUTE", "REDIRECT", "DIRECT_RESPONSE"]
EF_SPEC_FIELDS = ["workloadSelector", "targetRefs", "configPatches", "priority"]
EF_PATCH_FIELDS = ["applyTo", "match", "patch"]
EF_MATCH_FIELDS = ["context", "proxy", "listener", "routeConfiguration", "cluster", "waypoint"]
EF_MATCH_OBJECTS = ["listener", "routeConfiguration", "cluster", "waypoint"]
# Which match object each applyTo expects (EnvoyConfigObjectPatch docs).
EF_LISTENER_APPLY_TO = {"LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER", "LISTENER_FILTER"}
EF_ROUTE_APPLY_TO = {"ROUTE_CONFIGURATION", "VIRTUAL_HOST", "HTTP_ROUTE"}
# Nested match objects: field -> allowed keys, or a sub-tree.
EF_LISTENER_TREE: dict[str, Any] = {
    "portNumber": "uint32",
    "portName": "string",
    "name": "string",
    "listenerFilter": "string",
    "filterChain": {
        "name": "string",
        "sni": "string",
        "transportProtocol": "string",
        "applicationProtocols": "string",
        "destinationPort": "uint32",
        "filter": {"name": "string", "subFilter": {"name": "string"}},
    },
}
EF_ROUTE_TREE: dict[str, Any] = {
    "portNumber": "uint32",
    "portName": "string",
    "gateway": "string",
    "name": "string",
    "vhost": {"name": "string", "domainName": "string",
              "route": {"name": "string", "action": EF_ROUTE_ACTION}},
}
EF_CLUSTER_TREE: dict[str, Any] = {"portNumber": "uint32", "service": "string",
                                   "subset": "string", "name": "string"}
EF_WAYPOINT_TREE: dict[str, Any] = {"portNumber": "uint32", "route": {"name": "string"},
                                    "filter": {"name": "string", "subFilter": {"name": "string"}}}
EF_PROXY_TREE: dict[str, Any] = {"proxyVersion": "string", "metadata": "string-map"}

HCM = "envoy.filters.network.http_connection_manager"
ROUTER = "envoy.filters.http.router"

# meshwarden
MESHWARDEN_FILTERS = ["meshwarden.trace", "meshwarden.capture", "meshwarden.ratelimit", "meshwarden.circuitbreaker",
                      "meshwarden.fault", "meshwarden.mirror"]
MESHWARDEN_CONTEXTS = ["SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY"]
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
# envoy.config.core.v3 / envoy.config.listener.v3 field names (data-plane-api).
HTTP_FILTER_FIELDS = ["name", "typed_config", "config_discovery", "is_optional", "disabled"]
EXTENSION_CONFIG_SOURCE_FIELDS = ["config_source", "default_config",
                                  "apply_default_config_without_warming", "type_urls"]
CONFIG_SOURCE_FIELDS = ["authorities", "path", "path_config_source", "api_config_source",
                        "ads", "self", "initial_fetch_timeout", "resource_api_version"]
API_CONFIG_SOURCE_FIELDS = ["api_type", "transport_api_version", "cluster_names", "grpc_services",
                            "refresh_delay", "request_timeout", "rate_limit_settings",
                            "set_node_on_first_message_only", "config_validators"]
API_TYPES = ["DEPRECATED_AND_UNAVAILABLE_DO_NOT_USE", "REST", "GRPC", "DELTA_GRPC",
             "AGGREGATED_GRPC", "AGGREGATED_DELTA_GRPC"]
GRPC_SERVICE_FIELDS = ["envoy_grpc", "google_grpc", "timeout", "initial_metadata", "retry_policy"]
GOOGLE_GRPC_FIELDS = ["target_uri", "channel_credentials", "call_credentials", "stat_prefix",
                      "credentials_factory_name", "config", "per_stream_buffer_limit_bytes",
                      "channel_args"]
ENVOY_GRPC_MESSAGE = (
    "an envoy_grpc service must name a cluster defined statically in the bootstrap (and not "
    "EDS); a cluster from an EnvoyFilter CLUSTER patch arrives over CDS and Istio's "
    "outbound|... clusters are EDS, so Envoy rejects the WHOLE listener (\"ApiConfigSource "
    "must have a statically defined non-EDS cluster\") and every route of the sidecar breaks; "
    "use google_grpc with target_uri: <service>:<port> and a stat_prefix"
)
ADS_MESSAGE = (
    "`ads` means the proxy's ADS stream, which belongs to istiod: istiod does not serve "
    "meshwarden.* resources, so the filter never gets a configuration; use api_config_source "
    "with a google_grpc service pointing at meshwarden"
)


def check_tree(rep: Reporter, path: str, obj: Any, tree: dict[str, Any]) -> None:
    if not check_object(rep, path, obj):
        return
    check_fields(rep, path, obj, tree)
    for key, value in obj.items():
        spec = tree.get(key)
        p = join(path, key)
        if spec is None:
            continue
        if spec == "string":
            check_string(rep, p, value)
        elif spec == "uint32":
            check_int(rep, p, value, 0, 2**32 - 1)
        elif spec == "string-map":
            check_string_map(rep, p, value)
        elif isinstance(spec, list):
            check_enum(rep, p, value, spec)
        else:
            check_tree(rep, p, value, spec)


def check_envoyfilter(rep: Reporter, doc: dict, services: dict | None = None) -> None:
    check_metadata(rep, doc)
    spec = doc.get("spec")
    if not check_object(rep, "spec", spec):
        return
    check_fields(rep, "spec", spec, EF_SPEC_FIELDS)
    if "workloadSelector" in spec and "targetRefs" in spec:
        rep.add("spec", "only one of workloadSelector or targetRefs can be set")
    if "workloadSelector" in spec:
        ws = spec["workloadSelector"]
        if check_object(rep, "spec.workloadSelector", ws):
            check_fields(rep, "spec.workloadSelector", ws, ["labels"])
            if "labels" in ws:
                check_string_map(rep, "spec.workloadSelector.labels", ws["labels"])
    if "targetRefs" in spec:
        check_target_refs(rep, "spec.targetRefs", spec["targetRefs"])
    if "priority" in spec:
        check_int(rep, "spec.priority", spec["priority"], *INT32)
    patches = spec.get("configPatches")
    if patches is None:
        rep.add("spec.configPatches", "required: an EnvoyFilter without patches does nothing")
        return
    if not check_list(rep, "spec.configPatches", patches):
        return
    # context -> [(index, filter name)] of meshwarden filters, in list order
    meshwarden: dict[str, list[tuple[int, str]]] = {}
    discovery: dict[str, tuple[str, Any]] = {}
    for i, patch in enumerate(patches):
        base = join("spec.configPatches", i)
        found = check_config_patch(rep, base, patch, services)
        if found is None:
            continue
        context, name, cd = found
        meshwarden.setdefault(context, []).append((i, name))
        # One ECDS resource per name: every insertion of a filter must use the same source.
        if name in discovery:
            first_path, first_cd = discovery[name]
            if cd != first_cd:
                rep.add(join(join(join(base, "patch"), "value"), "config_discovery"),
                        f"differs from the config_discovery of {name} at {first_path}; every "
                        "insertion of a filter name subscribes to the same ECDS resource, keep "
                        "them identical")
        else:
            discovery[name] = (join(join(join(base, "patch"), "value"), "config_discovery"), cd)
    if meshwarden:
        check_meshwarden_order(rep, meshwarden)


def check_config_patch(rep: Reporter, base: str, patch: Any, services: dict | None
                       ) -> tuple[str, str, Any] | None:
    """Checks one configPatch; returns (context, filter name, config_discovery) for a
    meshwarden HTTP filter, else None."""
    if not check_object(rep, base, patch):
        return None
    check_fields(rep, base, patch, EF_PATCH_FIELDS)
    apply_to = patch.get("applyTo")
    if apply_to is None:
        rep.add(join(base, "applyTo"), "required")
    elif check_enum(rep, join(base, "applyTo"), apply_to, EF_APPLY_TO) and apply_to == "INVALID":
        rep.add(join(base, "applyTo"), "INVALID is a placeholder, not a target")
    if apply_to == "BOOTSTRAP":
        rep.add(join(base, "applyTo"), "BOOTSTRAP is deprecated and has no effect on "
                "sidecars; use the sidecar.istio.io/bootstrapOverride annotation")

    match = patch.get("match", {})
    mpath = join(base, "match")
    context = "ANY"
    if "match" in patch and check_object(rep, mpath, match):
        check_fields(rep, mpath, match, EF_MATCH_FIELDS)
        if "context" in match:
            if check_enum(rep, join(mpath, "context"), match["context"], EF_CONTEXT):
                context = match["context"]
        objects = [k for k in EF_MATCH_OBJECTS if k in match]
        if len(objects) > 1:
            rep.add(mpath, f"only one of {', '.join(EF_MATCH_OBJECTS)} can be set, got {', '.join(objects)}")
        if "waypoint" in match and context != "WAYPOINT":
            rep.add(join(mpath, "waypoint"), "only allowed with context WAYPOINT")
        if context == "WAYPOINT" and "waypoint" not in match:
            rep.add(mpath, "context WAYPOINT needs a waypoint match")
        for key, tree in (("listener", EF_LISTENER_TREE), ("routeConfiguration", EF_ROUTE_TREE),
                          ("cluster", EF_CLUSTER_TREE), ("waypoint", EF_WAYPOINT_TREE),
                          ("proxy", EF_PROXY_TREE)):
            if key in match:
                check_tree(rep, join(mpath, key), match[key], tree)
        if apply_to in EF_LISTENER_APPLY_TO and ("routeConfiguration" in match or "cluster" in match):
            rep.add(mpath, f"applyTo {apply_to} needs a listener match, not {objects[0]}")
        if apply_to in EF_ROUTE_APPLY_TO and ("listener" in match or "cluster" in match):
            rep.add(mpath, f"applyTo {apply_to} needs a routeConfiguration match, not {objects[0]}")
        if apply_to == "CLUSTER" and ("listener" in match or "routeConfiguration" in match):
            rep.add(mpath, f"applyTo CLUSTER needs a cluster match, not {objects[0]}")
    elif "match" not in patch:
        match = {}

    ppath = join(base, "patch")
    p = patch.get("patch")
    if p is None:
        rep.add(ppath, "required")
        return None
    if not check_object(rep, ppath, p):
        return None
    check_fields(rep, ppath, p, ["operation", "value", "filterClass"])
    operation = p.get("operation")
    if operation is None:
        rep.add(join(ppath, "operation"), "required")
    elif check_enum(rep, join(ppath, "operation"), operation, EF_OPERATION):
        if operation == "INVALID":
            rep.add(join(ppath, "operation"), "INVALID is a placeholder, not an operation")
        if operation == "REPLACE" and apply_to not in ("HTTP_FILTER", "NETWORK_FILTER"):
            rep.add(join(ppath, "operation"), "REPLACE is only valid for HTTP_FILTER and NETWORK_FILTER")
        if operation in ("ADD", "REMOVE") and apply_to in ("ROUTE_CONFIGURATION", "HTTP_ROUTE"):
            rep.add(join(ppath, "operation"), f"{operation} is ignored for {apply_to}")
    if "filterClass" in p:
        check_enum(rep, join(ppath, "filterClass"), p["filterClass"], EF_FILTER_CLASS)
        if operation != "ADD":
            rep.add(join(ppath, "filterClass"), "only used with operation ADD")
    value = p.get("value")
    if operation not in (None, "REMOVE", "INVALID"):
        if value is None:
            rep.add(join(ppath, "value"), f"required for operation {operation}")
            return None
        if not check_object(rep, join(ppath, "value"), value):
            return None

    if apply_to != "HTTP_FILTER":
        return None
    listener = match.get("listener") if isinstance(match, dict) else None
    fc = listener.get("filterChain") if isinstance(listener, dict) else None
    flt = fc.get("filter") if isinstance(fc, dict) else None
    fpath = join(mpath, "listener.filterChain.filter")
    if not isinstance(flt, dict) or flt.get("name") != HCM:
        rep.add(join(fpath, "name"), f"an HTTP_FILTER patch must match the filter {HCM}")
    name = value.get("name") if isinstance(value, dict) else None
    if not (isinstance(name, str) and name.startswith("meshwarden.")):
        return None
    # ---- a meshwarden filter
    vpath = join(ppath, "value")
    if name not in MESHWARDEN_FILTERS:
        rep.add(join(vpath, "name"), f"unknown meshwarden filter {name!r} (one of {', '.join(MESHWARDEN_FILTERS)})")
        return None
    sub = flt.get("subFilter") if isinstance(flt, dict) else None
    if not isinstance(sub, dict) or sub.get("name") != ROUTER:
        rep.add(join(fpath, "subFilter.name"), f"meshwarden filters are inserted relative to {ROUTER}; match it as subFilter")
    if operation != "INSERT_BEFORE":
        rep.add(join(ppath, "operation"), f"meshwarden filters must be inserted with INSERT_BEFORE {ROUTER}, got {operation}")
    cd = check_meshwarden_filter_value(rep, vpath, value, services)
    return context, name, cd


def check_meshwarden_filter_value(rep: Reporter, vpath: str, value: dict, services: dict | None) -> Any:
    check_fields(rep, vpath, value, HTTP_FILTER_FIELDS + [camel(f) for f in HTTP_FILTER_FIELDS if "_" in f])
    if field(value, "typed_config")[0]:
        rep.add(join(vpath, "typed_config"), "a meshwarden filter is configured by ECDS: use config_discovery, not typed_config")
    key, cd = field(value, "config_discovery")
    cdpath = join(vpath, key or "config_discovery")
    if key is None:
        rep.add(cdpath, "required: meshwarden filters get their configuration over ECDS")
        return None
    if not check_object(rep, cdpath, cd):
        return cd
    check_fields(rep, cdpath, cd, EXTENSION_CONFIG_SOURCE_FIELDS
                 + [camel(f) for f in EXTENSION_CONFIG_SOURCE_FIELDS])

    # type_urls + default_config
    tkey, type_urls = field(cd, "type_urls")
    tpath = join(cdpath, tkey or "type_urls")
    urls: list[str] = []
    if tkey is None:
        rep.add(tpath, f"required: must list {WASM_TYPE} and the type of default_config")
    elif check_list(rep, tpath, type_urls):
        urls = [u for u in type_urls if isinstance(u, str)]
        if len(urls) != len(type_urls):
            rep.add(tpath, "entries must be strings")
        if WASM_TYPE not in urls:
            rep.add(tpath, f"must contain {WASM_TYPE} (meshwarden sends Wasm filters)")
    dkey, default = field(cd, "default_config")
    dpath = join(cdpath, dkey or "default_config")
    if dkey is None:
        rep.add(dpath, "required: without a default the filter answers 500 (NFCF) while meshwarden "
                "is unreachable; use a pass-through such as an RBAC filter with no rules")
    elif check_object(rep, dpath, default):
        dtype = default.get("@type")
        if not isinstance(dtype, str) or not dtype.startswith("type.googleapis.com/"):
            rep.add(join(dpath, "@type"), "required: the type URL of the default filter")
        elif tkey is not None and dtype not in urls:
            rep.add(tpath, f"must contain the type of default_config ({dtype}); Envoy rejects the listener otherwise")
    wkey, warm = field(cd, "apply_default_config_without_warming")
    if warm is not True:
        rep.add(join(cdpath, wkey or "apply_default_config_without_warming"),
                "must be true: otherwise every listener waits for meshwarden before serving "
                "(forever with initial_fetch_timeout 0s)")

    # config_source
    skey, source = field(cd, "config_source")
    spath = join(cdpath, skey or "config_source")
    if skey is None:
        rep.add(spath, "required")
        return cd
    if not check_object(rep, spath, source):
        return cd
    check_fields(rep, spath, source, CONFIG_SOURCE_FIELDS + [camel(f) for f in CONFIG_SOURCE_FIELDS])
    if field(source, "ads")[0]:
        rep.add(join(spath, "ads"), ADS_MESSAGE)
    for other in ("path", "path_config_source", "self"):
        k, _ = field(source, other)
        if k:
            rep.add(join(spath, k), "not supported for meshwarden: use api_config_source with google_grpc")
    rkey, rv = field(source, "resource_api_version")
    if rkey and rv != "V3":
        rep.add(join(spath, rkey), f"must be V3, got {rv!r}")
    akey, api = field(source, "api_config_source")
    apath = join(spath, akey or "api_config_source")
    if akey is None:
        if not field(source, "ads")[0]:
            rep.add(apath, "required: a gRPC api_config_source with a google_grpc service")
        return cd
    if not check_object(rep, apath, api):
        return cd
    check_fields(rep, apath, api, API_CONFIG_SOURCE_FIELDS + [camel(f) for f in API_CONFIG_SOURCE_FIELDS])
    tk, api_type = field(api, "api_type")
    if tk is None:
        rep.add(join(apath, "api_type"), "required: GRPC or DELTA_GRPC")
    elif check_enum(rep, join(apath, tk), api_type, API_TYPES) and api_type not in ("GRPC", "DELTA_GRPC"):
        rep.add(join(apath, tk), f"meshwarden serves GRPC (state of the world) and DELTA_GRPC, got {api_type}")
    vk, tv = field(api, "transport_api_version")
    if tv != "V3":
        rep.add(join(apath, vk or "transport_api_version"), f"must be V3, got {tv!r}")
    ck, _ = field(api, "cluster_names")
    if ck:
        rep.add(join(apath, ck), "cluster_names is for REST sources; " + ENVOY_GRPC_MESSAGE)
    gk, services_list = field(api, "grpc_services")
    gpath = join(apath, gk or "grpc_services")
    if gk is None:
        rep.add(gpath, "required: one google_grpc service")
        return cd
    if not check_list(rep, gpath, services_list):
        return cd
    if not services_list:
        rep.add(gpath, "must not be empty")
    for j, svc in enumerate(services_list):
        sp = join(gpath, j)
        if not check_object(rep, sp, svc):
            continue
        check_fields(rep, sp, svc, GRPC_SERVICE_FIELDS + [camel(f) for f in GRPC_SERVICE_FIELDS])
        ek, _ = field(svc, "envoy_grpc")
        if ek:
            rep.add(join(sp, ek), ENVOY_GRPC_MESSAGE)
        gk2, google = field(svc, "google_grpc")
        if gk2 is None:
            if not ek:
                rep.add(sp, "needs google_grpc {target_uri, stat_prefix}")
            continue
        gp = join(sp, gk2)
        if not check_object(rep, gp, google):
            continue
        check_fields(rep, gp, google, GOOGLE_GRPC_FIELDS + [camel(f) for f in GOOGLE_GRPC_FIELDS])
        uk, uri = field(google, "target_uri")
        if uk is None:
            rep.add(join(gp, "target_uri"), "required: <service>.<namespace>.svc.cluster.local:<port>")
        elif check_string(rep, join(gp, uk), uri, required=True):
            check_target_uri(rep, join(gp, uk), uri, services)
        pk, prefix = field(google, "stat_prefix")
        if pk is None:
            rep.add(join(gp, "stat_prefix"), "required by Envoy for google_grpc")
        else:
            check_string(rep, join(gp, pk), prefix, required=True)
    return cd


TARGET_URI = re.compile(r"^(?:dns:(?:///)?)?(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})$")
SVC_HOST = re.compile(r"^(?P<svc>[a-z0-9-]+)\.(?P<ns>[a-z0-9-]+)\.svc(?:\.cluster\.local)?$")


def check_target_uri(rep: Reporter, path: str, uri: str, services: dict | None) -> None:
    m = TARGET_URI.match(uri)
    if not m or not 0 < int(m["port"]) < 65536:
        rep.add(path, f"{uri!r} is not host:port (e.g. meshwarden.meshwarden-system.svc.cluster.local:18000)")
        return
    s = SVC_HOST.match(m["host"])
    if services is None or not s:
        return
    svc = services.get((s["ns"], s["svc"]))
    if svc is None:
        return  # a Service outside these manifests
    ports = {p.get("port"): p for p in svc.get("spec", {}).get("ports", []) if isinstance(p, dict)}
    port = ports.get(int(m["port"]))
    if port is None:
        rep.add(path, f"Service {s['ns']}/{s['svc']} has no port {m['port']}")
    elif not (port.get("appProtocol") == "grpc"
              or (port.get("appProtocol") is None and str(port.get("name", "")).startswith("grpc"))):
        rep.add(path, f"port {m['port']} of Service {s['ns']}/{s['svc']} is not declared as gRPC "
                "(appProtocol: grpc or a grpc- port name)")


def check_meshwarden_order(rep: Reporter, found: dict[str, list[tuple[int, str]]]) -> None:
    contexts = MESHWARDEN_CONTEXTS if "ANY" not in found else ["ANY"]
    for context in found:
        if context not in contexts:
            rep.add("spec.configPatches", f"meshwarden filters in context {context}: use "
                    f"{' + '.join(MESHWARDEN_CONTEXTS)} (or ANY alone)")
    for context in contexts:
        entries = found.get(context, [])
        names = [n for _, n in entries]
        if not entries:
            rep.add("spec.configPatches", f"context {context}: no meshwarden filters "
                    f"(expected {', '.join(MESHWARDEN_FILTERS)})")
            continue
        at = join("spec.configPatches", entries[0][0])
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            rep.add(at, f"context {context}: {', '.join(dups)} inserted more than once")
        missing = [n for n in MESHWARDEN_FILTERS if n not in names]
        if missing:
            rep.add(at, f"context {context}: missing {', '.join(missing)}")
        seen = [n for n in dict.fromkeys(names)]
        expected = [n for n in MESHWARDEN_FILTERS if n in seen]
        if seen != expected:
            rep.add(at, f"context {context}: filters in the order {' -> '.join(seen)}; patches inserted "
                    f"before the router apply in list order, so it must be {' -> '.join(expected)}")


# --------------------------------------------------------------------------------------
# WasmPlugin (extensions.istio.io/v1alpha1), from istio/api extensions/v1alpha1/wasm.proto

WP_SPEC_FIELDS = ["selector", "targetRef", "targetRefs", "url", "sha256", "imagePullPolicy",
                  "imagePullSecret", "verificationKey", "pluginConfig", "pluginName", "phase",
                  "priority", "failStrategy", "vmConfig", "match", "type"]
WP_PULL_POLICY = ["UNSPECIFIED_POLICY", "IfNotPresent", "Always"]
WP_PHASE = ["UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"]
WP_FAIL_STRATEGY = ["FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"]
WP_TYPE = ["UNSPECIFIED_PLUGIN_TYPE", "HTTP", "NETWORK"]
WP_MODE = ["UNDEFINED", "CLIENT", "SERVER", "CLIENT_AND_SERVER"]
WP_ENV_SOURCE = ["INLINE", "HOST"]
WP_URL_SCHEMES = ["oci", "file", "http", "https"]
SHA256 = re.compile(r"^[a-f0-9]{64}$")
URL_DIGEST = re.compile(r"@sha256:([^/]*)$")
WIRE_POLICY_FIELDS = ["name", "version", "match", "spec"]
WIRE_MATCH_FIELDS = ["path", "methods", "headers", "authority"]
STRING_MATCH_FIELDS = ["exact", "prefix", "regex"]
HEADER_MATCH_FIELDS = ["name", "present", "exact", "prefix", "regex"]


def check_wasmplugin(rep: Reporter, doc: dict) -> None:
    check_metadata(rep, doc)
    spec = doc.get("spec")
    if not check_object(rep, "spec", spec):
        return
    check_fields(rep, "spec", spec, WP_SPEC_FIELDS)
    scopes = [k for k in ("selector", "targetRef", "targetRefs") if k in spec]
    if len(scopes) > 1:
        rep.add("spec", f"only one of selector, targetRef, targetRefs can be set, got {', '.join(scopes)}")
    if "selector" in spec and check_object(rep, "spec.selector", spec["selector"]):
        check_fields(rep, "spec.selector", spec["selector"], ["matchLabels"])
        labels = spec["selector"].get("matchLabels")
        if labels is not None:
            check_string_map(rep, "spec.selector.matchLabels", labels)
            if isinstance(labels, dict):
                for k in labels:
                    if not k or "*" in k:
                        rep.add(join("spec.selector.matchLabels", k), "label keys must be non-empty, without '*'")
    if "targetRef" in spec:
        check_target_ref(rep, "spec.targetRef", spec["targetRef"])
    if "targetRefs" in spec:
        check_target_refs(rep, "spec.targetRefs", spec["targetRefs"])

    url = spec.get("url")
    if url is None:
        rep.add("spec.url", "required")
    elif check_string(rep, "spec.url", url, required=True):
        scheme, sep, rest = url.partition("://")
        if not sep:
            rep.add("spec.url", f"{url!r} has no scheme (Istio would assume oci://); write one of "
                    + ", ".join(s + "://" for s in WP_URL_SCHEMES))
        elif scheme not in WP_URL_SCHEMES:
            rep.add("spec.url", f"scheme {scheme!r} is not one of {', '.join(WP_URL_SCHEMES)}")
        elif not rest:
            rep.add("spec.url", f"{url!r} names nothing after the scheme")
        digest = URL_DIGEST.search(url)
        if digest:
            if not SHA256.match(digest.group(1)):
                rep.add("spec.url", f"the @sha256: digest must be 64 lowercase hex digits, got {digest.group(1)!r}")
            elif isinstance(spec.get("sha256"), str) and spec["sha256"] and spec["sha256"] != digest.group(1):
                rep.add("spec.sha256", "differs from the @sha256: digest in url; Istio requires them to match")
    if "sha256" in spec and check_string(rep, "spec.sha256", spec["sha256"]):
        if not SHA256.match(spec["sha256"]):
            rep.add("spec.sha256", "must be 64 lowercase hex digits (for oci:// the image MANIFEST "
                    f"digest, for http(s):// the sha256 of the module), got {spec['sha256']!r}")
    for key, allowed in (("imagePullPolicy", WP_PULL_POLICY), ("phase", WP_PHASE),
                         ("failStrategy", WP_FAIL_STRATEGY), ("type", WP_TYPE)):
        if key in spec:
            check_enum(rep, join("spec", key), spec[key], allowed)
    for key in ("imagePullSecret", "verificationKey"):
        if key in spec:
            check_string(rep, join("spec", key), spec[key])
    if "priority" in spec:
        check_int(rep, "spec.priority", spec["priority"], *INT32)
    if "match" in spec and check_list(rep, "spec.match", spec["match"]):
        for i, sel in enumerate(spec["match"]):
            p = join("spec.match", i)
            if not check_object(rep, p, sel):
                continue
            check_fields(rep, p, sel, ["mode", "ports"])
            if "mode" in sel:
                check_enum(rep, join(p, "mode"), sel["mode"], WP_MODE)
            if "ports" in sel and check_list(rep, join(p, "ports"), sel["ports"]):
                for j, port in enumerate(sel["ports"]):
                    pp = join(join(p, "ports"), j)
                    if check_object(rep, pp, port):
                        check_fields(rep, pp, port, ["number"])
                        if "number" not in port:
                            rep.add(join(pp, "number"), "required")
                        else:
                            check_int(rep, join(pp, "number"), port["number"], 1, 65535)
    if "vmConfig" in spec and check_object(rep, "spec.vmConfig", spec["vmConfig"]):
        vm = spec["vmConfig"]
        check_fields(rep, "spec.vmConfig", vm, ["env"])
        if "env" in vm and check_list(rep, "spec.vmConfig.env", vm["env"]):
            if len(vm["env"]) > 256:
                rep.add("spec.vmConfig.env", "at most 256 entries")
            for i, env in enumerate(vm["env"]):
                p = join("spec.vmConfig.env", i)
                if not check_object(rep, p, env):
                    continue
                check_fields(rep, p, env, ["name", "value", "valueFrom"])
                if "name" not in env:
                    rep.add(join(p, "name"), "required")
                else:
                    check_string(rep, join(p, "name"), env["name"], required=True)
                if "valueFrom" in env:
                    check_enum(rep, join(p, "valueFrom"), env["valueFrom"], WP_ENV_SOURCE)
                    if env["valueFrom"] == "HOST" and "value" in env:
                        rep.add(join(p, "value"), "value may only be set when valueFrom is INLINE")

    plugin = spec.get("pluginName")
    if plugin is None:
        rep.add("spec.pluginName", f"required: one of {', '.join(MESHWARDEN_FILTERS)} (the filter's root id)")
    elif check_string(rep, "spec.pluginName", plugin) and plugin not in MESHWARDEN_FILTERS:
        rep.add("spec.pluginName", f"must be one of {', '.join(MESHWARDEN_FILTERS)}, got {plugin!r}")
    if spec.get("type") == "NETWORK":
        rep.add("spec.type", "meshwarden filters are HTTP filters")
    if "pluginConfig" in spec:
        check_plugin_config(rep, "spec.pluginConfig", spec["pluginConfig"])


def check_plugin_config(rep: Reporter, path: str, config: Any) -> None:
    """The filter's wire format: {"policies": [{name, version?, match?, spec}]}."""
    if not check_object(rep, path, config):
        return
    check_fields(rep, path, config, ["policies"])
    policies = config.get("policies", [])
    ppath = join(path, "policies")
    if not check_list(rep, ppath, policies):
        return
    names: set[str] = set()
    for i, pol in enumerate(policies):
        p = join(ppath, i)
        if not check_object(rep, p, pol):
            continue
        check_fields(rep, p, pol, WIRE_POLICY_FIELDS)
        name = pol.get("name")
        if name is None:
            rep.add(join(p, "name"), "required")
        elif check_string(rep, join(p, "name"), name):
            if not POLICY_NAME.match(name):
                rep.add(join(p, "name"), f"{name!r} is not a DNS-1123 name (lowercase letters, digits, '-', '.')")
            if name in names:
                rep.add(join(p, "name"), f"duplicate policy name {name!r}")
            names.add(name)
        if "version" in pol:
            check_string(rep, join(p, "version"), pol["version"])
        if "match" in pol:
            check_wire_match(rep, join(p, "match"), pol["match"])
        if "spec" not in pol:
            rep.add(join(p, "spec"), "required (the policy's spec without selector and match)")
        elif check_object(rep, join(p, "spec"), pol["spec"]):
            for key in ("selector", "match"):
                if key in pol["spec"]:
                    rep.add(join(join(p, "spec"), key), f"{key} does not belong in spec here: "
                            + ("a WasmPlugin selects workloads with spec.selector" if key == "selector"
                               else "put it next to spec, in the policy's match"))


def check_wire_match(rep: Reporter, path: str, match: Any) -> None:
    if not check_object(rep, path, match):
        return
    check_fields(rep, path, match, WIRE_MATCH_FIELDS)
    for key in ("path", "authority"):
        if key in match and check_object(rep, join(path, key), match[key]):
            check_fields(rep, join(path, key), match[key], STRING_MATCH_FIELDS)
            if len([k for k in STRING_MATCH_FIELDS if k in match[key]]) != 1:
                rep.add(join(path, key), "exactly one of exact, prefix, regex")
    if "methods" in match and check_list(rep, join(path, "methods"), match["methods"]):
        for i, m in enumerate(match["methods"]):
            if not isinstance(m, str) or not re.match(r"^[A-Z]+$", m):
                rep.add(join(join(path, "methods"), i), f"must be an uppercase method name, got {m!r}")
    if "headers" in match and check_list(rep, join(path, "headers"), match["headers"]):
        for i, h in enumerate(match["headers"]):
            hp = join(join(path, "headers"), i)
            if not check_object(rep, hp, h):
                continue
            check_fields(rep, hp, h, HEADER_MATCH_FIELDS)
            if not isinstance(h.get("name"), str) or not h.get("name"):
                rep.add(join(hp, "name"), "required")
            if len([k for k in ("present", "exact", "prefix", "regex") if k in h]) > 1:
                rep.add(hp, "at most one of present, exact, prefix, regex")


def check_wasmplugin_order(plugins: list[tuple[Reporter, dict]]) -> None:
    """WasmPlugins of meshwarden that select the same workloads in the same phase must run
    trace -> capture -> ratelimit -> circuitbreaker -> fault -> mirror: a higher priority runs first."""
    groups: dict[str, list[tuple[Reporter, dict]]] = {}
    for rep, doc in plugins:
        spec = doc.get("spec")
        if not isinstance(spec, dict) or spec.get("pluginName") not in MESHWARDEN_FILTERS:
            continue
        meta = doc.get("metadata") or {}
        key = json.dumps([meta.get("namespace"), spec.get("selector"), spec.get("targetRefs"),
                          spec.get("targetRef"), spec.get("phase", "UNSPECIFIED_PHASE"),
                          spec.get("match")], sort_keys=True)
        groups.setdefault(key, []).append((rep, doc))
    for members in groups.values():
        if len(members) < 2:
            continue
        ranked = []
        for rep, doc in members:
            prio = doc["spec"].get("priority")
            if prio is None:
                rep.add("spec.priority", "set it explicitly: the meshwarden WasmPlugins on the same "
                        "workloads are ordered by priority, and istiod sorts an unset priority last")
            elif isinstance(prio, int) and not isinstance(prio, bool):
                ranked.append((prio, doc["spec"]["pluginName"], rep))
        ranked.sort(key=lambda r: -r[0])
        for (p1, n1, r1), (p2, n2, r2) in zip(ranked, ranked[1:]):
            if p1 == p2:
                r2.add("spec.priority", f"same priority {p1} as {n1}; the order between them is undefined")
            elif MESHWARDEN_FILTERS.index(n1) > MESHWARDEN_FILTERS.index(n2):
                r2.add("spec.priority", f"{n2} (priority {p2}) would run after {n1} (priority {p1}); "
                       f"the order must be {' -> '.join(MESHWARDEN_FILTERS)} (higher priority runs first)")


# --------------------------------------------------------------------------------------
# Built-in kinds

BUILTIN_API_GROUPS = {"v1", "apps/v1", "batch/v1", "policy/v1", "networking.k8s.io/v1",
                      "rbac.authorization.k8s.io/v1", "autoscaling/v2", "storage.k8s.io/v1",
                      "scheduling.k8s.io/v1", "coordination.k8s.io/v1", "discovery.k8s.io/v1"}


def is_builtin(doc: dict) -> bool:
    return doc.get("apiVersion") in BUILTIN_API_GROUPS


def check_builtin(rep: Reporter, doc: dict, k8s_version: str) -> None:
    import kubernetes_validate  # imported here: the Istio rules work without it

    try:
        kubernetes_validate.validate(copy.deepcopy(doc), k8s_version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ""
        for part in e.absolute_path:
            path = join(path, part)
        rep.add(path, f"{e.message} (Kubernetes {e.version} schema)")
    except kubernetes_validate.SchemaNotFoundError as e:
        rep.add("apiVersion", e.message)


def check_deployment_hardening(rep: Reporter, doc: dict) -> None:
    """What deploy/ promises for its own workloads: non-root, read-only root filesystem,
    no capabilities, RuntimeDefault seccomp, probes and resource limits."""
    pod = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
    psc = pod.get("securityContext") or {}
    for i, c in enumerate(pod.get("containers") or []):
        base = join("spec.template.spec.containers", i)
        sc = c.get("securityContext") or {}
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            rep.add(join(base, "securityContext.runAsNonRoot"), "must be true")
        if sc.get("readOnlyRootFilesystem") is not True:
            rep.add(join(base, "securityContext.readOnlyRootFilesystem"), "must be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            rep.add(join(base, "securityContext.allowPrivilegeEscalation"), "must be false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            rep.add(join(base, "securityContext.capabilities.drop"), "must drop ALL")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            rep.add(join(base, "securityContext.seccompProfile.type"), "must be RuntimeDefault")
        for probe in ("readinessProbe", "livenessProbe"):
            if probe not in c:
                rep.add(join(base, probe), "required")
        limits = (c.get("resources") or {}).get("limits") or {}
        requests = (c.get("resources") or {}).get("requests") or {}
        if "memory" not in limits:
            rep.add(join(base, "resources.limits.memory"), "required")
        if not requests:
            rep.add(join(base, "resources.requests"), "required")


def check_references(docs: list[tuple[Reporter, dict]]) -> None:
    """Cross-resource rules among the rendered documents: a Service selects a workload and
    its named target ports exist; PVCs and ServiceAccounts that pods use exist."""
    def key(doc):
        meta = doc.get("metadata") or {}
        return doc.get("kind"), meta.get("namespace"), meta.get("name")
    present = {key(d) for _, d in docs}
    workloads = []
    for rep, doc in docs:
        if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet"):
            tmpl = (doc.get("spec") or {}).get("template") or {}
            workloads.append((rep, doc, tmpl))
    for rep, doc, tmpl in workloads:
        ns = (doc.get("metadata") or {}).get("namespace")
        pod = tmpl.get("spec") or {}
        sa = pod.get("serviceAccountName")
        if sa and sa != "default" and ("ServiceAccount", ns, sa) not in present:
            rep.add("spec.template.spec.serviceAccountName", f"ServiceAccount {ns}/{sa} is not in the manifests")
        for i, vol in enumerate(pod.get("volumes") or []):
            claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
            if claim and ("PersistentVolumeClaim", ns, claim) not in present:
                rep.add(join(join("spec.template.spec.volumes", i), "persistentVolumeClaim.claimName"),
                        f"PersistentVolumeClaim {ns}/{claim} is not in the manifests")
        ports = {p.get("name") for c in pod.get("containers") or [] for p in c.get("ports") or []}
        for ci, c in enumerate(pod.get("containers") or []):
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
                if isinstance(port, str) and port not in ports:
                    rep.add(join(join("spec.template.spec.containers", ci), f"{probe}.httpGet.port"),
                            f"no container port named {port!r}")
    for rep, doc in docs:
        if doc.get("kind") != "Service":
            continue
        spec = doc.get("spec") or {}
        selector = spec.get("selector")
        if not selector:
            continue
        ns = (doc.get("metadata") or {}).get("namespace")
        targets = [(w, t) for _, w, t in workloads
                   if (w.get("metadata") or {}).get("namespace") == ns
                   and all(((t.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in selector.items())]
        if not targets:
            rep.add("spec.selector", "selects no workload in the manifests")
            continue
        names = {p.get("name") for _, t in targets for c in (t.get("spec") or {}).get("containers") or []
                 for p in c.get("ports") or []}
        for i, port in enumerate(spec.get("ports") or []):
            tp = port.get("targetPort")
            if isinstance(tp, str) and tp not in names:
                rep.add(join(join("spec.ports", i), "targetPort"), f"no container port named {tp!r} in the selected pods")


# --------------------------------------------------------------------------------------
# Documents, rendering, sources


@dataclass
class Source:
    file: str  # path shown in problems
    doc: Any


def check_documents(sources: list[Source], k8s_version: str | None = None) -> list[Problem]:
    """Checks rendered documents. Without k8s_version, built-in kinds are checked only by
    the cross-resource rules (the self-tests use this to run without kubernetes-validate)."""
    reps: list[tuple[Reporter, dict]] = []
    problems: list[Problem] = []
    services = {}
    for src in sources:
        doc = src.doc
        if isinstance(doc, dict) and doc.get("kind") == "Service":
            meta = doc.get("metadata") or {}
            services[(meta.get("namespace"), meta.get("name"))] = doc
    wasmplugins = []
    for src in sources:
        doc = src.doc
        rep = Reporter(src.file, doc)
        if not isinstance(doc, dict):
            rep.add("", f"a document must be an object, got {type_name(doc)}")
            problems += rep.problems
            continue
        reps.append((rep, doc))
        kind, api = doc.get("kind"), doc.get("apiVersion")
        if kind == "EnvoyFilter":
            if api != "networking.istio.io/v1alpha3":
                rep.add("apiVersion", f"must be networking.istio.io/v1alpha3, got {api!r}")
            check_envoyfilter(rep, doc, services)
        elif kind == "WasmPlugin":
            if api != "extensions.istio.io/v1alpha1":
                rep.add("apiVersion", f"must be extensions.istio.io/v1alpha1, got {api!r}")
            check_wasmplugin(rep, doc)
            wasmplugins.append((rep, doc))
        elif is_builtin(doc):
            if k8s_version:
                check_builtin(rep, doc, k8s_version)
            check_metadata(rep, doc)
            if kind == "Deployment":
                check_deployment_hardening(rep, doc)
        else:
            rep.add("kind", f"{api}/{kind} is not a kind this checker knows; add rules for it")
    check_wasmplugin_order(wasmplugins)
    check_references(reps)
    for rep, _ in reps:
        problems += rep.problems
    return problems


def find_kustomizations(root: Path) -> list[Path]:
    names = ("kustomization.yaml", "kustomization.yml", "Kustomization")
    return sorted({p.parent for n in names for p in root.rglob(n)})


def render(kubectl: str, directory: Path) -> list[Any]:
    out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError((out.stderr or out.stdout).strip().splitlines()[-1] if (out.stderr or out.stdout).strip()
                           else f"exit status {out.returncode}")
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


def doc_key(doc: Any) -> tuple:
    if not isinstance(doc, dict):
        return ("?", None, None)
    meta = doc.get("metadata") or {}
    return doc.get("kind"), meta.get("namespace"), meta.get("name")


def index_sources(root: Path, repo: Path) -> tuple[dict[tuple, str], list[Problem], list[Path]]:
    """Maps (kind, namespace, name) of every document in the YAML files under root to its
    file; returns parse problems and the list of files with documents."""
    index: dict[tuple, str] = {}
    problems: list[Problem] = []
    files: list[Path] = []
    for path in sorted(list(root.rglob("*.yaml")) + list(root.rglob("*.yml"))):
        if path.name in ("kustomization.yaml", "kustomization.yml"):
            continue
        rel = display(path, repo)
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except yaml.YAMLError as e:
            problems.append(Problem(rel, "-", "-", "", f"not valid YAML: {e}".replace("\n", " ")))
            continue
        if docs:
            files.append(path)
        for d in docs:
            k = doc_key(d)
            index.setdefault(k, rel)
            index.setdefault((k[0], None, k[2]), rel)
    return index, problems, files


def display(path: Path, repo: Path) -> str:
    try:
        return str(path.resolve().relative_to(repo.resolve()))
    except ValueError:
        return str(path)


def is_patch_file(path: Path) -> bool:
    return path.name.endswith("-patch.yaml") or path.name.endswith(".patch.yaml")


def run(root: Path, repo: Path, kubectl: str, k8s_version: str) -> tuple[list[Problem], int, list[str]]:
    """Renders and checks everything under root. Returns (problems, documents, notes)."""
    problems: list[Problem] = []
    index, parse_problems, files = index_sources(root, repo)
    problems += parse_problems
    sources: list[Source] = []
    seen: set[str] = set()
    rendered_keys: set[tuple] = set()
    dirs = find_kustomizations(root)
    for d in dirs:
        kfile = display(d / "kustomization.yaml", repo)
        try:
            docs = render(kubectl, d)
        except RuntimeError as e:
            problems.append(Problem(kfile, "Kustomization", d.name, "", f"kubectl kustomize failed: {e}"))
            continue
        if not docs:
            problems.append(Problem(kfile, "Kustomization", d.name, "", "renders no documents"))
        for doc in docs:
            k = doc_key(doc)
            rendered_keys.add((k[0], k[2]))
            canon = json.dumps(doc, sort_keys=True)
            if canon in seen:
                continue  # the same document rendered by a parent kustomization
            seen.add(canon)
            file = index.get(k) or index.get((k[0], None, k[2])) or kfile
            sources.append(Source(file, doc))
    # Every file with documents is either rendered by some kustomization or an example patch.
    for path in files:
        rel = display(path, repo)
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        if is_patch_file(path):
            for d in docs:
                rep = Reporter(rel, d)
                if not isinstance(d, dict) or not all(k in d for k in ("apiVersion", "kind", "metadata")):
                    rep.add("", "a patch needs apiVersion, kind and metadata.name")
                problems += rep.problems
            continue
        for d in docs:
            k = doc_key(d)
            if (k[0], k[2]) not in rendered_keys:
                problems.append(Problem(rel, str(k[0]), str(k[2]), "",
                                        "not rendered by any kustomization.yaml under " + display(root, repo)))
    problems += check_documents(sources, k8s_version)
    return problems, len(sources), [f"{len(dirs)} kustomizations rendered, Kubernetes schemas {k8s_version}"]


def main(argv: list[str] | None = None) -> int:
    repo = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=repo / "deploy", help="folder to check (default: deploy/)")
    parser.add_argument("--kubectl", default=os.environ.get("KUBECTL", "kubectl"), help="kubectl binary")
    parser.add_argument("--kubernetes-version", default=None,
                        help="Kubernetes schema version bundled with kubernetes-validate (default: the newest)")
    args = parser.parse_args(argv)
    try:
        import kubernetes_validate
    except ImportError:
        print("check-manifests: the Python package kubernetes-validate is missing; "
              "pip install -r scripts/requirements-manifests.txt", file=sys.stderr)
        return 2
    version = args.kubernetes_version or kubernetes_validate.latest_version()
    if not args.root.is_dir():
        print(f"check-manifests: {args.root} is not a directory", file=sys.stderr)
        return 2
    try:
        subprocess.run([args.kubectl, "version", "--client"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        print(f"check-manifests: cannot run {args.kubectl!r} (needed for `kubectl kustomize`)", file=sys.stderr)
        return 2
    problems, count, notes = run(args.root, repo, args.kubectl, version)
    for p in problems:
        print(p)
    for n in notes:
        print(f"manifests: {n}")
    print(f"manifests: {count} documents checked, {len(problems)} problem{'s' if len(problems) != 1 else ''}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
