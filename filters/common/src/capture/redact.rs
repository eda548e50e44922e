//! The headers a summary carries: the policy's allow-list, credentials replaced by
//! [`REDACTED`], values as bounded text whatever bytes they hold.

use super::spec::CaptureSpec;
use crate::trace::span::field_text;

/// What a redacted value is sent as.
pub const REDACTED: &str = "[redacted]";
/// Most values of one header kept in a summary (repeated headers beyond it are left out).
pub const MAX_VALUES_PER_HEADER: usize = 4;

/// One captured header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedHeader {
    /// Lowercase name.
    pub name: String,
    /// The value as text, or [`REDACTED`].
    pub value: String,
    /// Whether it is a response header.
    pub response: bool,
}

/// The allow-listed headers of one side of a request, in the policy's order. `values`
/// gives every value of a header (lowercase name) as the proxy holds it. A redacted value
/// never leaves this function: it is replaced before any text is made of it.
pub fn select_headers<F, I>(
    spec: &CaptureSpec,
    response: bool,
    mut values: F,
) -> Vec<CapturedHeader>
where
    F: FnMut(&str) -> I,
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    let mut out = Vec::new();
    for name in &spec.headers {
        let name = name.as_str();
        let redacted = spec.is_redacted(name);
        for v in values(name).into_iter().take(MAX_VALUES_PER_HEADER) {
            let value = if redacted {
                REDACTED.to_string()
            } else {
                printable(field_text(v.as_ref()))
            };
            out.push(CapturedHeader {
                name: name.to_string(),
                value,
                response,
            });
        }
    }
    out
}

/// `s` with control characters replaced by `?` (a summary is printed on terminals).
pub(crate) fn printable(s: String) -> String {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> CaptureSpec {
        serde_json::from_value(v).unwrap()
    }

    fn headers() -> Vec<(&'static str, &'static [u8])> {
        vec![
            ("authorization", b"Bearer s3cret"),
            ("cookie", b"session=abc"),
            ("x-api-key", b"k-123"),
            ("user-agent", b"curl/8\x1b[31m\xff"),
            ("accept", b"a"),
            ("accept", b"b"),
        ]
    }

    fn select(s: &CaptureSpec) -> Vec<CapturedHeader> {
        let h = headers();
        select_headers(s, false, |name| {
            h.iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, v)| *v)
                .collect::<Vec<_>>()
        })
    }

    #[test]
    fn credentials_never_appear_in_clear() {
        let s = spec(
            json!({"headers": ["authorization", "cookie", "x-api-key", "accept"],
            "redact": ["x-api-key"]}),
        );
        let got = select(&s);
        let text = format!("{got:?}");
        for secret in ["s3cret", "abc", "k-123"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        let values: Vec<(&str, &str)> = got
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str()))
            .collect();
        assert_eq!(
            values,
            [
                ("authorization", REDACTED),
                ("cookie", REDACTED),
                ("x-api-key", REDACTED),
                ("accept", "a"),
                ("accept", "b"),
            ]
        );
    }

    #[test]
    fn only_listed_headers_go_and_odd_bytes_become_text() {
        let got = select(&spec(json!({"headers": ["user-agent", "missing"]})));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].value, "curl/8?[31m\u{fffd}");
        assert!(
            select(&spec(json!({}))).is_empty(),
            "no allow-list, no headers"
        );
    }

    #[test]
    fn repeated_values_are_bounded() {
        let s = spec(json!({"headers": ["set-cookie", "via"]}));
        let got = select_headers(&s, true, |_| vec![b"x".as_slice(); 10]);
        assert_eq!(got.len(), 2 * MAX_VALUES_PER_HEADER);
        assert!(got.iter().all(|h| h.response));
        assert!(got
            .iter()
            .filter(|h| h.name == "set-cookie")
            .all(|h| h.value == REDACTED));
    }
}
