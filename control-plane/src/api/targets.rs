//! Which `host:port` mirror targets a policy may name. A mirror sends copies of live
//! requests — with `allowUnsafeMethods`, writes too — to its target, so a target is an
//! outbound request the proxy makes on a policy author's behalf. By default the control
//! plane refuses link-local addresses (where clouds serve instance metadata and
//! credentials), the well-known metadata host names, and its own listen ports on this
//! host; `serve --mirror-deny` adds rules and `--mirror-allow` makes exceptions.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// Host names of cloud metadata services.
const METADATA_HOSTS: [&str; 5] = [
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
];

/// An IP network, `addr/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Net {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0 to {max}"))?,
        };
        Ok(Self { addr, prefix })
    }
}

/// A target rule: a network, or a host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    Net(Net),
    Host(String),
}

impl FromStr for Rule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.parse::<Net>().is_ok() || s.contains('/') {
            return s.parse().map(Rule::Net);
        }
        let host = s.trim().to_ascii_lowercase();
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(format!(
                "{s:?} is not a host name, IP address or CIDR network"
            ));
        }
        Ok(Rule::Host(host))
    }
}

impl Rule {
    fn matches(&self, host: &str) -> bool {
        match (self, host.parse::<IpAddr>()) {
            (Rule::Net(net), Ok(ip)) => net.contains(ip),
            (Rule::Host(name), Err(_)) => name == host,
            _ => false,
        }
    }
}

/// The target check applied to every MirrorPolicy `host` target at apply time.
#[derive(Debug, Clone, Default)]
pub struct TargetGuard {
    deny: Vec<Rule>,
    allow: Vec<Rule>,
    /// This control plane's listen addresses.
    own: Vec<SocketAddr>,
}

impl TargetGuard {
    /// The default rules plus `deny`, with `allow` as exceptions; `own` are this control
    /// plane's listen addresses.
    pub fn new(deny: Vec<Rule>, allow: Vec<Rule>, own: Vec<SocketAddr>) -> Self {
        let mut rules = vec![
            Rule::Net(Net {
                addr: IpAddr::V4(Ipv4Addr::new(169, 254, 0, 0)),
                prefix: 16,
            }),
            Rule::Net(Net {
                addr: IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)),
                prefix: 10,
            }),
            // AWS's IPv6 metadata endpoint, Alibaba Cloud's metadata address.
            Rule::Net("fd00:ec2::254/128".parse().expect("valid network")),
            Rule::Net("100.100.100.200/32".parse().expect("valid network")),
        ];
        rules.extend(METADATA_HOSTS.iter().map(|h| Rule::Host((*h).to_string())));
        rules.extend(deny);
        Self {
            deny: rules,
            allow,
            own,
        }
    }

    /// Why `host:port` may not be a mirror target, or `None` if it may.
    pub fn refusal(&self, host: &str, port: u16) -> Option<String> {
        let host = host.to_ascii_lowercase();
        if self.allow.iter().any(|r| r.matches(&host)) {
            return None;
        }
        if let Some(rule) = self.deny.iter().find(|r| r.matches(&host)) {
            let what = match rule {
                Rule::Net(n) if n.prefix < 32 => "a link-local or cloud-metadata address",
                Rule::Net(_) => "a denied address",
                Rule::Host(_) => "a cloud-metadata or denied host name",
            };
            return Some(format!(
                "{host}:{port} is {what}; refused as a mirror target (allow it with `meshwarden serve --mirror-allow {host}`)"
            ));
        }
        let local = host == "localhost"
            || host
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
        let own = self.own.iter().any(|a| {
            a.port() == port && (local || host.parse::<IpAddr>().is_ok_and(|ip| ip == a.ip()))
        });
        own.then(|| {
            format!(
                "{host}:{port} is this control plane's own listen address; refused as a mirror target"
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> TargetGuard {
        TargetGuard::new(
            vec![
                "10.9.0.0/16".parse().unwrap(),
                "secrets.internal".parse().unwrap(),
            ],
            vec!["169.254.10.5".parse().unwrap()],
            vec![
                "0.0.0.0:18000".parse().unwrap(),
                "127.0.0.1:18001".parse().unwrap(),
            ],
        )
    }

    #[test]
    fn metadata_link_local_and_own_ports_are_refused() {
        let g = guard();
        for (host, port) in [
            ("169.254.169.254", 80),
            ("metadata.google.internal", 80),
            ("Metadata.Google.Internal", 80),
            ("fe80::1", 22),
            ("fd00:ec2::254", 80),
            ("127.0.0.1", 18000),
            ("localhost", 18001),
            ("10.9.3.4", 8080),
            ("secrets.internal", 443),
        ] {
            assert!(g.refusal(host, port).is_some(), "{host}:{port}");
        }
        let msg = g.refusal("169.254.169.254", 80).unwrap();
        assert!(msg.contains("--mirror-allow 169.254.169.254"), "{msg}");
    }

    #[test]
    fn ordinary_and_allowed_targets_pass() {
        let g = guard();
        for (host, port) in [
            ("127.0.0.1", 9000),
            ("10.8.0.1", 8080),
            ("shadow.shop.svc", 80),
            ("169.254.10.5", 80),
            ("::1", 9000),
        ] {
            assert_eq!(g.refusal(host, port), None, "{host}:{port}");
        }
    }

    #[test]
    fn rules_parse_or_say_why_not() {
        assert!("10.0.0.0/33".parse::<Rule>().is_err());
        assert!("fe80::/10".parse::<Rule>().is_ok());
        assert!("a b".parse::<Rule>().is_err());
        assert_eq!(
            "Host.Example".parse::<Rule>().unwrap(),
            Rule::Host("host.example".into())
        );
    }
}
