//! `serve` as a whole, in-process on 127.0.0.1: readiness, the policy API and ADS on one
//! port, status and metrics reflecting a proxy's ACK, shutdown with streams open, and
//! policies surviving a restart.

use super::serve::{serve, ServeArgs};
use crate::api::pb;
use crate::api::pb::policy_service_client::PolicyServiceClient;
use crate::api::pb::proxy_status_service_client::ProxyStatusServiceClient;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use std::path::Path;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(10);
const ECDS: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";

fn free_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn fake_modules(dir: &Path) {
    crate::xds::modules::test_support::write_fake_modules(dir);
}

/// Raw HTTP/1.1 GET, returning status and body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).ok()?;
        s.write_all(req.as_bytes()).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let status = out.get(9..12)?.parse().ok()?;
        Some((status, out.split("\r\n\r\n").nth(1)?.to_string()))
    })
    .await
    .unwrap()
}

struct Running {
    args: ServeArgs,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    channel: Channel,
}

async fn start(data_dir: &Path, wasm_dir: &Path) -> Running {
    let args = ServeArgs {
        grpc_addr: free_addr(),
        http_addr: free_addr(),
        data_dir: data_dir.to_path_buf(),
        wasm_dir: wasm_dir.to_path_buf(),
        module_cluster: None,
        history_limit: 50,
        store: None,
        etcd_prefix: crate::backend::etcd::DEFAULT_PREFIX.into(),
        replica_id: None,
        log_format: super::serve::LogFormat::Text,
        mirror_deny: Vec::new(),
        mirror_allow: Vec::new(),
        security: Default::default(),
    };
    let (shutdown, rx) = watch::channel(false);
    let task = tokio::spawn(serve(args.clone(), rx));
    let deadline = tokio::time::Instant::now() + WAIT;
    while http_get(args.http_addr, "/readyz").await.map(|r| r.0) != Some(200) {
        assert!(!task.is_finished(), "serve exited early");
        assert!(tokio::time::Instant::now() < deadline, "not ready in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let channel = super::client::channel(&args.grpc_addr.to_string())
        .await
        .unwrap();
    Running {
        args,
        shutdown,
        task,
        channel,
    }
}

impl Running {
    async fn stop(self) {
        self.shutdown.send(true).unwrap();
        let result = tokio::time::timeout(WAIT, self.task).await;
        result.expect("serve stops in time").unwrap().unwrap();
    }
}

fn trace_doc(name: &str) -> String {
    serde_json::json!({"apiVersion": "meshwarden.dev/v1alpha1", "kind": "TracePolicy",
        "metadata": {"name": name}, "spec": {"formats": ["w3c"]}})
    .to_string()
}

#[tokio::test]
async fn serves_api_and_ads_on_one_port_and_persists_across_restarts() {
    let (data, wasm) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fake_modules(wasm.path());
    let cp = start(data.path(), wasm.path()).await;

    let mut policies = PolicyServiceClient::new(cp.channel.clone());
    policies
        .apply(pb::ApplyRequest {
            documents_json: vec![trace_doc("checkout")],
            dry_run: false,
            ..Default::default()
        })
        .await
        .unwrap();
    // A Watch left open must not hold up shutdown.
    let _watch = policies
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();

    // Play a proxy over ADS on the same port.
    let (tx, rx) = mpsc::channel(4);
    let mut responses = AggregatedDiscoveryServiceClient::new(cp.channel.clone())
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let node = Node {
        id: "edge-1".into(),
        cluster: "shop".into(),
        ..Default::default()
    };
    let request = move |version: &str, nonce: &str| DiscoveryRequest {
        node: Some(node.clone()),
        version_info: version.into(),
        resource_names: vec!["meshwarden.trace".into()],
        type_url: ECDS.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    };
    // ACK every response, as Envoy would.
    tx.send(request("", "")).await.unwrap();
    let proxy = tokio::spawn(async move {
        while let Ok(Some(response)) = responses.message().await {
            assert_eq!(response.resources.len(), 1);
            let ack = request(&response.version_info, &response.nonce);
            if tx.send(ack).await.is_err() {
                break;
            }
        }
    });

    let mut status = ProxyStatusServiceClient::new(cp.channel.clone());
    let deadline = tokio::time::Instant::now() + WAIT;
    let trace = loop {
        let list = status
            .list_proxies(pb::ListProxiesRequest {})
            .await
            .unwrap()
            .into_inner();
        let found = list
            .proxies
            .iter()
            .find(|p| p.node_id == "edge-1" && p.connected)
            .and_then(|p| p.filters.iter().find(|f| f.name == "meshwarden.trace"))
            .filter(|f| f.accepted_policies == ["checkout"])
            .cloned();
        if let Some(f) = found {
            break f;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no ACK in status: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!trace.accepted_version.is_empty());
    assert!(trace.last_error.is_empty());

    let (code, metrics) = http_get(cp.args.http_addr, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    for line in [
        "meshwarden_policies{kind=\"TracePolicy\"} 1",
        "meshwarden_xds_connected_proxies 1",
        "meshwarden_store_generation 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in:\n{metrics}"
        );
    }

    // Shut down with the ADS stream and the Watch still open.
    cp.stop().await;
    tokio::time::timeout(WAIT, proxy)
        .await
        .expect("the ADS stream ended with the server")
        .unwrap();

    let cp = start(data.path(), wasm.path()).await;
    let listed = PolicyServiceClient::new(cp.channel.clone())
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = listed.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!((names, listed.generation), (vec!["checkout"], 1));
    cp.stop().await;
}

#[tokio::test]
async fn missing_modules_fail_startup_with_the_path() {
    let (data, wasm) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = ServeArgs {
        grpc_addr: free_addr(),
        http_addr: free_addr(),
        data_dir: data.path().to_path_buf(),
        wasm_dir: wasm.path().to_path_buf(),
        module_cluster: None,
        history_limit: 50,
        store: None,
        etcd_prefix: crate::backend::etcd::DEFAULT_PREFIX.into(),
        replica_id: None,
        log_format: super::serve::LogFormat::Text,
        mirror_deny: Vec::new(),
        mirror_allow: Vec::new(),
        security: Default::default(),
    };
    let (_tx, rx) = watch::channel(false);
    let err = tokio::time::timeout(WAIT, serve(args, rx))
        .await
        .unwrap()
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("cannot start the xDS server"), "{text}");
    assert!(text.contains("meshwarden.wasm"), "{text}");
}

#[tokio::test]
async fn reflection_lists_the_policy_api_and_describes_it() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let (data, wasm) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fake_modules(wasm.path());
    let running = start(data.path(), wasm.path()).await;
    let mut client = ServerReflectionClient::new(running.channel.clone());
    let ask = |m: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let requests = tokio_stream::iter(vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "meshwarden.v1alpha1.PolicyService".into(),
        )),
    ]);
    let mut answers = client
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"meshwarden.v1alpha1.PolicyService".to_string())
            && names.contains(&"meshwarden.v1alpha1.ProxyStatusService".to_string()),
        "{names:?}"
    );
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("the file describing PolicyService")
    };
    assert!(!files.file_descriptor_proto.is_empty());
    drop(answers);
    running.stop().await;
}
