//! Composes the ECDS resources of one proxy: for every kind, a `TypedExtensionConfig` named
//! `meshwarden.<filter>` holding the Wasm filter configuration with the policies of that kind
//! that select the proxy.

use super::modules::{ModuleInfo, ModuleSet};
use crate::policy_set::{short_hash, StoredPolicy};
use envoy_types::pb::envoy::config::core::v3::{
    async_data_source, data_source, AsyncDataSource, DataSource, TypedExtensionConfig,
};
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::wasm::v3::{
    plugin_config, EnvironmentVariables, FailurePolicy, PluginConfig, VmConfig,
};
use envoy_types::pb::google::protobuf::{Any, StringValue};
use envoy_types::util::pack_any;
use meshwarden_common::filter_config::{WireConfig, WirePolicy};
use meshwarden_common::Kind;
use serde_json::Value;
use std::fmt::Write;

/// Type URL of the only resource type served.
pub const TYPED_EXTENSION_CONFIG: &str =
    "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";

/// The Wasm runtime every filter runs in.
pub const WASM_RUNTIME: &str = "envoy.wasm.runtime.v8";

/// VM environment variable carrying the module hash. Envoy skips an ECDS update whose
/// `typed_config` is byte-identical to the current one, so without it a rebuilt module at
/// the same path would never be loaded.
pub const MODULE_SHA256_ENV: &str = "MESHWARDEN_MODULE_SHA256";

/// ECDS resource name of a kind's filter (`meshwarden.trace`).
pub fn resource_name(kind: Kind) -> String {
    format!("meshwarden.{}", kind.filter())
}

/// The kind whose filter a resource name configures.
pub fn kind_of_resource(name: &str) -> Option<Kind> {
    let filter = name.strip_prefix("meshwarden.")?;
    Kind::ALL.into_iter().find(|k| k.filter() == filter)
}

/// One composed ECDS resource, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct ComposedResource {
    pub kind: Kind,
    /// `meshwarden.<filter>`.
    pub name: String,
    /// Content-derived version: hash of the wire JSON and the module hash.
    pub version: String,
    /// The filter configuration (canonical JSON) inside the resource.
    pub wire_json: String,
    /// Names of the policies in the configuration, in evaluation order.
    pub policies: Vec<String>,
    /// The `TypedExtensionConfig`, packed into an `Any`.
    pub resource: Any,
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

/// Builds the resource of `kind` from the selected policies (in name order).
pub fn compose<'a>(
    kind: Kind,
    selected: impl IntoIterator<Item = &'a StoredPolicy>,
    modules: &ModuleSet,
) -> ComposedResource {
    let wire = wire_config(selected);
    let policies = wire.policies.iter().map(|p| p.name.to_string()).collect();
    let value = serde_json::to_value(&wire).expect("wire configs always serialize");
    let wire_json = canonical_json(&value);
    let module = modules.get(kind);
    let version = resource_version(&wire_json, &module.sha256);
    let name = resource_name(kind);
    let resource = pack_any(TypedExtensionConfig {
        name: name.clone(),
        typed_config: Some(pack_any(wasm_filter(&name, &wire_json, module))),
    });
    ComposedResource {
        kind,
        name,
        version,
        wire_json,
        policies,
        resource,
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

/// Aggregate version of several resources (`name=version` lines in name order), used as the
/// state-of-the-world `version_info`.
pub fn aggregate_version<'a>(versions: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut pairs: Vec<_> = versions.into_iter().collect();
    pairs.sort_unstable();
    let mut text = String::new();
    for (name, version) in pairs {
        let _ = writeln!(text, "{name}={version}");
    }
    short_hash(text.as_bytes())
}

fn wasm_filter(name: &str, wire_json: &str, module: &ModuleInfo) -> Wasm {
    let code = AsyncDataSource {
        specifier: Some(async_data_source::Specifier::Local(DataSource {
            specifier: Some(data_source::Specifier::Filename(
                module.path.display().to_string(),
            )),
            watched_directory: None,
        })),
    };
    let vm_config = VmConfig {
        vm_id: name.to_string(),
        runtime: WASM_RUNTIME.to_string(),
        code: Some(code),
        environment_variables: Some(EnvironmentVariables {
            key_values: [(MODULE_SHA256_ENV.to_string(), module.sha256.clone())].into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    Wasm {
        config: Some(PluginConfig {
            name: name.to_string(),
            root_id: name.to_string(),
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
    use crate::policy_set::content_version;
    use envoy_types::pb::envoy::extensions::wasm::v3::plugin_config::Vm;
    use meshwarden_common::trace::TraceSpec;
    use meshwarden_common::{FilterConfig, PolicyDocument};
    use prost::Message;
    use serde_json::json;
    use std::path::PathBuf;

    fn modules() -> ModuleSet {
        ModuleSet::new(
            Kind::ALL
                .into_iter()
                .map(|kind| ModuleInfo {
                    kind,
                    path: PathBuf::from(format!("/m/meshwarden_{}.wasm", kind.filter())),
                    sha256: format!("sha-{}", kind.filter()),
                })
                .collect(),
        )
        .unwrap()
    }

    fn stored(name: &str, spec: Value) -> StoredPolicy {
        let doc = PolicyDocument::from_value(&json!({
            "apiVersion": "meshwarden.dev/v1alpha1",
            "kind": "TracePolicy",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .unwrap();
        StoredPolicy {
            version: content_version(&doc),
            doc,
            generation: 1,
            updated_unix_ms: 0,
        }
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
        let r = compose(Kind::TracePolicy, [&p], &modules());
        assert_eq!(r.name, "meshwarden.trace");
        assert_eq!(r.policies, vec!["t1".to_string()]);
        assert_eq!(r.resource.type_url, TYPED_EXTENSION_CONFIG);
        let tec = TypedExtensionConfig::decode(r.resource.value.as_slice()).unwrap();
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
        assert_eq!(vm.vm_id, "meshwarden.trace");
        assert_eq!(vm.runtime, WASM_RUNTIME);
        let Some(async_data_source::Specifier::Local(local)) = vm.code.unwrap().specifier else {
            panic!("local code expected")
        };
        assert_eq!(
            local.specifier,
            Some(data_source::Specifier::Filename(
                "/m/meshwarden_trace.wasm".into()
            ))
        );
        let conf = cfg.configuration.unwrap();
        assert_eq!(
            conf.type_url,
            "type.googleapis.com/google.protobuf.StringValue"
        );
        let json = StringValue::decode(conf.value.as_slice()).unwrap().value;
        assert_eq!(json, r.wire_json);
        // The filter accepts exactly what we send.
        let parsed = FilterConfig::<TraceSpec>::parse(json.as_bytes()).unwrap();
        assert_eq!(parsed.policies.len(), 1);
        assert_eq!(parsed.policies[0].version, p.version);
    }

    #[test]
    fn empty_selection_is_a_pass_through() {
        let r = compose(Kind::FaultPolicy, [], &modules());
        assert_eq!(r.wire_json, r#"{"policies":[]}"#);
        assert!(r.policies.is_empty());
    }

    #[test]
    fn versions_follow_content_and_module() {
        let a = stored("a", json!({}));
        let b = stored("b", json!({"samplingPercentage": 10}));
        let m = modules();
        let v1 = compose(Kind::TracePolicy, [&a], &m).version;
        assert_eq!(v1, compose(Kind::TracePolicy, [&a], &m).version);
        assert_ne!(v1, compose(Kind::TracePolicy, [&a, &b], &m).version);
        let mut other = m.iter().cloned().collect::<Vec<_>>();
        other[0].sha256 = "different".into();
        let other = ModuleSet::new(other).unwrap();
        assert_ne!(v1, compose(Kind::TracePolicy, [&a], &other).version);
    }

    #[test]
    fn aggregate_version_ignores_order() {
        assert_eq!(
            aggregate_version([("a", "1"), ("b", "2")]),
            aggregate_version([("b", "2"), ("a", "1")])
        );
        assert_ne!(
            aggregate_version([("a", "1")]),
            aggregate_version([("a", "1"), ("b", "2")])
        );
    }
}
