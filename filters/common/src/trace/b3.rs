//! B3 propagation (Zipkin): the single `b3` header and the `x-b3-*` headers.

use super::ids::{SpanId, TraceId};
use super::traceparent::trim_ows;
use crate::request::RequestHeaders;

/// Single-header name.
pub const B3: &str = "b3";
/// Multi-header names.
pub const X_B3_TRACEID: &str = "x-b3-traceid";
pub const X_B3_SPANID: &str = "x-b3-spanid";
pub const X_B3_PARENTSPANID: &str = "x-b3-parentspanid";
pub const X_B3_SAMPLED: &str = "x-b3-sampled";
pub const X_B3_FLAGS: &str = "x-b3-flags";
/// Every multi-header name.
pub const MULTI_HEADERS: [&str; 5] = [
    X_B3_TRACEID,
    X_B3_SPANID,
    X_B3_PARENTSPANID,
    X_B3_SAMPLED,
    X_B3_FLAGS,
];

/// A sampling decision as B3 carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    /// No decision: the receiver decides.
    Deferred,
    Accept,
    Deny,
    /// Debug: implies accept.
    Debug,
}

impl Sampling {
    /// `Some(sampled)` if a decision was made.
    pub fn decision(self) -> Option<bool> {
        match self {
            Self::Deferred => None,
            Self::Accept | Self::Debug => Some(true),
            Self::Deny => Some(false),
        }
    }
}

/// A valid B3 header set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum B3 {
    /// Trace and span ids (64-bit trace ids already left-padded to 128 bits).
    Context {
        trace_id: TraceId,
        span_id: SpanId,
        sampling: Sampling,
        parent_span_id: Option<SpanId>,
    },
    /// Only a sampling decision (`b3: 0`, `x-b3-sampled: 0` without ids).
    SamplingOnly(Sampling),
}

/// Why a B3 header set was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum B3Error {
    /// A header appears more than once.
    Duplicate,
    /// Malformed ids, sampling state or layout.
    Malformed,
    /// A trace id without a span id or the other way round.
    Incomplete,
}

/// What the request carries in both B3 forms. Each is `None` when absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct B3Headers {
    pub single: Option<Result<B3, B3Error>>,
    pub multi: Option<Result<B3, B3Error>>,
}

impl B3Headers {
    /// Reads both forms from the request.
    pub fn from_headers(headers: &RequestHeaders) -> Self {
        Self {
            single: parse_single_header(headers),
            multi: parse_multi(headers),
        }
    }

    /// The B3 state to use: a valid single header wins, then valid multi headers.
    pub fn best(&self) -> Option<B3> {
        match (self.single, self.multi) {
            (Some(Ok(b3)), _) => Some(b3),
            (_, Some(Ok(b3))) => Some(b3),
            _ => None,
        }
    }
}

/// Parses a `b3` value: `{traceid}-{spanid}[-{sampled}[-{parentspanid}]]` or a lone
/// sampling state (`0`, `1`, `d`).
pub fn parse_single(raw: &[u8]) -> Result<B3, B3Error> {
    let v = trim_ows(raw);
    let parts: Vec<&[u8]> = v.split(|b| *b == b'-').collect();
    let sampling = |s: &[u8]| match s {
        b"0" => Ok(Sampling::Deny),
        b"1" => Ok(Sampling::Accept),
        b"d" => Ok(Sampling::Debug),
        _ => Err(B3Error::Malformed),
    };
    match parts.as_slice() {
        [state] => sampling(state).map(B3::SamplingOnly),
        [t, s, rest @ ..] if rest.len() <= 2 => {
            let trace_id = TraceId::parse_hex_64_or_128(t).ok_or(B3Error::Malformed)?;
            let span_id = SpanId::parse_hex(s).ok_or(B3Error::Malformed)?;
            let sampling = match rest.first() {
                Some(state) => sampling(state)?,
                None => Sampling::Deferred,
            };
            let parent_span_id = match rest.get(1) {
                Some(p) => Some(SpanId::parse_hex(p).ok_or(B3Error::Malformed)?),
                None => None,
            };
            Ok(B3::Context {
                trace_id,
                span_id,
                sampling,
                parent_span_id,
            })
        }
        _ => Err(B3Error::Malformed),
    }
}

fn parse_single_header(headers: &RequestHeaders) -> Option<Result<B3, B3Error>> {
    let mut values = headers.get_all(B3);
    let first = values.next()?;
    if values.next().is_some() {
        return Some(Err(B3Error::Duplicate));
    }
    Some(parse_single(first))
}

/// Parses the `x-b3-*` headers; `None` when none of them is present.
pub fn parse_multi(headers: &RequestHeaders) -> Option<Result<B3, B3Error>> {
    if MULTI_HEADERS.iter().all(|h| headers.get(h).is_none()) {
        return None;
    }
    Some(parse_multi_present(headers))
}

fn parse_multi_present(headers: &RequestHeaders) -> Result<B3, B3Error> {
    let one = |name: &str| -> Result<Option<&[u8]>, B3Error> {
        match headers.count(name) {
            0 => Ok(None),
            1 => Ok(headers.get(name).map(trim_ows)),
            _ => Err(B3Error::Duplicate),
        }
    };
    let sampled = match one(X_B3_SAMPLED)? {
        None => None,
        Some(b"1" | b"true") => Some(true),
        Some(b"0" | b"false") => Some(false),
        Some(_) => return Err(B3Error::Malformed),
    };
    let debug = match one(X_B3_FLAGS)? {
        None | Some(b"0") => false,
        Some(b"1") => true,
        Some(_) => return Err(B3Error::Malformed),
    };
    let sampling = match (debug, sampled) {
        (true, _) => Sampling::Debug,
        (false, Some(true)) => Sampling::Accept,
        (false, Some(false)) => Sampling::Deny,
        (false, None) => Sampling::Deferred,
    };
    let parent = one(X_B3_PARENTSPANID)?;
    match (one(X_B3_TRACEID)?, one(X_B3_SPANID)?) {
        (None, None) if parent.is_none() => Ok(B3::SamplingOnly(sampling)),
        (Some(t), Some(s)) => Ok(B3::Context {
            trace_id: TraceId::parse_hex_64_or_128(t).ok_or(B3Error::Malformed)?,
            span_id: SpanId::parse_hex(s).ok_or(B3Error::Malformed)?,
            sampling,
            parent_span_id: match parent {
                Some(p) => Some(SpanId::parse_hex(p).ok_or(B3Error::Malformed)?),
                None => None,
            },
        }),
        _ => Err(B3Error::Incomplete),
    }
}

/// The single-header value for ids and a sampling state (`d` for debug).
pub fn encode_single(
    trace_id: &TraceId,
    span_id: &SpanId,
    sampling: Sampling,
    parent: Option<&SpanId>,
) -> String {
    let mut v = format!("{trace_id}-{span_id}");
    let state = match sampling {
        Sampling::Deferred => None,
        Sampling::Accept => Some("1"),
        Sampling::Deny => Some("0"),
        Sampling::Debug => Some("d"),
    };
    if let Some(state) = state {
        v.push('-');
        v.push_str(state);
        if let Some(p) = parent {
            v.push('-');
            v.push_str(&p.to_hex());
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: &str = "80f198ee56343ba864fe8b2a57d3eff7";
    const SID: &str = "e457b5a2e4d86bd1";
    const PID: &str = "05e3ac9a4f6e3b90";

    fn headers(pairs: &[(&str, &str)]) -> RequestHeaders {
        RequestHeaders::from_text(pairs)
    }

    fn ctx(b3: B3) -> (String, String, Sampling, Option<String>) {
        match b3 {
            B3::Context {
                trace_id,
                span_id,
                sampling,
                parent_span_id,
            } => (
                trace_id.to_hex(),
                span_id.to_hex(),
                sampling,
                parent_span_id.map(|p| p.to_hex()),
            ),
            other => panic!("not a context: {other:?}"),
        }
    }

    #[test]
    fn single_header_forms() {
        let full = parse_single(format!("{TID}-{SID}-1-{PID}").as_bytes()).unwrap();
        assert_eq!(
            ctx(full),
            (TID.into(), SID.into(), Sampling::Accept, Some(PID.into()))
        );
        let deferred = parse_single(format!("{TID}-{SID}").as_bytes()).unwrap();
        assert_eq!(ctx(deferred).2, Sampling::Deferred);
        let debug = parse_single(format!("{TID}-{SID}-d").as_bytes()).unwrap();
        assert_eq!(ctx(debug).2, Sampling::Debug);
        let short = parse_single(format!("{}-{SID}-0", &TID[16..]).as_bytes()).unwrap();
        assert_eq!(ctx(short).0, format!("{}{}", "0".repeat(16), &TID[16..]));
        assert_eq!(parse_single(b"0"), Ok(B3::SamplingOnly(Sampling::Deny)));
        assert_eq!(parse_single(b"d"), Ok(B3::SamplingOnly(Sampling::Debug)));
    }

    #[test]
    fn single_header_rejects() {
        for bad in [
            String::new(),
            "true".into(),
            TID.to_string(),
            format!("{TID}-{SID}-2"),
            format!("{TID}-{SID}-true"),
            format!("{TID}-{SID}-1-{PID}-x"),
            format!("{TID}-{SID}-1-"),
            format!("{}-{SID}-1", TID.to_uppercase()),
            format!("{}-{SID}-1", &TID[1..]),
            format!("{}-{SID}-1", "0".repeat(32)),
            format!("{TID}-{}-1", "0".repeat(16)),
            format!("{TID}-{SID}-1-{}", "0".repeat(16)),
        ] {
            assert_eq!(
                parse_single(bad.as_bytes()),
                Err(B3Error::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn multi_headers() {
        let h = headers(&[
            ("X-B3-TraceId", TID),
            ("x-b3-spanid", SID),
            ("x-b3-sampled", "true"),
            ("x-b3-parentspanid", PID),
        ]);
        let got = parse_multi(&h).unwrap().unwrap();
        assert_eq!(
            ctx(got),
            (TID.into(), SID.into(), Sampling::Accept, Some(PID.into()))
        );
        let h = headers(&[
            ("x-b3-traceid", &TID[16..]),
            ("x-b3-spanid", SID),
            ("x-b3-sampled", "0"),
            ("x-b3-flags", "1"),
        ]);
        assert_eq!(ctx(parse_multi(&h).unwrap().unwrap()).2, Sampling::Debug);
        let h = headers(&[("x-b3-sampled", "false")]);
        assert_eq!(parse_multi(&h), Some(Ok(B3::SamplingOnly(Sampling::Deny))));
        assert_eq!(parse_multi(&headers(&[("x-other", "1")])), None);
    }

    #[test]
    fn multi_headers_reject() {
        let cases: [&[(&str, &str)]; 6] = [
            &[("x-b3-traceid", TID)],
            &[("x-b3-spanid", SID)],
            &[
                ("x-b3-traceid", TID),
                ("x-b3-spanid", SID),
                ("x-b3-sampled", "yes"),
            ],
            &[
                ("x-b3-traceid", TID),
                ("x-b3-spanid", SID),
                ("x-b3-flags", "2"),
            ],
            &[
                ("x-b3-traceid", TID),
                ("x-b3-traceid", TID),
                ("x-b3-spanid", SID),
            ],
            &[("x-b3-traceid", "xyz"), ("x-b3-spanid", SID)],
        ];
        for case in cases {
            assert!(
                matches!(parse_multi(&headers(case)), Some(Err(_))),
                "{case:?}"
            );
        }
    }

    #[test]
    fn single_wins_and_invalid_single_falls_back_to_multi() {
        let other = "1111111111111111aaaaaaaaaaaaaaaa";
        let h = headers(&[
            ("b3", &format!("{TID}-{SID}-1")),
            ("x-b3-traceid", other),
            ("x-b3-spanid", SID),
        ]);
        assert_eq!(ctx(B3Headers::from_headers(&h).best().unwrap()).0, TID);
        let h = headers(&[
            ("b3", "garbage"),
            ("x-b3-traceid", other),
            ("x-b3-spanid", SID),
        ]);
        let b = B3Headers::from_headers(&h);
        assert_eq!(b.single, Some(Err(B3Error::Malformed)));
        assert_eq!(ctx(b.best().unwrap()).0, other);
        let h = headers(&[("b3", "0"), ("b3", "1")]);
        assert_eq!(
            B3Headers::from_headers(&h).single,
            Some(Err(B3Error::Duplicate))
        );
    }

    #[test]
    fn encode_single_forms() {
        let t = TraceId::parse_hex(TID.as_bytes()).unwrap();
        let s = SpanId::parse_hex(SID.as_bytes()).unwrap();
        let p = SpanId::parse_hex(PID.as_bytes()).unwrap();
        assert_eq!(
            encode_single(&t, &s, Sampling::Accept, None),
            format!("{TID}-{SID}-1")
        );
        assert_eq!(
            encode_single(&t, &s, Sampling::Debug, Some(&p)),
            format!("{TID}-{SID}-d-{PID}")
        );
        assert_eq!(
            encode_single(&t, &s, Sampling::Deferred, Some(&p)),
            format!("{TID}-{SID}")
        );
    }
}
