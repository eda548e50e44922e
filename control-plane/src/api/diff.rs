//! `Diff`: what an apply would change, per policy and per connected proxy. The proxies' side
//! is composed by the xDS snapshot code itself ([`Snapshot::resources_of`]) for the current
//! and the would-be policy set, so the answer is exactly what the proxies would be sent.

use super::convert;
use super::pb;
use crate::registry::{Outcome, Preview};
use crate::xds::{
    ProxyNode, ProxyStatus, Snapshot, Transport, CLUSTER_TYPE_URL, TYPED_EXTENSION_CONFIG,
};
use meshwarden_xds::Resources;
use std::collections::{BTreeMap, BTreeSet};

/// The policies' side of a diff: one entry per document, in request order.
pub fn policy_diffs(preview: &Preview) -> Vec<pb::PolicyDiff> {
    preview
        .outcomes
        .iter()
        .map(|o| {
            let current = preview.current.get(o.kind, &o.name);
            let next = preview.next.get(o.kind, &o.name);
            let json = |p: Option<&crate::policy_set::StoredPolicy>| {
                p.map(|p| p.doc.to_value().to_string()).unwrap_or_default()
            };
            let result = convert::apply_result(o);
            pb::PolicyDiff {
                kind: o.kind.to_string(),
                name: o.name.clone(),
                outcome: result.outcome,
                current_document_json: json(current),
                new_document_json: match o.outcome {
                    Outcome::Unchanged => json(current),
                    _ => json(next),
                },
                current_version: current.map(|p| p.version.clone()).unwrap_or_default(),
                new_version: o.version.clone(),
            }
        })
        .collect()
}

/// Connected proxies whose resources would change if `next` replaced `current`'s policies,
/// by node id; each resource listed once per proxy even if several streams carry it.
pub fn proxy_diffs(
    current: &Snapshot,
    next: &Snapshot,
    proxies: &[ProxyStatus],
) -> Vec<pb::ProxyDiff> {
    type Seen<'a> = (&'a ProxyStatus, BTreeSet<&'static str>, BTreeSet<&'a str>);
    let mut by_node: BTreeMap<&str, Seen<'_>> = BTreeMap::new();
    for p in proxies.iter().filter(|p| p.disconnected_at.is_none()) {
        let types: &[&'static str] = match p.transport {
            Transport::Ads => &[TYPED_EXTENSION_CONFIG, CLUSTER_TYPE_URL],
            Transport::Ecds => &[TYPED_EXTENSION_CONFIG],
            Transport::Cds => &[CLUSTER_TYPE_URL],
        };
        let entry = by_node
            .entry(p.node_id.as_str())
            .or_insert_with(|| (p, BTreeSet::new(), BTreeSet::new()));
        entry.1.extend(types);
        entry.2.extend(p.resources.iter().map(|r| r.name.as_str()));
    }
    let mut out = Vec::new();
    for (status, types, held) in by_node.into_values() {
        let node = ProxyNode::from_parts(&status.node_id, &status.cluster, status.labels.clone());
        let mut resources = Vec::new();
        for type_url in types {
            let before = current.resources_of(type_url, &node).unwrap_or_default();
            let after = next.resources_of(type_url, &node).unwrap_or_default();
            let diffs = changed(&before, &after);
            // Filter configurations come by name (a proxy's filter chain asks for the
            // layout it uses); clusters are every cluster the proxy's policies need.
            resources.extend(
                diffs.into_iter().filter(|d| {
                    type_url != TYPED_EXTENSION_CONFIG || held.contains(d.name.as_str())
                }),
            );
        }
        if !resources.is_empty() {
            out.push(pb::ProxyDiff {
                node_id: status.node_id.clone(),
                cluster: status.cluster.clone(),
                resources,
            });
        }
    }
    out
}

/// Resources whose version differs, appears or disappears, by name.
fn changed(before: &Resources, after: &Resources) -> Vec<pb::ResourceDiff> {
    let index = |r: &Resources| {
        r.iter()
            .map(|r| (r.name.clone(), r.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    let (before, after) = (index(before), index(after));
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    names
        .into_iter()
        .filter_map(|name| {
            let (b, a) = (before.get(name), after.get(name));
            let version = |r: Option<&std::sync::Arc<meshwarden_xds::Resource>>| {
                r.map(|r| r.version.clone()).unwrap_or_default()
            };
            let summary = |r: Option<&std::sync::Arc<meshwarden_xds::Resource>>| {
                r.map(|r| r.summary.clone()).unwrap_or_default()
            };
            (version(b) != version(a)).then(|| pb::ResourceDiff {
                name: name.clone(),
                current_version: version(b),
                new_version: version(a),
                current_policies: summary(b),
                new_policies: summary(a),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy_set::PolicySet;
    use crate::registry::PolicyRegistry;
    use crate::xds::modules::test_support::write_fake_modules;
    use crate::xds::{ModuleCatalog, XdsProtocol};
    use serde_json::json;
    use std::sync::Arc;
    use std::time::SystemTime;

    fn doc(kind: &str, name: &str, spec: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": meshwarden_common::API_VERSION, "kind": kind,
               "metadata": {"name": name}, "spec": spec})
    }

    fn proxy(id: &str, zone: &str, transport: Transport) -> ProxyStatus {
        ProxyStatus {
            stream_id: 1,
            node_id: id.into(),
            cluster: "shop".into(),
            labels: [("zone".to_string(), zone.to_string())].into(),
            protocol: XdsProtocol::Sotw,
            transport,
            connected_at: SystemTime::now(),
            disconnected_at: None,
            // The filters of the combined layout: what the proxy's chain asked for.
            resources: vec![crate::xds::ResourceStatus {
                name: crate::xds::extension_configs::COMBINED_RESOURCE.into(),
                sent: None,
                accepted: None,
                last_nack: None,
            }],
        }
    }

    #[test]
    fn only_selected_connected_proxies_and_changed_resources_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_modules(dir.path());
        let modules = ModuleCatalog::load(dir.path()).unwrap().current();
        let data = tempfile::tempdir().unwrap();
        let reg = PolicyRegistry::open(data.path()).unwrap();
        let trace = |rate: u32| doc("TracePolicy", "t", json!({"samplingPercentage": rate}));
        reg.apply(vec![trace(10)], false).unwrap();
        let eu_fault = doc(
            "FaultPolicy",
            "eu-chaos",
            json!({"selector": {"labels": {"zone": "eu"}},
                   "abort": {"httpStatus": 503, "percentage": {"value": 5}}}),
        );
        let preview = reg.preview(&[trace(10), eu_fault]).unwrap();
        let diffs = policy_diffs(&preview);
        assert_eq!(diffs.len(), 2);
        assert_eq!(diffs[0].outcome(), pb::apply_result::Outcome::Unchanged);
        assert_eq!(diffs[0].current_document_json, diffs[0].new_document_json);
        assert_eq!(diffs[1].outcome(), pb::apply_result::Outcome::Created);
        assert!(diffs[1].current_document_json.is_empty());
        assert!(diffs[1].new_document_json.contains("\"httpStatus\":503"));

        let current = Snapshot::new(1, preview.current.clone(), modules);
        let next = current.with_policies(preview.next.clone());
        let mut gone = proxy("eu-old", "eu", Transport::Ads);
        gone.disconnected_at = Some(SystemTime::now());
        let proxies = [
            proxy("eu-1", "eu", Transport::Ads),
            proxy("eu-1", "eu", Transport::Ecds),
            proxy("us-1", "us", Transport::Ads),
            gone,
        ];
        let diffs = proxy_diffs(&current, &next, &proxies);
        assert_eq!(diffs.len(), 1, "{diffs:?}");
        assert_eq!(diffs[0].node_id, "eu-1");
        let names: Vec<_> = diffs[0].resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["meshwarden.all"],
            "only the filters the proxy holds"
        );
        let r = &diffs[0].resources[0];
        assert_eq!(r.current_policies, ["t"]);
        assert_eq!(r.new_policies, ["t", "eu-chaos"]);
        assert_ne!(r.current_version, r.new_version);
        // The same set on both sides changes nothing.
        let same = current.with_policies(Arc::new(PolicySet::clone(&preview.current)));
        assert!(proxy_diffs(&current, &same, &proxies).is_empty());
    }
}
