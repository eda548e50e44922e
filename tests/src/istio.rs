//! An Envoy bootstrapped the way istio-agent bootstraps a sidecar, with the meshwarden
//! filters inserted exactly as the shipped EnvoyFilter (`deploy/istio/envoyfilter/`) says.
//!
//! What is Istio's here: the node (id `sidecar~IP~POD.NS~NS.svc.cluster.local`, cluster
//! `APP.NS`, metadata `NAMESPACE`, `LABELS`, `ISTIO_VERSION`, ...), Istio's stats
//! configuration (no default tags, the stats matcher keeping `wasm` stats), the listener
//! and cluster names (`virtualInbound`, `inbound|PORT||`, `outbound|PORT||FQDN`), and the
//! bootstrap override passed with `--config-yaml` as istio-agent does. What stands in for
//! istiod: the listeners and clusters come from files (Envoy's path-based LDS and CDS), not
//! from an ADS server; either way they are not meshwarden's, and the meshwarden filters
//! reach the control plane only through their own `config_discovery` sources.

use crate::control_plane::ControlPlane;
use crate::envoy::Envoy;
use crate::paths::repo_root;
use crate::ports::free_port;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The service port the sidecar's inbound listener stands for.
pub const SERVICE_PORT: u16 = 9080;
/// The mesh service copies are mirrored to, through its Istio outbound cluster.
pub const SHADOW_SERVICE: &str = "reviews-shadow.bookinfo.svc.cluster.local";
/// The Istio outbound cluster of the control plane's HTTP port (module downloads).
pub const MODULE_CLUSTER: &str = "outbound|18001||meshwarden.meshwarden-system.svc.cluster.local";

/// How to start the sidecar.
#[derive(Debug, Clone)]
pub struct SidecarOptions {
    pub pod: String,
    pub namespace: String,
    /// Workload labels (metadata `LABELS`); `app` also names the node cluster.
    pub labels: BTreeMap<String, String>,
    /// `DELTA_GRPC` (Istio's default) instead of `GRPC` on the meshwarden config sources.
    pub delta: bool,
    /// Fetch the modules over HTTP from the control plane (metadata
    /// `MESHWARDEN_MODULE_CLUSTER`) instead of reading them from a local path.
    pub remote_modules: bool,
}

impl SidecarOptions {
    /// A sidecar of pod `pod` in `namespace` with workload labels `labels`.
    pub fn new(pod: &str, namespace: &str, labels: &[(&str, &str)]) -> Self {
        Self {
            pod: pod.into(),
            namespace: namespace.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            delta: true,
            remote_modules: true,
        }
    }

    /// The node id istio-agent gives this sidecar.
    pub fn node_id(&self) -> String {
        format!(
            "sidecar~127.0.0.1~{}.{ns}~{ns}.svc.cluster.local",
            self.pod,
            ns = self.namespace
        )
    }
}

/// The `patch.value`s (one per kind) of the SIDECAR_INBOUND context of the shipped EnvoyFilter, in
/// order, with the control plane's address put in for the Service's.
pub fn envoyfilter_http_filters(grpc_port: u16, delta: bool) -> anyhow::Result<Vec<Value>> {
    let path = repo_root().join("deploy/istio/envoyfilter/envoyfilter.yaml");
    let text =
        std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let doc: Value = serde_yaml::from_str(&text)?;
    let mut filters = Vec::new();
    for patch in doc["spec"]["configPatches"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if patch["applyTo"] != "HTTP_FILTER" || patch["match"]["context"] != "SIDECAR_INBOUND" {
            continue;
        }
        anyhow::ensure!(
            patch["patch"]["operation"] == "INSERT_BEFORE"
                && patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"]
                    == "envoy.filters.http.router",
            "every meshwarden patch goes right before the router"
        );
        let mut value = patch["patch"]["value"].clone();
        let source = &mut value["config_discovery"]["config_source"]["api_config_source"];
        source["api_type"] = json!(if delta { "DELTA_GRPC" } else { "GRPC" });
        for service in source["grpc_services"].as_array_mut().into_iter().flatten() {
            anyhow::ensure!(
                service.get("google_grpc").is_some(),
                "the shipped config source must be google_grpc"
            );
            service["google_grpc"]["target_uri"] = json!(format!("127.0.0.1:{grpc_port}"));
        }
        filters.push(value);
    }
    anyhow::ensure!(
        filters.len() == meshwarden_common::Kind::ALL.len(),
        "{} SIDECAR_INBOUND filters",
        filters.len()
    );
    Ok(filters)
}

/// The clusters the shipped EnvoyFilter adds (`applyTo: CLUSTER`, `operation: ADD`), as
/// istiod would send them over CDS, with the control plane's address put in for the
/// Service's.
pub fn envoyfilter_clusters(grpc_port: u16) -> anyhow::Result<Vec<Value>> {
    let path = repo_root().join("deploy/istio/envoyfilter/envoyfilter.yaml");
    let text =
        std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let doc: Value = serde_yaml::from_str(&text)?;
    let mut clusters = Vec::new();
    for patch in doc["spec"]["configPatches"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["applyTo"] == "CLUSTER" && p["patch"]["operation"] == "ADD")
    {
        let mut cluster = patch["patch"]["value"].clone();
        cluster["@type"] = json!("type.googleapis.com/envoy.config.cluster.v3.Cluster");
        let endpoints = cluster["load_assignment"]["endpoints"].as_array_mut();
        for endpoint in endpoints.into_iter().flatten() {
            for lb in endpoint["lb_endpoints"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                lb["endpoint"]["address"]["socket_address"] =
                    json!({"address": "127.0.0.1", "port_value": grpc_port});
            }
        }
        clusters.push(cluster);
    }
    Ok(clusters)
}

/// The `custom_bootstrap.json` of the shipped bootstrap-override ConfigMap
/// (`deploy/istio/telemetry/`), as istio-agent passes it to Envoy with `--config-yaml`.
pub fn bootstrap_override() -> anyhow::Result<String> {
    let path = repo_root().join("deploy/istio/telemetry/bootstrap-override.yaml");
    let text =
        std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let doc: Value = serde_yaml::from_str(&text)?;
    doc["data"]["custom_bootstrap.json"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no data.custom_bootstrap.json in {}", path.display()))
}

fn static_cluster(name: &str, port: u16) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
        ]}]}
    })
}

/// An Istio-shaped sidecar in front of `app_port`, mirroring targets at `shadow_port`.
pub struct Sidecar {
    pub envoy: Envoy,
    pub options: SidecarOptions,
}

impl Sidecar {
    /// Starts the sidecar and waits until it is live.
    pub async fn start(
        cp: &ControlPlane,
        app_port: u16,
        shadow_port: u16,
        options: SidecarOptions,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let admin_port = free_port();
        let listen_port = free_port();
        let inbound_cluster = format!("inbound|{SERVICE_PORT}||");
        let mut http_filters = envoyfilter_http_filters(cp.grpc_port, options.delta)?;
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
        }));
        let listener = json!({
            "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
            "name": "virtualInbound",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": format!("inbound_0.0.0.0_{SERVICE_PORT}"),
                    "route_config": {"name": "inbound|http|9080", "virtual_hosts": [{
                        "name": "inbound|http|9080", "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": inbound_cluster, "timeout": "30s"}}]
                    }]},
                    "http_filters": http_filters
                }
            }]}]
        });
        let mut clusters = vec![
            static_cluster(&inbound_cluster, app_port),
            static_cluster(
                &format!("outbound|{SERVICE_PORT}||{SHADOW_SERVICE}"),
                shadow_port,
            ),
            static_cluster(MODULE_CLUSTER, cp.http_port),
        ];
        clusters.extend(envoyfilter_clusters(cp.grpc_port)?);
        let clusters = json!({ "resources": clusters });
        let lds = dir.path().join("lds.json");
        let cds = dir.path().join("cds.json");
        std::fs::write(&lds, json!({"resources": [listener]}).to_string())?;
        std::fs::write(&cds, clusters.to_string())?;
        let app = options
            .labels
            .get("app")
            .cloned()
            .unwrap_or_else(|| "istio-proxy".into());
        let mut metadata = json!({
            "NAMESPACE": options.namespace,
            "NAME": options.pod,
            "WORKLOAD_NAME": app,
            "CLUSTER_ID": "Kubernetes",
            "MESH_ID": "cluster.local",
            "ISTIO_VERSION": "1.29.1",
            "INTERCEPTION_MODE": "REDIRECT",
            "INSTANCE_IPS": "127.0.0.1",
            "SERVICE_ACCOUNT": "default",
            "LABELS": options.labels,
            "ENVOY_PROMETHEUS_PORT": 15090,
            "ENVOY_STATUS_PORT": 15021,
        });
        if options.remote_modules {
            metadata["MESHWARDEN_MODULE_CLUSTER"] = json!(MODULE_CLUSTER);
        }
        let bootstrap = json!({
            "node": {
                "id": options.node_id(),
                "cluster": format!("{app}.{}", options.namespace),
                "metadata": metadata,
            },
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "dynamic_resources": {
                "lds_config": {"path_config_source": {"path": lds}, "resource_api_version": "V3"},
                "cds_config": {"path_config_source": {"path": cds}, "resource_api_version": "V3"},
            },
            // Istio's stats configuration: no default tag extraction, and a matcher that
            // keeps (among others) every `wasm` stat.
            "stats_config": {
                "use_all_default_tags": false,
                "stats_tags": [
                    {"tag_name": "cluster_name", "regex": "^cluster\\.((.+?(\\..+?\\.svc\\.cluster\\.local)?)\\.)"},
                    {"tag_name": "http_conn_manager_prefix", "regex": "^http\\.(((outbound_([0-9]{1,3}\\.{0,1}){4}_\\d{0,5})|([^\\.]+))\\.)"}
                ],
                "stats_matcher": {"inclusion_list": {"patterns": [
                    {"prefix": "reporter="}, {"prefix": "cluster_manager"}, {"prefix": "listener_manager"},
                    {"prefix": "server"}, {"prefix": "cluster.xds-grpc"}, {"prefix": "wasm"},
                    {"suffix": "rbac.allowed"}, {"suffix": "rbac.denied"}, {"prefix": "component"},
                    {"prefix": "extension_config_discovery"}
                ]}}
            }
        });
        let overrides = vec!["--config-yaml".to_string(), bootstrap_override()?];
        let envoy = Envoy::start_bootstrap_with_args(
            dir,
            &bootstrap.to_string(),
            admin_port,
            listen_port,
            2,
            &overrides,
        )
        .await?;
        Ok(Self { envoy, options })
    }
}
