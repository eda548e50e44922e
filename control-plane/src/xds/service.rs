//! One-call startup of the xDS side: loads the modules, starts the snapshot task and builds
//! the xDS services (ADS, and the standalone ECDS and CDS services for proxies whose ADS
//! belongs to someone else, such as Istio sidecars), keeping the registry and counters for
//! status and metrics.

use super::cache::{spawn_snapshotter_for, Snapshot, SnapshotterConfig};
use super::extension_configs::ExtensionConfigs;
use super::modules::{ModuleCatalog, ModuleError};
use super::proxies::{ProxyRegistry, XdsStats, DEFAULT_RETENTION};
use super::rejections::Rejections;
use super::types::ResourceTypes;
use crate::policy_set::SharedPolicySet;
use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_server::ClusterDiscoveryServiceServer;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use envoy_types::pb::envoy::service::extension::v3::extension_config_discovery_service_server::ExtensionConfigDiscoveryServiceServer;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The xDS server over the control plane's snapshots.
pub type Server = meshwarden_xds::Server<Snapshot, ProxyRegistry>;

/// Settings of the xDS side.
#[derive(Debug, Clone)]
pub struct XdsConfig {
    /// Directory holding `meshwarden_<filter>.wasm`.
    pub wasm_dir: PathBuf,
    pub snapshotter: SnapshotterConfig,
    /// How long disconnected proxies stay listed.
    pub retention: Duration,
    /// Cluster through which proxies fetch modules over HTTP by default (see
    /// [`ExtensionConfigs`]); `None` keeps local paths.
    pub module_cluster: Option<String>,
    /// The memory of rejected versions (in-process only by default; `serve` persists it).
    pub rejections: Rejections,
    /// Directory of content-addressed module copies (see [`ModuleCatalog::load_cached`]).
    pub module_cache: Option<PathBuf>,
}

impl XdsConfig {
    /// Defaults for everything but the module directory.
    pub fn new(wasm_dir: impl Into<PathBuf>) -> Self {
        Self {
            wasm_dir: wasm_dir.into(),
            snapshotter: SnapshotterConfig::default(),
            retention: DEFAULT_RETENTION,
            module_cluster: None,
            rejections: Rejections::default(),
            module_cache: None,
        }
    }
}

/// The running xDS side.
#[derive(Clone)]
pub struct XdsServer {
    server: Server,
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
        let catalog = ModuleCatalog::load_cached(&config.wasm_dir, config.module_cache.clone())?;
        let types = Arc::new(
            ResourceTypes::new(ExtensionConfigs {
                default_module_cluster: config.module_cluster.clone(),
            })
            .with_rejections(config.rejections.clone()),
        );
        let mut changes = policies.clone();
        let snapshots = spawn_snapshotter_for(policies, catalog, config.snapshotter, types);
        let proxies = ProxyRegistry::with_retention(config.retention)
            .with_rejections(config.rejections.clone());
        // Push latency is timed from each committed change.
        let latency = proxies.push_latency();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                latency.note_change();
            }
        });
        let stats = Arc::new(XdsStats::default());
        let server =
            Server::new(snapshots.clone(), proxies.clone(), stats.clone()).with_shutdown(shutdown);
        Ok(Self {
            server,
            proxies,
            stats,
            snapshots,
        })
    }

    /// Serves only the proxies `access` admits (by default, every one).
    pub fn with_access(mut self, mut access: super::admission::XdsAccess) -> Self {
        access.stats = Some(self.stats.clone());
        self.server = self.server.with_admission(Arc::new(access));
        self
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

    /// The Aggregated Discovery Service.
    pub fn ads_service(&self) -> AggregatedDiscoveryServiceServer<Server> {
        self.server.ads()
    }

    /// The standalone Extension Config Discovery Service.
    pub fn ecds_service(&self) -> ExtensionConfigDiscoveryServiceServer<Server> {
        self.server.ecds()
    }

    /// The standalone Cluster Discovery Service.
    pub fn cds_service(&self) -> ClusterDiscoveryServiceServer<Server> {
        self.server.cds()
    }
}
