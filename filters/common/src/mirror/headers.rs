//! The headers a mirror copy carries: the original request's, minus hop-by-hop headers and the
//! policy's `removeHeaders`, with the `-shadow` host suffix, `addHeaders` and the marker
//! header.

use crate::names::HeaderName;

/// Headers never copied: connection-specific ones (the copy travels on its own connection)
/// and `content-length` (the proxy sets it for the copied body).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "upgrade",
    "trailer",
    "expect",
    "content-length",
];

/// How a policy rewrites the copy's headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderRewrite {
    /// Append `-shadow` to the host part of `:authority` (before any port), as Envoy does.
    pub host_suffix: bool,
    /// Header set on every copy (value: the policy name).
    pub marker: Option<HeaderName>,
    /// Headers set (replacing any original value).
    pub add: Vec<(HeaderName, String)>,
    /// Headers dropped.
    pub remove: Vec<HeaderName>,
}

/// The copy's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorHeaders {
    /// Name/value pairs, pseudo-headers first.
    pub pairs: Vec<(String, String)>,
    /// Original headers left out because their value is not UTF-8 (the proxy's call-out API
    /// only takes text).
    pub dropped_non_utf8: usize,
}

impl HeaderRewrite {
    /// Builds the copy's headers from the original request headers (lowercase names).
    /// Returns `None` if `:method` or `:path` is missing (nothing sensible to copy).
    /// `fallback_authority` is used when the request has no `:authority`/`host`.
    pub fn apply(
        &self,
        original: &[(String, Vec<u8>)],
        policy: &str,
        fallback_authority: &str,
    ) -> Option<MirrorHeaders> {
        let mut pseudo = Vec::new();
        let mut regular = Vec::new();
        let mut dropped_non_utf8 = 0;
        let mut authority: Option<String> = None;
        for (name, value) in original {
            let name = name.to_ascii_lowercase();
            if self.skips(&name) {
                continue;
            }
            let Ok(value) = std::str::from_utf8(value) else {
                dropped_non_utf8 += 1;
                continue;
            };
            match name.as_str() {
                ":authority" | "host" => {
                    if authority.is_none() {
                        authority = Some(value.to_string());
                    }
                }
                n if n.starts_with(':') => {
                    if !pseudo.iter().any(|(k, _): &(String, String)| *k == name) {
                        pseudo.push((name, value.to_string()));
                    }
                }
                _ => regular.push((name, value.to_string())),
            }
        }
        let has = |k: &str| pseudo.iter().any(|(n, _)| n == k);
        if !has(":method") || !has(":path") {
            return None;
        }
        let authority = authority
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| fallback_authority.to_string());
        let authority = if self.host_suffix {
            shadow_host(&authority)
        } else {
            authority
        };
        pseudo.push((":authority".to_string(), authority));
        let mut pairs = pseudo;
        pairs.extend(regular);
        pairs.extend(
            self.add
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.clone())),
        );
        if let Some(m) = &self.marker {
            pairs.push((m.as_str().to_string(), policy.to_string()));
        }
        Some(MirrorHeaders {
            pairs,
            dropped_non_utf8,
        })
    }

    fn skips(&self, name: &str) -> bool {
        HOP_BY_HOP.contains(&name)
            || self.remove.iter().any(|h| h.as_str() == name)
            || self.add.iter().any(|(h, _)| h.as_str() == name)
            || self.marker.as_ref().is_some_and(|m| m.as_str() == name)
    }
}

/// `host[:port]` with `-shadow` appended to the host part: `api:8080` → `api-shadow:8080`,
/// `[::1]:80` → `[::1]-shadow:80`.
pub fn shadow_host(authority: &str) -> String {
    let split = if authority.starts_with('[') {
        authority.find("]:").map(|i| i + 1)
    } else {
        authority.rfind(':')
    };
    match split {
        Some(i) => format!("{}-shadow{}", &authority[..i], &authority[i..]),
        None => format!("{authority}-shadow"),
    }
}

/// Checks a header value written in a policy (no control characters such as CR/LF).
pub fn validate_header_value(v: &str) -> Result<(), String> {
    match v.chars().find(|c| c.is_control() && *c != '\t') {
        Some(c) => Err(format!(
            "header value {v:?} contains control character {c:?}"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> HeaderName {
        HeaderName::try_from(s.to_string()).unwrap()
    }

    fn req(extra: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = vec![
            (":method".into(), b"POST".to_vec()),
            (":path".into(), b"/orders?x=1".to_vec()),
            (":scheme".into(), b"http".to_vec()),
            (":authority".into(), b"shop.local:8080".to_vec()),
        ];
        v.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_vec())));
        v
    }

    fn get<'a>(m: &'a MirrorHeaders, k: &str) -> Vec<&'a str> {
        m.pairs
            .iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    #[test]
    fn default_rewrite_suffixes_host_and_marks_the_copy() {
        let rw = HeaderRewrite {
            host_suffix: true,
            marker: Some(h("x-meshwarden-mirror")),
            ..Default::default()
        };
        let out = rw
            .apply(
                &req(&[
                    ("x-user", b"u1"),
                    ("content-length", b"5"),
                    ("connection", b"close"),
                ]),
                "orders",
                "fallback",
            )
            .unwrap();
        assert_eq!(get(&out, ":authority"), ["shop.local-shadow:8080"]);
        assert_eq!(get(&out, ":method"), ["POST"]);
        assert_eq!(get(&out, ":path"), ["/orders?x=1"]);
        assert_eq!(get(&out, ":scheme"), ["http"]);
        assert_eq!(get(&out, "x-user"), ["u1"]);
        assert_eq!(get(&out, "x-meshwarden-mirror"), ["orders"]);
        assert!(get(&out, "content-length").is_empty());
        assert!(get(&out, "connection").is_empty());
        assert!(out.pairs[0].0.starts_with(':'));
    }

    #[test]
    fn add_replaces_remove_drops_and_marker_cannot_be_spoofed() {
        let rw = HeaderRewrite {
            host_suffix: false,
            marker: Some(h("x-meshwarden-mirror")),
            add: vec![(h("x-env"), "shadow".into())],
            remove: vec![h("authorization")],
        };
        let out = rw
            .apply(
                &req(&[
                    ("authorization", b"Bearer secret"),
                    ("x-env", b"prod"),
                    ("x-meshwarden-mirror", b"spoofed"),
                    ("x-dup", b"1"),
                    ("x-dup", b"2"),
                ]),
                "p",
                "fallback",
            )
            .unwrap();
        assert_eq!(get(&out, ":authority"), ["shop.local:8080"]);
        assert!(get(&out, "authorization").is_empty());
        assert_eq!(get(&out, "x-env"), ["shadow"]);
        assert_eq!(get(&out, "x-meshwarden-mirror"), ["p"]);
        assert_eq!(get(&out, "x-dup"), ["1", "2"]);
    }

    #[test]
    fn odd_input_is_handled() {
        let rw = HeaderRewrite {
            host_suffix: true,
            ..Default::default()
        };
        let out = rw
            .apply(
                &[
                    (":method".into(), b"GET".to_vec()),
                    (":path".into(), b"/".to_vec()),
                    ("x-bin".into(), vec![0xff, 0xfe]),
                ],
                "p",
                "shadow-cluster",
            )
            .unwrap();
        assert_eq!(out.dropped_non_utf8, 1);
        assert_eq!(get(&out, ":authority"), ["shadow-cluster-shadow"]);
        assert!(rw
            .apply(&[(":path".into(), b"/".to_vec())], "p", "f")
            .is_none());
    }

    #[test]
    fn shadow_suffix_goes_before_the_port() {
        assert_eq!(shadow_host("api"), "api-shadow");
        assert_eq!(shadow_host("api:80"), "api-shadow:80");
        assert_eq!(shadow_host("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(shadow_host("[::1]"), "[::1]-shadow");
    }

    #[test]
    fn header_values_reject_control_characters() {
        assert!(validate_header_value("a b\tc").is_ok());
        assert!(validate_header_value("a\r\nb").is_err());
    }
}
