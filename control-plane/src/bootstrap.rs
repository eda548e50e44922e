//! Renders an Envoy bootstrap for a proxy managed by this control plane
//! (`envoy/bootstrap.yaml.tmpl`): static listener and upstream, the four meshwarden filters
//! fed over ADS/ECDS, each with a native pass-through default applied without warming, so
//! the proxy serves traffic from its first second even if the control plane is unreachable.

use meshwarden_common::Kind;
use std::collections::BTreeMap;

const TEMPLATE: &str = include_str!("../../envoy/bootstrap.yaml.tmpl");

/// Envoy `stats_config` that turns `meshwarden_<filter>_<metric>.policy.<name>` wasm stats
/// into `meshwarden_<filter>_<metric>{policy="<name>"}` in Prometheus output.
/// (The filters name stats `meshwarden_<filter>_<metric>[_total].policy.<name>`; see
/// `meshwarden_filter_runtime::metrics`.)
pub const STATS_TAGS: &str = r"  stats_tags:
  - tag_name: policy
    regex: '^wasmcustom\.meshwarden_[a-z0-9_]+(\.policy\.([a-z0-9.-]+))$'";

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
    pub xds_address: String,
    pub xds_port: u16,
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
pub const FILTER_ORDER: [Kind; 4] = Kind::CHAIN;

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
        ("xds_address", p.xds_address.clone()),
        ("xds_port", p.xds_port.to_string()),
        ("upstream_address", p.upstream_address.clone()),
        ("upstream_port", p.upstream_port.to_string()),
    ];
    vars.iter().fold(TEMPLATE.to_string(), |out, (k, v)| {
        out.replace(&format!("{{{{{k}}}}}"), v)
    })
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

    #[test]
    fn renders_every_placeholder() {
        let out = render(&BootstrapParams {
            node_id: "edge-1".into(),
            node_cluster: "shop".into(),
            labels: [("zone".to_string(), "eu".to_string())].into(),
            admin_port: 9901,
            listen_address: "127.0.0.1".into(),
            listen_port: 10000,
            xds_address: "127.0.0.1".into(),
            xds_port: 18000,
            upstream_address: "127.0.0.1".into(),
            upstream_port: 8080,
            delta: true,
            layout: Layout::Separate,
        });
        assert!(!out.contains("{{"), "{out}");
        assert!(out.contains("DELTA_GRPC"));
        assert!(out.contains(r#"metadata: {"zone":"eu"}"#));
        assert_eq!(out.matches("config_discovery").count(), 4);
        assert_eq!(
            out.matches("apply_default_config_without_warming: true")
                .count(),
            4
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
                "meshwarden.ratelimit",
                "meshwarden.fault",
                "meshwarden.mirror"
            ]
        );
    }
}
