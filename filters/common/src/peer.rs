//! Caller identity a client cannot forge: the URI SAN of the certificate the downstream
//! presented on the TLS connection it made to the proxy (a SPIFFE id such as
//! `spiffe://cluster.local/ns/shop/sa/web` under Istio mutual TLS), and the patterns
//! policies select such identities with.
//!
//! A request header naming the caller (`x-envoy-downstream-service-cluster`) is set by
//! whoever sends the request; a peer certificate is checked by the proxy's TLS handshake
//! against its trusted CA, so it names the caller only as far as the listener verifies
//! client certificates (see the README's trust model).

use serde::{Deserialize, Serialize};
use std::cell::OnceCell;

/// Longest identity pattern, in bytes.
pub const MAX_IDENTITY_BYTES: usize = 2048;
/// Most identity patterns in one list of a policy.
pub const MAX_IDENTITIES: usize = 64;

/// Reads the peer's identity from the proxy.
type Reader = Box<dyn Fn() -> Option<Vec<u8>>>;

/// The downstream peer of one request, read from the proxy at most once, and only when a
/// policy asks for it.
#[derive(Default)]
pub struct Peer {
    read: Option<Reader>,
    uri_san: OnceCell<Option<Vec<u8>>>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("uri_san", &self.uri_san.get())
            .finish_non_exhaustive()
    }
}

impl Peer {
    /// A peer whose URI SAN `read` returns when first needed.
    pub fn lazy(read: impl Fn() -> Option<Vec<u8>> + 'static) -> Self {
        Self {
            read: Some(Box::new(read)),
            uri_san: OnceCell::new(),
        }
    }

    /// A peer with a known URI SAN (`None`: no certificate, or clear text).
    pub fn known(uri_san: Option<&str>) -> Self {
        Self {
            read: None,
            uri_san: OnceCell::from(uri_san.map(|s| s.as_bytes().to_vec())),
        }
    }

    /// The first URI SAN of the peer's verified certificate; `None` without one.
    pub fn uri_san(&self) -> Option<&[u8]> {
        self.uri_san
            .get_or_init(|| self.read.as_ref().and_then(|r| r()))
            .as_deref()
            .filter(|v| !v.is_empty())
    }

    /// Whether the peer has an identity any of `patterns` selects.
    pub fn matches_any(&self, patterns: &[IdentityPattern]) -> bool {
        self.uri_san()
            .is_some_and(|id| patterns.iter().any(|p| p.matches(id)))
    }
}

/// A peer identity, exactly (`spiffe://cluster.local/ns/shop/sa/web`) or every identity
/// under a path (`spiffe://cluster.local/ns/shop/*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum IdentityPattern {
    /// This identity only.
    Exact(String),
    /// Identities starting with this (which ends with `/`).
    Prefix(String),
}

impl IdentityPattern {
    /// Whether `identity` (a URI SAN, as bytes) is selected.
    pub fn matches(&self, identity: &[u8]) -> bool {
        match self {
            Self::Exact(e) => e.as_bytes() == identity,
            Self::Prefix(p) => identity.len() > p.len() && identity.starts_with(p.as_bytes()),
        }
    }
}

impl TryFrom<String> for IdentityPattern {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if s.len() > MAX_IDENTITY_BYTES {
            return Err(format!("must be at most {MAX_IDENTITY_BYTES} bytes"));
        }
        if s.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err("must not contain spaces or control characters".into());
        }
        let scheme_end = s.find(':').unwrap_or(0);
        if scheme_end == 0
            || !s[..scheme_end]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return Err(format!(
                "{s:?} is not a URI (a certificate's URI SAN, e.g. spiffe://cluster.local/ns/shop/sa/web)"
            ));
        }
        match s.find('*') {
            None => Ok(Self::Exact(s)),
            Some(i) if i == s.len() - 1 && s[..i].ends_with('/') => {
                Ok(Self::Prefix(s[..i].to_string()))
            }
            Some(_) => Err(format!(
                "{s:?}: `*` is only allowed as the whole last path segment (spiffe://cluster.local/ns/shop/*)"
            )),
        }
    }
}

impl From<IdentityPattern> for String {
    fn from(p: IdentityPattern) -> String {
        match p {
            IdentityPattern::Exact(e) => e,
            IdentityPattern::Prefix(p) => p + "*",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    fn pattern(s: &str) -> Result<IdentityPattern, String> {
        IdentityPattern::try_from(s.to_string())
    }

    #[test]
    fn exact_and_prefix_patterns() {
        let web = pattern("spiffe://cluster.local/ns/shop/sa/web").unwrap();
        assert!(web.matches(b"spiffe://cluster.local/ns/shop/sa/web"));
        assert!(!web.matches(b"spiffe://cluster.local/ns/shop/sa/web2"));
        let shop = pattern("spiffe://cluster.local/ns/shop/*").unwrap();
        assert_eq!(
            shop,
            IdentityPattern::Prefix("spiffe://cluster.local/ns/shop/".into())
        );
        assert!(shop.matches(b"spiffe://cluster.local/ns/shop/sa/web"));
        assert!(!shop.matches(b"spiffe://cluster.local/ns/shop/"));
        assert!(!shop.matches(b"spiffe://cluster.local/ns/shopping/sa/x"));
        assert!(!shop.matches(b"\xff\xfe"));
        assert_eq!(String::from(shop), "spiffe://cluster.local/ns/shop/*");
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "",
            "web",
            "://x",
            "spiffe://a b",
            "spiffe://a\n",
            "spiffe://cluster.local/ns/*/sa/web",
            "spiffe://cluster.local/ns/shop*",
            "spiffe:*",
        ] {
            assert!(pattern(bad).is_err(), "{bad:?}");
        }
        assert!(pattern(&format!("spiffe://{}", "a".repeat(MAX_IDENTITY_BYTES))).is_err());
        assert!(pattern("urn:example:caller").is_ok());
        // Any SPIFFE identity: every caller with a verified SPIFFE certificate.
        assert!(pattern("spiffe://*")
            .unwrap()
            .matches(b"spiffe://t/ns/a/sa/b"));
    }

    #[test]
    fn a_lazy_peer_is_read_once_and_only_when_asked() {
        let reads = Rc::new(Cell::new(0));
        let counter = reads.clone();
        let peer = Peer::lazy(move || {
            counter.set(counter.get() + 1);
            Some(b"spiffe://t/ns/a/sa/b".to_vec())
        });
        assert_eq!(reads.get(), 0);
        let a = [pattern("spiffe://t/ns/a/*").unwrap()];
        assert!(peer.matches_any(&a));
        assert!(peer.matches_any(&a));
        assert_eq!(reads.get(), 1);
        assert!(!Peer::known(None).matches_any(&a));
        assert!(!Peer::known(Some("")).matches_any(&a));
        assert!(!Peer::default().matches_any(&a));
    }
}
