//! Descriptors: which parts of a request select its bucket.

use crate::names::HeaderName;
use crate::request::RequestHeaders;
use serde::de::{Error as _, IgnoredAny};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

/// One descriptor entry, written as a one-key mapping: `{header: x-tenant}`, `{path: {}}`,
/// `{method: {}}`, `{authority: {}}`, `{clientAddress: {}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Descriptor {
    /// The first value of a request header (empty if absent).
    Header(HeaderName),
    /// The path, without the query string.
    Path(NoFields),
    /// The method.
    Method(NoFields),
    /// The `:authority` (host).
    Authority(NoFields),
    /// The client's address.
    ClientAddress(ClientAddressSpec),
}

/// `{}` (or nothing at all): a descriptor that takes no options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoFields;

impl Serialize for NoFields {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        BTreeMap::<String, ()>::new().serialize(s)
    }
}

impl<'de> Deserialize<'de> for NoFields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let fields: Option<BTreeMap<String, IgnoredAny>> = Option::deserialize(d)?;
        match fields.as_ref().and_then(|f| f.keys().next()) {
            Some(k) => Err(D::Error::custom(format!(
                "takes no options (write {{}}), got {k:?}"
            ))),
            None => Ok(NoFields),
        }
    }
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// Options of the `clientAddress` descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientAddressSpec {
    /// Use the first address of `x-forwarded-for` when present (default). Clients can set
    /// that header themselves unless a trusted proxy in front of Envoy overwrites it; set
    /// `false` to key by the connection's peer address only.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub use_forwarded_for: bool,
}

impl Default for ClientAddressSpec {
    fn default() -> Self {
        Self {
            use_forwarded_for: true,
        }
    }
}

impl Descriptor {
    /// The name overrides use to refer to this descriptor: the header name, or `path`,
    /// `method`, `authority`, `clientAddress`.
    pub fn name(&self) -> &str {
        match self {
            Descriptor::Header(h) => h.as_str(),
            Descriptor::Path(_) => "path",
            Descriptor::Method(_) => "method",
            Descriptor::Authority(_) => "authority",
            Descriptor::ClientAddress(_) => "clientAddress",
        }
    }

    /// Whether extraction needs the connection's peer address.
    pub fn needs_peer(&self) -> bool {
        matches!(self, Descriptor::ClientAddress(_))
    }

    /// This descriptor's value for a request. `peer` is the downstream address as the
    /// proxy reports it (`10.0.0.7:51234`, `[::1]:443`). A missing value is empty, so
    /// leaving a header out is not a way around the limit: all such requests share one
    /// bucket.
    pub fn value<'a>(&self, req: &'a RequestHeaders, peer: Option<&'a [u8]>) -> &'a [u8] {
        match self {
            Descriptor::Header(h) => req.get(h.as_str()).unwrap_or_default(),
            Descriptor::Path(_) => req.path(),
            Descriptor::Method(_) => req.method(),
            Descriptor::Authority(_) => req.authority(),
            Descriptor::ClientAddress(opts) => {
                let forwarded = opts
                    .use_forwarded_for
                    .then(|| req.get("x-forwarded-for"))
                    .flatten()
                    .map(first_hop)
                    .filter(|a| !a.is_empty());
                forwarded
                    .or_else(|| peer.map(strip_port))
                    .unwrap_or_default()
            }
        }
    }
}

/// The first address of an `x-forwarded-for` list, without a port.
fn first_hop(xff: &[u8]) -> &[u8] {
    let first = xff.split(|b| *b == b',').next().unwrap_or_default();
    strip_port(trim(first))
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// `1.2.3.4:80` -> `1.2.3.4`, `[::1]:80` -> `::1`; a bare IPv6 address stays as it is.
fn strip_port(addr: &[u8]) -> &[u8] {
    if let Some(rest) = addr.strip_prefix(b"[") {
        return match rest.iter().position(|b| *b == b']') {
            Some(end) => &rest[..end],
            None => rest,
        };
    }
    let colons = addr.iter().filter(|b| **b == b':').count();
    match (colons, addr.iter().position(|b| *b == b':')) {
        (1, Some(i)) => &addr[..i],
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(pairs: &[(&str, &str)]) -> RequestHeaders {
        RequestHeaders::from_text(pairs)
    }

    fn d(v: serde_json::Value) -> Descriptor {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(
            d(json!({"header": "X-Tenant"})),
            Descriptor::Header(HeaderName::try_from("x-tenant".to_string()).unwrap())
        );
        assert_eq!(d(json!({"path": {}})), Descriptor::Path(NoFields));
        assert_eq!(d(json!({"method": null})), Descriptor::Method(NoFields));
        assert_eq!(d(json!({"clientAddress": {}})).name(), "clientAddress");
        let no_xff = d(json!({"clientAddress": {"useForwardedFor": false}}));
        assert_eq!(
            no_xff,
            Descriptor::ClientAddress(ClientAddressSpec {
                use_forwarded_for: false
            })
        );
        assert!(serde_json::from_value::<Descriptor>(json!({"path": {"x": 1}})).is_err());
        assert!(serde_json::from_value::<Descriptor>(json!({"cookie": "a"})).is_err());
        assert_eq!(
            serde_json::to_value(Descriptor::Path(NoFields)).unwrap(),
            json!({"path": {}})
        );
    }

    #[test]
    fn extracts_values() {
        let r = req(&[
            (":path", "/api/items?x=1"),
            (":method", "POST"),
            (":authority", "shop.example"),
            ("x-tenant", "gold"),
            ("x-forwarded-for", " 203.0.113.9:5555 , 10.0.0.1"),
        ]);
        let peer = Some(&b"127.0.0.1:40000"[..]);
        assert_eq!(d(json!({"header": "x-tenant"})).value(&r, peer), b"gold");
        assert_eq!(d(json!({"header": "x-missing"})).value(&r, peer), b"");
        assert_eq!(d(json!({"path": {}})).value(&r, peer), b"/api/items");
        assert_eq!(d(json!({"method": {}})).value(&r, peer), b"POST");
        assert_eq!(d(json!({"authority": {}})).value(&r, peer), b"shop.example");
        assert_eq!(
            d(json!({"clientAddress": {}})).value(&r, peer),
            b"203.0.113.9"
        );
        let peer_only = d(json!({"clientAddress": {"useForwardedFor": false}}));
        assert_eq!(peer_only.value(&r, peer), b"127.0.0.1");
    }

    #[test]
    fn client_address_falls_back_to_the_peer() {
        let c = d(json!({"clientAddress": {}}));
        assert_eq!(
            c.value(&req(&[]), Some(b"[2001:db8::1]:443")),
            b"2001:db8::1"
        );
        assert_eq!(
            c.value(&req(&[("x-forwarded-for", " ,x")]), Some(b"10.1.1.1:1")),
            b"10.1.1.1"
        );
        assert_eq!(
            c.value(&req(&[("x-forwarded-for", "2001:db8::7")]), None),
            b"2001:db8::7"
        );
        assert_eq!(c.value(&req(&[]), None), b"");
    }
}
