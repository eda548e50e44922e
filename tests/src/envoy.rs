//! A real Envoy bootstrapped against a test control plane.

use crate::control_plane::ControlPlane;
use crate::paths::envoy_bin;
use crate::ports::free_port;
use crate::process::ChildGuard;
use crate::tls::{with_listener_tls, ListenerTls};
use crate::wait::wait_until;
pub use meshwarden_cp::bootstrap::Layout;
use meshwarden_cp::bootstrap::{
    render, with_ratelimit_service, with_xds_tls, BootstrapParams, XdsTls,
};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

/// How to start an Envoy.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    pub node_id: String,
    pub cluster: String,
    pub labels: BTreeMap<String, String>,
    /// Delta ADS instead of state-of-the-world.
    pub delta: bool,
    /// Worker threads.
    pub concurrency: u32,
    /// Wait in [`Envoy::start`] until every meshwarden filter took its first configuration
    /// from the control plane (set false when it is down on purpose).
    pub wait_for_config: bool,
    /// One combined filter (the default) or one filter per kind.
    pub layout: Layout,
    /// Reach the control plane over TLS (`None`: clear text).
    pub xds_tls: Option<XdsTls>,
    /// Serve the traffic listener over TLS, requiring client certificates (`None`: clear
    /// text).
    pub listener_tls: Option<ListenerTls>,
    /// The global rate limit service's gRPC address (`meshwarden bootstrap
    /// --ratelimit-service`), for `scope: global` policies.
    pub ratelimit_service: Option<std::net::SocketAddr>,
    /// gRPC ports of more control-plane replicas, listed after the given control plane's
    /// in the xDS cluster (failover).
    pub more_xds_ports: Vec<u16>,
    /// More static clusters (name, HTTP/1.1 endpoint), e.g. a span collector.
    pub clusters: Vec<(String, std::net::SocketAddr)>,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        Self {
            node_id: "test-proxy".into(),
            cluster: "test".into(),
            labels: BTreeMap::new(),
            delta: false,
            concurrency: 2,
            wait_for_config: true,
            layout: Layout::Combined,
            xds_tls: None,
            listener_tls: None,
            ratelimit_service: None,
            more_xds_ports: Vec::new(),
            clusters: Vec::new(),
        }
    }
}

/// A running Envoy; killed when dropped.
pub struct Envoy {
    pub admin_port: u16,
    pub listen_port: u16,
    dir: tempfile::TempDir,
    child: ChildGuard,
    client: reqwest::Client,
}

/// `bootstrap` with a static HTTP/1.1 cluster `name` of one endpoint, listed first.
pub fn with_static_cluster(bootstrap: &str, name: &str, addr: std::net::SocketAddr) -> String {
    let cluster = format!(
        r#"  clusters:
  - name: {name}
    type: STATIC
    connect_timeout: 0.25s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: "{ip}", port_value: {port} }}
"#,
        ip = addr.ip(),
        port = addr.port(),
    );
    bootstrap.replacen("  clusters:\n", &cluster, 1)
}

impl Envoy {
    /// Starts Envoy routing to `upstream_port`, with ADS from `cp`, and waits until it is
    /// live (listener warmed with the filters' first configuration).
    pub async fn start(
        cp: &ControlPlane,
        upstream_port: u16,
        opts: EnvoyOptions,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let admin_port = free_port();
        let listen_port = free_port();
        let bootstrap = render(&BootstrapParams {
            node_id: opts.node_id.clone(),
            node_cluster: opts.cluster.clone(),
            labels: opts.labels.clone(),
            admin_port,
            listen_address: "127.0.0.1".into(),
            listen_port,
            xds_endpoints: std::iter::once(cp.grpc_port)
                .chain(opts.more_xds_ports.iter().copied())
                .map(|port| ("127.0.0.1".to_string(), port))
                .collect(),
            upstream_address: "127.0.0.1".into(),
            upstream_port,
            delta: opts.delta,
            layout: opts.layout,
        });
        let bootstrap = match &opts.xds_tls {
            Some(tls) => with_xds_tls(&bootstrap, tls),
            None => bootstrap,
        };
        let bootstrap = match &opts.listener_tls {
            Some(tls) => with_listener_tls(&bootstrap, tls),
            None => bootstrap,
        };
        let bootstrap = match opts.ratelimit_service {
            Some(addr) => with_ratelimit_service(&bootstrap, &addr.ip().to_string(), addr.port()),
            None => bootstrap,
        };
        let bootstrap = opts.clusters.iter().fold(bootstrap, |b, (name, addr)| {
            with_static_cluster(&b, name, *addr)
        });
        let envoy =
            Self::start_bootstrap(dir, &bootstrap, admin_port, listen_port, opts.concurrency)
                .await?;
        if opts.wait_for_config {
            envoy.wait_for_filter_configs(opts.layout).await?;
        }
        Ok(envoy)
    }

    /// Waits until each meshwarden filter loaded a configuration over ECDS. Traffic flows
    /// before (the filters start as pass-throughs), but the first configuration starts the
    /// Wasm VMs, which takes a moment; tests start from configured filters.
    pub async fn wait_for_filter_configs(&self, layout: Layout) -> anyhow::Result<()> {
        let names = layout.filter_names();
        let loaded = wait_until(
            Duration::from_secs(60),
            "filters' first configuration",
            || async {
                let stats = self.stats().await.ok()?;
                names
                    .iter()
                    .all(|f| {
                        let key =
                            format!("extension_config_discovery.http_filter.{f}.config_reload");
                        stats.get(&key).is_some_and(|n| *n >= 1)
                    })
                    .then_some(())
            },
        )
        .await;
        if let Err(e) = loaded {
            anyhow::bail!("{e}\n--- envoy log ---\n{}", self.log());
        }
        Ok(())
    }

    /// Starts Envoy from a complete bootstrap (YAML) written into `dir`, and waits until
    /// it is live. For proxies not shaped by `meshwarden bootstrap` (an Istio-like sidecar,
    /// a WasmPlugin-style static filter): the bootstrap's admin and traffic listener use
    /// `admin_port` and `listen_port`.
    pub async fn start_bootstrap(
        dir: tempfile::TempDir,
        bootstrap: &str,
        admin_port: u16,
        listen_port: u16,
        concurrency: u32,
    ) -> anyhow::Result<Self> {
        Self::start_bootstrap_with_args(dir, bootstrap, admin_port, listen_port, concurrency, &[])
            .await
    }

    /// [`Envoy::start_bootstrap`] with extra command-line arguments (e.g. `--config-yaml`,
    /// as istio-agent passes a bootstrap override).
    pub async fn start_bootstrap_with_args(
        dir: tempfile::TempDir,
        bootstrap: &str,
        admin_port: u16,
        listen_port: u16,
        concurrency: u32,
        extra_args: &[String],
    ) -> anyhow::Result<Self> {
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, bootstrap)?;
        let mut cmd = Command::new(envoy_bin());
        cmd.arg("-c")
            .arg(&config)
            .arg("--concurrency")
            .arg(concurrency.to_string())
            .arg("--disable-hot-restart")
            .arg("--log-level")
            .arg("info")
            .arg("--component-log-level")
            .arg("upstream:warn,http:warn,connection:warn,main:warn,config:info,wasm:info")
            .args(extra_args);
        let child = ChildGuard::spawn(&mut cmd, &dir.path().join("envoy.log"))?;
        let envoy = Self {
            admin_port,
            listen_port,
            dir,
            child,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(8)
                .build()?,
        };
        let ready = wait_until(Duration::from_secs(60), "envoy /ready", || {
            let req = envoy.client.get(envoy.admin_url("/ready")).send();
            async move {
                let r = req.await.ok()?;
                (r.status().is_success() && r.text().await.ok()?.trim() == "LIVE").then_some(())
            }
        })
        .await;
        if let Err(e) = ready {
            anyhow::bail!("{e}\n--- envoy log ---\n{}", envoy.log());
        }
        Ok(envoy)
    }

    /// The directory Envoy's files live in (its bootstrap, log, and whatever the caller put
    /// there).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The process id (to prove there was no restart).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// URL of a path on the admin port.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// URL of a path on the traffic listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.listen_port)
    }

    /// A shared HTTP client.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// GET `path` through the proxy with extra headers.
    pub async fn get(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<reqwest::Response> {
        let mut req = self
            .client
            .get(self.url(path))
            .timeout(Duration::from_secs(10));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Ok(req.send().await?)
    }

    /// Every stat as `name -> value` (counters and gauges).
    pub async fn stats(&self) -> anyhow::Result<BTreeMap<String, i64>> {
        let text = self
            .client
            .get(self.admin_url("/stats"))
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(": ")?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect())
    }

    /// One stat's value, 0 if absent.
    pub async fn stat(&self, name: &str) -> anyhow::Result<i64> {
        Ok(self.stats().await?.get(name).copied().unwrap_or(0))
    }

    /// A meshwarden filter counter or gauge for a policy (0 if absent), by its metric name
    /// (`meshwarden_ratelimit_overflow_total`).
    pub async fn policy_stat(&self, metric: &str, policy: &str) -> anyhow::Result<i64> {
        self.stat(&format!("wasmcustom.{metric}.policy.{policy}"))
            .await
    }

    /// Bytes Envoy's allocator has handed out (admin `/memory`, `allocated`).
    pub async fn memory_allocated(&self) -> anyhow::Result<u64> {
        let v: serde_json::Value = self
            .client
            .get(self.admin_url("/memory"))
            .send()
            .await?
            .json()
            .await?;
        v["allocated"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| v["allocated"].as_u64())
            .ok_or_else(|| anyhow::anyhow!("no allocated figure in /memory: {v}"))
    }

    /// Envoy's resident set size (Linux `/proc/<pid>/status` `VmRSS`): includes the Wasm
    /// VMs' linear memory, which the allocator figure does not.
    pub fn resident_bytes(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{}/status", self.pid()))
    }

    /// The Prometheus exposition of Envoy's stats.
    pub async fn prometheus(&self) -> anyhow::Result<String> {
        Ok(self
            .client
            .get(self.admin_url("/stats/prometheus"))
            .send()
            .await?
            .text()
            .await?)
    }
}
