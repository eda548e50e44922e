//! The control plane's side of xDS: what it serves. The protocol (state of the world and
//! delta, over ADS or the standalone ECDS and CDS services) is the generic
//! [`meshwarden_xds`] crate; this module supplies the resources and watches the proxies:
//! - [`node`]: a proxy's identity from Envoy's node (plain Envoy, Istio sidecar, gateway);
//! - [`types`]: the resource-type trait; one file per type: [`extension_configs`] (ECDS,
//!   one Wasm filter configuration per kind) and [`clusters`] (CDS, mirror-target clusters);
//! - [`modules`]: the Wasm module files and their hashes;
//! - [`cache`]: snapshots (policy set + modules) published by a debouncing task, composing
//!   each proxy's resources once per selection;
//! - [`proxies`]: what each connected proxy was sent, accepted and rejected;
//! - [`rejections`]: rejected versions and NACKs remembered across streams and restarts;
//! - [`admission`]: which proxies may open streams (mTLS node binding, allow-list, cap);
//! - [`service`]: one-call startup of all of the above.

pub mod admission;
pub mod cache;
pub mod clusters;
pub mod extension_configs;
pub mod modules;
pub mod node;
pub mod proxies;
pub mod rejections;
pub mod service;
pub mod types;

#[cfg(test)]
mod tests;

pub use cache::{spawn_snapshotter, spawn_snapshotter_with, Snapshot, SnapshotterConfig};
pub use clusters::CLUSTER_TYPE_URL;
pub use extension_configs::{resource_name, TYPED_EXTENSION_CONFIG};
pub use meshwarden_xds::Transport;
pub use modules::{ModuleCatalog, ModuleError, ModuleInfo, ModuleSet};
pub use node::{node_info, proxy_node, ProxyNode};
pub use proxies::{
    NackStatus, ProxyRegistry, ProxyStatus, ResourceStatus, VersionStatus, XdsProtocol, XdsStats,
};
pub use rejections::{AuxStore, Rejections};
pub use service::{Server, XdsConfig, XdsServer};
