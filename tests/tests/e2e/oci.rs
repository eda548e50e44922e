//! Wasm OCI images: a filter module pushed to a real registry (Debian's `docker-registry`,
//! the CNCF distribution server) by `meshwarden-wasm-image`, pulled back by digest, and run
//! in an Envoy configured the way istiod configures a `WasmPlugin`.

use meshwarden_e2e::paths::wasm_dir;
use meshwarden_e2e::ports::free_port;
use meshwarden_e2e::process::ChildGuard;
use meshwarden_e2e::static_envoy::{static_cluster, StaticEnvoy};
use meshwarden_e2e::{wait_until, EchoUpstream, Envoy};
use meshwarden_wasm_image as wasm_image;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The registry binary: `$MESHWARDEN_DOCKER_REGISTRY`, else Debian's package.
fn registry_bin() -> PathBuf {
    std::env::var_os("MESHWARDEN_DOCKER_REGISTRY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/docker-registry"))
}

/// A registry on a free loopback port, plain HTTP, storage in a temp dir; killed on drop.
struct Registry {
    /// `127.0.0.1:PORT`.
    host: String,
    dir: tempfile::TempDir,
    _child: ChildGuard,
}

impl Registry {
    async fn start() -> anyhow::Result<Self> {
        let bin = registry_bin();
        anyhow::ensure!(
            bin.is_file(),
            "{} not found: the OCI image tests need an OCI registry; install Debian's \
             docker-registry package (apt-get install docker-registry) or point \
             MESHWARDEN_DOCKER_REGISTRY at a distribution `registry` binary",
            bin.display()
        );
        let dir = tempfile::tempdir()?;
        let host = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("config.yml");
        // No `http.debug` block: the debug/metrics listener stays off. No auth, no TLS.
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog: {{disabled: true}}\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {host}\n",
                json!(dir.path().join("data").display().to_string())
            ),
        )?;
        let mut cmd = Command::new(&bin);
        cmd.arg("serve").arg(&config);
        // REGISTRY_* variables override the config file; keep the test's config in charge.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(key);
            }
        }
        let child = ChildGuard::spawn(&mut cmd, &dir.path().join("registry.log"))?;
        let registry = Self {
            host,
            dir,
            _child: child,
        };
        let client = reqwest::Client::new();
        let url = format!("http://{}/v2/", registry.host);
        let up = wait_until(Duration::from_secs(30), "registry GET /v2/", || {
            let req = client.get(&url).timeout(Duration::from_secs(2)).send();
            async move { req.await.ok()?.status().is_success().then_some(()) }
        })
        .await;
        if let Err(e) = up {
            anyhow::bail!("{e}\n--- registry log ---\n{}", registry.log());
        }
        Ok(registry)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `HOST:PORT/meshwarden/<name>` followed by `suffix` (`:tag` or `@sha256:…`).
    fn image(&self, name: &str, suffix: &str) -> String {
        format!("{}/meshwarden/{name}{suffix}", self.host)
    }
}

fn fault_module() -> anyhow::Result<Vec<u8>> {
    let path = wasm_dir().join("meshwarden_fault.wasm");
    std::fs::read(&path).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e} (build the filter modules with `make build`)",
            path.display()
        )
    })
}

/// Pushes the fault module to a fresh registry as `meshwarden/fault:0.1.0`.
async fn registry_with_fault_image() -> anyhow::Result<(Registry, Vec<u8>, wasm_image::Digest)> {
    let registry = Registry::start().await?;
    let module = fault_module()?;
    let image = wasm_image::build_image(&module)?;
    let digest = wasm_image::push(&registry.image("fault", ":0.1.0"), &image, true).await?;
    assert_eq!(&digest, image.digest(), "push returns the manifest digest");
    Ok((registry, module, digest))
}

#[tokio::test]
async fn pushed_module_pulls_back_by_digest_and_a_wrong_digest_is_refused() -> anyhow::Result<()> {
    let (registry, module, digest) = registry_with_fault_image().await?;
    let by_digest = registry.image("fault", &format!("@{digest}"));
    let by_tag = registry.image("fault", ":0.1.0");

    // By digest (the form a WasmPlugin url pins), and by tag with the digest expected.
    assert!(wasm_image::pull(&by_digest, None, true).await? == module);
    let via_url = format!("oci://{by_tag}");
    assert!(wasm_image::pull(&via_url, Some(digest.hex()), true).await? == module);

    // Pushing the same module again is idempotent: same digest.
    let again = wasm_image::build_image(&module)?;
    assert_eq!(wasm_image::push(&by_tag, &again, true).await?, digest);

    // A wrong expected digest fails, naming the expected and the actual digest.
    let wrong = wasm_image::Digest::of(b"not the manifest");
    let err = wasm_image::pull(&by_tag, Some(wrong.as_str()), true)
        .await
        .expect_err("pull with a wrong digest must fail")
        .to_string();
    assert!(
        err.contains(wrong.as_str()) && err.contains(digest.as_str()),
        "error names both digests: {err}"
    );
    // A reference pinned to one digest while another is expected: refused, both named.
    let err = wasm_image::pull(&by_digest, Some(wrong.as_str()), true)
        .await
        .expect_err("conflicting digests must fail")
        .to_string();
    assert!(
        err.contains(wrong.as_str()) && err.contains(digest.as_str()),
        "{err}"
    );

    // Another client sees the same manifest digest, and a copy converted to a Docker
    // schema 2 image (the other layout Istio accepts) still yields the module.
    let Some(skopeo) = which("skopeo") else {
        println!("note: skopeo not installed; skipping the skopeo checks");
        return Ok(());
    };
    let inspected: Value = serde_json::from_slice(&run(Command::new(&skopeo)
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{by_tag}")))?)?;
    assert_eq!(inspected["Digest"], digest.as_str(), "{inspected}");
    assert_eq!(inspected["Architecture"], "wasm");

    let docker = registry.image("fault-docker", ":0.1.0");
    run(Command::new(&skopeo)
        .args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"])
        .args(["--format", "v2s2"])
        .arg(format!("docker://{by_tag}"))
        .arg(format!("docker://{docker}")))?;
    assert!(wasm_image::pull(&docker, None, true).await? == module);
    Ok(())
}

/// Runs `cmd` and returns its stdout; fails with its stderr.
fn run(cmd: &mut Command) -> anyhow::Result<Vec<u8>> {
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// The Envoy bootstrap for a WasmPlugin-style filter: what istiod generates from a
/// `WasmPlugin` (`url: oci://…`, `sha256`, `pluginName`, `pluginConfig`) once the Istio
/// agent has pulled the image: an `envoy.filters.http.wasm` filter named
/// `<namespace>.<plugin>`, `root_id` = `pluginName`, the V8 runtime loading the module,
/// the `pluginConfig` as JSON in a `StringValue`, `FAIL_OPEN`. Static here, where istiod
/// sends the filter over ECDS.
pub(crate) fn wasmplugin_envoy_yaml(
    module: ModuleCode<'_>,
    plugin_config: &Value,
    admin_port: u16,
    listen_port: u16,
    upstream_port: u16,
) -> String {
    let (code, clusters) = match module {
        ModuleCode::Local(path) => (
            json!({"local": {"filename": path.display().to_string()}}),
            vec![],
        ),
        ModuleCode::Remote { uri, sha256, port } => (
            json!({"remote": {
                "http_uri": {"uri": uri, "cluster": "meshwarden_modules", "timeout": "10s"},
                "sha256": sha256
            }}),
            vec![static_cluster("meshwarden_modules", port, false)],
        ),
    };
    let filter = json!({
        "name": "demo.meshwarden-fault",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "demo.meshwarden-fault",
                "root_id": "meshwarden.fault",
                "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": code},
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": plugin_config.to_string()
                },
                "failure_policy": "FAIL_OPEN"
            }
        }
    });
    StaticEnvoy {
        admin_port,
        listen_port,
        upstream_port,
        route_extra: json!({}),
        http_filters: vec![filter],
        clusters,
    }
    .bootstrap()
}

/// Where the WasmPlugin-style Envoy loads its module from.
pub(crate) enum ModuleCode<'a> {
    /// A file on the proxy's host (what the Istio agent leaves after pulling an image).
    Local(&'a Path),
    /// Over HTTP from `127.0.0.1:port`, checked against `sha256`.
    Remote {
        uri: &'a str,
        sha256: &'a str,
        port: u16,
    },
}

#[tokio::test]
async fn pulled_module_runs_as_a_wasmplugin_in_envoy() -> anyhow::Result<()> {
    let (registry, module, digest) = registry_with_fault_image().await?;
    let pulled = wasm_image::pull(
        &registry.image("fault", &format!("@{digest}")),
        Some(digest.as_str()),
        true,
    )
    .await?;
    assert!(
        pulled == module,
        "pulled module differs from the pushed one"
    );
    let dir = tempfile::tempdir()?;
    let pulled_path = dir.path().join("pulled-fault.wasm");
    std::fs::write(&pulled_path, &pulled)?;

    // The WasmPlugin's pluginConfig: the fault filter's wire format.
    let plugin_config = json!({
        "policies": [{
            "name": "abort-teapot",
            "match": {"path": {"prefix": "/abort"}},
            "spec": {"abort": {"httpStatus": 418, "percentage": {"value": 100}}},
        }]
    });
    let upstream = EchoUpstream::start().await?;
    let (admin_port, listen_port) = (free_port(), free_port());
    let yaml = wasmplugin_envoy_yaml(
        ModuleCode::Local(&pulled_path),
        &plugin_config,
        admin_port,
        listen_port,
        upstream.addr.port(),
    );
    let envoy = Envoy::start_bootstrap(dir, &yaml, admin_port, listen_port, 1).await?;

    let aborted = envoy.get("/abort/x", &[]).await?;
    let status = aborted.status().as_u16();
    assert_eq!(
        status,
        418,
        "the pulled module aborts /abort/*; body {:?}\n--- envoy log ---\n{}",
        aborted.text().await.unwrap_or_default(),
        envoy.log()
    );
    assert!(
        upstream.last_with_path("/abort/x").is_none(),
        "an aborted request never reaches the upstream"
    );
    let passed = envoy.get("/other", &[]).await?;
    assert_eq!(passed.status().as_u16(), 200, "{}", envoy.log());
    assert!(
        upstream.last_with_path("/other").is_some(),
        "/other reached the upstream"
    );
    Ok(())
}
