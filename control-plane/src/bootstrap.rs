//! Renders an Envoy bootstrap for a proxy managed by this control plane
//! (`envoy/bootstrap.yaml.tmpl`): static listener and upstream, the four meshwarden filters
//! fed over ADS/ECDS, each with a native pass-through default applied without warming, so
//! the proxy serves traffic from its first second even if the control plane is unreachable.

use meshwarden_common::Kind;
use std::collections::BTreeMap;

const TEMPLATE: &str = include_str!("../../envoy/bootstrap.yaml.tmpl");

/// Envoy `stats_config` that turns `meshwarden_<filter>_<metric>.policy.<name>` wasm stats
/// into `meshwarden_<filter>_<metric>{policy="<name>"}` in Prometheus output, and
/// `...<metric>.class.<class>.policy.<name>` into `...<metric>{class="<class>",policy="<name>"}`.
/// (The filters name stats `meshwarden_<filter>_<metric>[_total][.class.<class>].policy.<name>`;
/// see `meshwarden_filter_runtime::metrics`.)
pub const STATS_TAGS: &str = r"  stats_tags:
  - tag_name: policy
    regex: '^wasmcustom\.meshwarden_[a-z0-9_]+(?:\.class\.[a-z0-9.-]+?)?(\.policy\.([a-z0-9.-]+))$'
  - tag_name: class
    regex: '^wasmcustom\.meshwarden_[a-z0-9_]+(\.class\.([a-z0-9.-]+?))\.policy\.[a-z0-9.-]+$'";

/// Everything a bootstrap needs to know.
#[derive(Debug, Clone)]
pub struct BootstrapParams {
    pub node_id: String,
    pub node_cluster: String,
    /// Node metadata (string values); policies select proxies by these labels.
    pub labels: BTreeMap<String, String>,
    pub admin_port: u16,
    pub listen_address: String,
    pub listen_port: u16,
    /// Control-plane endpoints (`host`, `port`): one, or one per replica. Hosts are IP
    /// addresses (the cluster is STATIC).
    pub xds_endpoints: Vec<(String, u16)>,
    pub upstream_address: String,
    pub upstream_port: u16,
    /// Use the delta (incremental) ADS protocol instead of state-of-the-world.
    pub delta: bool,
    /// One combined filter or one filter per kind.
    pub layout: Layout,
}

/// How the meshwarden stages sit in the filter chain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// One filter (`meshwarden.all`) running every stage in one pass: the fastest.
    #[default]
    Combined,
    /// One filter per kind (`meshwarden.trace`, ...), sharing one Wasm VM per worker.
    Separate,
}

impl Layout {
    /// The ECDS resource names of the filters, in chain order.
    pub fn filter_names(self) -> Vec<String> {
        match self {
            Layout::Combined => vec![crate::xds::extension_configs::COMBINED_RESOURCE.into()],
            Layout::Separate => FILTER_ORDER
                .iter()
                .map(|k| crate::xds::extension_configs::resource_name(*k))
                .collect(),
        }
    }
}

/// Filter-chain order of separate filters ([`Kind::CHAIN`]).
pub const FILTER_ORDER: [Kind; 6] = Kind::CHAIN;

/// Renders the bootstrap YAML.
pub fn render(p: &BootstrapParams) -> String {
    let filters: String = p
        .layout
        .filter_names()
        .iter()
        .map(|name| filter_block(name))
        .collect();
    let json = |s: &str| serde_json::to_string(s).expect("strings serialize");
    let vars: [(&str, String); 13] = [
        ("xds_endpoints", xds_endpoints(&p.xds_endpoints)),
        (
            "xds_health_check",
            xds_health_check(p.xds_endpoints.len()).into(),
        ),
        ("node_id", json(&p.node_id)),
        ("node_cluster", json(&p.node_cluster)),
        (
            "node_metadata",
            serde_json::to_string(&p.labels).expect("map serializes"),
        ),
        ("admin_port", p.admin_port.to_string()),
        (
            "ads_api_type",
            if p.delta { "DELTA_GRPC" } else { "GRPC" }.into(),
        ),
        ("stats_tags", STATS_TAGS.into()),
        ("listen_address", p.listen_address.clone()),
        ("listen_port", p.listen_port.to_string()),
        ("meshwarden_filters", filters.trim_end().into()),
        ("upstream_address", p.upstream_address.clone()),
        ("upstream_port", p.upstream_port.to_string()),
    ];
    vars.iter().fold(TEMPLATE.to_string(), |out, (k, v)| {
        out.replace(&format!("{{{{{k}}}}}"), v)
    })
}

/// The `lb_endpoints` entries of the xDS cluster.
fn xds_endpoints(endpoints: &[(String, u16)]) -> String {
    endpoints
        .iter()
        .map(|(host, port)| {
            format!(
                "        - endpoint:\n            address:\n              socket_address: {{ address: {host}, port_value: {port} }}\n"
            )
        })
        .collect::<String>()
        .trim_end()
        .to_string()
}

/// With several control-plane replicas, a TCP health check of each, so that after one dies
/// the proxy reconnects to a live one at once instead of trying the dead one again.
fn xds_health_check(endpoints: usize) -> &'static str {
    if endpoints > 1 {
        "    health_checks:\n    - timeout: 0.5s\n      interval: 1s\n      unhealthy_threshold: 1\n      healthy_threshold: 1\n      tcp_health_check: {}\n"
    } else {
        ""
    }
}

/// TLS of the proxy's connection to the control plane (the `meshwarden_xds` cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsTls {
    /// CA bundle the control plane's certificate must chain to.
    pub ca: std::path::PathBuf,
    /// The proxy's client certificate and key (mutual TLS), if any. With mTLS on, the
    /// control plane serves only a node id that is one of this certificate's names.
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Server name sent as SNI and required among the control plane certificate's DNS
    /// names; `None` checks the chain only.
    pub server_name: Option<String>,
}

/// Marker line in the template where the xDS cluster's transport socket goes.
const XDS_TLS_MARKER: &str =
    "    # xDS TLS: `meshwarden bootstrap --xds-ca ...` puts the transport socket here.\n";

/// `bootstrap` (from [`render`]) with the xDS cluster over TLS.
pub fn with_xds_tls(bootstrap: &str, tls: &XdsTls) -> String {
    let json = |p: &std::path::Path| {
        serde_json::to_string(&p.display().to_string()).expect("strings serialize")
    };
    let mut socket = String::from(
        "    transport_socket:\n      name: envoy.transport_sockets.tls\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n",
    );
    if let Some(name) = &tls.server_name {
        let name = serde_json::to_string(name).expect("strings serialize");
        socket += &format!("        sni: {name}\n");
    }
    socket += "        common_tls_context:\n          alpn_protocols: [h2]\n";
    if let Some((cert, key)) = &tls.client {
        socket += &format!(
            "          tls_certificates:\n          - certificate_chain: {{filename: {}}}\n            private_key: {{filename: {}}}\n",
            json(cert),
            json(key)
        );
    }
    socket += &format!(
        "          validation_context:\n            trusted_ca: {{filename: {}}}\n",
        json(&tls.ca)
    );
    if let Some(name) = &tls.server_name {
        let name = serde_json::to_string(name).expect("strings serialize");
        socket += &format!(
            "            match_typed_subject_alt_names:\n            - san_type: DNS\n              matcher: {{exact: {name}}}\n"
        );
    }
    bootstrap.replacen(XDS_TLS_MARKER, &socket, 1)
}

/// Marker line in the template where the rate limit service's cluster goes.
const RATELIMIT_MARKER: &str = "  # Global rate limits: `meshwarden bootstrap --ratelimit-service host:port` adds the\n  # meshwarden_ratelimit cluster here.\n";

/// `bootstrap` (from [`render`]) with the cluster `scope: global` RateLimitPolicies call:
/// [`meshwarden_common::ratelimit::global::CLUSTER`], HTTP/2 (gRPC) to `host:port` of
/// `meshwarden-ratelimit`, resolved by DNS (a Kubernetes Service name works) and kept
/// alive. Without it, global policies get no answer and apply their `failureMode`.
pub fn with_ratelimit_service(bootstrap: &str, host: &str, port: u16) -> String {
    let name = meshwarden_common::ratelimit::global::CLUSTER;
    let host = serde_json::to_string(host).expect("strings serialize");
    let cluster = format!(
        r#"  - name: {name}
    type: STRICT_DNS
    connect_timeout: 0.25s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options:
            connection_keepalive: {{ interval: 15s, timeout: 5s }}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {host}, port_value: {port} }}
"#
    );
    bootstrap.replacen(RATELIMIT_MARKER, &cluster, 1)
}

fn filter_block(name: &str) -> String {
    format!(
        r#"          - name: {name}
            config_discovery:
              config_source:
                ads: {{}}
                resource_api_version: V3
                initial_fetch_timeout: 10s
              # Until the control plane answers (or while it is unreachable at startup), a
              # native pass-through (an RBAC filter without rules, like Istio's
              # wasm-default-allow) stands in, applied without warming: traffic flows from
              # the proxy's first second and no Wasm VM is started before it is needed.
              default_config:
                "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              apply_default_config_without_warming: true
              type_urls:
              - type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              - type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parameters of a test proxy `edge-1` in cluster `shop`.
    fn params() -> BootstrapParams {
        BootstrapParams {
            node_id: "edge-1".into(),
            node_cluster: "shop".into(),
            labels: BTreeMap::new(),
            admin_port: 9901,
            listen_address: "127.0.0.1".into(),
            listen_port: 10000,
            xds_endpoints: vec![("127.0.0.1".into(), 18000)],
            upstream_address: "127.0.0.1".into(),
            upstream_port: 8080,
            delta: false,
            layout: Layout::Combined,
        }
    }

    #[test]
    fn the_rate_limit_service_cluster_is_added_on_request() {
        let plain = render(&params());
        assert!(!plain.contains("meshwarden_ratelimit\n"));
        let out = with_ratelimit_service(&plain, "ratelimit.mesh.svc", 18081);
        let doc: serde_json::Value = serde_yaml::from_str(&out).expect("valid YAML");
        let clusters = doc["static_resources"]["clusters"].as_array().unwrap();
        let rl = clusters
            .iter()
            .find(|c| c["name"] == "meshwarden_ratelimit")
            .expect("the cluster");
        assert_eq!(rl["type"], "STRICT_DNS");
        let addr = &rl["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"];
        assert_eq!(addr["address"], "ratelimit.mesh.svc");
        assert_eq!(addr["port_value"], 18081);
        assert!(rl["typed_extension_protocol_options"]
            .to_string()
            .contains("http2"));
    }

    #[test]
    fn renders_every_placeholder() {
        let out = render(&BootstrapParams {
            labels: [("zone".to_string(), "eu".to_string())].into(),
            delta: true,
            layout: Layout::Separate,
            ..params()
        });
        assert!(!out.contains("{{"), "{out}");
        assert!(out.contains("DELTA_GRPC"));
        assert!(out.contains(r#"metadata: {"zone":"eu"}"#));
        assert_eq!(out.matches("config_discovery").count(), FILTER_ORDER.len());
        assert_eq!(
            out.matches("apply_default_config_without_warming: true")
                .count(),
            FILTER_ORDER.len()
        );
        assert!(out.find("meshwarden.trace") < out.find("meshwarden.ratelimit"));
        assert!(
            !out.contains("filename"),
            "no module is loaded before the control plane answers"
        );
    }

    #[test]
    fn the_default_layout_is_one_combined_filter() {
        assert_eq!(Layout::default(), Layout::Combined);
        assert_eq!(Layout::Combined.filter_names(), ["meshwarden.all"]);
        assert_eq!(
            Layout::Separate.filter_names(),
            [
                "meshwarden.trace",
                "meshwarden.capture",
                "meshwarden.ratelimit",
                "meshwarden.circuitbreaker",
                "meshwarden.fault",
                "meshwarden.mirror"
            ]
        );
    }

    #[test]
    fn xds_tls_goes_into_the_xds_cluster_only() {
        let plain = render(&params());
        let out = with_xds_tls(
            &plain,
            &XdsTls {
                ca: "/etc/mw/ca.pem".into(),
                client: Some(("/etc/mw/edge-1.pem".into(), "/etc/mw/edge-1.key".into())),
                server_name: Some("cp.mesh".into()),
            },
        );
        assert_eq!(out.matches("UpstreamTlsContext").count(), 1);
        let xds = out.split("- name: meshwarden_xds").nth(1).unwrap();
        let xds = xds.split("- name: upstream").next().unwrap();
        for want in [
            r#"trusted_ca: {filename: "/etc/mw/ca.pem"}"#,
            r#"certificate_chain: {filename: "/etc/mw/edge-1.pem"}"#,
            r#"private_key: {filename: "/etc/mw/edge-1.key"}"#,
            r#"sni: "cp.mesh""#,
            "alpn_protocols: [h2]",
        ] {
            assert!(xds.contains(want), "{want} missing in\n{xds}");
        }
        // Valid YAML with the socket inside the cluster.
        let doc: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
        let cluster = &doc["static_resources"]["clusters"][0];
        assert_eq!(cluster["name"], "meshwarden_xds");
        assert_eq!(
            cluster["transport_socket"]["name"],
            "envoy.transport_sockets.tls"
        );
    }
}
