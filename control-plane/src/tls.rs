//! TLS on the gRPC and HTTP ports (rustls), with certificates reloaded from disk.
//!
//! [`TlsFiles`] names the server certificate chain, its key and, for mutual TLS, the CA
//! that signs client certificates. A [`TlsReloader`] holds the current rustls
//! configuration and rebuilds it when the files' contents change (cert-manager rotating a
//! Secret): new handshakes use the new certificate, open connections (and the xDS streams
//! on them) are untouched. A bad file on disk is logged and the previous configuration
//! kept.
//!
//! [`accept`] runs a listener's accept loop: each connection is handshaken in its own task
//! (with a deadline, so a slow client holds up nobody) and handed on as a [`Conn`], which
//! carries the peer's address and certificate identity ([`PeerInfo`]) into every request's
//! extensions (tonic's [`Connected`]).

use sha2::{Digest, Sha256};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tonic::transport::server::Connected;

/// How long a client gets to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once per port; further connections wait to be accepted.
pub const MAX_HANDSHAKES: usize = 256;
/// How often the certificate files are checked for changes by default.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// Why a TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {flag} {}: {source}", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{flag} {}: no PEM certificate in the file", path.display())]
    NoCertificate { flag: &'static str, path: PathBuf },
    #[error("{flag} {}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file: {reason}", path.display())]
    NoKey {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("--tls-cert and --tls-key do not form a usable server identity: {0}")]
    Identity(rustls::Error),
    #[error("--client-ca {}: {reason}", path.display())]
    ClientCa { path: PathBuf, reason: String },
}

/// The files a TLS port is configured from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first (`--tls-cert`).
    pub cert: PathBuf,
    /// PEM private key (`--tls-key`).
    pub key: PathBuf,
    /// PEM CA bundle that client certificates must chain to (`--client-ca`); enables mTLS.
    pub client_ca: Option<PathBuf>,
    /// Refuse handshakes without a client certificate (`--require-client-cert`); otherwise
    /// a client certificate is asked for but optional.
    pub require_client_cert: bool,
}

/// Which protocol a port speaks after the handshake (its ALPN id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// gRPC: HTTP/2 only.
    H2,
    /// The HTTP port: HTTP/1.1.
    Http1,
}

/// The current rustls configuration of one port, rebuilt when its files change. Cheap to
/// clone (shared state).
#[derive(Clone)]
pub struct TlsReloader {
    files: Arc<TlsFiles>,
    alpn: Alpn,
    /// Whether client certificates are asked for at all on this port.
    client_auth: bool,
    current: Arc<RwLock<Arc<ServerConfig>>>,
    /// SHA-256 over the files' contents the current configuration was built from.
    loaded: Arc<Mutex<[u8; 32]>>,
}

impl std::fmt::Debug for TlsReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReloader")
            .field("files", &self.files)
            .field("alpn", &self.alpn)
            .finish_non_exhaustive()
    }
}

impl TlsReloader {
    /// Loads `files` for a port speaking `alpn`. With `client_auth` false the port never
    /// asks for a client certificate (the HTTP port: probes and scrapers have none).
    pub fn load(files: TlsFiles, alpn: Alpn, client_auth: bool) -> Result<Self, TlsError> {
        if files.require_client_cert && files.client_ca.is_none() {
            return Err(TlsError::ClientCa {
                path: PathBuf::new(),
                reason: "--require-client-cert needs --client-ca (the CA client certificates must chain to)".into(),
            });
        }
        let (config, digest) = build(&files, alpn, client_auth)?;
        Ok(Self {
            files: Arc::new(files),
            alpn,
            client_auth,
            current: Arc::new(RwLock::new(config)),
            loaded: Arc::new(Mutex::new(digest)),
        })
    }

    /// The configuration new handshakes use.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether mutual TLS is configured (client certificates are verified).
    pub fn mutual(&self) -> bool {
        self.client_auth && self.files.client_ca.is_some()
    }

    /// Rebuilds the configuration if the files' contents changed; `Ok(true)` if it did.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let digest = digest_files(&self.files)?;
        if *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) == digest {
            return Ok(false);
        }
        let (config, digest) = build(&self.files, self.alpn, self.client_auth)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = digest;
        Ok(true)
    }

    /// Checks the files every `interval` until `shutdown`, logging reloads and failures
    /// (a failed reload keeps the previous configuration).
    pub fn spawn_watch(
        &self,
        port: &'static str,
        interval: Duration,
        shutdown: watch::Receiver<bool>,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut shutdown = shutdown;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stopped(&mut shutdown) => return,
                }
                let reloader = this.clone();
                match tokio::task::spawn_blocking(move || reloader.reload_if_changed()).await {
                    Ok(Ok(true)) => {
                        tracing::info!(port, cert = %this.files.cert.display(), "TLS certificate reloaded")
                    }
                    Ok(Ok(false)) | Err(_) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(port, error = %e, "TLS files changed but cannot be used; keeping the previous certificate")
                    }
                }
            }
        });
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

fn digest_files(files: &TlsFiles) -> Result<[u8; 32], TlsError> {
    let mut hash = Sha256::new();
    hash.update(read("--tls-cert", &files.cert)?);
    hash.update(read("--tls-key", &files.key)?);
    if let Some(ca) = &files.client_ca {
        hash.update(read("--client-ca", ca)?);
    }
    Ok(hash.finalize().into())
}

fn certificates(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            flag,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The rustls provider everything here uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn build(
    files: &TlsFiles,
    alpn: Alpn,
    client_auth: bool,
) -> Result<(Arc<ServerConfig>, [u8; 32]), TlsError> {
    let cert_pem = read("--tls-cert", &files.cert)?;
    let key_pem = read("--tls-key", &files.key)?;
    let ca_pem = match &files.client_ca {
        Some(ca) => Some(read("--client-ca", ca)?),
        None => None,
    };
    let mut hash = Sha256::new();
    hash.update(&cert_pem);
    hash.update(&key_pem);
    if let Some(ca) = &ca_pem {
        hash.update(ca);
    }
    let chain = certificates("--tls-cert", &files.cert, &cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoKey {
        flag: "--tls-key",
        path: files.key.clone(),
        reason: e.to_string(),
    })?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Identity)?;
    let builder = match (&files.client_ca, &ca_pem) {
        (Some(path), Some(pem)) if client_auth => {
            let mut roots = RootCertStore::empty();
            for cert in certificates("--client-ca", path, pem)? {
                roots.add(cert).map_err(|e| TlsError::ClientCa {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if files.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier.build().map_err(|e| TlsError::ClientCa {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(TlsError::Identity)?;
    config.alpn_protocols = match alpn {
        Alpn::H2 => vec![b"h2".to_vec()],
        Alpn::Http1 => vec![b"http/1.1".to_vec()],
    };
    Ok((Arc::new(config), hash.finalize().into()))
}

/// Who is on the other end of a connection, as far as the transport can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// The verified client certificate's identity; `None` without TLS or without a client
    /// certificate.
    pub identity: Option<Arc<PeerIdentity>>,
}

/// The subject alternative names of a verified client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// URI SANs, e.g. SPIFFE ids (`spiffe://cluster.local/ns/shop/sa/checkout`).
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns: Vec<String>,
}

impl PeerIdentity {
    /// The identity of a DER certificate (an empty one if it cannot be parsed; rustls
    /// verified it already).
    pub fn of(cert: &CertificateDer<'_>) -> Self {
        match webpki::EndEntityCert::try_from(cert) {
            Ok(cert) => Self {
                uris: cert.valid_uri_names().map(str::to_string).collect(),
                dns: cert.valid_dns_names().map(str::to_string).collect(),
            },
            Err(_) => Self::default(),
        }
    }

    /// Every name, URIs first.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.uris.iter().chain(&self.dns).map(String::as_str)
    }

    /// Whether `name` is one of the certificate's names.
    pub fn has(&self, name: &str) -> bool {
        self.names().any(|n| n == name)
    }

    /// The name identities are shown and matched by: the first SPIFFE/URI SAN, else the
    /// first DNS SAN.
    pub fn primary(&self) -> Option<&str> {
        self.names().next()
    }
}

/// A connection on one of the ports, in clear text or TLS.
pub enum Conn {
    Plain(TcpStream, PeerInfo),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, PeerInfo),
}

impl Conn {
    /// The peer of this connection.
    pub fn peer(&self) -> &PeerInfo {
        match self {
            Conn::Plain(_, p) | Conn::Tls(_, p) => p,
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer().clone()
    }
}

macro_rules! delegate {
    ($self:ident, $io:ident => $e:expr) => {
        match $self.get_mut() {
            Conn::Plain($io, _) => {
                let $io = Pin::new($io);
                $e
            }
            Conn::Tls($io, _) => {
                let $io = Pin::new($io.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write(cx, data))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(io, _) => io.is_write_vectored(),
            Conn::Tls(io, _) => io.is_write_vectored(),
        }
    }
}

/// Accepts connections on `listener` until `shutdown`, handshaking TLS ones (if `tls` is
/// set) in their own tasks; established connections come out of the returned channel.
pub fn accept(
    listener: TcpListener,
    tls: Option<TlsReloader>,
    shutdown: watch::Receiver<bool>,
) -> mpsc::Receiver<Conn> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, tls, tx, shutdown));
    rx
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsReloader>,
    tx: mpsc::Sender<Conn>,
    mut shutdown: watch::Receiver<bool>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            p = handshakes.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            () = stopped(&mut shutdown) => return,
            () = tx.closed() => return,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => return,
            () = tx.closed() => return,
        };
        let _ = stream.set_nodelay(true);
        let peer = PeerInfo {
            remote: Some(remote),
            identity: None,
        };
        let Some(tls) = &tls else {
            if tx.send(Conn::Plain(stream, peer)).await.is_err() {
                return;
            }
            continue;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let identity = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .map(|cert| Arc::new(PeerIdentity::of(cert)));
                    let peer = PeerInfo { identity, ..peer };
                    let _ = tx.send(Conn::Tls(Box::new(stream), peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
            }
        });
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|down| *down).await;
}

/// Warns loudly when a port serves clear text on an address other hosts can reach.
pub fn warn_if_exposed(port: &str, addr: SocketAddr, tls: bool) {
    if !tls && !addr.ip().is_loopback() {
        tracing::warn!(
            port,
            %addr,
            exposes = if port == "grpc" { "xDS configurations and the policy API" } else { "metrics and modules" },
            "INSECURE: listening on a non-loopback address WITHOUT TLS: anyone on the network can read or tamper with this traffic. Use --tls-cert/--tls-key (and --client-ca, --token-file) or bind to 127.0.0.1"
        );
    }
}

/// The HTTP port's listener over [`accept`]'s channel (axum's [`Listener`]).
///
/// [`Listener`]: axum::serve::Listener
pub struct ConnListener {
    conns: mpsc::Receiver<Conn>,
    local: SocketAddr,
}

impl ConnListener {
    /// A listener handing out `conns`, reporting `local` as its address.
    pub fn new(conns: mpsc::Receiver<Conn>, local: SocketAddr) -> Self {
        Self { conns, local }
    }
}

impl axum::serve::Listener for ConnListener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        match self.conns.recv().await {
            Some(conn) => {
                let addr = conn.peer().remote.unwrap_or(self.local);
                (conn, addr)
            }
            // The accept loop stopped (shutdown): no more connections, ever.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_pki::{CertFiles, TestCa};
    use tokio_rustls::rustls::pki_types::ServerName;
    use tokio_rustls::rustls::ClientConfig;

    struct Setup {
        dir: tempfile::TempDir,
        ca: TestCa,
        server: CertFiles,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("test CA");
        let server = ca.issue_files(dir.path(), "server", &["localhost", "127.0.0.1"], true);
        Setup { dir, ca, server }
    }

    impl Setup {
        fn files(&self, mtls: bool, require: bool) -> TlsFiles {
            TlsFiles {
                cert: self.server.cert.clone(),
                key: self.server.key.clone(),
                client_ca: mtls.then(|| self.ca.write(&self.dir.path().join("ca.pem"))),
                require_client_cert: require,
            }
        }

        /// A client trusting the CA, presenting `client` if given.
        fn client(&self, client: Option<&CertFiles>) -> tokio_rustls::TlsConnector {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(self.ca.pem().as_bytes()) {
                roots.add(cert.unwrap()).unwrap();
            }
            let builder = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
            let mut config = match client {
                Some(files) => builder
                    .with_client_auth_cert(
                        CertificateDer::pem_file_iter(&files.cert)
                            .unwrap()
                            .map(Result::unwrap)
                            .collect(),
                        PrivateKeyDer::from_pem_file(&files.key).unwrap(),
                    )
                    .unwrap(),
                None => builder.with_no_client_auth(),
            };
            config.alpn_protocols = vec![b"h2".to_vec()];
            tokio_rustls::TlsConnector::from(Arc::new(config))
        }
    }

    /// Connects through `accept` with `connector`; the server side's peer info, and the
    /// serial of the certificate the server presented, or the handshake error.
    async fn connect(
        reloader: &TlsReloader,
        connector: tokio_rustls::TlsConnector,
    ) -> Result<(PeerInfo, Vec<u8>), String> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, shutdown) = watch::channel(false);
        let mut conns = accept(listener, Some(reloader.clone()), shutdown);
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let client = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        // TLS 1.3: a refused client certificate shows on the first read, not the handshake.
        let conn = tokio::time::timeout(Duration::from_secs(2), conns.recv())
            .await
            .map_err(|_| "no connection accepted".to_string())?
            .expect("accept loop running");
        let served = client.get_ref().1.peer_certificates().unwrap()[0].clone();
        let serial = webpki::EndEntityCert::try_from(&served)
            .unwrap()
            .serial()
            .to_vec();
        Ok((conn.peer().clone(), serial))
    }

    #[tokio::test]
    async fn serves_tls_and_reads_the_client_identity() {
        let s = setup();
        let reloader = TlsReloader::load(s.files(true, false), Alpn::H2, true).unwrap();
        assert!(reloader.mutual());
        let edge = s.ca.issue_files(
            s.dir.path(),
            "edge",
            &["spiffe://mesh/edge-1", "edge-1.mesh"],
            false,
        );
        let (peer, _) = connect(&reloader, s.client(Some(&edge))).await.unwrap();
        let identity = peer.identity.expect("a client certificate");
        assert_eq!(identity.uris, ["spiffe://mesh/edge-1"]);
        assert_eq!(identity.dns, ["edge-1.mesh"]);
        assert!(identity.has("spiffe://mesh/edge-1"));
        assert_eq!(identity.primary(), Some("spiffe://mesh/edge-1"));
        // Optional client certificates: a client without one is served, with no identity.
        let (peer, _) = connect(&reloader, s.client(None)).await.unwrap();
        assert!(peer.identity.is_none());
    }

    #[tokio::test]
    async fn a_required_client_certificate_must_come_from_the_ca() {
        let s = setup();
        let reloader = TlsReloader::load(s.files(true, true), Alpn::H2, true).unwrap();
        assert!(connect(&reloader, s.client(None)).await.is_err());
        let other = TestCa::new("other CA");
        let foreign = other.issue_files(s.dir.path(), "foreign", &["edge-1"], false);
        assert!(connect(&reloader, s.client(Some(&foreign))).await.is_err());
        let edge = s.ca.issue_files(s.dir.path(), "edge", &["edge-1"], false);
        assert!(connect(&reloader, s.client(Some(&edge))).await.is_ok());
    }

    #[tokio::test]
    async fn rotated_files_are_used_by_new_handshakes_and_bad_ones_are_ignored() {
        let s = setup();
        let reloader = TlsReloader::load(s.files(false, false), Alpn::H2, true).unwrap();
        let (_, first) = connect(&reloader, s.client(None)).await.unwrap();
        assert!(!reloader.reload_if_changed().unwrap(), "nothing changed");

        s.ca.issue_files(s.dir.path(), "server", &["localhost"], true);
        assert!(reloader.reload_if_changed().unwrap());
        let (_, second) = connect(&reloader, s.client(None)).await.unwrap();
        assert_ne!(first, second, "the new certificate is served");

        std::fs::write(&s.server.cert, "not a certificate").unwrap();
        let err = reloader.reload_if_changed().unwrap_err();
        assert!(err.to_string().contains("--tls-cert"), "{err}");
        let (_, still) = connect(&reloader, s.client(None)).await.unwrap();
        assert_eq!(still, second, "the previous configuration stays");
    }

    #[test]
    fn errors_name_the_flag_and_file() {
        let s = setup();
        let missing = TlsFiles {
            key: s.dir.path().join("nope.key"),
            ..s.files(false, false)
        };
        let err = TlsReloader::load(missing, Alpn::H2, true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--tls-key") && err.contains("nope.key"),
            "{err}"
        );
        let no_ca = TlsFiles {
            require_client_cert: true,
            ..s.files(false, false)
        };
        let err = TlsReloader::load(no_ca, Alpn::H2, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--client-ca"), "{err}");
    }
}
