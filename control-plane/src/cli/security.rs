//! `serve`'s security flags: TLS on both ports, mutual TLS, the policy API's users, and
//! the xDS admission rule.

use crate::api::auth::{TokenFileError, TokenFileWatch};
use crate::tls::{self, Alpn, TlsFiles, TlsReloader};
use crate::xds::admission::{NodeBinding, XdsAccess, DEFAULT_MAX_STREAMS};
use std::path::PathBuf;
use std::time::Duration;

/// Security flags of `serve` (all off by default: clear text, meant for loopback).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SecurityArgs {
    /// Server certificate chain (PEM, leaf first) for TLS on the gRPC and HTTP ports.
    /// Reloaded when the file changes; open connections keep their session.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA bundle (PEM) client certificates are verified against: mutual TLS on the gRPC
    /// port. xDS streams then need a certificate whose URI (SPIFFE) or DNS name is their
    /// node id; API clients may present one (see --require-client-cert).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// Refuse TLS handshakes on the gRPC port without a client certificate.
    #[arg(long, requires = "client_ca")]
    pub require_client_cert: bool,
    /// How often the TLS files and the token file are checked for changes, in seconds
    /// (default 5).
    #[arg(long, value_name = "SECONDS")]
    pub reload_interval: Option<f64>,
    /// Users of the policy API (YAML or JSON: `users:` entries with a name, a role
    /// viewer|editor|admin, and the sha256 of their token or their client certificate's
    /// identity; editors optionally limited to `kinds` and `namePrefixes`). Read again when
    /// it changes. Without it the API is open to whoever reaches the port.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// With mutual TLS, how a proxy's node is bound to its client certificate: `exact`
    /// (the node id is one of the certificate's names) or `istio` (the SPIFFE id
    /// `spiffe://TD/ns/NS/sa/SA` names the node's namespace and service account, as for
    /// Istio sidecars and gateways, whose node ids are not certificate names).
    #[arg(long, value_enum, default_value_t = NodeBinding::Exact, value_name = "exact|istio")]
    pub xds_node_binding: NodeBinding,
    /// Serve xDS only to this node id (`prefix*` matches by prefix). Repeatable; with
    /// --xds-allow-cluster, a node matching either is served.
    #[arg(long = "xds-allow-node", value_name = "ID|PREFIX*")]
    pub xds_allow_nodes: Vec<String>,
    /// Serve xDS only to nodes of this cluster. Repeatable.
    #[arg(long = "xds-allow-cluster", value_name = "CLUSTER")]
    pub xds_allow_clusters: Vec<String>,
    /// xDS streams open at once, at most (default 10000).
    #[arg(long, value_name = "N")]
    pub max_xds_streams: Option<usize>,
}

impl SecurityArgs {
    /// The TLS configurations of the gRPC and HTTP ports, if TLS is on.
    pub fn tls(&self) -> Result<Option<(TlsReloader, TlsReloader)>, tls::TlsError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: self.client_ca.clone(),
            require_client_cert: self.require_client_cert,
        };
        let grpc = TlsReloader::load(files.clone(), Alpn::H2, true)?;
        // Probes, scrapers and module downloads on the HTTP port carry no client certificate.
        let http = TlsReloader::load(files, Alpn::Http1, false)?;
        Ok(Some((grpc, http)))
    }

    /// How often the TLS files are checked.
    pub fn reload_interval(&self) -> Duration {
        self.reload_interval
            .filter(|s| s.is_finite() && *s > 0.0)
            .map_or(tls::DEFAULT_RELOAD_INTERVAL, Duration::from_secs_f64)
    }

    /// The policy API's users, if authentication is on.
    pub fn authenticator(&self) -> Result<Option<TokenFileWatch>, TokenFileError> {
        self.token_file
            .as_deref()
            .map(TokenFileWatch::load)
            .transpose()
    }

    /// The xDS admission rule.
    pub fn xds_access(&self) -> XdsAccess {
        XdsAccess {
            bind_to_certificate: self.tls_cert.is_some() && self.client_ca.is_some(),
            binding: self.xds_node_binding,
            allow_nodes: self.xds_allow_nodes.clone(),
            allow_clusters: self.xds_allow_clusters.clone(),
            max_streams: self.max_xds_streams.unwrap_or(DEFAULT_MAX_STREAMS),
            stats: None,
        }
    }
}
