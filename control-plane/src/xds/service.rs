//! One-call startup of the xDS side: loads the modules, starts the snapshot task and builds
//! the ADS service, keeping the registry and counters for status and metrics.

use super::cache::{spawn_snapshotter_with, Snapshot, SnapshotterConfig};
use super::modules::{ModuleCatalog, ModuleError};
use super::proxies::{ProxyRegistry, XdsStats, DEFAULT_RETENTION};
use super::server::AdsServer;
use crate::policy_set::SharedPolicySet;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Settings of the xDS side.
#[derive(Debug, Clone)]
pub struct XdsConfig {
    /// Directory holding `meshwarden_<filter>.wasm`.
    pub wasm_dir: PathBuf,
    pub snapshotter: SnapshotterConfig,
    /// How long disconnected proxies stay listed.
    pub retention: Duration,
}

impl XdsConfig {
    /// Defaults for everything but the module directory.
    pub fn new(wasm_dir: impl Into<PathBuf>) -> Self {
        Self {
            wasm_dir: wasm_dir.into(),
            snapshotter: SnapshotterConfig::default(),
            retention: DEFAULT_RETENTION,
        }
    }
}

/// The running xDS side.
#[derive(Debug, Clone)]
pub struct XdsServer {
    ads: AdsServer,
    proxies: ProxyRegistry,
    stats: Arc<XdsStats>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
}

impl XdsServer {
    /// Loads the modules (every one must exist) and starts serving `policies`. Streams end
    /// when `shutdown` turns true. Must run inside a Tokio runtime.
    pub fn start(
        config: XdsConfig,
        policies: watch::Receiver<SharedPolicySet>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, ModuleError> {
        let catalog = ModuleCatalog::load(&config.wasm_dir)?;
        let snapshots = spawn_snapshotter_with(policies, catalog, config.snapshotter);
        let proxies = ProxyRegistry::with_retention(config.retention);
        let stats = Arc::new(XdsStats::default());
        let ads = AdsServer::new(snapshots.clone(), proxies.clone(), stats.clone())
            .with_shutdown(shutdown);
        Ok(Self {
            ads,
            proxies,
            stats,
            snapshots,
        })
    }

    /// Counters for metrics.
    pub fn stats(&self) -> Arc<XdsStats> {
        self.stats.clone()
    }

    /// Connected (and recently disconnected) proxies, for status.
    pub fn proxies(&self) -> ProxyRegistry {
        self.proxies.clone()
    }

    /// The current snapshot (and its changes).
    pub fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.clone()
    }

    /// The ADS gRPC service to add to the tonic server.
    pub fn ads_service(&self) -> AggregatedDiscoveryServiceServer<AdsServer> {
        self.ads.clone().into_service()
    }
}
