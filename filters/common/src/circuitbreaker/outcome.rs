//! How a policy judges a finished call: failed (a failure status) and/or slow.

use super::spec::CircuitBreakerSpec;
use super::window::Outcome;

/// What the filter saw of a call's answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Response {
    /// `:status` of the response (the proxy's own 503/504 after a reset or a timeout).
    pub http_status: Option<u16>,
    /// `grpc-status` of a gRPC response (headers of a trailers-only answer, or trailers).
    pub grpc_status: Option<u8>,
    /// From the request to the end of the response, ms.
    pub elapsed_ms: u64,
}

impl CircuitBreakerSpec {
    /// The outcome of a call with `response`.
    pub fn outcome(&self, response: &Response) -> Outcome {
        let failure = response
            .http_status
            .is_some_and(|s| self.is_failure_status(s))
            || response
                .grpc_status
                .is_some_and(|c| self.is_failure_grpc(c));
        Outcome {
            failure,
            slow: response.elapsed_ms >= self.slow_call_ms(),
        }
    }
}

/// A `grpc-status` value (`0`–`16`); `None` for anything else.
pub fn parse_grpc_status(value: &[u8]) -> Option<u8> {
    let s = std::str::from_utf8(value).ok()?;
    let n: u8 = s.trim().parse().ok()?;
    (n <= 16).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn failures_and_slow_calls_are_told_apart() {
        let spec: CircuitBreakerSpec = serde_json::from_value(json!({
            "slowCallDurationThreshold": "100ms", "failureStatuses": ["502-504"]
        }))
        .unwrap();
        let r = |http, grpc, ms| {
            spec.outcome(&Response {
                http_status: http,
                grpc_status: grpc,
                elapsed_ms: ms,
            })
        };
        assert_eq!(r(Some(200), None, 5), Outcome::default());
        assert!(r(Some(503), None, 5).failure);
        assert!(!r(Some(500), None, 5).failure);
        assert!(r(Some(200), Some(14), 5).failure);
        assert!(!r(Some(200), Some(5), 5).failure);
        assert!(r(Some(200), None, 100).slow);
        assert!(!r(None, None, 99).slow);
        assert_eq!(parse_grpc_status(b"14"), Some(14));
        assert_eq!(parse_grpc_status(b"17"), None);
        assert_eq!(parse_grpc_status(b"\xff"), None);
    }
}
