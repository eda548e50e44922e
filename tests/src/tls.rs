//! TLS for the test harness: the certificates of one secured control plane (generated at
//! test time), and a minimal TLS client to probe its ports.

use meshwarden_cp::test_pki::{CertFiles, TestCa};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// A CA, the control plane's server certificate for `localhost`/`127.0.0.1`, and client
/// certificates issued on demand, all in one temporary directory.
pub struct TestPki {
    pub ca: TestCa,
    pub ca_file: PathBuf,
    pub server: CertFiles,
    dir: tempfile::TempDir,
}

impl TestPki {
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca = TestCa::new("meshwarden test CA");
        let ca_file = ca.write(&dir.path().join("ca.pem"));
        let server = ca.issue_files(dir.path(), "server", &["localhost", "127.0.0.1"], true);
        Ok(Self {
            ca,
            ca_file,
            server,
            dir,
        })
    }

    /// A client certificate named `names` (DNS names or URIs) in `<stem>.pem`/`.key`.
    pub fn client(&self, stem: &str, names: &[&str]) -> CertFiles {
        self.ca.issue_files(self.dir.path(), stem, names, false)
    }

    /// Issues a new server certificate over the old files, as cert-manager would.
    pub fn rotate_server(&self) {
        self.ca
            .issue_files(self.dir.path(), "server", &["localhost", "127.0.0.1"], true);
    }

    /// A traffic listener serving the `localhost` certificate and requiring client
    /// certificates issued by this CA.
    pub fn listener_tls(&self) -> ListenerTls {
        ListenerTls {
            cert: self.server.cert.clone(),
            key: self.server.key.clone(),
            client_ca: self.ca_file.clone(),
        }
    }

    /// `serve` flags for TLS with mutual TLS required, checking the files every 200 ms.
    pub fn serve_args(&self) -> Vec<String> {
        [
            "--tls-cert",
            &self.server.cert.display().to_string(),
            "--tls-key",
            &self.server.key.display().to_string(),
            "--client-ca",
            &self.ca_file.display().to_string(),
            "--require-client-cert",
            "--reload-interval",
            "0.2",
        ]
        .map(String::from)
        .to_vec()
    }

    /// CLI flags connecting with `client`'s certificate.
    pub fn cli_args(&self, client: &CertFiles) -> Vec<String> {
        [
            "--ca-cert",
            &self.ca_file.display().to_string(),
            "--cert",
            &client.cert.display().to_string(),
            "--key",
            &client.key.display().to_string(),
        ]
        .map(String::from)
        .to_vec()
    }

    /// A rustls client trusting the CA (ALPN `alpn`), presenting `client` if given.
    pub fn connector(
        &self,
        client: Option<&CertFiles>,
        alpn: &[u8],
    ) -> anyhow::Result<tokio_rustls::TlsConnector> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.ca_file)? {
            roots.add(cert?)?;
        }
        let builder = ClientConfig::builder_with_provider(meshwarden_cp::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut config = match client {
            Some(files) => builder.with_client_auth_cert(
                CertificateDer::pem_file_iter(&files.cert)?.collect::<Result<_, _>>()?,
                PrivateKeyDer::from_pem_file(&files.key)?,
            )?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }
}

/// TLS on Envoy's traffic listener, with client certificates required (mutual TLS, as on
/// an Istio sidecar's inbound listener).
#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA bundle client certificates must chain to.
    pub client_ca: PathBuf,
}

/// The line of a rendered bootstrap that opens the traffic listener's filter chain.
const LISTENER_CHAIN: &str = "    filter_chains:\n    - filters:\n";

/// `bootstrap` (from `meshwarden_cp::bootstrap::render`) with its traffic listener over TLS
/// requiring a verified client certificate.
pub fn with_listener_tls(bootstrap: &str, tls: &ListenerTls) -> String {
    let json = |p: &PathBuf| serde_json::to_string(&p.display().to_string()).expect("strings");
    let chain = format!(
        "    filter_chains:\n    - transport_socket:\n        name: envoy.transport_sockets.tls\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n          require_client_certificate: true\n          common_tls_context:\n            tls_certificates:\n            - certificate_chain: {{filename: {}}}\n              private_key: {{filename: {}}}\n            validation_context:\n              trusted_ca: {{filename: {}}}\n      filters:\n",
        json(&tls.cert),
        json(&tls.key),
        json(&tls.client_ca)
    );
    assert!(bootstrap.contains(LISTENER_CHAIN), "a rendered bootstrap");
    bootstrap.replacen(LISTENER_CHAIN, &chain, 1)
}

/// Handshakes with `127.0.0.1:port` and returns the certificate (DER) the server presented.
pub async fn server_certificate(
    connector: &tokio_rustls::TlsConnector,
    port: u16,
) -> anyhow::Result<Vec<u8>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let tls = tokio::time::timeout(
        Duration::from_secs(5),
        connector.connect(ServerName::try_from("localhost")?, tcp),
    )
    .await??;
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| anyhow::anyhow!("no server certificate"))?;
    Ok(cert.as_ref().to_vec())
}

/// `GET path` over HTTP/1.1 and TLS on `127.0.0.1:port`: (status, body).
pub async fn https_get(
    connector: &tokio_rustls::TlsConnector,
    port: u16,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    https_get_with(connector, port, path, &[]).await
}

/// [`https_get`] with extra request headers.
pub async fn https_get_with(
    connector: &tokio_rustls::TlsConnector,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut tls = tokio::time::timeout(
        Duration::from_secs(5),
        connector.connect(ServerName::try_from("localhost")?, tcp),
    )
    .await??;
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    tls.write_all(head.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await??;
    let out = String::from_utf8_lossy(&out);
    let status = out
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP response: {out:?}"))?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    Ok((status, body))
}
