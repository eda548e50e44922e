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
    addr: std::net::SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn server() -> Server {
    server_with(|api| api).await.0
}

/// A server whose API `configure` adjusts; also returns a handle on the served API.
async fn server_with(configure: impl FnOnce(PolicyApi) -> PolicyApi) -> (Server, PolicyApi) {
    let dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(PolicyRegistry::open(dir.path()).unwrap());
    let (shutdown, rx) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let api = configure(PolicyApi::new(registry).with_shutdown(rx.clone()));
    let handle = api.clone();
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
    (
        Server {
            client,
            addr,
            shutdown,
            task,
            _dir: dir,
        },
        handle,
    )
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
        ..Default::default()
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
        addr: _,
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
            ..Default::default()
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
            ..Default::default()
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
            ..Default::default()
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
            ..Default::default()
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

fn named(kind: &str, name: &str, spec: serde_json::Value) -> String {
    json!({"apiVersion": "meshwarden.dev/v1alpha1", "kind": kind,
        "metadata": {"name": name}, "spec": spec})
    .to_string()
}

#[tokio::test]
async fn writes_beyond_the_concurrency_limit_wait_then_get_resource_exhausted() {
    let (mut s, api) = server_with(|api| api.with_write_wait(Duration::from_millis(200))).await;
    let held = api.occupy_writes().await;
    let err = s
        .client
        .apply(apply(vec![doc("a", json!({}))]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message()
            .contains("at most 4 apply/delete requests at once"),
        "{}",
        err.message()
    );
    let err = s
        .client
        .delete(pb::DeleteRequest {
            kind: "trace".into(),
            name: "a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    // Reads are never held up, and writes go through again once the permits are back.
    s.client.list(pb::ListRequest::default()).await.unwrap();
    drop(held);
    s.client
        .apply(apply(vec![doc("a", json!({}))]))
        .await
        .unwrap();
    s.shutdown.send(true).unwrap();
}

#[tokio::test]
async fn oversized_documents_and_requests_are_refused_with_the_limit() {
    use meshwarden_common::limits::{MAX_APPLY_REQUEST_BYTES, MAX_DOCUMENT_BYTES};
    let mut s = server().await;
    let labels = |n: usize| {
        let value = "v".repeat(1000);
        (0..n)
            .map(|i| (format!("k{i}"), json!(value)))
            .collect::<serde_json::Map<_, _>>()
    };
    let big = |name: &str, n: usize| {
        json!({"apiVersion": "meshwarden.dev/v1alpha1", "kind": "TracePolicy",
            "metadata": {"name": name, "labels": labels(n)}, "spec": {}})
        .to_string()
    };
    // Just below the document limit: accepted.
    let ok = big("ok", 1000);
    assert!(ok.len() < MAX_DOCUMENT_BYTES && ok.len() > MAX_DOCUMENT_BYTES - 50_000);
    s.client.apply(apply(vec![ok])).await.unwrap();
    let over = big("over", 1100);
    let err = s
        .client
        .apply(apply(vec![doc("a", json!({})), over.clone()]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        format!(
            "document 2: {} bytes of JSON, more than the limit of 1048576 bytes per policy document",
            over.len()
        )
    );
    // A request over the wire limit is refused before it is read.
    let docs: Vec<_> = (0..3).map(|i| big(&format!("p{i}"), 1000)).collect();
    assert!(docs.iter().map(String::len).sum::<usize>() > MAX_APPLY_REQUEST_BYTES);
    let err = s.client.apply(apply(docs)).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(err.message().contains("2097152"), "{}", err.message());
    s.shutdown.send(true).unwrap();
}

#[tokio::test]
async fn applies_beyond_the_filter_limits_are_refused() {
    use meshwarden_common::limits::{MAX_POLICIES_PER_FILTER, MAX_REGEXES_PER_FILTER};
    let mut s = server().await;
    let traces = |range: std::ops::Range<usize>| {
        range
            .map(|i| named("TracePolicy", &format!("p{i}"), json!({})))
            .collect::<Vec<_>>()
    };
    s.client
        .apply(apply(traces(0..MAX_POLICIES_PER_FILTER)))
        .await
        .unwrap();
    let err = s
        .client
        .apply(apply(traces(
            MAX_POLICIES_PER_FILTER..MAX_POLICIES_PER_FILTER + 1,
        )))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(
        err.message(),
        "apply refused: TracePolicy policies would number 1025, more than the limit of 1024 per kind (the limits bound every proxy's trace filter configuration); delete or merge TracePolicy policies first"
    );
    // Updating a policy of a full kind, and other kinds, still work.
    s.client
        .apply(apply(vec![named(
            "TracePolicy",
            "p0",
            json!({"formats": ["b3"]}),
        )]))
        .await
        .unwrap();
    let regex_policy = |i: usize| {
        named(
            "FaultPolicy",
            &format!("f{i}"),
            json!({"match": {"path": {"regex": "/a[0-9]+"}, "authority": {"regex": "x.*"}},
                "abort": {"httpStatus": 503, "percentage": {"value": 1}}}),
        )
    };
    let half = MAX_REGEXES_PER_FILTER / 2;
    s.client
        .apply(apply((0..half).map(regex_policy).collect()))
        .await
        .unwrap();
    let err = s
        .client
        .apply(apply(vec![regex_policy(half)]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains(
            "FaultPolicy policies would hold 258 regular expressions, more than the limit of 256"
        ),
        "{}",
        err.message()
    );
    // Deleting makes room again.
    s.client
        .delete(pb::DeleteRequest {
            kind: "fault".into(),
            name: "f0".into(),
        })
        .await
        .unwrap();
    s.client
        .apply(apply(vec![regex_policy(half)]))
        .await
        .unwrap();
    s.shutdown.send(true).unwrap();
}

/// `ApplyRequest` with `documents_json` as raw bytes (the same wire format), to send text
/// that is not UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct RawApplyRequest {
    #[prost(bytes = "vec", repeated, tag = "1")]
    documents_json: Vec<Vec<u8>>,
}

#[tokio::test]
async fn undecodable_requests_are_invalid_arguments() {
    let s = server().await;
    let channel = Channel::from_shared(format!("http://{}", s.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/meshwarden.v1alpha1.PolicyService/Apply",
    );
    let codec = tonic_prost::ProstCodec::<RawApplyRequest, pb::ApplyResponse>::default();
    let request = RawApplyRequest {
        documents_json: vec![b"{\"kind\": \"\xff\xfe\"}".to_vec()],
    };
    let err = grpc
        .unary(tonic::Request::new(request), path, codec)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("documents_json") && err.message().contains("UTF-8"),
        "{}",
        err.message()
    );
    s.shutdown.send(true).unwrap();
}

fn based_on(docs: Vec<String>, revisions: Vec<u64>, force: bool) -> pb::ApplyRequest {
    pb::ApplyRequest {
        expected_revisions: revisions,
        force,
        ..apply(docs)
    }
}

fn get_revision(name: &str, revision: u64) -> pb::GetRequest {
    pb::GetRequest {
        kind: "TracePolicy".into(),
        name: name.into(),
        revision,
    }
}

#[tokio::test]
async fn history_rollback_and_get_revision() {
    let mut s = server().await;
    let c = &mut s.client;
    let v1 = c
        .apply(apply(vec![doc("a", json!({"samplingPercentage": 10}))]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v1.results[0].revision, 1);
    let v2 = c
        .apply(apply(vec![doc("a", json!({"samplingPercentage": 20}))]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v2.results[0].revision, 2);
    let same = c
        .apply(apply(vec![doc("a", json!({"samplingPercentage": 20}))]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (same.results[0].outcome(), same.results[0].revision),
        (Outcome::Unchanged, 2)
    );

    let old = c.get(get_revision("a", 1)).await.unwrap().into_inner();
    assert_eq!(
        (old.revision, old.version.as_str()),
        (1, v1.results[0].version.as_str())
    );
    assert!(
        old.document_json.contains("\"samplingPercentage\":10"),
        "{}",
        old.document_json
    );
    let err = c.get(get_revision("a", 9)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("revision 9 is not kept"),
        "{}",
        err.message()
    );

    // Default: back to the revision before the current one; a new revision.
    let back = c
        .rollback(pb::RollbackRequest {
            kind: "trace".into(),
            name: "a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (back.results[0].outcome(), back.results[0].revision),
        (Outcome::Updated, 3)
    );
    assert_eq!(back.results[0].version, v1.results[0].version);
    let current = c.get(get_revision("a", 0)).await.unwrap().into_inner();
    assert_eq!(
        (current.revision, current.version),
        (3, v1.results[0].version.clone())
    );

    // Deleted, then rolled back to life.
    c.delete(pb::DeleteRequest {
        kind: "trace".into(),
        name: "a".into(),
    })
    .await
    .unwrap();
    let history = c
        .history(pb::HistoryRequest {
            kind: "trace".into(),
            name: "a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let seen: Vec<_> = history
        .revisions
        .iter()
        .map(|r| {
            (
                r.revision,
                r.change.as_str(),
                r.rollback_of,
                r.actor.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (1, "created", 0, "anonymous"),
            (2, "updated", 0, "anonymous"),
            (3, "rolled-back", 1, "anonymous"),
            (4, "deleted", 0, "anonymous")
        ]
    );
    let err = c.get(get_revision("a", 4)).await.unwrap_err();
    assert!(
        err.message().contains("is its deletion"),
        "{}",
        err.message()
    );
    let err = c
        .rollback(pb::RollbackRequest {
            kind: "trace".into(),
            name: "a".into(),
            to_revision: 4,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let restored = c
        .rollback(pb::RollbackRequest {
            kind: "trace".into(),
            name: "a".into(),
            to_revision: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (restored.results[0].outcome(), restored.results[0].revision),
        (Outcome::Created, 5)
    );
    assert_eq!(restored.results[0].version, v2.results[0].version);

    let err = c
        .history(pb::HistoryRequest {
            kind: "trace".into(),
            name: "never".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn an_apply_based_on_an_old_revision_is_aborted_unless_forced() {
    let mut s = server().await;
    let c = &mut s.client;
    c.apply(apply(vec![doc("a", json!({})), doc("b", json!({}))]))
        .await
        .unwrap();
    c.apply(apply(vec![doc("a", json!({"formats": ["b3"]}))]))
        .await
        .unwrap();
    // Based on revision 1 of both: a is at 2 now, so nothing of the request is applied.
    let stale = based_on(
        vec![
            doc("a", json!({"formats": ["w3c"]})),
            doc("b", json!({"formats": ["w3c"]})),
        ],
        vec![1, 1],
        false,
    );
    let err = c.apply(stale.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert!(
        err.message().starts_with("conflict: TracePolicy \"a\" is at revision 2, not revision 1 this apply was based on; nothing was applied"),
        "{}",
        err.message()
    );
    let b = c.get(get_revision("b", 0)).await.unwrap().into_inner();
    assert_eq!(b.revision, 1, "b untouched");
    // A policy deleted meanwhile conflicts too.
    c.delete(pb::DeleteRequest {
        kind: "trace".into(),
        name: "b".into(),
    })
    .await
    .unwrap();
    let err = c
        .apply(based_on(vec![doc("b", json!({}))], vec![1], false))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("\"b\" does not exist now"),
        "{}",
        err.message()
    );
    // The right revision, or --force, goes through.
    let ok = c
        .apply(based_on(
            vec![doc("a", json!({"formats": ["w3c"]}))],
            vec![2],
            false,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.results[0].revision, 3);
    let forced = c
        .apply(based_on(vec![doc("a", json!({}))], vec![1], true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(forced.results[0].revision, 4);
    let err = c
        .apply(based_on(vec![doc("a", json!({}))], vec![1, 2], false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("expected_revisions: 2 given for 1 documents"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn racing_applies_based_on_one_revision_never_lose_an_update() {
    let s = server().await;
    let mut c = s.client.clone();
    let mut revision = c
        .apply(apply(vec![doc("race", json!({"samplingPercentage": 0}))]))
        .await
        .unwrap()
        .into_inner()
        .results[0]
        .revision;
    for round in 0..100u32 {
        let request = |pct: u32| {
            based_on(
                vec![doc("race", json!({"samplingPercentage": pct}))],
                vec![revision],
                false,
            )
        };
        let (mut x, mut y) = (s.client.clone(), s.client.clone());
        let (rx, ry) = (request(round % 50 + 1), request(round % 50 + 51));
        let (a, b) = tokio::join!(x.apply(rx), y.apply(ry));
        let (won, lost) = match (a, b) {
            (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w.into_inner(), l),
            other => panic!("round {round}: exactly one apply must win: {other:?}"),
        };
        assert_eq!(lost.code(), Code::Aborted, "round {round}: {lost:?}");
        assert_eq!(won.results[0].revision, revision + 1, "round {round}");
        revision += 1;
        let stored = c.get(get_revision("race", 0)).await.unwrap().into_inner();
        assert_eq!(
            stored.version, won.results[0].version,
            "round {round}: the winner is stored"
        );
    }
}

#[tokio::test]
async fn a_circuit_breaker_policy_round_trips_and_errors_name_the_field() {
    let mut s = server().await;
    let spec = json!({
        "match": {"path": {"prefix": "/orders"}},
        "slidingWindow": {"count": 20},
        "minimumNumberOfCalls": 10,
        "waitDurationInOpenState": "1500ms",
        "failureStatuses": ["5xx", 429],
        "fallback": {"httpStatus": 200, "body": "{\"items\":[]}"}
    });
    let r = s
        .client
        .apply(apply(vec![named("CircuitBreakerPolicy", "orders", spec)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results[0].kind, "CircuitBreakerPolicy");
    let got = s
        .client
        .get(pb::GetRequest {
            kind: "circuitbreaker".into(),
            name: "orders".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let document: serde_json::Value = serde_json::from_str(&got.document_json).unwrap();
    assert_eq!(document["kind"], "CircuitBreakerPolicy");
    assert_eq!(document["spec"]["waitDurationInOpenState"], "1500ms");
    assert_eq!(document["spec"]["failureStatuses"], json!(["5xx", 429]));
    assert_eq!(document["spec"]["match"]["path"]["prefix"], "/orders");
    let err = s
        .client
        .apply(apply(vec![named(
            "CircuitBreakerPolicy",
            "bad",
            json!({"slidingWindow": {"count": 5}, "minimumNumberOfCalls": 6}),
        )]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("spec.minimumNumberOfCalls: must be from 1 to the window's count (5), got 6"),
        "{}",
        err.message()
    );
    s.shutdown.send(true).unwrap();
}
