//! `meshwarden serve`: the control plane process.
//!
//! Startup order: the HTTP port first (so `/healthz` answers and `/readyz` says why it is
//! not ready), then the store, then the xDS server, then the gRPC port carrying the policy
//! API and the xDS services (ADS, and the standalone ECDS and CDS for proxies whose ADS
//! belongs to another control plane, such as istiod). SIGTERM or SIGINT stop accepting, end open streams and exit.

use crate::api::{
    ApiGuardLayer, AuditApi, BreakerStatusApi, CaptureApi, PolicyApi, ProxyStatusApi, TargetGuard,
};
use crate::http::{self, HttpState};
use crate::metrics::Metrics;
use crate::registry::PolicyRegistry;
use crate::store::StoreHealth;
use crate::xds;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt;

/// HTTP/2 keepalive ping interval and timeout on the gRPC port.
const GRPC_KEEPALIVE: Duration = Duration::from_secs(30);
const GRPC_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Age after which a gRPC connection is closed gracefully (idle ones included).
const GRPC_MAX_CONNECTION_AGE: Duration = Duration::from_secs(30 * 60);
/// Streams one connection may open at once (an Envoy opens a handful).
const GRPC_MAX_STREAMS_PER_CONNECTION: u32 = 128;

/// How long open gRPC streams get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// `serve` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// gRPC address: policy API and ADS (xDS) for the proxies.
    #[arg(long, default_value = "127.0.0.1:18000")]
    pub grpc_addr: SocketAddr,
    /// HTTP address: /metrics, /healthz, /readyz.
    #[arg(long, default_value = "127.0.0.1:18001")]
    pub http_addr: SocketAddr,
    /// Directory of the embedded policy store (created if missing), and of the module
    /// cache with either store.
    #[arg(long, default_value = "./.meshwarden")]
    pub data_dir: PathBuf,
    /// Where policies are stored: the embedded store in `--data-dir` (default), or etcd,
    /// `etcd://host:2379[,host:2379...]`, shared by any number of replicas.
    #[arg(long, value_name = "etcd://HOST:PORT[,...]")]
    pub store: Option<String>,
    /// Key prefix of everything kept in etcd (several meshwarden installations can share
    /// one etcd with different prefixes).
    #[arg(long, default_value = crate::backend::etcd::DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    /// This replica's name in `meshwarden status` (replicas on etcd); default: the host
    /// name (the pod name in Kubernetes) and the process id.
    #[arg(long)]
    pub replica_id: Option<String>,
    /// Revisions kept per policy for `history`, `rollback` and `get --revision` (the
    /// oldest go first; a deleted policy keeps its history). At least 1.
    #[arg(long, default_value_t = crate::backend::DEFAULT_HISTORY_LIMIT as u64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub history_limit: u64,
    /// Directory holding `meshwarden_<filter>.wasm`, advertised to Envoy by absolute path.
    #[arg(long, default_value = super::DEFAULT_WASM_DIR)]
    pub wasm_dir: PathBuf,
    /// Envoy cluster through which proxies reach this server's HTTP port: when set, every
    /// proxy fetches the modules over HTTP (`code.remote` with their SHA-256) instead of
    /// reading `--wasm-dir`. A proxy can choose for itself with the node metadata entry
    /// `MESHWARDEN_MODULE_CLUSTER`.
    #[arg(long)]
    pub module_cluster: Option<String>,
    /// Refuse MirrorPolicy `host` targets matching this IP, CIDR network or host name, on
    /// top of the built-in rules (link-local and cloud-metadata addresses, this server's own
    /// ports). Repeatable.
    #[arg(long = "mirror-deny", value_name = "NET|HOST")]
    pub mirror_deny: Vec<crate::api::targets::Rule>,
    /// Allow MirrorPolicy `host` targets matching this IP, CIDR network or host name even if
    /// a rule denies them. Repeatable.
    #[arg(long = "mirror-allow", value_name = "NET|HOST")]
    pub mirror_allow: Vec<crate::api::targets::Rule>,
    /// Log format on stderr: `text` (for people) or `json` (one object per line, for log
    /// pipelines).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// TLS, mutual TLS and the xDS admission rule.
    #[command(flatten)]
    pub security: super::security::SecurityArgs,
}

/// Format of the control plane's logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Runs the control plane until SIGTERM or SIGINT.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_tracing(args.log_format);
    let (shutdown_tx, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        let _ = shutdown_tx.send(true);
    });
    serve(args, shutdown).await
}

/// Runs the control plane until `shutdown` turns true.
pub async fn serve(args: ServeArgs, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let state = HttpState::default();
    let tls = args.security.tls()?;
    if let Some((grpc_tls, http_tls)) = &tls {
        let every = args.security.reload_interval();
        grpc_tls.spawn_watch("grpc", every, shutdown.clone());
        http_tls.spawn_watch("http", every, shutdown.clone());
    }
    let http_listener = TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("cannot listen on --http-addr {}", args.http_addr))?;
    crate::tls::warn_if_exposed("http", args.http_addr, tls.is_some());
    tracing::info!(addr = %args.http_addr, tls = tls.is_some(), "HTTP (metrics, health) listening");
    let http_conns = crate::tls::accept(
        http_listener,
        tls.as_ref().map(|(_, http)| http.clone()),
        shutdown.clone(),
    );
    let mut http_task = AbortOnDrop(tokio::spawn(http::serve(
        crate::tls::ConnListener::new(http_conns, args.http_addr),
        http::router(state.clone()),
        signalled(shutdown.clone()),
    )));

    let data_dir = args.data_dir.clone();
    let history_limit = usize::try_from(args.history_limit).unwrap_or(usize::MAX);
    let (store_url, prefix) = (args.store.clone(), args.etcd_prefix.clone());
    let registry = tokio::task::spawn_blocking(move || {
        let store: Box<dyn crate::backend::PolicyStore> = match &store_url {
            Some(url) => Box::new(crate::backend::etcd::EtcdStore::open(url, &prefix)?),
            None => Box::new(crate::store::Store::open(&data_dir)?),
        };
        PolicyRegistry::from_boxed(store).map(|r| r.with_history_limit(history_limit))
    })
    .await
    .context("store loading task failed")?
    .with_context(|| match &args.store {
        Some(url) => format!("cannot open the policy store {url}"),
        None => format!(
            "cannot open the policy store in {}",
            args.data_dir.display()
        ),
    })?;
    let registry = Arc::new(registry);
    tokio::spawn(crate::replicas::follow_store(
        registry.clone(),
        shutdown.clone(),
    ));
    state.readiness.set_store(registry.clone());
    let _ = state.policies.set(registry.subscribe());
    tokio::spawn(recover_store(registry.clone(), shutdown.clone()));

    let rejections = xds::Rejections::persisted(registry.clone())
        .map_err(|e| anyhow::anyhow!("cannot read remembered rejections from the store: {e}"))?;
    let replica_id = registry.is_shared().then(|| {
        args.replica_id
            .clone()
            .unwrap_or_else(crate::replicas::default_replica_id)
    });
    let mut audit = crate::audit::AuditLog::persisted(registry.clone())
        .map_err(|e| anyhow::anyhow!("cannot read the audit trail from the store: {e}"))?;
    if let Some(id) = &replica_id {
        audit = audit.for_replica(id);
    }
    let auth = args.security.authenticator()?.map(std::sync::Arc::new);
    if let Some(auth) = &auth {
        auth.spawn_watch(args.security.reload_interval(), shutdown.clone());
    }
    if auth.is_none() && !args.grpc_addr.ip().is_loopback() {
        tracing::warn!(addr = %args.grpc_addr, "INSECURE: the policy API takes no credentials (no --token-file); anyone who reaches the port can change policies");
    }
    let xds_config = xds::XdsConfig {
        module_cluster: args.module_cluster.clone(),
        rejections,
        module_cache: Some(args.data_dir.join(MODULE_CACHE_DIR)),
        ..xds::XdsConfig::new(&args.wasm_dir)
    };
    let xds = xds::XdsServer::start(xds_config, registry.subscribe(), shutdown.clone())
        .with_context(|| {
            format!(
                "cannot start the xDS server (--wasm-dir {})",
                args.wasm_dir.display()
            )
        })?
        .with_access(args.security.xds_access());

    let mut metrics = Metrics::new(registry.clone());
    metrics.register(Box::new(crate::metrics::XdsCollector::new(
        xds.stats(),
        xds.proxies(),
    )));
    // Live request capture: in memory only (the last summaries, for late watchers).
    let capture = crate::capture::CaptureHub::default();
    metrics.register(Box::new(capture.clone()));
    // Open circuit breakers as proxies report them (for `status`): in memory only.
    let breakers = crate::breakers::BreakerBoard::default();
    metrics.register(Box::new(breakers.clone()));
    let _ = state.metrics.set(metrics);
    let _ = state.snapshots.set(xds.snapshots());
    let _ = state.module_cache.set(args.data_dir.join(MODULE_CACHE_DIR));

    let grpc_listener = TcpListener::bind(args.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on --grpc-addr {}", args.grpc_addr))?;
    crate::tls::warn_if_exposed("grpc", args.grpc_addr, tls.is_some());
    let incoming = tokio_stream::wrappers::ReceiverStream::new(crate::tls::accept(
        grpc_listener,
        tls.as_ref().map(|(grpc, _)| grpc.clone()),
        shutdown.clone(),
    ))
    .map(Ok::<_, std::io::Error>);
    tracing::info!(
        addr = %args.grpc_addr,
        wasm_dir = %args.wasm_dir.display(),
        tls = tls.is_some(),
        mtls = tls.as_ref().is_some_and(|(grpc, _)| grpc.mutual()),
        "gRPC (policy API, ADS, ECDS, CDS) listening"
    );
    state.readiness.set_grpc_listening();

    let mut status_api = ProxyStatusApi::new(xds.proxies()).with_breakers(breakers.clone());
    if let Some(id) = replica_id {
        tracing::info!(replica = %id, store = ?args.store, "serving as a replica of a shared store");
        let replicas = crate::replicas::ReplicaStatus::new(id, registry.clone());
        tokio::spawn(crate::replicas::publish_status(
            replicas.clone(),
            xds.proxies(),
            breakers.clone(),
            shutdown.clone(),
        ));
        status_api = status_api.with_replicas(replicas);
    }

    let grpc = tonic::transport::Server::builder()
        // Dead peers are found by keepalive pings; every connection, idle or not, is closed
        // gracefully after a while (proxies reconnect, as they do with istiod).
        .http2_keepalive_interval(Some(GRPC_KEEPALIVE))
        .http2_keepalive_timeout(Some(GRPC_KEEPALIVE_TIMEOUT))
        .max_connection_age(GRPC_MAX_CONNECTION_AGE)
        .max_concurrent_streams(GRPC_MAX_STREAMS_PER_CONNECTION)
        // Authentication, roles and the audit trail of the policy API (xDS passes through).
        .layer(ApiGuardLayer::new(auth, audit.clone(), registry.clone()))
        .add_service(
            PolicyApi::new(registry.clone())
                .with_targets(TargetGuard::new(
                    args.mirror_deny.clone(),
                    args.mirror_allow.clone(),
                    vec![args.grpc_addr, args.http_addr],
                ))
                .with_shutdown(shutdown.clone())
                .with_xds(xds.snapshots(), xds.proxies())
                .into_server(),
        )
        .add_service(status_api.into_server())
        .add_service(AuditApi::new(audit).into_server())
        .add_service(
            CaptureApi::new(capture)
                .with_shutdown(shutdown.clone())
                .with_access(args.security.xds_access())
                .into_server(),
        )
        .add_service(
            BreakerStatusApi::new(breakers)
                .with_access(args.security.xds_access())
                .into_server(),
        )
        .add_service(reflection()?)
        .add_service(xds.ads_service())
        .add_service(xds.ecds_service())
        .add_service(xds.cds_service())
        .serve_with_incoming_shutdown(incoming, signalled(shutdown.clone()));
    let result = tokio::select! {
        r = grpc => r.context("gRPC server failed"),
        () = after_grace(shutdown.clone()) => {
            tracing::warn!("streams still open {SHUTDOWN_GRACE:?} after the shutdown signal; exiting anyway");
            Ok(())
        }
    };
    match tokio::time::timeout(SHUTDOWN_GRACE, &mut http_task.0).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server failed"),
        Ok(_) => {}
        Err(_) => tracing::warn!("HTTP server did not stop in time"),
    }
    tracing::info!("stopped");
    result
}

/// gRPC server reflection of the policy and status APIs (so `grpcurl` can list and call
/// them without the .proto files).
fn reflection() -> anyhow::Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::api::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the gRPC reflection service")
}

/// Sub-directory of `--data-dir` holding content-addressed module copies.
const MODULE_CACHE_DIR: &str = "modules";

/// How often a failing store is reopened.
const STORE_CHECK: Duration = Duration::from_secs(1);

/// While writes fail (a full disk), reopens the store every [`STORE_CHECK`] so writes work
/// again as soon as they can (`/readyz` and `/metrics` follow the store's health).
async fn recover_store(registry: Arc<PolicyRegistry>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(STORE_CHECK);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|down| *down) => return,
        }
        if matches!(registry.store_health(), StoreHealth::Healthy) {
            continue;
        }
        let registry = registry.clone();
        let _ = tokio::task::spawn_blocking(move || registry.recover_store()).await;
    }
}

/// Stops the HTTP server if startup fails after it was started.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves once `shutdown` is true (or its sender is gone).
async fn signalled(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|down| *down).await;
}

async fn after_grace(shutdown: watch::Receiver<bool>) {
    signalled(shutdown).await;
    tokio::time::sleep(SHUTDOWN_GRACE).await;
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Logs to stderr; `RUST_LOG` filters (default `info`).
fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}
