//! gRPC clients for the CLI commands.

use crate::api::pb::policy_service_client::PolicyServiceClient;
use crate::api::pb::proxy_status_service_client::ProxyStatusServiceClient;
use anyhow::Context;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Connects to the control plane at `server` (`http://host:port`; a bare `host:port` is
/// taken as plain HTTP/2).
pub async fn channel(server: &str) -> anyhow::Result<Channel> {
    let url = if server.contains("://") {
        server.to_string()
    } else {
        format!("http://{server}")
    };
    let endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("invalid --server {server:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the control plane at {url}"))
}

/// A PolicyService client. Responses are not size-limited: a listing holds every stored
/// document (up to 1 MiB each), far more than tonic's default 4 MiB.
pub async fn policies(server: &str) -> anyhow::Result<PolicyServiceClient<Channel>> {
    Ok(PolicyServiceClient::new(channel(server).await?).max_decoding_message_size(usize::MAX))
}

/// A ProxyStatusService client.
pub async fn proxies(server: &str) -> anyhow::Result<ProxyStatusServiceClient<Channel>> {
    Ok(ProxyStatusServiceClient::new(channel(server).await?).max_decoding_message_size(usize::MAX))
}

/// The server's message for a failed call (the status code only when there is none),
/// with control characters escaped.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    if status.message().is_empty() {
        anyhow::anyhow!("control plane answered {:?}", status.code())
    } else {
        anyhow::anyhow!("{}", super::output::terminal_safe(status.message()))
    }
}
