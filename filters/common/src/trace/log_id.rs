//! The id a filter's log line carries so a log search joins it with the application's logs.

use super::ids::TraceId;
use super::traceparent::TraceParent;
use crate::request::RequestHeaders;

/// The request's trace id as the upstream sees it: the W3C trace id (`traceparent`, after
/// the trace stage wrote it), else the B3 trace id (`x-b3-traceid`, or the first part of
/// `b3`), else `x-request-id`; `-` when there is none. Never fails on odd bytes.
pub fn log_id(headers: &RequestHeaders) -> String {
    if let Some(Ok(tp)) = TraceParent::from_headers(headers) {
        return tp.trace_id.to_hex();
    }
    let b3 = headers.get("x-b3-traceid").or_else(|| {
        let single = headers.get("b3")?;
        single.split(|b| *b == b'-').next()
    });
    if let Some(id) = b3.and_then(TraceId::parse_hex_64_or_128) {
        return id.to_hex();
    }
    match headers.get("x-request-id") {
        Some(v) if v.len() <= 64 && v.iter().all(|b| b.is_ascii_graphic()) => {
            String::from_utf8_lossy(v).into_owned()
        }
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> RequestHeaders {
        RequestHeaders::from_text(pairs)
    }

    #[test]
    fn prefers_w3c_then_b3_then_request_id() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            log_id(&h(&[("traceparent", tp), ("x-request-id", "r1")])),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            log_id(&h(&[(
                "b3",
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"
            )])),
            "80f198ee56343ba864fe8b2a57d3eff7"
        );
        assert_eq!(log_id(&h(&[("x-request-id", "req-7")])), "req-7");
        assert_eq!(log_id(&h(&[("x-request-id", "a b\u{7f}")])), "-");
        assert_eq!(log_id(&h(&[])), "-");
    }
}
