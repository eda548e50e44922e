//! Bootstraps for Envoys configured statically (no control plane): one HTTP listener on
//! loopback with a route to a static upstream, the caller's HTTP filters before the router,
//! and the caller's extra clusters. For WasmPlugin-style and native-filter tests.

use serde_json::{json, Value};

/// One static HTTP listener in front of a static upstream.
#[derive(Debug, Clone)]
pub struct StaticEnvoy {
    pub admin_port: u16,
    pub listen_port: u16,
    pub upstream_port: u16,
    /// Extra fields of the route action (e.g. `rate_limits`).
    pub route_extra: Value,
    /// HTTP filters, in order, before the router.
    pub http_filters: Vec<Value>,
    /// Clusters besides `upstream`.
    pub clusters: Vec<Value>,
}

/// A STATIC cluster `name` to `127.0.0.1:port`, speaking HTTP/2 upstream if `http2`.
pub fn static_cluster(name: &str, port: u16, http2: bool) -> Value {
    let mut cluster = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
        ]}]}
    });
    if http2 {
        cluster["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        });
    }
    cluster
}

impl StaticEnvoy {
    /// The bootstrap (JSON, which Envoy reads as YAML).
    pub fn bootstrap(&self) -> String {
        let mut route = json!({"cluster": "upstream", "timeout": "30s"});
        if let (Some(route), Some(extra)) = (route.as_object_mut(), self.route_extra.as_object()) {
            route.extend(extra.clone());
        }
        let mut filters = self.http_filters.clone();
        filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
        }));
        let mut clusters = vec![static_cluster("upstream", self.upstream_port, false)];
        clusters.extend(self.clusters.iter().cloned());
        json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}}},
            "static_resources": {
                "listeners": [{
                    "name": "ingress",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": self.listen_port}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "ingress",
                            "codec_type": "AUTO",
                            "route_config": {"name": "local", "virtual_hosts": [{
                                "name": "all", "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"}, "route": route}]
                            }]},
                            "http_filters": filters
                        }
                    }]}]
                }],
                "clusters": clusters
            }
        })
        .to_string()
    }
}
