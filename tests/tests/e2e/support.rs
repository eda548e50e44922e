//! Helpers shared by the e2e tests: independent oracles for the headers under test, and
//! readers of `meshwarden status`.

use serde_json::Value;

/// The filter (ECDS resource) the default bootstrap runs: every stage in one pass.
pub const FILTER: &str = "meshwarden.all";

/// The status row of filter `resource` on connected proxy `node_id`, from
/// `meshwarden status -o json`.
pub fn filter_status(status: &Value, node_id: &str, resource: &str) -> Option<Value> {
    let proxies = status.get("proxies")?.as_array()?;
    let proxy = proxies
        .iter()
        .find(|p| p["nodeId"] == node_id && p["connected"] == true)?;
    proxy["filters"]
        .as_array()?
        .iter()
        .find(|f| f["name"] == resource)
        .cloned()
}

/// Checks a W3C `traceparent` (version 00) independently of the filter's own parser and
/// returns its (trace id, parent id, flags).
pub fn parse_traceparent(v: &str) -> Option<(String, String, String)> {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    match parts.as_slice() {
        ["00", t, p, f] if hex(t, 32) && hex(p, 16) && hex(f, 2) && nonzero(t) && nonzero(p) => {
            Some((t.to_string(), p.to_string(), f.to_string()))
        }
        _ => None,
    }
}

/// Checks a UUID (8-4-4-4-12 hex).
pub fn is_uuid(v: &str) -> bool {
    let groups: Vec<&str> = v.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A private copy of the built modules, which a test may break.
pub fn module_copy() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for entry in std::fs::read_dir(meshwarden_e2e::paths::wasm_dir())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wasm") {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap()))?;
        }
    }
    Ok(dir)
}

/// Steady GETs to `url` (one every `every`) until stopped, counting sent and failed
/// (non-2xx or no answer) requests. Bounded by `max` requests.
pub struct SteadyTraffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(u64, u64)>,
}

impl SteadyTraffic {
    pub fn start(
        client: reqwest::Client,
        url: String,
        every: std::time::Duration,
        max: u64,
    ) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let (mut sent, mut failed) = (0u64, 0u64);
            let mut tick = tokio::time::interval(every);
            while sent < max && !flag.load(Ordering::Relaxed) {
                tick.tick().await;
                let ok = client
                    .get(&url)
                    .timeout(std::time::Duration::from_secs(5))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                sent += 1;
                failed += u64::from(!ok);
            }
            (sent, failed)
        });
        Self { stop, task }
    }

    /// Stops and returns (sent, failed).
    pub async fn stop(self) -> anyhow::Result<(u64, u64)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(self.task.await?)
    }
}

/// Waits until requests through `envoy` reach `up` with a `traceparent` (a trace policy
/// is enforced).
pub async fn wait_traced(
    envoy: &meshwarden_e2e::Envoy,
    up: &meshwarden_e2e::EchoUpstream,
    what: &str,
) -> anyhow::Result<()> {
    let n = std::sync::atomic::AtomicUsize::new(0);
    meshwarden_e2e::wait_until(std::time::Duration::from_secs(20), what, || {
        let path = format!(
            "/traced/{}",
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        async move {
            envoy.get(&path, &[]).await.ok()?;
            up.last_with_path(&path)?.header("traceparent").map(|_| ())
        }
    })
    .await
}

/// A policy document of `kind` with `spec` (YAML, unindented).
pub fn policy(kind: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: meshwarden.dev/v1alpha1\nkind: {kind}\nmetadata:\n  name: {name}\nspec:\n{}\n",
        indent(spec, 2)
    )
}

/// A TracePolicy document.
pub fn trace_policy(name: &str, spec: &str) -> String {
    policy("TracePolicy", name, spec)
}

fn indent(s: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    s.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn oracles_accept_and_reject() {
    assert!(parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_some());
    assert!(parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
    assert!(parse_traceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").is_none());
    assert!(is_uuid("3f2a6c1e-8b7d-4e2a-9c4b-1d2e3f4a5b6c"));
    assert!(!is_uuid("not-a-uuid"));
}

/// The version of `resource` that proxy `node_id` accepted last (empty if none).
pub fn accepted_version(cli: &meshwarden_e2e::Cli, node_id: &str, resource: &str) -> String {
    filter_status(&cli.status_json(), node_id, resource)
        .and_then(|f| f["acceptedVersion"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Waits until proxy `node_id` accepted a version of `resource` other than `before`, and
/// the one last sent (bounded by 10 s).
pub async fn wait_accepted_change(
    cli: &meshwarden_e2e::Cli,
    node_id: &str,
    resource: &str,
    before: &str,
) -> anyhow::Result<()> {
    meshwarden_e2e::wait_until(
        std::time::Duration::from_secs(10),
        &format!("{node_id} accepted a new {resource}"),
        || {
            let f = filter_status(&cli.status_json(), node_id, resource);
            async move {
                let f = f?;
                let accepted = f["acceptedVersion"].as_str()?;
                (accepted != before && f["acceptedVersion"] == f["sentVersion"]).then_some(())
            }
        },
    )
    .await
}

/// Writes `text` to a temporary `.yaml` file (kept while the handle lives).
pub fn yaml_file(text: &str) -> anyhow::Result<tempfile::NamedTempFile> {
    let file = tempfile::Builder::new().suffix(".yaml").tempfile()?;
    std::fs::write(file.path(), text)?;
    Ok(file)
}

/// What a fixed-rate overload run offered and got.
#[derive(Debug, Clone, Copy)]
pub struct Overload {
    /// 200 answers.
    pub ok: u64,
    /// 429 answers.
    pub limited: u64,
    /// Anything else (errors included).
    pub other: u64,
    /// Seconds from the start to the last request sent.
    pub window: f64,
}

impl Overload {
    /// Requests sent.
    pub fn offered(&self) -> u64 {
        self.ok + self.limited + self.other
    }

    /// Checks `ok` against `rate × window + burst` within `tolerance` (0.02: ±2 %), every
    /// answer 200 or 429, and an offered load of at least `min_load` × what is admitted;
    /// prints the figures.
    pub fn check(&self, what: &str, rate: f64, burst: f64, tolerance: f64, min_load: f64) {
        let expected = rate * self.window + burst;
        let offered = self.offered();
        println!(
            "{what}: offered {offered} in {:.2} s ({:.0}/s), admitted {}, expected {expected:.0}, error {:+.2} %",
            self.window,
            offered as f64 / self.window,
            self.ok,
            (self.ok as f64 - expected) / expected * 100.0
        );
        assert_eq!(self.other, 0, "every answer is 200 or 429");
        assert!(
            offered as f64 >= min_load * expected,
            "the load was at least {min_load}x the rate: offered {offered}"
        );
        assert!(
            (self.ok as f64 - expected).abs() <= tolerance * expected,
            "admitted {}, expected {expected:.0} ± {} %",
            self.ok,
            tolerance * 100.0
        );
    }
}

/// Offers load for `run`: `tasks` clients, each on its own connection to one of `urls`
/// (round robin), each sending a request every `every` (at most `run / every` each).
pub async fn overload(
    urls: &[String],
    tasks: usize,
    every: std::time::Duration,
    run: std::time::Duration,
) -> anyhow::Result<Overload> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Instant;
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let start = Instant::now();
    let max_requests = (run.as_millis() / every.as_millis().max(1)) as usize + 1;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (counts, url) = (counts.clone(), urls[t % urls.len()].clone());
        handles.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .timeout(std::time::Duration::from_secs(5))
                .build()
                .expect("client");
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut last_sent = start;
            for _ in 0..max_requests {
                tick.tick().await;
                if start.elapsed() >= run {
                    break;
                }
                last_sent = Instant::now();
                let i = match client.get(&url).send().await.map(|r| r.status().as_u16()) {
                    Ok(200) => 0,
                    Ok(429) => 1,
                    _ => 2,
                };
                counts[i].fetch_add(1, Ordering::Relaxed);
            }
            last_sent
        }));
    }
    let mut last_sent = start;
    for h in handles {
        last_sent = last_sent.max(h.await?);
    }
    Ok(Overload {
        ok: counts[0].load(Ordering::Relaxed),
        limited: counts[1].load(Ordering::Relaxed),
        other: counts[2].load(Ordering::Relaxed),
        window: last_sent.duration_since(start).as_secs_f64(),
    })
}

/// A control plane, an echo upstream and an Envoy with two workers, with a client that
/// opens a new connection per request so that requests land on both workers (what tests of
/// state shared by the workers need).
pub struct WorkersStack {
    pub upstream: meshwarden_e2e::EchoUpstream,
    pub cp: meshwarden_e2e::ControlPlane,
    pub envoy: meshwarden_e2e::Envoy,
    pub node_id: String,
    /// No connection reuse: each request picks a worker anew.
    pub fresh: reqwest::Client,
}

impl WorkersStack {
    /// Starts the three, Envoy as `node_id`; each request times out after `timeout`.
    pub async fn start(node_id: &str, timeout: std::time::Duration) -> anyhow::Result<Self> {
        let cp = meshwarden_e2e::ControlPlane::start().await?;
        let upstream = meshwarden_e2e::EchoUpstream::start().await?;
        let opts = meshwarden_e2e::EnvoyOptions {
            node_id: node_id.into(),
            concurrency: 2,
            ..Default::default()
        };
        let envoy = meshwarden_e2e::Envoy::start(&cp, upstream.addr.port(), opts).await?;
        let fresh = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(timeout)
            .build()?;
        Ok(Self {
            upstream,
            cp,
            envoy,
            node_id: node_id.into(),
            fresh,
        })
    }

    /// Applies `yaml` and waits until Envoy took the new configuration.
    pub async fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        let cli = self.cp.cli();
        let before = accepted_version(&cli, &self.node_id, FILTER);
        let out = cli.apply_yaml(yaml);
        anyhow::ensure!(out.success, "apply failed: {}", out.stderr);
        wait_accepted_change(&cli, &self.node_id, FILTER, &before).await?;
        // The ACK precedes the workers' switch to the new configuration by a moment.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        Ok(())
    }

    /// GET `path` with `headers` on a new connection.
    pub async fn send(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<reqwest::Response> {
        let mut req = self.fresh.get(self.envoy.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Ok(req.send().await?)
    }
}
