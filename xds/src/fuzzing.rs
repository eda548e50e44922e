//! Arbitrary client requests through the stream driver (feature `fuzzing`; used by the
//! `fuzz/` target `xds_requests` and by a proptest in this crate's tests).

use crate::observer::NoObserver;
use crate::resource::{Resource, Resources};
use crate::server::{drive, Protocol, Server, Transport};
use crate::snapshot::Snapshot;
use crate::stream::Machine;
use crate::{delta::DeltaStream, sotw::SotwStream, CLUSTER_TYPE, EXTENSION_CONFIG_TYPE};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// Two types of two resources each, whose content depends on the node's cluster.
struct FuzzSnapshot;

impl Snapshot for FuzzSnapshot {
    type Node = String;

    fn node(node: &Node) -> String {
        node.cluster.clone()
    }

    fn id(&self) -> u64 {
        1
    }

    fn types(&self) -> &[&'static str] {
        &[CLUSTER_TYPE, EXTENSION_CONFIG_TYPE]
    }

    fn resources(&self, type_url: &str, node: &String) -> Option<Resources> {
        let resource = |name: &str| {
            Arc::new(Resource {
                name: name.into(),
                version: format!("{name}-{node}"),
                body: Any {
                    type_url: type_url.into(),
                    value: node.clone().into_bytes(),
                },
                summary: vec![],
            })
        };
        Some(Arc::new(vec![resource("a"), resource("b")]))
    }

    fn retry_rejected(&self, _t: &str, _n: &String, message: &str) -> Option<std::time::Duration> {
        (message == "retry").then_some(std::time::Duration::from_millis(1))
    }
}

/// Decodes `data` as a first byte choosing the protocol and transport, then
/// length-prefixed (one byte) protobuf requests, and drives one stream with them: it must
/// end without panicking once the requests end, and every response it sends carries a
/// nonce and a type that is served or was asked for.
pub fn requests(data: &[u8]) {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let mut messages = Vec::new();
    while let Some((&len, tail)) = rest.split_first() {
        let len = (len as usize).min(tail.len());
        messages.push(&tail[..len]);
        rest = &tail[len..];
    }
    let transport = match mode % 3 {
        0 => Transport::Ads,
        1 => Transport::Ecds,
        _ => Transport::Cds,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        if mode & 0x80 == 0 {
            let requests = decode_all::<DiscoveryRequest>(&messages);
            let asked = requests.iter().map(|r| r.type_url.clone()).collect();
            run::<SotwStream<FuzzSnapshot, NoObserver>>(
                requests,
                asked,
                transport,
                Protocol::Sotw,
                |r| (r.nonce.clone(), r.type_url.clone()),
            )
            .await;
        } else {
            let requests = decode_all::<DeltaDiscoveryRequest>(&messages);
            let asked = requests.iter().map(|r| r.type_url.clone()).collect();
            run::<DeltaStream<FuzzSnapshot, NoObserver>>(
                requests,
                asked,
                transport,
                Protocol::Delta,
                |r| (r.nonce.clone(), r.type_url.clone()),
            )
            .await;
        }
    });
}

fn decode_all<M: Message + Default>(messages: &[&[u8]]) -> Vec<M> {
    messages.iter().filter_map(|m| M::decode(*m).ok()).collect()
}

/// Drives one stream of machine `M` with `requests` and checks every response (its nonce,
/// and a type URL that is served or was `asked` for, as `fields` reads them).
async fn run<M>(
    requests: Vec<M::Request>,
    asked: Vec<String>,
    transport: Transport,
    protocol: Protocol,
    fields: impl Fn(&M::Response) -> (String, String),
) where
    M: Machine<Snap = FuzzSnapshot, Obs = NoObserver>,
{
    let (_snapshots_tx, snapshots) = watch::channel(Arc::new(FuzzSnapshot));
    let server = Server::new(snapshots, NoObserver, Arc::default());
    let (tx, mut rx) = mpsc::channel(crate::RESPONSE_BUFFER);
    let inbound = futures::stream::iter(requests.into_iter().map(Ok));
    let task = tokio::spawn(drive::<M, _, NoObserver>(
        tonic::Extensions::default(),
        Box::pin(inbound),
        tx,
        server,
        transport,
        protocol,
    ));
    while let Some(response) = rx.recv().await {
        if let Ok(response) = response {
            let (nonce, type_url) = fields(&response);
            assert!(!nonce.is_empty(), "a response without a nonce");
            assert!(
                [CLUSTER_TYPE, EXTENSION_CONFIG_TYPE].contains(&type_url.as_str())
                    || asked.contains(&type_url),
                "a response of type {type_url:?}, neither served nor asked for"
            );
        }
    }
    task.await.expect("the stream task ends without panicking");
}
