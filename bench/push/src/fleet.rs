//! N simulated proxies: each an ADS stream (state of the world) that subscribes to the four
//! meshwarden ECDS resources, ACKs every response at once and reports when it got it.
//! Streams are multiplexed over a few HTTP/2 connections, as many proxies behind one
//! gateway would be, so thousands of proxies need only tens of sockets.

use crate::control_plane::MARKER;
use anyhow::Context;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// The resource type every simulated proxy subscribes to.
pub const TYPE_URL: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
/// The four ECDS resources of a proxy with every meshwarden filter.
pub const RESOURCES: [&str; 4] = [
    "meshwarden.trace",
    "meshwarden.fault",
    "meshwarden.mirror",
    "meshwarden.ratelimit",
];

/// What a simulated proxy reports.
#[derive(Debug)]
pub enum Event {
    /// A configuration arrived and was ACKed.
    Config {
        proxy: usize,
        /// The push number found in the trace configuration (`None`: no marker).
        push: Option<u64>,
        /// Resources in the response.
        resources: usize,
        /// When the response was decoded.
        received: Instant,
        /// When its ACK was handed to the stream.
        acked: Instant,
    },
    /// The stream failed or ended.
    Ended { proxy: usize, reason: String },
}

/// A running fleet of simulated proxies.
pub struct Fleet {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// HTTP/2 connections the streams share.
    pub connections: usize,
}

impl Fleet {
    /// Opens `proxies` ADS streams to `url`, at most `streams_per_connection` per HTTP/2
    /// connection, each reporting to `events`.
    /// Connections are spread round robin over `urls` (control-plane replicas).
    pub async fn connect(
        urls: &[String],
        proxies: usize,
        streams_per_connection: usize,
        events: mpsc::UnboundedSender<Event>,
    ) -> anyhow::Result<Self> {
        let per = streams_per_connection.max(1);
        let connections = proxies.div_ceil(per).max(1);
        let mut channels = Vec::with_capacity(connections);
        for i in 0..connections {
            let url = &urls[i % urls.len()];
            let channel = Endpoint::from_shared(url.to_string())?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("cannot connect to {url}"))?;
            channels.push(channel);
        }
        let (stop, stop_rx) = watch::channel(false);
        let tasks = (0..proxies)
            .map(|proxy| {
                let channel = channels[proxy / per].clone();
                tokio::spawn(run_proxy(proxy, channel, events.clone(), stop_rx.clone()))
            })
            .collect();
        Ok(Self {
            stop,
            tasks,
            connections,
        })
    }

    /// Closes every stream.
    pub async fn close(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

fn request(proxy: usize) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: format!("bench-proxy-{proxy}"),
            cluster: "bench".into(),
            ..Default::default()
        }),
        type_url: TYPE_URL.into(),
        resource_names: RESOURCES.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// The push number carried by a response: the digits after [`MARKER`] in any resource.
pub fn push_marker(response: &DiscoveryResponse) -> Option<u64> {
    response.resources.iter().find_map(|any| {
        let bytes = &any.value;
        let at = bytes.windows(MARKER.len()).position(|w| w == MARKER)? + MARKER.len();
        let digits: String = bytes[at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .map(|b| *b as char)
            .collect();
        digits.parse().ok()
    })
}

async fn run_proxy(
    proxy: usize,
    channel: Channel,
    events: mpsc::UnboundedSender<Event>,
    mut stop: watch::Receiver<bool>,
) {
    let end = |reason: String| {
        let _ = events.send(Event::Ended { proxy, reason });
    };
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(4);
    let first = request(proxy);
    if tx.send(first.clone()).await.is_err() {
        return;
    }
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let mut inbound = match client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return end(format!("stream refused: {status}")),
    };
    loop {
        tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(response)) => {
                    let received = Instant::now();
                    let push = push_marker(&response);
                    let ack = DiscoveryRequest {
                        node: None,
                        version_info: response.version_info.clone(),
                        response_nonce: response.nonce.clone(),
                        ..first.clone()
                    };
                    if tx.send(ack).await.is_err() {
                        return end("request stream closed".into());
                    }
                    let _ = events.send(Event::Config {
                        proxy,
                        push,
                        resources: response.resources.len(),
                        received,
                        acked: Instant::now(),
                    });
                }
                Ok(None) => return end("server ended the stream".into()),
                Err(status) => return end(format!("stream failed: {status}")),
            },
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::Any;

    #[test]
    fn finds_the_push_number_in_any_resource() {
        let any = |v: &[u8]| Any {
            type_url: TYPE_URL.into(),
            value: v.to_vec(),
        };
        let response = DiscoveryResponse {
            resources: vec![
                any(b"\x0a\x10meshwarden.fault"),
                any(b"..\"responseHeader\":\"x-bench-42\"}"),
            ],
            ..Default::default()
        };
        assert_eq!(push_marker(&response), Some(42));
        let none = DiscoveryResponse {
            resources: vec![any(b"x-bench-"), any(b"")],
            ..Default::default()
        };
        assert_eq!(push_marker(&none), None);
    }
}
