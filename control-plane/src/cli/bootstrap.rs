//! `meshwarden bootstrap`: prints an Envoy bootstrap (see [`crate::bootstrap`]).

use crate::bootstrap::{
    render, with_ratelimit_service, with_xds_tls, BootstrapParams, Layout, XdsTls,
};
use std::collections::BTreeMap;

/// `bootstrap` arguments.
#[derive(Debug, clap::Args)]
pub struct BootstrapArgs {
    /// Envoy node id (policies select proxies by it).
    #[arg(long)]
    pub node_id: String,
    /// Envoy node cluster.
    #[arg(long)]
    pub cluster: String,
    /// Node label `key=value` (Envoy node metadata); may be repeated.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Control plane gRPC address, `host:port`; with replicas, every replica's, separated
    /// by commas (the proxy fails over between them).
    #[arg(long, default_value = "127.0.0.1:18000", value_delimiter = ',', value_parser = parse_host_port)]
    pub xds_addr: Vec<(String, u16)>,
    /// Upstream the listener routes to, `host:port`.
    #[arg(long, default_value = "127.0.0.1:18080", value_parser = parse_host_port)]
    pub upstream_addr: (String, u16),
    /// Listener address.
    #[arg(long, default_value = "127.0.0.1")]
    pub listen_address: String,
    /// Listener port.
    #[arg(long, default_value_t = 10000)]
    pub listen_port: u16,
    /// Envoy admin port (bound to 127.0.0.1).
    #[arg(long, default_value_t = 9901)]
    pub admin_port: u16,
    /// Use delta (incremental) ADS instead of state-of-the-world.
    #[arg(long)]
    pub delta: bool,
    /// `combined`: one filter running every stage in one pass (fastest); `separate`: one
    /// filter per kind, sharing one Wasm VM per worker.
    #[arg(long, value_enum, default_value_t = Layout::Combined)]
    pub layout: Layout,
    /// Connect to the control plane over TLS, trusting this CA bundle (PEM path as Envoy
    /// will see it).
    #[arg(long, value_name = "FILE")]
    pub xds_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) Envoy presents to the control plane (mutual TLS); its URI
    /// or DNS name must be the node id when the control plane requires mTLS.
    #[arg(long, value_name = "FILE", requires = "xds_key", requires = "xds_ca")]
    pub xds_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --xds-cert.
    #[arg(long, value_name = "FILE", requires = "xds_cert")]
    pub xds_key: Option<std::path::PathBuf>,
    /// Name the control plane's certificate must carry (DNS SAN), also sent as SNI.
    #[arg(long, value_name = "NAME", requires = "xds_ca")]
    pub xds_server_name: Option<String>,
    /// The global rate limit service (`meshwarden-ratelimit` gRPC), `host:port`: adds the
    /// `meshwarden_ratelimit` cluster that `scope: global` RateLimitPolicies call.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_host_port)]
    pub ratelimit_service: Option<(String, u16)>,
}

/// Prints the rendered bootstrap to stdout.
pub fn run(args: BootstrapArgs) -> anyhow::Result<()> {
    let params = BootstrapParams {
        node_id: args.node_id,
        node_cluster: args.cluster,
        labels: args.labels.into_iter().collect::<BTreeMap<_, _>>(),
        admin_port: args.admin_port,
        listen_address: args.listen_address,
        listen_port: args.listen_port,
        xds_endpoints: args.xds_addr,
        upstream_address: args.upstream_addr.0,
        upstream_port: args.upstream_addr.1,
        delta: args.delta,
        layout: args.layout,
    };
    let bootstrap = render(&params);
    let bootstrap = match args.xds_ca {
        Some(ca) => with_xds_tls(
            &bootstrap,
            &XdsTls {
                ca,
                client: args.xds_cert.zip(args.xds_key),
                server_name: args.xds_server_name,
            },
        ),
        None => bootstrap,
    };
    let bootstrap = match &args.ratelimit_service {
        Some((host, port)) => with_ratelimit_service(&bootstrap, host, *port),
        None => bootstrap,
    };
    super::output::print(&bootstrap)
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected key=value, got {s:?}")),
    }
}

fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected host:port, got {s:?}"))?;
    let port = port
        .parse()
        .map_err(|_| format!("invalid port {port:?} in {s:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("missing host in {s:?}"));
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_addresses() {
        assert_eq!(
            parse_label("zone=eu").unwrap(),
            ("zone".into(), "eu".into())
        );
        assert!(parse_label("zone").is_err());
        assert_eq!(
            parse_host_port("127.0.0.1:18000").unwrap(),
            ("127.0.0.1".into(), 18000)
        );
        assert_eq!(parse_host_port("[::1]:80").unwrap(), ("::1".into(), 80));
        assert!(parse_host_port("localhost").is_err());
        assert!(parse_host_port(":80").is_err());
    }
}
