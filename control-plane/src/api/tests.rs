//! The policy API over a real gRPC connection on 127.0.0.1.

use super::pb::change_event::Type;
use super::pb::policy_service_client::PolicyServiceClient;
use super::pb::{self, apply_result::Outcome};
use super::PolicyApi;
use crate::registry::PolicyRegistry;
use futures::StreamExt;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Channel;
use tonic::Code;

struct Server {
    client: PolicyServiceClient<Channel>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(PolicyRegistry::open(dir.path()).unwrap());
    let (shutdown, rx) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let api = PolicyApi::new(registry).with_shutdown(rx.clone());
    let task = tokio::spawn(async move {
        let mut rx = rx;
        tonic::transport::Server::builder()
            .add_service(api.into_server())
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async move {
                let _ = rx.wait_for(|d| *d).await;
            })
            .await
            .unwrap();
    });
    let client = PolicyServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    Server {
        client,
        shutdown,
        task,
        _dir: dir,
    }
}

fn doc(name: &str, spec: serde_json::Value) -> String {
    json!({"apiVersion": "meshwarden.dev/v1alpha1", "kind": "TracePolicy",
        "metadata": {"name": name}, "spec": spec})
    .to_string()
}

fn apply(docs: Vec<String>) -> pb::ApplyRequest {
    pb::ApplyRequest {
        documents_json: docs,
        dry_run: false,
    }
}

async fn next_event(stream: &mut tonic::Streaming<pb::ChangeEvent>) -> (String, Type, u64) {
    let ev = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("event in time")
        .expect("stream open")
        .expect("no error");
    let ty = ev.r#type();
    (ev.name, ty, ev.generation)
}

#[tokio::test]
async fn apply_get_list_delete_and_watch() {
    let Server {
        mut client,
        shutdown,
        task,
        _dir,
    } = server().await;

    let r = client
        .apply(apply(vec![
            doc("a", json!({})),
            doc("b", json!({"formats": ["b3"]})),
        ]))
        .await
        .unwrap()
        .into_inner();
    let outcomes: Vec<_> = r
        .results
        .iter()
        .map(|r| (r.name.as_str(), r.outcome()))
        .collect();
    assert_eq!(outcomes, [("a", Outcome::Created), ("b", Outcome::Created)]);
    assert_eq!(r.generation, 1);
    assert_eq!(r.results[0].kind, "TracePolicy");
    assert_eq!(r.results[0].version.len(), 16);

    let mut watch = client
        .watch(pb::WatchRequest {
            kind: "trace".into(),
            send_initial: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_event(&mut watch).await, ("a".into(), Type::Created, 1));
    assert_eq!(next_event(&mut watch).await, ("b".into(), Type::Created, 1));

    let again = client
        .apply(apply(vec![
            doc("a", json!({})),
            doc("b", json!({"formats": ["w3c"]})),
        ]))
        .await
        .unwrap()
        .into_inner();
    let outcomes: Vec<_> = again.results.iter().map(|r| r.outcome()).collect();
    assert_eq!(outcomes, [Outcome::Unchanged, Outcome::Updated]);
    assert_eq!(next_event(&mut watch).await, ("b".into(), Type::Updated, 2));

    let err = client
        .apply(apply(vec![
            doc("c", json!({})),
            doc("checkout", json!({"samplingPercentage": 150})),
        ]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "document 2 (TracePolicy \"checkout\"): spec.samplingPercentage: must be a number from 0 to 100, got 150"
    );
    let err = client
        .apply(apply(vec!["{not json".into()]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("document 1: not valid JSON"),
        "{}",
        err.message()
    );

    let got = client
        .get(pb::GetRequest {
            kind: "tracepolicies".into(),
            name: "b".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((got.kind.as_str(), got.generation), ("TracePolicy", 2));
    let document: serde_json::Value = serde_json::from_str(&got.document_json).unwrap();
    assert_eq!(document["spec"]["formats"], json!(["w3c"]));
    assert!(got.updated_unix_ms > 0);

    let missing = client
        .get(pb::GetRequest {
            kind: "TracePolicy".into(),
            name: "c".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        missing.code(),
        Code::NotFound,
        "nothing of the rejected apply was stored"
    );
    let bad_kind = client
        .get(pb::GetRequest {
            kind: "nope".into(),
            name: "a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_kind.code(), Code::InvalidArgument);

    let list = client
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = list.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!((names, list.generation), (vec!["a", "b"], 2));
    let faults = client
        .list(pb::ListRequest {
            kind: "fault".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(faults.policies.is_empty());

    let deleted = client
        .delete(pb::DeleteRequest {
            kind: "trace".into(),
            name: "a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.generation, 3);
    assert_eq!(next_event(&mut watch).await, ("a".into(), Type::Deleted, 3));
    let again = client
        .delete(pb::DeleteRequest {
            kind: "trace".into(),
            name: "a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);

    // Shutdown ends open watches, so the server can stop.
    shutdown.send(true).unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap();
    assert!(end.is_none() || end.is_some_and(|r| r.is_err()));
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn dry_run_stores_nothing() {
    let mut s = server().await;
    let r = s
        .client
        .apply(pb::ApplyRequest {
            documents_json: vec![doc("a", json!({}))],
            dry_run: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results[0].outcome(), Outcome::Created);
    let list = s
        .client
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(list.policies.is_empty());
    assert_eq!(list.generation, 0);
    s.shutdown.send(true).unwrap();
}
