//! The xDS side of the control plane: an Aggregated Discovery Service (state of the world
//! and delta) that serves one ECDS resource per filter, `meshwarden.<filter>`, to every
//! proxy, composed from the policies that select it.
//!
//! Split like go-control-plane:
//! - [`modules`]: the Wasm module files and their hashes;
//! - [`resources`]: composing a proxy's `TypedExtensionConfig`s and their versions;
//! - [`cache`]: snapshots (policy set + modules) published by a debouncing task;
//! - [`server`]: the gRPC service and per-stream driver, with the protocol state machines
//!   in `sotw` and `delta`;
//! - [`proxies`]: what each connected proxy was sent, accepted and rejected, plus counters;
//! - [`clusters`] (and `cds`): CDS clusters for the `host:port` targets of MirrorPolicies.
//!
//! Wiring ([`XdsServer`] does all of this in one call):
//! ```ignore
//! let catalog = ModuleCatalog::load(&wasm_dir)?;
//! let snapshots = spawn_snapshotter(policies_rx, catalog);
//! let (proxies, stats) = (ProxyRegistry::new(), Arc::new(XdsStats::default()));
//! let ads = AdsServer::new(snapshots, proxies.clone(), stats.clone()).with_shutdown(stop_rx);
//! tonic::transport::Server::builder().add_service(ads.into_service()).serve(addr).await?;
//! ```

pub mod cache;
mod cds;
pub mod clusters;
mod delta;
pub mod modules;
pub mod proxies;
pub mod resources;
pub mod server;
pub mod service;
mod session;
mod sotw;

#[cfg(test)]
mod tests;

pub use cache::{
    spawn_snapshotter, spawn_snapshotter_with, NodeResources, Snapshot, SnapshotterConfig,
};
pub use clusters::CLUSTER_TYPE_URL;
pub use modules::{ModuleCatalog, ModuleError, ModuleInfo, ModuleSet};
pub use proxies::{
    NackStatus, ProxyRegistry, ProxyStatus, ResourceStatus, VersionStatus, XdsProtocol, XdsStats,
};
pub use resources::{resource_name, ComposedResource, TYPED_EXTENSION_CONFIG};
pub use server::AdsServer;
pub use service::{XdsConfig, XdsServer};
pub use session::node_info;
