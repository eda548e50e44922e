//! Mirror targets: an Envoy cluster by name, a `host:port` for which the control plane
//! pushes a cluster over CDS, or a Kubernetes service, reached through the outbound cluster
//! Istio gives every sidecar (`outbound|PORT|SUBSET|HOST`). Both sides compute a generated
//! cluster's name with [`HostPort::cluster_name`], so the filter and the control plane
//! always agree.

use crate::error::ValidationError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

/// Prefix of the clusters the control plane generates for `host:port` targets.
pub const HOST_CLUSTER_PREFIX: &str = "meshwarden_mirror_";

/// Longest host name accepted (DNS limit).
const MAX_HOST_LEN: usize = 253;

/// Where a mirror copy goes: exactly one of `cluster`, `host` or `service`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorTarget {
    /// An Envoy cluster that already exists on the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// `host:port` (IPv4, `[IPv6]` or DNS name); the control plane pushes a cluster for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A Kubernetes service in an Istio mesh, reached through the sidecar's outbound
    /// cluster for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,
}

/// A Kubernetes service port as Istio names its outbound cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceRef {
    /// Fully qualified service name, `NAME.NAMESPACE.svc.cluster.local` (or your mesh's
    /// domain): Istio's cluster names carry the FQDN.
    pub host: String,
    /// The service port.
    pub port: u16,
    /// A DestinationRule subset (e.g. `v2`), if the copies go to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
}

impl ServiceRef {
    /// Istio's outbound cluster: `outbound|PORT|SUBSET|HOST`.
    pub fn cluster_name(&self) -> String {
        format!(
            "outbound|{}|{}|{}",
            self.port,
            self.subset.as_deref().unwrap_or(""),
            self.host
        )
    }

    fn validate(&self) -> Result<(), ValidationError> {
        validate_dns_name(&self.host).map_err(|m| ValidationError::new("host", m))?;
        if !self.host.contains('.') || self.host != self.host.to_ascii_lowercase() {
            return Err(ValidationError::new(
                "host",
                format!(
                    "{:?} must be the service's lowercase fully qualified name, e.g. reviews.bookinfo.svc.cluster.local",
                    self.host
                ),
            ));
        }
        if self.port == 0 {
            return Err(ValidationError::new(
                "port",
                "must be a number from 1 to 65535",
            ));
        }
        if let Some(subset) = &self.subset {
            let ok = !subset.is_empty()
                && subset.len() <= 63
                && subset
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
            if !ok {
                return Err(ValidationError::new(
                    "subset",
                    format!("{subset:?} is not a subset name (letters, digits, '-', '_', '.')"),
                ));
            }
        }
        Ok(())
    }
}

/// A validated target, ready to dispatch to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ResolvedTarget {
    /// An existing cluster, by name.
    Cluster(String),
    /// A `host:port` served through a generated cluster.
    Host(HostPort),
    /// A Kubernetes service, through Istio's outbound cluster.
    Service(ServiceRef),
}

impl ResolvedTarget {
    /// The Envoy cluster a copy is dispatched to.
    pub fn cluster_name(&self) -> String {
        match self {
            ResolvedTarget::Cluster(c) => c.clone(),
            ResolvedTarget::Host(h) => h.cluster_name(),
            ResolvedTarget::Service(svc) => svc.cluster_name(),
        }
    }
}

impl fmt::Display for ResolvedTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolvedTarget::Cluster(c) => write!(f, "cluster {c}"),
            ResolvedTarget::Host(h) => write!(f, "host {h}"),
            ResolvedTarget::Service(svc) => write!(f, "service {}:{}", svc.host, svc.port),
        }
    }
}

impl MirrorTarget {
    /// A target naming an existing cluster.
    pub fn cluster(name: impl Into<String>) -> Self {
        Self {
            cluster: Some(name.into()),
            ..Default::default()
        }
    }

    /// A target naming a `host:port`.
    pub fn host(host_port: impl Into<String>) -> Self {
        Self {
            host: Some(host_port.into()),
            ..Default::default()
        }
    }

    /// Checks that exactly one form is given and that it is well formed. Error fields are
    /// relative to the target.
    pub fn resolve(&self) -> Result<ResolvedTarget, ValidationError> {
        match (&self.cluster, &self.host, &self.service) {
            (Some(c), None, None) => {
                validate_cluster_name(c).map_err(|m| ValidationError::new("cluster", m))?;
                Ok(ResolvedTarget::Cluster(c.clone()))
            }
            (None, Some(h), None) => HostPort::parse(h)
                .map(ResolvedTarget::Host)
                .map_err(|m| ValidationError::new("host", m)),
            (None, None, Some(svc)) => {
                svc.validate().map_err(|e| e.within("service"))?;
                Ok(ResolvedTarget::Service(svc.clone()))
            }
            (None, None, None) => Err(ValidationError::new(
                "",
                "set `cluster` (an Envoy cluster name), `host` (host:port) or `service` ({host, port} of a Kubernetes service in an Istio mesh)",
            )),
            _ => Err(ValidationError::new(
                "",
                "set only one of `cluster`, `host` and `service`",
            )),
        }
    }
}

fn validate_cluster_name(c: &str) -> Result<(), String> {
    if c.is_empty() {
        return Err("must not be empty".into());
    }
    if c.len() > 255 {
        return Err(format!("must be at most 255 characters, got {}", c.len()));
    }
    if let Some(bad) = c.chars().find(|ch| ch.is_control() || ch.is_whitespace()) {
        return Err(format!("{c:?} contains {bad:?}, which is not allowed"));
    }
    Ok(())
}

/// A `host:port` target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    /// Host name or IP address (without brackets), lowercase.
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// Parses `host:port`, `a.b.c.d:port` or `[v6]:port`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, p) = rest
                .split_once("]:")
                .ok_or_else(|| format!("{s:?} is not [ipv6]:port"))?;
            h.parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("{h:?} is not an IPv6 address"))?;
            (h, p)
        } else {
            s.rsplit_once(':')
                .ok_or_else(|| format!("{s:?} must be host:port"))?
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("port {port:?} must be a number from 1 to 65535"))?;
        let host = host.to_ascii_lowercase();
        if !s.starts_with('[') && host.parse::<IpAddr>().is_err() {
            validate_dns_name(&host)?;
        }
        Ok(Self { host, port })
    }

    /// Whether the host is an IP literal (a STATIC cluster) rather than a name (STRICT_DNS).
    pub fn is_ip(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }

    /// Name of the cluster the control plane generates for this target:
    /// `meshwarden_mirror_<host>_<port>`, with every character other than letters, digits,
    /// `.` and `-` in the host replaced by `_`.
    pub fn cluster_name(&self) -> String {
        let host: String = self
            .host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{HOST_CLUSTER_PREFIX}{host}_{}", self.port)
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

fn validate_dns_name(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("host must not be empty".into());
    }
    if host.len() > MAX_HOST_LEN {
        return Err(format!("host must be at most {MAX_HOST_LEN} characters"));
    }
    for label in host.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{host:?} is not a valid host name (letters, digits, '-' and '.')"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports_parse_and_name_their_cluster() {
        let h = HostPort::parse("127.0.0.1:9000").unwrap();
        assert!(h.is_ip());
        assert_eq!(h.cluster_name(), "meshwarden_mirror_127.0.0.1_9000");
        let h = HostPort::parse("Shadow.Example.com:8080").unwrap();
        assert!(!h.is_ip());
        assert_eq!(h.host, "shadow.example.com");
        assert_eq!(
            h.cluster_name(),
            "meshwarden_mirror_shadow.example.com_8080"
        );
        let h = HostPort::parse("[::1]:81").unwrap();
        assert!(h.is_ip());
        assert_eq!(h.cluster_name(), "meshwarden_mirror___1_81");
        assert_eq!(h.to_string(), "[::1]:81");
    }

    #[test]
    fn bad_host_ports_are_rejected() {
        for bad in [
            "",
            "host",
            "host:",
            "host:0",
            "host:65536",
            ":80",
            "a b:80",
            "-a:80",
            "[::1]",
            "[zz]:80",
            "a..b:80",
        ] {
            assert!(HostPort::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_need_exactly_one_form() {
        assert_eq!(
            MirrorTarget::cluster("shadow").resolve().unwrap(),
            ResolvedTarget::Cluster("shadow".into())
        );
        let both = MirrorTarget {
            cluster: Some("a".into()),
            host: Some("b:1".into()),
            ..Default::default()
        };
        assert!(both.resolve().is_err());
        assert!(MirrorTarget::default().resolve().is_err());
        let e = MirrorTarget::host("x:0").resolve().unwrap_err();
        assert_eq!(e.field, "host");
        let e = MirrorTarget::cluster("a b").resolve().unwrap_err();
        assert_eq!(e.field, "cluster");
    }

    #[test]
    fn services_name_istio_outbound_clusters() {
        let svc = |host: &str, port: u16, subset: Option<&str>| MirrorTarget {
            service: Some(ServiceRef {
                host: host.into(),
                port,
                subset: subset.map(str::to_string),
            }),
            ..Default::default()
        };
        let t = svc("reviews.bookinfo.svc.cluster.local", 9080, None)
            .resolve()
            .unwrap();
        assert_eq!(
            t.cluster_name(),
            "outbound|9080||reviews.bookinfo.svc.cluster.local"
        );
        let t = svc("reviews.bookinfo.svc.cluster.local", 9080, Some("v2"))
            .resolve()
            .unwrap();
        assert_eq!(
            t.cluster_name(),
            "outbound|9080|v2|reviews.bookinfo.svc.cluster.local"
        );
        let e = svc("reviews", 9080, None).resolve().unwrap_err();
        assert_eq!(e.field, "service.host");
        let e = svc("Reviews.bookinfo.svc", 9080, None)
            .resolve()
            .unwrap_err();
        assert_eq!(e.field, "service.host");
        let e = svc("reviews.bookinfo.svc", 0, None).resolve().unwrap_err();
        assert_eq!(e.field, "service.port");
        let e = svc("reviews.bookinfo.svc", 1, Some("v 2"))
            .resolve()
            .unwrap_err();
        assert_eq!(e.field, "service.subset");
    }
}
