//! Resource types: how the policies that select a proxy become the xDS resources of one
//! type URL. The xDS server ([`meshwarden_xds`]) knows only type URLs; each type here is a
//! small implementation of [`ResourceType`], listed in [`ResourceTypes::new`]. Adding a type
//! costs its own file and one line there.

use super::modules::ModuleSet;
use super::node::ProxyNode;
use super::rejections::Rejections;
use crate::policy_set::StoredPolicy;
use meshwarden_common::Kind;
use meshwarden_xds::Resource;
use std::sync::Arc;

/// One xDS resource type composed from policies.
pub trait ResourceType: Send + Sync + std::fmt::Debug {
    /// The type URL served.
    fn type_url(&self) -> &'static str;

    /// The kinds whose selected policies make up a proxy's resources of this type.
    fn kinds(&self) -> &'static [Kind];

    /// What else of the proxy the resources depend on, beyond the selected policies
    /// (proxies with equal variants and selections share composed resources).
    fn variant(&self, _node: &ProxyNode) -> Option<String> {
        None
    }

    /// Whether a rejection by `node` with `message` is transient: the same resources are
    /// sent again after the returned delay (a bounded number of times) instead of never.
    fn retry_rejected(&self, _node: &ProxyNode, _message: &str) -> Option<std::time::Duration> {
        None
    }

    /// The resources for `policies` (the policies of `kind` selecting one proxy, in name
    /// order).
    fn compose(
        &self,
        kind: Kind,
        policies: &[&StoredPolicy],
        modules: &ModuleSet,
        variant: Option<&str>,
    ) -> Vec<Arc<Resource>>;

    /// Resources made from every kind's selection together (the combined filter), given
    /// the policies selecting one proxy for each of [`ResourceType::kinds`], in that order.
    fn compose_all(
        &self,
        _selected: &[(Kind, Vec<&StoredPolicy>)],
        _modules: &ModuleSet,
        _variant: Option<&str>,
    ) -> Vec<Arc<Resource>> {
        Vec::new()
    }
}

/// The resource types served, in the order their responses go out on an aggregated stream,
/// and the memory of versions proxies rejected (never served again).
#[derive(Debug)]
pub struct ResourceTypes {
    types: Vec<Box<dyn ResourceType>>,
    urls: Vec<&'static str>,
    rejections: Rejections,
}

impl ResourceTypes {
    /// Clusters (mirror targets) first, so a cluster reaches a proxy before a filter
    /// configuration that sends copies to it; then the filter configurations.
    pub fn new(extension_configs: super::extension_configs::ExtensionConfigs) -> Self {
        Self::from_types(vec![
            Box::new(super::clusters::MirrorClusters),
            Box::new(extension_configs),
        ])
    }

    /// A set of explicit types (in response order).
    pub fn from_types(types: Vec<Box<dyn ResourceType>>) -> Self {
        let urls = types.iter().map(|t| t.type_url()).collect();
        Self {
            types,
            urls,
            rejections: Rejections::default(),
        }
    }

    /// Serves around the versions remembered in `rejections`.
    pub fn with_rejections(mut self, rejections: Rejections) -> Self {
        self.rejections = rejections;
        self
    }

    /// The memory of rejected versions.
    pub fn rejections(&self) -> &Rejections {
        &self.rejections
    }

    /// The type serving `type_url`.
    pub fn get(&self, type_url: &str) -> Option<&dyn ResourceType> {
        self.types
            .iter()
            .find(|t| t.type_url() == type_url)
            .map(|t| t.as_ref())
    }

    /// Every type URL, in response order.
    pub fn urls(&self) -> &[&'static str] {
        &self.urls
    }
}

impl Default for ResourceTypes {
    fn default() -> Self {
        Self::new(Default::default())
    }
}
