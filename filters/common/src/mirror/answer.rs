//! Telling a target's answer from the proxy's own reply to a failed call-out.

/// The status of an answer that came from the target, or `None` if the call-out failed.
///
/// Envoy's router marks answers from an upstream with `x-envoy-upstream-service-time`; the
/// replies it makes up itself when a call-out fails (connection refused, timeout, reset,
/// overflow: 503/504 with a plain-text body) lack it. Those count as failed copies, not as
/// the target's answer.
pub fn upstream_status(headers: &[(String, Vec<u8>)]) -> Option<u16> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    };
    header("x-envoy-upstream-service-time")?;
    std::str::from_utf8(header(":status")?)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|s| (100..=599).contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn upstream_answers_have_a_status_and_local_replies_do_not() {
        let upstream = h(&[(":status", "500"), ("x-envoy-upstream-service-time", "3")]);
        assert_eq!(upstream_status(&upstream), Some(500));
        let local = h(&[(":status", "504"), ("content-type", "text/plain")]);
        assert_eq!(upstream_status(&local), None);
        assert_eq!(upstream_status(&[]), None);
        let odd = h(&[(":status", "abc"), ("x-envoy-upstream-service-time", "1")]);
        assert_eq!(upstream_status(&odd), None);
    }
}
