//! ECDS: the Wasm filter configurations with the policies that select a proxy, in two
//! layouts a proxy picks by the names its filter chain subscribes to:
//!
//! - the combined filter, `meshwarden.all`: one filter running every stage in one pass
//!   (trace → rate limit → circuit breaker → fault → mirror), its configuration one
//!   section per stage
//!   (`{"trace": {"policies": [...]}, ...}`);
//! - separate filters, `meshwarden.<filter>` per kind: the same module under root id
//!   `meshwarden.<filter>`, running that stage alone. Every filter names the same VM
//!   (`vm_id` `meshwarden`, same code and settings), so Envoy runs one VM per worker for all.
//!
//! The module (`meshwarden.wasm`) comes from a local path (the default) or, for proxies
//! without the module file, over HTTP from the control plane (`code.remote` with its
//! SHA-256).

use super::modules::{ModuleInfo, ModuleSet};
use super::node::ProxyNode;
use super::types::ResourceType;
use crate::policy_set::{short_hash, StoredPolicy};
use envoy_types::pb::envoy::config::core::v3::{
    async_data_source, data_source, AsyncDataSource, DataSource, HttpUri, RemoteDataSource,
    TypedExtensionConfig,
};
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::wasm::v3::{
    plugin_config, EnvironmentVariables, FailurePolicy, PluginConfig, VmConfig,
};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, StringValue};
use envoy_types::util::pack_any;
use meshwarden_common::filter_config::{WireConfig, WirePolicy};
use meshwarden_common::Kind;
use meshwarden_xds::Resource;
use serde_json::Value;
use std::sync::Arc;

/// Type URL of the ECDS resources.
pub const TYPED_EXTENSION_CONFIG: &str = meshwarden_xds::EXTENSION_CONFIG_TYPE;

/// The Wasm runtime every filter runs in.
pub const WASM_RUNTIME: &str = "envoy.wasm.runtime.v8";

/// VM environment variable carrying the module hash. Envoy skips an ECDS update whose
/// `typed_config` is byte-identical to the current one, so without it a rebuilt module at
/// the same path would never be loaded.
pub const MODULE_SHA256_ENV: &str = "MESHWARDEN_MODULE_SHA256";

/// Path under the control plane's HTTP port where modules are served by hash.
pub const MODULE_HTTP_PATH: &str = "/modules/";

/// How long after a code-cache-miss rejection the configuration is sent again.
const MODULE_FETCH_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// How long Envoy may take to fetch a module over HTTP.
const MODULE_FETCH_TIMEOUT_S: i64 = 30;

/// ECDS resource name of the combined filter (every stage in one pass).
pub const COMBINED_RESOURCE: &str = "meshwarden.all";

/// VM id every meshwarden filter uses: identical VM settings make Envoy share one VM per
/// worker between the separate filters (and the combined one).
pub const VM_ID: &str = "meshwarden";

/// ECDS resource name of a kind's separate filter (`meshwarden.trace`).
pub fn resource_name(kind: Kind) -> String {
    format!("meshwarden.{}", kind.filter())
}

/// The kind whose filter a resource name configures.
pub fn kind_of_resource(name: &str) -> Option<Kind> {
    let filter = name.strip_prefix("meshwarden.")?;
    Kind::ALL.into_iter().find(|k| k.filter() == filter)
}

/// The filter configurations, one resource per kind.
#[derive(Debug, Clone, Default)]
pub struct ExtensionConfigs {
    /// Cluster through which every proxy fetches modules over HTTP, unless its node
    /// metadata names another; `None` keeps local paths for proxies that name none.
    pub default_module_cluster: Option<String>,
}

impl ResourceType for ExtensionConfigs {
    fn type_url(&self) -> &'static str {
        TYPED_EXTENSION_CONFIG
    }

    fn kinds(&self) -> &'static [Kind] {
        &Kind::ALL
    }

    fn variant(&self, node: &ProxyNode) -> Option<String> {
        node.module_cluster
            .clone()
            .or_else(|| self.default_module_cluster.clone())
    }

    /// Envoy rejects a filter whose remote module is not in its code cache yet, fetches
    /// the module in the background (`nack_on_code_cache_miss`) and takes the same
    /// configuration once it is there. Its message does not tell a cache miss from a
    /// module that cannot load, so every Wasm rejection of a proxy fetching modules over
    /// HTTP is retried (a bounded number of times; then it stands as a NACK).
    fn retry_rejected(&self, node: &ProxyNode, message: &str) -> Option<std::time::Duration> {
        (self.variant(node).is_some() && message.contains("Wasm")).then_some(MODULE_FETCH_RETRY)
    }

    fn compose(
        &self,
        kind: Kind,
        policies: &[&StoredPolicy],
        modules: &ModuleSet,
        variant: Option<&str>,
    ) -> Vec<Arc<Resource>> {
        let source = ModuleSource::of_variant(variant);
        vec![Arc::new(compose(
            kind,
            policies.iter().copied(),
            modules,
            source,
        ))]
    }

    fn compose_all(
        &self,
        selected: &[(Kind, Vec<&StoredPolicy>)],
        modules: &ModuleSet,
        variant: Option<&str>,
    ) -> Vec<Arc<Resource>> {
        let source = ModuleSource::of_variant(variant);
        vec![Arc::new(compose_combined(selected, modules, source))]
    }
}

/// Where Envoy loads a module from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleSource<'a> {
    /// The module's absolute path on the proxy's host.
    Local,
    /// Over HTTP from the control plane, through this Envoy cluster, checked by SHA-256.
    Remote { cluster: &'a str },
}

impl<'a> ModuleSource<'a> {
    /// The source for a proxy's variant: the module cluster it fetches through, if any.
    pub fn of_variant(variant: Option<&'a str>) -> Self {
        match variant {
            Some(cluster) => ModuleSource::Remote { cluster },
            None => ModuleSource::Local,
        }
    }
}

/// The wire configuration a filter gets from `policies` (already selected for the proxy,
/// in evaluation order).
pub fn wire_config<'a>(policies: impl IntoIterator<Item = &'a StoredPolicy>) -> WireConfig {
    WireConfig {
        policies: policies
            .into_iter()
            .map(|p| WirePolicy {
                name: p.doc.name().clone(),
                version: p.version.clone(),
                request_match: p.doc.request_match.clone(),
                spec: p.doc.body_value(),
            })
            .collect(),
    }
}

/// Builds the separate filter resource of `kind` from the selected policies (in name
/// order). Its summary lists the policy names.
pub fn compose<'a>(
    kind: Kind,
    selected: impl IntoIterator<Item = &'a StoredPolicy>,
    modules: &ModuleSet,
    source: ModuleSource<'_>,
) -> Resource {
    let wire = wire_config(selected);
    let summary = wire.policies.iter().map(|p| p.name.to_string()).collect();
    let value = serde_json::to_value(&wire).expect("wire configs always serialize");
    let name = resource_name(kind);
    filter_resource(name.clone(), &name, &value, summary, modules, source)
}

/// Builds the combined filter resource ([`COMBINED_RESOURCE`]): one configuration section
/// per kind (named by the kind's filter), each holding that kind's selected policies.
/// Its summary lists the policy names, kind by kind in chain order.
pub fn compose_combined(
    selected: &[(Kind, Vec<&StoredPolicy>)],
    modules: &ModuleSet,
    source: ModuleSource<'_>,
) -> Resource {
    let mut sections = serde_json::Map::new();
    let mut summary = Vec::new();
    for &kind in &Kind::CHAIN {
        let policies = selected
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, p)| p.as_slice())
            .unwrap_or_default();
        let wire = wire_config(policies.iter().copied());
        summary.extend(wire.policies.iter().map(|p| p.name.to_string()));
        sections.insert(
            kind.filter().to_string(),
            serde_json::to_value(&wire).expect("wire configs always serialize"),
        );
    }
    filter_resource(
        COMBINED_RESOURCE.to_string(),
        "meshwarden",
        &Value::Object(sections),
        summary,
        modules,
        source,
    )
}

/// A Wasm filter resource `name` running the module under `root_id` with `config`.
fn filter_resource(
    name: String,
    root_id: &str,
    config: &Value,
    summary: Vec<String>,
    modules: &ModuleSet,
    source: ModuleSource<'_>,
) -> Resource {
    let wire_json = canonical_json(config);
    let module = modules.module();
    let body = pack_any(TypedExtensionConfig {
        name: name.clone(),
        typed_config: Some(pack_any(wasm_filter(
            &name, root_id, &wire_json, module, source,
        ))),
    });
    // The module's location is part of the content: a proxy moved from a local path to
    // HTTP delivery must see a new version.
    let location = match source {
        ModuleSource::Local => module.sha256.clone(),
        ModuleSource::Remote { cluster } => format!("{}@{cluster}", module.sha256),
    };
    Resource {
        version: resource_version(&wire_json, &location),
        name,
        body,
        summary,
    }
}

/// Version of a resource: the same on every replica for the same content.
pub fn resource_version(wire_json: &str, module_sha256: &str) -> String {
    let mut bytes = Vec::with_capacity(wire_json.len() + 1 + module_sha256.len());
    bytes.extend_from_slice(wire_json.as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(module_sha256.as_bytes());
    short_hash(&bytes)
}

/// The HTTP path of a module on the control plane.
pub fn module_http_path(module: &ModuleInfo) -> String {
    format!("{MODULE_HTTP_PATH}{}.wasm", module.sha256)
}

fn code_source(module: &ModuleInfo, source: ModuleSource<'_>) -> AsyncDataSource {
    let specifier = match source {
        ModuleSource::Local => async_data_source::Specifier::Local(DataSource {
            specifier: Some(data_source::Specifier::Filename(
                module.path.display().to_string(),
            )),
            watched_directory: None,
        }),
        ModuleSource::Remote { cluster } => {
            async_data_source::Specifier::Remote(RemoteDataSource {
                http_uri: Some(HttpUri {
                    // Envoy connects through `cluster`; the host part is only the authority.
                    uri: format!("http://meshwarden{}", module_http_path(module)),
                    timeout: Some(PbDuration {
                        seconds: MODULE_FETCH_TIMEOUT_S,
                        nanos: 0,
                    }),
                    http_upstream_type: Some(
                        envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType::Cluster(
                            cluster.to_string(),
                        ),
                    ),
                }),
                sha256: module.sha256.clone(),
                retry_policy: None,
            })
        }
    };
    AsyncDataSource {
        specifier: Some(specifier),
    }
}

fn wasm_filter(
    name: &str,
    root_id: &str,
    wire_json: &str,
    module: &ModuleInfo,
    source: ModuleSource<'_>,
) -> Wasm {
    let vm_config = VmConfig {
        vm_id: VM_ID.to_string(),
        runtime: WASM_RUNTIME.to_string(),
        code: Some(code_source(module, source)),
        // Remote modules: Envoy cannot fail an xDS update asynchronously, so it rejects the
        // update while it fetches the module and takes it again from its cache.
        nack_on_code_cache_miss: matches!(source, ModuleSource::Remote { .. }),
        environment_variables: Some(EnvironmentVariables {
            key_values: [(MODULE_SHA256_ENV.to_string(), module.sha256.clone())].into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    Wasm {
        config: Some(PluginConfig {
            name: name.to_string(),
            root_id: root_id.to_string(),
            configuration: Some(pack_any(StringValue {
                value: wire_json.to_string(),
            })),
            failure_policy: FailurePolicy::FailOpen as i32,
            vm: Some(plugin_config::Vm::VmConfig(vm_config)),
            ..Default::default()
        }),
    }
}

/// Serializes JSON with object keys sorted at every level and no whitespace, whatever
/// serde_json's map ordering is compiled with, so equal content gives equal bytes.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::wasm::v3::plugin_config::Vm;
    use meshwarden_common::trace::TraceSpec;
    use meshwarden_common::FilterConfig;
    use prost::Message;
    use serde_json::json;
    use std::path::PathBuf;

    fn modules() -> ModuleSet {
        ModuleSet::new(ModuleInfo {
            path: PathBuf::from("/m/meshwarden.wasm"),
            sha256: "sha-m".into(),
        })
    }

    fn stored(name: &str, spec: Value) -> StoredPolicy {
        crate::test_fixtures::trace(name, spec)
    }

    /// The filter configuration inside a composed resource.
    fn wire_json(r: &Resource) -> String {
        let tec = TypedExtensionConfig::decode(r.body.value.as_slice()).unwrap();
        let cfg = Wasm::decode(tec.typed_config.unwrap().value.as_slice())
            .unwrap()
            .config
            .unwrap();
        StringValue::decode(cfg.configuration.unwrap().value.as_slice())
            .unwrap()
            .value
    }

    #[test]
    fn remote_modules_are_fetched_through_a_cluster_and_checked() {
        let p = stored("t1", json!({}));
        let m = modules();
        let local = compose(Kind::TracePolicy, [&p], &m, ModuleSource::Local);
        let remote = compose(
            Kind::TracePolicy,
            [&p],
            &m,
            ModuleSource::Remote { cluster: "cp-http" },
        );
        assert_ne!(local.version, remote.version);
        assert_eq!(wire_json(&local), wire_json(&remote));
        let tec = TypedExtensionConfig::decode(remote.body.value.as_slice()).unwrap();
        let cfg = Wasm::decode(tec.typed_config.unwrap().value.as_slice())
            .unwrap()
            .config
            .unwrap();
        let Some(Vm::VmConfig(vm)) = cfg.vm else {
            panic!("vm config missing")
        };
        let Some(async_data_source::Specifier::Remote(remote)) = vm.code.unwrap().specifier else {
            panic!("remote code expected")
        };
        assert_eq!(remote.sha256, "sha-m");
        let uri = remote.http_uri.unwrap();
        assert_eq!(uri.uri, "http://meshwarden/modules/sha-m.wasm");
        assert_eq!(
            uri.http_upstream_type,
            Some(
                envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType::Cluster(
                    "cp-http".into()
                )
            )
        );
    }

    #[test]
    fn resource_names_round_trip() {
        for kind in Kind::ALL {
            assert_eq!(kind_of_resource(&resource_name(kind)), Some(kind));
        }
        assert_eq!(kind_of_resource("meshwarden.nope"), None);
        assert_eq!(kind_of_resource("trace"), None);
    }

    #[test]
    fn canonical_json_sorts_keys_everywhere() {
        let v = json!({"b": [{"z": 1, "a": null}], "a": "x\"y"});
        assert_eq!(canonical_json(&v), r#"{"a":"x\"y","b":[{"a":null,"z":1}]}"#);
    }

    #[test]
    fn composes_a_wasm_typed_extension_config() {
        let p = stored(
            "t1",
            json!({"match": {"path": {"prefix": "/api"}}, "samplingPercentage": 50}),
        );
        let r = compose(Kind::TracePolicy, [&p], &modules(), ModuleSource::Local);
        assert_eq!(r.name, "meshwarden.trace");
        assert_eq!(r.summary, vec!["t1".to_string()]);
        assert_eq!(r.body.type_url, TYPED_EXTENSION_CONFIG);
        let tec = TypedExtensionConfig::decode(r.body.value.as_slice()).unwrap();
        assert_eq!(tec.name, "meshwarden.trace");
        let any = tec.typed_config.unwrap();
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
        );
        let cfg = Wasm::decode(any.value.as_slice()).unwrap().config.unwrap();
        assert_eq!(cfg.root_id, "meshwarden.trace");
        assert_eq!(cfg.failure_policy, FailurePolicy::FailOpen as i32);
        let Some(Vm::VmConfig(vm)) = cfg.vm else {
            panic!("vm config missing")
        };
        assert_eq!(vm.vm_id, VM_ID);
        assert_eq!(vm.runtime, WASM_RUNTIME);
        let Some(async_data_source::Specifier::Local(local)) = vm.code.unwrap().specifier else {
            panic!("local code expected")
        };
        assert_eq!(
            local.specifier,
            Some(data_source::Specifier::Filename(
                "/m/meshwarden.wasm".into()
            ))
        );
        let conf = cfg.configuration.unwrap();
        assert_eq!(
            conf.type_url,
            "type.googleapis.com/google.protobuf.StringValue"
        );
        let json = StringValue::decode(conf.value.as_slice()).unwrap().value;
        assert_eq!(json, wire_json(&r));
        // The filter accepts exactly what we send.
        let parsed = FilterConfig::<TraceSpec>::parse(json.as_bytes()).unwrap();
        assert_eq!(parsed.policies.len(), 1);
        assert_eq!(parsed.policies[0].version, p.version);
    }

    #[test]
    fn empty_selection_is_a_pass_through() {
        let r = compose(Kind::FaultPolicy, [], &modules(), ModuleSource::Local);
        assert_eq!(wire_json(&r), r#"{"policies":[]}"#);
        assert!(r.summary.is_empty());
    }

    #[test]
    fn versions_follow_content_and_module() {
        let a = stored("a", json!({}));
        let b = stored("b", json!({"samplingPercentage": 10}));
        let m = modules();
        let v1 = compose(Kind::TracePolicy, [&a], &m, ModuleSource::Local).version;
        assert_eq!(
            v1,
            compose(Kind::TracePolicy, [&a], &m, ModuleSource::Local).version
        );
        assert_ne!(
            v1,
            compose(Kind::TracePolicy, [&a, &b], &m, ModuleSource::Local).version
        );
        let other = ModuleSet::new(ModuleInfo {
            sha256: "different".into(),
            ..m.module().clone()
        });
        assert_ne!(
            v1,
            compose(Kind::TracePolicy, [&a], &other, ModuleSource::Local).version
        );
    }

    #[test]
    fn the_combined_filter_has_a_section_per_kind_and_shares_the_vm() {
        let t = stored("t1", json!({}));
        let m = modules();
        let r = compose_combined(
            &[(Kind::TracePolicy, vec![&t]), (Kind::FaultPolicy, vec![])],
            &m,
            ModuleSource::Local,
        );
        assert_eq!(r.name, COMBINED_RESOURCE);
        assert_eq!(r.summary, vec!["t1".to_string()]);
        let json: Value = serde_json::from_str(&wire_json(&r)).unwrap();
        let sections: Vec<&String> = json.as_object().unwrap().keys().collect();
        assert_eq!(
            sections,
            [
                "capture",
                "circuitbreaker",
                "fault",
                "mirror",
                "ratelimit",
                "trace"
            ]
        );
        assert_eq!(json["trace"]["policies"][0]["name"], "t1");
        assert_eq!(json["fault"]["policies"], json!([]));
        let tec = TypedExtensionConfig::decode(r.body.value.as_slice()).unwrap();
        let cfg = Wasm::decode(tec.typed_config.unwrap().value.as_slice())
            .unwrap()
            .config
            .unwrap();
        assert_eq!(cfg.root_id, "meshwarden");
        let Some(Vm::VmConfig(vm)) = cfg.vm else {
            panic!("vm config missing")
        };
        assert_eq!(vm.vm_id, VM_ID);
        // A separate filter runs the same VM (same id, code and settings).
        let separate = compose(Kind::TracePolicy, [&t], &m, ModuleSource::Local);
        let tec = TypedExtensionConfig::decode(separate.body.value.as_slice()).unwrap();
        let cfg2 = Wasm::decode(tec.typed_config.unwrap().value.as_slice())
            .unwrap()
            .config
            .unwrap();
        assert_eq!(cfg2.vm, Some(Vm::VmConfig(vm)));
    }
}
