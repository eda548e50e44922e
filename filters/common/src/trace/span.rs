//! The proxy's own span of one request: what the trace filter exports in `newSpan` mode so
//! the span id it gives the upstream as parent is known to the tracing backend.

use super::ids::{SpanId, TraceId};

/// Longest method, path, cluster or host kept in a span (longer values are cut).
pub const MAX_FIELD_LEN: usize = 512;

/// How the request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanStatus {
    /// The response's HTTP status (from the upstream or a local answer).
    Http(u16),
    /// No response headers were sent (the stream was reset).
    Reset,
}

impl SpanStatus {
    /// Whether the span is an error: a 5xx or a reset.
    pub fn is_error(self) -> bool {
        match self {
            Self::Http(code) => code >= 500,
            Self::Reset => true,
        }
    }
}

/// One span of the proxy hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySpan {
    pub trace_id: TraceId,
    /// The span id the upstream received as its parent.
    pub span_id: SpanId,
    /// The incoming parent id, if the trace was continued.
    pub parent: Option<SpanId>,
    /// Unix nanoseconds when the request headers arrived.
    pub start_ns: u64,
    /// Unix nanoseconds when the stream ended.
    pub end_ns: u64,
    pub status: SpanStatus,
    pub method: String,
    /// The request path without its query (which may carry secrets): see [`path_text`].
    pub path: String,
    /// The upstream cluster, if the request was routed.
    pub upstream_cluster: Option<String>,
    /// The upstream host (`ip:port`), if one was picked.
    pub upstream_host: Option<String>,
}

impl ProxySpan {
    /// The span's name: `METHOD path`.
    pub fn name(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// Duration in nanoseconds (0 if the clock went backwards).
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

/// A `:path` as a span records it: without the query or fragment, as [`field_text`].
pub fn path_text(path: &[u8]) -> String {
    let end = path
        .iter()
        .position(|b| *b == b'?' || *b == b'#')
        .unwrap_or(path.len());
    field_text(&path[..end])
}

/// `bytes` as text, invalid UTF-8 replaced and cut to [`MAX_FIELD_LEN`] bytes.
pub fn field_text(bytes: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_FIELD_LEN)]).into_owned();
    if s.len() > MAX_FIELD_LEN {
        let mut end = MAX_FIELD_LEN;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_errors_are_5xx_and_resets() {
        assert!(!SpanStatus::Http(200).is_error());
        assert!(!SpanStatus::Http(429).is_error());
        assert!(SpanStatus::Http(503).is_error());
        assert!(SpanStatus::Reset.is_error());
    }

    #[test]
    fn paths_lose_their_query() {
        assert_eq!(path_text(b"/items?token=secret"), "/items");
        assert_eq!(path_text(b"/a#frag"), "/a");
        assert_eq!(path_text(b"/plain"), "/plain");
        assert_eq!(path_text(b""), "");
    }

    #[test]
    fn odd_bytes_become_bounded_text() {
        assert_eq!(field_text(b"/a\xffb"), "/a\u{fffd}b");
        let long = vec![b'x'; 2 * MAX_FIELD_LEN];
        assert_eq!(field_text(&long).len(), MAX_FIELD_LEN);
        let mut cut = vec![b'x'; MAX_FIELD_LEN - 1];
        cut.push(0xff);
        assert!(field_text(&cut).len() <= MAX_FIELD_LEN);
    }
}
