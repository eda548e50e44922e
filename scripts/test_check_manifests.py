"""Self-tests of scripts/check-manifests.py: the shipped manifests pass, and broken
documents are reported.

From the repository root:
    python3 -m unittest scripts/test_check_manifests.py
    python3 -m unittest discover -s scripts          # same tests
The tests that need kubernetes-validate or kubectl are skipped when they are missing
(`make check-manifests` installs the first into .venv).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import shutil
import sys
import tempfile
import unittest
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEPLOY = REPO / "deploy"

_spec = importlib.util.spec_from_file_location("check_manifests", HERE / "check-manifests.py")
cm = importlib.util.module_from_spec(_spec)
sys.modules["check_manifests"] = cm
_spec.loader.exec_module(cm)

try:
    import kubernetes_validate  # noqa: F401
    HAVE_KV = True
except ImportError:
    HAVE_KV = False
HAVE_KUBECTL = shutil.which("kubectl") is not None


def load(rel: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / rel).read_text()) if d is not None]


def envoyfilter() -> dict:
    (doc,) = load("istio/envoyfilter/envoyfilter.yaml")
    return doc


def wasmplugins() -> list[dict]:
    return load("istio/wasmplugin/wasmplugins.yaml")


def control_plane() -> list[dict]:
    docs = []
    for f in ("namespace.yaml", "serviceaccount.yaml", "pvc.yaml", "deployment.yaml", "service.yaml"):
        docs += load(f"control-plane/{f}")
    return docs


def check(*docs: dict, k8s: str | None = None) -> list:
    return cm.check_documents([cm.Source("test.yaml", d) for d in docs], k8s)


def value(ef: dict, i: int) -> dict:
    return ef["spec"]["configPatches"][i]["patch"]["value"]


def api_source(ef: dict, i: int) -> dict:
    return value(ef, i)["config_discovery"]["config_source"]["api_config_source"]


class Base(unittest.TestCase):
    def assertReported(self, problems, path_part: str, message_part: str):
        lines = [str(p) for p in problems]
        for p in problems:
            if path_part in p.path and message_part in p.message:
                return
        self.fail(f"no problem with path ~{path_part!r} and message ~{message_part!r}; got:\n" + "\n".join(lines))


class ShippedManifests(Base):
    def test_istio_manifests_pass(self):
        self.assertEqual([str(p) for p in check(envoyfilter(), *wasmplugins(), *control_plane())], [])

    def test_envoyfilter_shape_the_e2e_test_relies_on(self):
        docs = load("istio/envoyfilter/envoyfilter.yaml")
        self.assertEqual(len(docs), 1)
        ef = docs[0]
        self.assertEqual(ef["kind"], "EnvoyFilter")
        inbound = [p["patch"]["value"] for p in ef["spec"]["configPatches"]
                   if p["match"]["context"] == "SIDECAR_INBOUND"]
        self.assertEqual([v["name"] for v in inbound], cm.MESHWARDEN_FILTERS)

    def test_bootstrap_override_is_json_with_the_policy_tag(self):
        import json
        (cfg,) = load("istio/telemetry/bootstrap-override.yaml")
        boot = json.loads(cfg["data"]["custom_bootstrap.json"])
        (tag, class_tag) = boot["stats_config"]["stats_tags"]
        self.assertEqual(tag["tag_name"], "policy")
        import re
        m = re.match(tag["regex"], "wasmcustom.meshwarden_fault_aborts_injected_total.policy.checkout-chaos")
        self.assertEqual(m.group(2), "checkout-chaos")
        self.assertEqual(m.group(1), ".policy.checkout-chaos")
        self.assertEqual(class_tag["tag_name"], "class")
        shed = "wasmcustom.meshwarden_ratelimit_shed_total.class.critical.policy.api.v2"
        m = re.match(tag["regex"], shed)
        self.assertEqual((m.group(1), m.group(2)), (".policy.api.v2", "api.v2"))
        m = re.match(class_tag["regex"], shed)
        self.assertEqual((m.group(1), m.group(2)), (".class.critical", "critical"))
        self.assertIsNone(re.match(class_tag["regex"], "wasmcustom.meshwarden_ratelimit_shed_total.policy.api"))

    @unittest.skipUnless(HAVE_KV, "kubernetes-validate not installed")
    def test_builtin_kinds_pass_the_kubernetes_schemas(self):
        (cfg,) = load("istio/telemetry/bootstrap-override.yaml")
        problems = check(*control_plane(), cfg, k8s=kubernetes_validate.latest_version())
        self.assertEqual([str(p) for p in problems], [])


class EnvoyFilterRules(Base):
    def test_envoy_grpc_source_is_an_error(self):
        ef = envoyfilter()
        api_source(ef, 0)["grpc_services"] = [{"envoy_grpc": {"cluster_name": "meshwarden"}}]
        problems = check(ef)
        self.assertReported(problems, "spec.configPatches[0].patch.value.config_discovery.config_source"
                            ".api_config_source.grpc_services[0].envoy_grpc", "statically defined non-EDS cluster")
        self.assertReported(problems, "grpc_services[0].envoy_grpc", "WHOLE listener")

    def test_envoy_grpc_in_camel_case_is_caught_too(self):
        ef = envoyfilter()
        api_source(ef, 5)["grpc_services"] = [{"envoyGrpc": {"clusterName": "meshwarden"}}]
        self.assertReported(check(ef), "configPatches[5]", "statically defined non-EDS cluster")

    def test_ads_source_is_an_error(self):
        ef = envoyfilter()
        value(ef, 1)["config_discovery"]["config_source"] = {"ads": {}, "resource_api_version": "V3"}
        self.assertReported(check(ef), "configPatches[1].patch.value.config_discovery.config_source.ads", "istiod")

    def test_wrong_enums(self):
        ef = envoyfilter()
        ef["spec"]["configPatches"][0]["match"]["context"] = "SIDECAR_INBOUN"
        ef["spec"]["configPatches"][1]["applyTo"] = "HTTP_FILTERS"
        ef["spec"]["configPatches"][2]["patch"]["operation"] = "INSERT_BEFOR"
        api_source(ef, 3)["api_type"] = "DELTA"
        problems = check(ef)
        self.assertReported(problems, "configPatches[0].match.context", "must be one of ANY, SIDECAR_INBOUND")
        self.assertReported(problems, "configPatches[1].applyTo", "must be one of")
        self.assertReported(problems, "configPatches[2].patch.operation", "must be one of")
        self.assertReported(problems, "configPatches[3].patch.value.config_discovery.config_source"
                            ".api_config_source.api_type", "must be one of")

    def test_missing_default_config(self):
        ef = envoyfilter()
        del value(ef, 2)["config_discovery"]["default_config"]
        self.assertReported(check(ef), "configPatches[2].patch.value.config_discovery.default_config", "NFCF")

    def test_default_config_type_must_be_in_type_urls(self):
        ef = envoyfilter()
        value(ef, 0)["config_discovery"]["type_urls"] = [cm.WASM_TYPE]
        self.assertReported(check(ef), "config_discovery.type_urls", "must contain the type of default_config")

    def test_wasm_type_url_is_required(self):
        ef = envoyfilter()
        value(ef, 0)["config_discovery"]["type_urls"] = [
            "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"]
        self.assertReported(check(ef), "config_discovery.type_urls", "envoy.extensions.filters.http.wasm.v3.Wasm")

    def test_default_must_apply_without_warming(self):
        ef = envoyfilter()
        value(ef, 0)["config_discovery"]["apply_default_config_without_warming"] = False
        self.assertReported(check(ef), "apply_default_config_without_warming", "must be true")

    def test_wrong_filter_order(self):
        ef = envoyfilter()
        patches = ef["spec"]["configPatches"]
        patches[6], patches[10] = patches[10], patches[6]  # SIDECAR_OUTBOUND: fault before trace
        self.assertReported(check(ef), "spec.configPatches[6]",
                            "context SIDECAR_OUTBOUND: filters in the order meshwarden.fault -> "
                            "meshwarden.capture -> meshwarden.ratelimit -> meshwarden.circuitbreaker -> "
                            "meshwarden.trace")

    def test_missing_and_duplicate_filters(self):
        ef = envoyfilter()
        patches = ef["spec"]["configPatches"]
        patches[17] = copy.deepcopy(patches[16])  # GATEWAY: fault twice, no mirror
        problems = check(ef)
        self.assertReported(problems, "spec.configPatches[12]", "context GATEWAY: missing meshwarden.mirror")
        self.assertReported(problems, "spec.configPatches[12]", "meshwarden.fault inserted more than once")

    def test_missing_context(self):
        ef = envoyfilter()
        ef["spec"]["configPatches"] = ef["spec"]["configPatches"][:10]
        self.assertReported(check(ef), "spec.configPatches", "context GATEWAY: no meshwarden filters")

    def test_must_insert_before_the_router(self):
        ef = envoyfilter()
        ef["spec"]["configPatches"][0]["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] = \
            "envoy.filters.http.cors"
        ef["spec"]["configPatches"][1]["patch"]["operation"] = "INSERT_AFTER"
        ef["spec"]["configPatches"][2]["match"]["listener"]["filterChain"]["filter"]["name"] = "envoy.tcp_proxy"
        problems = check(ef)
        self.assertReported(problems, "configPatches[0].match.listener.filterChain.filter.subFilter.name", "router")
        self.assertReported(problems, "configPatches[1].patch.operation", "INSERT_BEFORE")
        self.assertReported(problems, "configPatches[2].match.listener.filterChain.filter.name",
                            "http_connection_manager")

    def test_unknown_fields(self):
        ef = envoyfilter()
        ef["spec"]["workloadLabels"] = {"app": "x"}
        ef["spec"]["configPatches"][0]["match"]["listener"]["filterChain"]["filter"]["subfilter"] = {}
        value(ef, 0)["config_discovery"]["config_source"]["api_config_source"]["grpc_service"] = []
        problems = check(ef)
        self.assertReported(problems, "spec.workloadLabels", "unknown field")
        self.assertReported(problems, "filterChain.filter.subfilter", "unknown field")
        self.assertReported(problems, "api_config_source.grpc_service", "unknown field")

    def test_selector_and_target_refs_exclude_each_other(self):
        ef = envoyfilter()
        ef["spec"]["workloadSelector"] = {"labels": {"app": "reviews"}}
        ef["spec"]["targetRefs"] = [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"}]
        self.assertReported(check(ef), "spec", "only one of workloadSelector or targetRefs")

    def test_one_definition_per_filter_name(self):
        ef = envoyfilter()
        api_source(ef, 12)["grpc_services"][0]["google_grpc"]["target_uri"] = "meshwarden.other.svc:18000"
        self.assertReported(check(ef), "configPatches[12].patch.value.config_discovery",
                            "differs from the config_discovery of meshwarden.trace")

    def test_target_uri_must_be_host_port_of_the_grpc_port(self):
        ef = envoyfilter()
        for i in range(15):
            api_source(ef, i)["grpc_services"][0]["google_grpc"]["target_uri"] = \
                "meshwarden.meshwarden-system.svc.cluster.local:18001"
        self.assertReported(check(ef, *control_plane()), "google_grpc.target_uri", "is not declared as gRPC")
        ef2 = envoyfilter()
        api_source(ef2, 0)["grpc_services"][0]["google_grpc"]["target_uri"] = "http://meshwarden:18000"
        self.assertReported(check(ef2), "google_grpc.target_uri", "is not host:port")

    def test_stat_prefix_required(self):
        ef = envoyfilter()
        del api_source(ef, 0)["grpc_services"][0]["google_grpc"]["stat_prefix"]
        self.assertReported(check(ef), "google_grpc.stat_prefix", "required")


class WasmPluginRules(Base):
    def plugin(self, filter_name: str) -> tuple[list[dict], dict]:
        docs = wasmplugins()
        (doc,) = [d for d in docs if d["spec"]["pluginName"] == filter_name]
        return docs, doc

    def test_bad_sha256(self):
        docs, wp = self.plugin("meshwarden.trace")
        wp["spec"]["sha256"] = "ABCDEF" + "0" * 58
        self.assertReported(check(*docs), "spec.sha256", "64 lowercase hex digits")
        wp["spec"]["sha256"] = "abc123"
        self.assertReported(check(*docs), "spec.sha256", "64 lowercase hex digits")

    def test_sha256_must_match_the_url_digest(self):
        docs, wp = self.plugin("meshwarden.trace")
        wp["spec"]["url"] = "oci://registry.example.com/meshwarden/trace@sha256:" + "a" * 64
        wp["spec"]["sha256"] = "b" * 64
        self.assertReported(check(*docs), "spec.sha256", "differs from the @sha256: digest")
        wp["spec"]["sha256"] = "a" * 64
        self.assertEqual([str(p) for p in check(*docs)], [])

    def test_wrong_enums(self):
        docs, wp = self.plugin("meshwarden.fault")
        wp["spec"]["phase"] = "UNSPECIFIED"
        wp["spec"]["failStrategy"] = "FAIL_OPEN_"
        wp["spec"]["imagePullPolicy"] = "IfNotPresnt"
        wp["spec"]["match"] = [{"mode": "INBOUND"}]
        problems = check(*docs)
        self.assertReported(problems, "spec.phase", "UNSPECIFIED_PHASE, AUTHN, AUTHZ, STATS")
        self.assertReported(problems, "spec.failStrategy", "FAIL_CLOSE, FAIL_OPEN, FAIL_RELOAD")
        self.assertReported(problems, "spec.imagePullPolicy", "must be one of")
        self.assertReported(problems, "spec.match[0].mode", "CLIENT_AND_SERVER")

    def test_url_scheme(self):
        docs, wp = self.plugin("meshwarden.mirror")
        wp["spec"]["url"] = "ftp://example.com/mirror.wasm"
        self.assertReported(check(*docs), "spec.url", "scheme 'ftp'")
        wp["spec"]["url"] = "registry.example.com/meshwarden/mirror:0.1.0"
        self.assertReported(check(*docs), "spec.url", "no scheme")

    def test_plugin_name(self):
        docs, wp = self.plugin("meshwarden.mirror")
        wp["spec"]["pluginName"] = "mirror"
        self.assertReported(check(*docs), "spec.pluginName", "must be one of meshwarden.trace")

    def test_unknown_field(self):
        docs, wp = self.plugin("meshwarden.trace")
        wp["spec"]["config"] = {}
        self.assertReported(check(*docs), "spec.config", "unknown field")

    def test_priority_order(self):
        docs, wp = self.plugin("meshwarden.mirror")
        wp["spec"]["priority"] = 35  # mirror would run before ratelimit
        self.assertReported(check(*docs), "spec.priority", "the order must be meshwarden.trace -> meshwarden.capture -> meshwarden.ratelimit")
        del wp["spec"]["priority"]
        self.assertReported(check(*docs), "spec.priority", "set it explicitly")

    def test_plugin_config(self):
        docs, wp = self.plugin("meshwarden.ratelimit")
        policies = wp["spec"]["pluginConfig"]["policies"]
        policies[0]["name"] = "Reviews_Per_User"
        policies[1]["selector"] = {"clusters": ["x"]}
        policies[1]["spec"]["match"] = {"path": {"prefix": "/"}}
        wp["spec"]["pluginConfig"]["policy"] = []
        problems = check(*docs)
        self.assertReported(problems, "spec.pluginConfig.policies[0].name", "not a DNS-1123 name")
        self.assertReported(problems, "spec.pluginConfig.policies[1].selector", "unknown field")
        self.assertReported(problems, "spec.pluginConfig.policies[1].spec.match", "does not belong in spec")
        self.assertReported(problems, "spec.pluginConfig.policy", "unknown field")

    def test_plugin_config_match(self):
        docs, wp = self.plugin("meshwarden.fault")
        match = wp["spec"]["pluginConfig"]["policies"][0]["match"]
        match["path"] = {"prefix": "/a", "exact": "/b"}
        match["methods"] = ["get"]
        problems = check(*docs)
        self.assertReported(problems, "policies[0].match.path", "exactly one of exact, prefix, regex")
        self.assertReported(problems, "policies[0].match.methods[0]", "uppercase")


class BuiltinKinds(Base):
    def test_cross_references(self):
        docs = control_plane()
        svc = [d for d in docs if d["kind"] == "Service"][0]
        svc["spec"]["ports"][0]["targetPort"] = "grpc"
        dep = [d for d in docs if d["kind"] == "Deployment"][0]
        dep["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = "other"
        problems = check(*docs)
        self.assertReported(problems, "spec.ports[0].targetPort", "no container port named 'grpc'")
        self.assertReported(problems, "spec.template.spec.volumes[0].persistentVolumeClaim.claimName",
                            "is not in the manifests")

    def test_hardening(self):
        docs = control_plane()
        dep = [d for d in docs if d["kind"] == "Deployment"][0]
        del dep["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"]
        self.assertReported(check(*docs), "securityContext.readOnlyRootFilesystem", "must be true")

    @unittest.skipUnless(HAVE_KV, "kubernetes-validate not installed")
    def test_schema_errors(self):
        docs = control_plane()
        dep = [d for d in docs if d["kind"] == "Deployment"][0]
        dep["spec"]["strategy"]["type"] = {"name": "Recreate"}
        svc = [d for d in docs if d["kind"] == "Service"][0]
        svc["spec"]["ports"][0]["appProtocl"] = "grpc"
        problems = check(*docs, k8s=kubernetes_validate.latest_version())
        self.assertReported(problems, "spec.strategy.type", "is not of type 'string'")
        self.assertReported(problems, "spec.ports[0]", "appProtocl")

    def test_problem_line_format(self):
        ef = envoyfilter()
        api_source(ef, 0)["grpc_services"] = [{"envoy_grpc": {"cluster_name": "x"}}]
        line = str(check(ef)[0])
        self.assertRegex(line, r"^test\.yaml: EnvoyFilter/meshwarden: spec\.configPatches\[0\]\.\S+: .+")


@unittest.skipUnless(HAVE_KV and HAVE_KUBECTL, "needs kubernetes-validate and kubectl")
class EndToEnd(Base):
    def run_main(self, root: Path) -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = cm.main(["--root", str(root)])
        return rc, out.getvalue()

    def test_deploy_passes(self):
        rc, out = self.run_main(DEPLOY)
        self.assertEqual(rc, 0, out)
        self.assertRegex(out, r"manifests: \d+ documents checked, 0 problems")

    def test_broken_copy_fails(self):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "deploy"
            shutil.copytree(DEPLOY, root)
            path = root / "istio/envoyfilter/envoyfilter.yaml"
            text = path.read_text()
            text = text.replace("- google_grpc:\n                  target_uri: "
                                "meshwarden.meshwarden-system.svc.cluster.local:18000\n"
                                "                  stat_prefix: meshwarden_xds",
                                "- envoy_grpc:\n                  cluster_name: meshwarden", 1)
            path.write_text(text)
            (root / "istio/stray.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: stray}\n")
            rc, out = self.run_main(root)
        self.assertEqual(rc, 1, out)
        self.assertIn("EnvoyFilter/meshwarden: spec.configPatches[0].patch.value.config_discovery"
                      ".config_source.api_config_source.grpc_services[0].envoy_grpc: an envoy_grpc service", out)
        self.assertIn("ConfigMap/stray: -: not rendered by any kustomization.yaml", out)
        self.assertRegex(out, r"manifests: \d+ documents checked, [1-9]\d* problems?")


if __name__ == "__main__":
    unittest.main()
