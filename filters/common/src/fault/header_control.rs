//! Caller-requested faults with Envoy's `x-envoy-fault-*` headers, clamped to the policy's
//! caps. Every value is untrusted: anything malformed is ignored, never an error.

use super::grpc::GrpcCode;
use super::spec::{HeaderControlSpec, HttpStatus};
use crate::peer::Peer;
use crate::percentage::Percentage;
use crate::request::RequestHeaders;

/// HTTP status to abort with (200–599).
pub const ABORT_REQUEST: &str = "x-envoy-fault-abort-request";
/// gRPC status to abort with (ignored when `x-envoy-fault-abort-request` is valid).
pub const ABORT_GRPC_REQUEST: &str = "x-envoy-fault-abort-grpc-request";
/// Percentage of requests to abort (0–100, default the policy's cap).
pub const ABORT_REQUEST_PERCENTAGE: &str = "x-envoy-fault-abort-request-percentage";
/// Delay in milliseconds.
pub const DELAY_REQUEST: &str = "x-envoy-fault-delay-request";
/// Percentage of requests to delay (0–100, default the policy's cap).
pub const DELAY_REQUEST_PERCENTAGE: &str = "x-envoy-fault-delay-request-percentage";

/// Status of a requested abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortStatus {
    Http(HttpStatus),
    Grpc(GrpcCode),
}

/// What a request's headers ask for, already within the policy's caps.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HeaderFaults {
    /// Abort status and the percentage to apply it with.
    pub abort: Option<(AbortStatus, Percentage)>,
    /// Delay in milliseconds (at most the cap, at least 1) and its percentage.
    pub delay: Option<(u64, Percentage)>,
    /// The request asked for faults, but its caller is not allowed to (nothing else set).
    pub refused: bool,
}

impl HeaderControlSpec {
    /// Reads the request's `x-envoy-fault-*` headers (first value of each). Returns nothing
    /// when header control is disabled or `peer` is not an allowed caller (the peer is
    /// looked at only when the request asks for a fault).
    pub fn read(&self, headers: &RequestHeaders, peer: &Peer) -> HeaderFaults {
        if !self.enabled {
            return HeaderFaults::default();
        }
        let faults = self.requested(headers);
        if faults == HeaderFaults::default() {
            return faults;
        }
        if !self.caller_allowed(peer) {
            return HeaderFaults {
                refused: true,
                ..HeaderFaults::default()
            };
        }
        faults
    }

    /// What the headers ask for, within the caps, whoever sent them.
    fn requested(&self, headers: &RequestHeaders) -> HeaderFaults {
        let cap = self.max_percentage();
        let pct = |name: &str| {
            headers
                .get(name)
                .and_then(parse_percentage)
                .map_or(cap, |p| if p > cap { cap } else { p })
        };
        let http = headers
            .get(ABORT_REQUEST)
            .and_then(parse_u64)
            .and_then(HttpStatus::new)
            .filter(|s| self.allowed_statuses.as_ref().is_none_or(|a| a.contains(s)))
            .map(AbortStatus::Http);
        let grpc = || {
            headers
                .get(ABORT_GRPC_REQUEST)
                .and_then(parse_u64)
                .and_then(GrpcCode::from_number)
                .filter(|c| {
                    self.allowed_grpc_statuses
                        .as_ref()
                        .is_none_or(|a| a.contains(c))
                })
                .map(AbortStatus::Grpc)
        };
        let abort = http
            .or_else(grpc)
            .map(|s| (s, pct(ABORT_REQUEST_PERCENTAGE)));
        let delay = headers
            .get(DELAY_REQUEST)
            .and_then(parse_u64)
            .filter(|ms| *ms > 0)
            .map(|ms| {
                (
                    ms.min(self.max_delay.as_millis()),
                    pct(DELAY_REQUEST_PERCENTAGE),
                )
            })
            .filter(|(ms, _)| *ms > 0);
        HeaderFaults {
            abort,
            delay,
            refused: false,
        }
    }
}

/// Longest header value considered; longer values are ignored without being scanned.
const MAX_VALUE_LEN: usize = 32;

/// A decimal integer, optional surrounding spaces/tabs; too many digits saturate (the
/// caller clamps). Signs, hex and anything else are rejected.
fn parse_u64(value: &[u8]) -> Option<u64> {
    let v = trim(value);
    if v.is_empty() || v.len() > MAX_VALUE_LEN || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |acc, d| {
        acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// A decimal percentage such as `50` or `12.5` (no exponent, sign, `inf` or `NaN`); values
/// above 100 are clamped to 100.
fn parse_percentage(value: &[u8]) -> Option<Percentage> {
    let v = trim(value);
    let dots = v.iter().filter(|b| **b == b'.').count();
    let digits = v.iter().filter(|b| b.is_ascii_digit()).count();
    if v.len() > MAX_VALUE_LEN || dots > 1 || digits == 0 || digits + dots != v.len() {
        return None;
    }
    let n: f64 = std::str::from_utf8(v).ok()?.parse().ok()?;
    Percentage::try_from(n.min(100.0)).ok()
}

fn trim(v: &[u8]) -> &[u8] {
    let ws = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !ws(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !ws(b)).map_or(start, |i| i + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::DurationSpec;
    use crate::fault::select::{Random, SplitMix64};
    use crate::fault::spec::PercentSpec;

    fn control() -> HeaderControlSpec {
        HeaderControlSpec {
            enabled: true,
            max_delay: DurationSpec::from_millis(2000),
            max_percentage: Some(PercentSpec {
                value: Percentage::try_from(50.0).unwrap(),
            }),
            allowed_statuses: Some(vec![
                HttpStatus::new(503).unwrap(),
                HttpStatus::new(429).unwrap(),
            ]),
            allowed_grpc_statuses: None,
            identities: vec![],
            any_caller: true,
        }
    }

    /// What `c` makes of `h` from a caller without a certificate.
    fn read(c: &HeaderControlSpec, h: &RequestHeaders) -> HeaderFaults {
        c.read(h, &Peer::default())
    }

    fn req(pairs: &[(&str, &[u8])]) -> RequestHeaders {
        RequestHeaders::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
        )
    }

    fn pct(v: f64) -> Percentage {
        Percentage::try_from(v).unwrap()
    }

    #[test]
    fn envoy_headers_are_read_and_clamped() {
        let c = control();
        let f = read(
            &c,
            &req(&[
                (ABORT_REQUEST, b"503"),
                (ABORT_REQUEST_PERCENTAGE, b"80"),
                (DELAY_REQUEST, b"5000"),
                (DELAY_REQUEST_PERCENTAGE, b"12.5"),
            ]),
        );
        assert_eq!(
            f.abort,
            Some((AbortStatus::Http(HttpStatus::new(503).unwrap()), pct(50.0)))
        );
        assert_eq!(f.delay, Some((2000, pct(12.5))));
    }

    #[test]
    fn percentages_default_to_the_cap() {
        let f = read(&control(), &req(&[(DELAY_REQUEST, b" 100 ")]));
        assert_eq!(f.delay, Some((100, pct(50.0))));
        assert_eq!(f.abort, None);
    }

    #[test]
    fn disallowed_or_malformed_values_are_ignored() {
        let c = control();
        for bad in [
            &b"500"[..],
            b"abc",
            b"-503",
            b"+503",
            b"0x1f7",
            b"",
            b"503.0",
            b"\xff\xfe",
            b"99999999999999999999999999999999999",
        ] {
            assert_eq!(
                read(&c, &req(&[(ABORT_REQUEST, bad)])).abort,
                None,
                "{bad:?}"
            );
        }
        for bad in [&b"-5"[..], b"1e3", b"inf", b"NaN", b"", b"0", b"1.5"] {
            assert_eq!(
                read(&c, &req(&[(DELAY_REQUEST, bad)])).delay,
                None,
                "{bad:?}"
            );
        }
        for bad in [&b"-5"[..], b"1e3", b"inf", b"NaN", b"", b"1..5", b"."] {
            let f = read(
                &c,
                &req(&[(DELAY_REQUEST, b"10"), (DELAY_REQUEST_PERCENTAGE, bad)]),
            );
            assert_eq!(
                f.delay,
                Some((10, pct(50.0))),
                "{bad:?} falls back to the cap"
            );
        }
        let disabled = HeaderControlSpec {
            enabled: false,
            ..control()
        };
        assert_eq!(
            read(&disabled, &req(&[(ABORT_REQUEST, b"503")])),
            HeaderFaults::default()
        );
    }

    #[test]
    fn grpc_header_applies_unless_http_header_is_valid() {
        let c = control();
        let f = read(&c, &req(&[(ABORT_GRPC_REQUEST, b"14")]));
        assert_eq!(f.abort.unwrap().0, AbortStatus::Grpc(GrpcCode::UNAVAILABLE));
        let f = read(
            &c,
            &req(&[(ABORT_REQUEST, b"429"), (ABORT_GRPC_REQUEST, b"14")]),
        );
        assert_eq!(
            f.abort.unwrap().0,
            AbortStatus::Http(HttpStatus::new(429).unwrap())
        );
        assert_eq!(read(&c, &req(&[(ABORT_GRPC_REQUEST, b"17")])).abort, None);
        let none = HeaderControlSpec {
            allowed_grpc_statuses: Some(vec![]),
            ..control()
        };
        assert_eq!(
            read(&none, &req(&[(ABORT_GRPC_REQUEST, b"14")])).abort,
            None
        );
    }

    #[test]
    fn only_allowed_callers_are_heard_and_the_peer_is_read_only_when_asked() {
        use crate::peer::IdentityPattern;
        use std::cell::Cell;
        use std::rc::Rc;
        let c = HeaderControlSpec {
            any_caller: false,
            identities: vec![IdentityPattern::try_from("spiffe://t/ns/qa/*".to_string()).unwrap()],
            ..control()
        };
        let reads = Rc::new(Cell::new(0));
        let peer = |id: &'static str| {
            let reads = reads.clone();
            Peer::lazy(move || {
                reads.set(reads.get() + 1);
                Some(id.as_bytes().to_vec())
            })
        };
        let ask = req(&[(ABORT_REQUEST, b"503")]);
        assert!(c
            .read(&ask, &peer("spiffe://t/ns/qa/sa/bot"))
            .abort
            .is_some());
        let refused = HeaderFaults {
            refused: true,
            ..HeaderFaults::default()
        };
        assert_eq!(c.read(&ask, &peer("spiffe://t/ns/prod/sa/web")), refused);
        assert_eq!(c.read(&ask, &Peer::known(None)), refused);
        assert_eq!(reads.get(), 2);
        assert_eq!(
            c.read(&req(&[]), &peer("spiffe://t/ns/qa/sa/bot")),
            HeaderFaults::default()
        );
        assert_eq!(reads.get(), 2, "no fault header, no peer read");
    }

    /// Values a hostile caller might send: random bytes, numbers at and around every
    /// boundary, overlong input, odd whitespace, repeated headers.
    fn hostile_value(rng: &mut SplitMix64) -> Vec<u8> {
        const NASTY: [&[u8]; 24] = [
            b"",
            b" ",
            b"0",
            b"1",
            b"199",
            b"200",
            b"599",
            b"600",
            b"503",
            b"-1",
            b"+1",
            b"1e9",
            b"18446744073709551615",
            b"18446744073709551616",
            b"99999999999999999999999999",
            b"NaN",
            b"inf",
            b"-inf",
            b"100.0000001",
            b"1e-300",
            b"0x10",
            b"\t42\t",
            b"4 2",
            b"\xff\x00",
        ];
        match rng.next_u64() % 4 {
            0 => NASTY[(rng.next_u64() % NASTY.len() as u64) as usize].to_vec(),
            1 => (rng.next_u64() % 100_000_000).to_string().into_bytes(),
            2 => format!("{}.{}", rng.next_u64() % 1000, rng.next_u64() % 1_000_000).into_bytes(),
            _ => {
                let len = (rng.next_u64() % 48) as usize;
                (0..len).map(|_| rng.next_u64() as u8).collect()
            }
        }
    }

    #[test]
    fn hostile_headers_never_panic_or_exceed_caps() {
        let mut rng = SplitMix64(0x5eed);
        let caps = [
            control(),
            HeaderControlSpec {
                allowed_statuses: None,
                max_percentage: None,
                ..control()
            },
            HeaderControlSpec {
                allowed_statuses: Some(vec![]),
                allowed_grpc_statuses: Some(vec![GrpcCode::UNAVAILABLE]),
                max_delay: DurationSpec::from_millis(1),
                ..control()
            },
        ];
        let names = [
            ABORT_REQUEST,
            ABORT_GRPC_REQUEST,
            ABORT_REQUEST_PERCENTAGE,
            DELAY_REQUEST,
            DELAY_REQUEST_PERCENTAGE,
        ];
        for case in 0..20_000 {
            let c = &caps[case % caps.len()];
            let mut pairs = Vec::new();
            for name in names {
                for _ in 0..rng.next_u64() % 3 {
                    pairs.push((name.to_string(), hostile_value(&mut rng)));
                }
            }
            let h = RequestHeaders::new(pairs);
            let f = read(c, &h);
            if let Some((status, p)) = f.abort {
                assert!(p <= c.max_percentage(), "case {case}: {p:?}");
                match status {
                    AbortStatus::Http(s) => {
                        assert!((200..=599).contains(&s.code()));
                        assert!(
                            c.allowed_statuses.as_ref().is_none_or(|a| a.contains(&s)),
                            "case {case}: {s:?}"
                        );
                    }
                    AbortStatus::Grpc(g) => {
                        assert!(g.number() <= 16);
                        assert!(c
                            .allowed_grpc_statuses
                            .as_ref()
                            .is_none_or(|a| a.contains(&g)));
                    }
                }
            }
            if let Some((ms, p)) = f.delay {
                assert!(
                    (1..=c.max_delay.as_millis()).contains(&ms),
                    "case {case}: {ms}"
                );
                assert!(p <= c.max_percentage());
            }
        }
    }
}
