//! gRPC clients for the CLI commands.

use crate::api::pb::audit_service_client::AuditServiceClient;
use crate::api::pb::capture_service_client::CaptureServiceClient;
use crate::api::pb::policy_service_client::PolicyServiceClient;
use crate::api::pb::proxy_status_service_client::ProxyStatusServiceClient;
use anyhow::Context;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How the CLI authenticates to the control plane (global flags).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConnectArgs {
    /// Bearer token for the policy API (a `--token-file` entry on the server).
    #[arg(long, global = true, env = "MESHWARDEN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA bundle (PEM) the control plane's certificate must chain to; connects over TLS
    /// (an `http://` --server is taken as `https://`).
    #[arg(long, global = true, value_name = "FILE", env = "MESHWARDEN_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, global = true, value_name = "FILE", env = "MESHWARDEN_CERT")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, global = true, value_name = "FILE", env = "MESHWARDEN_KEY")]
    pub key: Option<PathBuf>,
    /// Name to verify the control plane's certificate against (default: the --server host).
    #[arg(long, global = true, value_name = "NAME")]
    pub tls_server_name: Option<String>,
}

static CONNECT: OnceLock<ConnectArgs> = OnceLock::new();

/// Sets how every client of this process connects (once, from the command line).
pub fn configure(args: ConnectArgs) {
    let _ = CONNECT.set(args);
}

fn connect_args() -> &'static ConnectArgs {
    CONNECT.get_or_init(ConnectArgs::default)
}

/// Adds `authorization: Bearer <token>` to every call when a token is configured.
#[derive(Debug, Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel whose calls carry the configured token.
pub type AuthChannel = InterceptedService<Channel, BearerToken>;

fn bearer() -> anyhow::Result<BearerToken> {
    let Some(token) = &connect_args().token else {
        return Ok(BearerToken(None));
    };
    let value = format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| anyhow::anyhow!("--token must be printable ASCII"))?;
    Ok(BearerToken(Some(value)))
}

fn read_pem(flag: &str, path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {flag} {}", path.display()))
}

/// The TLS settings of the configured flags, if any.
fn tls_config() -> anyhow::Result<Option<ClientTlsConfig>> {
    let args = connect_args();
    let Some(ca) = &args.ca_cert else {
        anyhow::ensure!(
            args.cert.is_none() && args.key.is_none(),
            "--cert and --key need --ca-cert (the CA of the control plane's certificate)"
        );
        return Ok(None);
    };
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem("--ca-cert", ca)?));
    match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(
                read_pem("--cert", cert)?,
                read_pem("--key", key)?,
            ));
        }
        (None, None) => {}
        _ => anyhow::bail!("--cert and --key go together"),
    }
    if let Some(name) = &args.tls_server_name {
        tls = tls.domain_name(name.clone());
    }
    Ok(Some(tls))
}

/// Connects to the control plane at `server` (`http://host:port` or `https://host:port`;
/// a bare `host:port` is taken as plain HTTP/2, or TLS with --ca-cert).
pub async fn channel(server: &str) -> anyhow::Result<Channel> {
    let tls = tls_config()?;
    let url = match server.split_once("://") {
        Some(("http", rest)) if tls.is_some() => format!("https://{rest}"),
        Some(("https", _)) if tls.is_none() => {
            anyhow::bail!("--server {server}: TLS needs --ca-cert (the CA of the control plane's certificate)")
        }
        Some(_) => server.to_string(),
        None if tls.is_some() => format!("https://{server}"),
        None => format!("http://{server}"),
    };
    let mut endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("invalid --server {server:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls)
            .context("invalid TLS settings (--ca-cert, --cert, --key)")?;
    }
    endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the control plane at {url}"))
}

/// A PolicyService client. Responses are not size-limited: a listing holds every stored
/// document (up to 1 MiB each), far more than tonic's default 4 MiB.
pub async fn policies(server: &str) -> anyhow::Result<PolicyServiceClient<AuthChannel>> {
    Ok(
        PolicyServiceClient::with_interceptor(channel(server).await?, bearer()?)
            .max_decoding_message_size(usize::MAX),
    )
}

/// An AuditService client.
pub async fn audit(server: &str) -> anyhow::Result<AuditServiceClient<AuthChannel>> {
    Ok(
        AuditServiceClient::with_interceptor(channel(server).await?, bearer()?)
            .max_decoding_message_size(usize::MAX),
    )
}

/// A CaptureService client.
pub async fn capture(server: &str) -> anyhow::Result<CaptureServiceClient<AuthChannel>> {
    Ok(CaptureServiceClient::with_interceptor(
        channel(server).await?,
        bearer()?,
    ))
}

/// A ProxyStatusService client.
pub async fn proxies(server: &str) -> anyhow::Result<ProxyStatusServiceClient<AuthChannel>> {
    Ok(
        ProxyStatusServiceClient::with_interceptor(channel(server).await?, bearer()?)
            .max_decoding_message_size(usize::MAX),
    )
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
