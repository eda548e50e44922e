//! The W3C `traceparent` header (Trace Context Level 2).

use super::ids::{hex_digit, SpanId, TraceId};
use crate::request::RequestHeaders;
use std::fmt;

/// Header name.
pub const TRACEPARENT: &str = "traceparent";
/// `sampled` trace flag.
pub const FLAG_SAMPLED: u8 = 0x01;
/// `random` trace flag (Level 2): the trace id's right-most 7 bytes are random.
pub const FLAG_RANDOM: u8 = 0x02;
/// The flags this proxy understands and forwards; the others are zeroed when sending.
pub const KNOWN_FLAGS: u8 = FLAG_SAMPLED | FLAG_RANDOM;

/// Length of a version `00` header, and the prefix every later version shares.
const V0_LEN: usize = 55;

/// A parsed, valid `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The version the sender used (this proxy always sends `00`).
    pub version: u8,
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    /// Trace flags as received (all 8 bits).
    pub flags: u8,
}

/// Why a `traceparent` was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceParentError {
    /// More than one `traceparent` header.
    Duplicate,
    /// Too short, or version `00` with trailing data, or a later version whose extra data
    /// does not start with `-`.
    Length,
    /// Not two lowercase hex digits, or the forbidden version `ff`.
    Version,
    /// A separator is not `-`.
    Separator,
    /// Not 32 lowercase hex digits, or all zero.
    TraceId,
    /// Not 16 lowercase hex digits, or all zero.
    ParentId,
    /// Not two lowercase hex digits.
    Flags,
}

impl fmt::Display for TraceParentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Duplicate => "more than one traceparent header",
            Self::Length => "wrong length",
            Self::Version => "bad version",
            Self::Separator => "bad separator",
            Self::TraceId => "bad trace-id",
            Self::ParentId => "bad parent-id",
            Self::Flags => "bad trace-flags",
        })
    }
}

impl TraceParent {
    /// Parses one header value. Leading and trailing spaces and tabs are tolerated; a
    /// version above `00` is read from its first 55 characters if what follows starts
    /// with `-`.
    pub fn parse(raw: &[u8]) -> Result<Self, TraceParentError> {
        let v = trim_ows(raw);
        if v.len() < V0_LEN {
            return Err(TraceParentError::Length);
        }
        let version = hex_byte(&v[0..2]).ok_or(TraceParentError::Version)?;
        if version == 0xff {
            return Err(TraceParentError::Version);
        }
        if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return Err(TraceParentError::Separator);
        }
        let trace_id = TraceId::parse_hex(&v[3..35]).ok_or(TraceParentError::TraceId)?;
        let parent_id = SpanId::parse_hex(&v[36..52]).ok_or(TraceParentError::ParentId)?;
        let flags = hex_byte(&v[53..55]).ok_or(TraceParentError::Flags)?;
        match (version, v.get(V0_LEN)) {
            (_, None) => {}
            (0, Some(_)) => return Err(TraceParentError::Length),
            (_, Some(b'-')) => {}
            (_, Some(_)) => return Err(TraceParentError::Length),
        }
        Ok(Self {
            version,
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The request's `traceparent`: `None` if absent, an error if invalid or repeated.
    pub fn from_headers(headers: &RequestHeaders) -> Option<Result<Self, TraceParentError>> {
        let mut values = headers.get_all(TRACEPARENT);
        let first = values.next()?;
        if values.next().is_some() {
            return Some(Err(TraceParentError::Duplicate));
        }
        Some(Self::parse(first))
    }

    /// Whether the `sampled` flag is set.
    pub fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }

    /// The version `00` header value, with unknown flags zeroed.
    pub fn encode(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            self.trace_id,
            self.parent_id,
            self.flags & KNOWN_FLAGS
        )
    }
}

/// Two lowercase hex digits.
fn hex_byte(s: &[u8]) -> Option<u8> {
    Some(hex_digit(s[0])? << 4 | hex_digit(s[1])?)
}

/// Strips optional whitespace (spaces and tabs) at both ends.
pub(crate) fn trim_ows(v: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !is_ows(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !is_ows(b)).map_or(start, |i| i + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PID: &str = "00f067aa0ba902b7";

    fn tp(s: &str) -> Result<TraceParent, TraceParentError> {
        TraceParent::parse(s.as_bytes())
    }

    #[test]
    fn valid_v00_round_trips() {
        let s = format!("00-{TID}-{PID}-01");
        let p = tp(&s).unwrap();
        assert_eq!(p.trace_id.to_hex(), TID);
        assert_eq!(p.parent_id.to_hex(), PID);
        assert!(p.sampled());
        assert_eq!(p.encode(), s);
    }

    #[test]
    fn unknown_flags_are_kept_on_parse_and_zeroed_on_encode() {
        let p = tp(&format!("00-{TID}-{PID}-ff")).unwrap();
        assert_eq!(p.flags, 0xff);
        assert!(p.encode().ends_with("-03"));
        let p = tp(&format!("00-{TID}-{PID}-02")).unwrap();
        assert!(!p.sampled());
        assert!(p.encode().ends_with("-02"));
    }

    #[test]
    fn ows_is_tolerated() {
        for s in [
            format!(" 00-{TID}-{PID}-01"),
            format!("00-{TID}-{PID}-01 \t"),
            format!("\t 00-{TID}-{PID}-01\t "),
        ] {
            assert!(tp(&s).is_ok(), "{s:?}");
        }
    }

    #[test]
    fn version_rules() {
        assert_eq!(
            tp(&format!("ff-{TID}-{PID}-01")),
            Err(TraceParentError::Version)
        );
        assert_eq!(
            tp(&format!("0A-{TID}-{PID}-01")),
            Err(TraceParentError::Version)
        );
        assert_eq!(
            tp(&format!("0g-{TID}-{PID}-01")),
            Err(TraceParentError::Version)
        );
        // Version 00 must be exactly 55 characters.
        assert_eq!(
            tp(&format!("00-{TID}-{PID}-01-")),
            Err(TraceParentError::Length)
        );
        assert_eq!(
            tp(&format!("00-{TID}-{PID}-01-what")),
            Err(TraceParentError::Length)
        );
        assert_eq!(
            tp(&format!("00-{TID}-{PID}-010")),
            Err(TraceParentError::Length)
        );
        // Later versions: the first 55 characters, then '-' and anything.
        let future = tp(&format!("cc-{TID}-{PID}-01-what-the-future-will-be-like")).unwrap();
        assert_eq!(future.version, 0xcc);
        assert_eq!(future.encode(), format!("00-{TID}-{PID}-01"));
        assert!(tp(&format!("cc-{TID}-{PID}-01")).is_ok());
        assert_eq!(
            tp(&format!("cc-{TID}-{PID}-01.what-the-future-will-be-like")),
            Err(TraceParentError::Length)
        );
    }

    #[test]
    fn ids_must_be_lowercase_hex_and_non_zero() {
        let upper = TID.to_uppercase();
        assert_eq!(
            tp(&format!("00-{upper}-{PID}-01")),
            Err(TraceParentError::TraceId)
        );
        assert_eq!(
            tp(&format!("00-{}-{PID}-01", "0".repeat(32))),
            Err(TraceParentError::TraceId)
        );
        assert_eq!(
            tp(&format!("00-{TID}-{}-01", "0".repeat(16))),
            Err(TraceParentError::ParentId)
        );
        assert_eq!(
            tp(&format!("00-{TID}-{}-01", PID.to_uppercase())),
            Err(TraceParentError::ParentId)
        );
        assert_eq!(
            tp(&format!("00-{}.-{PID}-01", &TID[..31])),
            Err(TraceParentError::TraceId)
        );
        assert_eq!(
            tp(&format!("00-{TID}-{PID}-0x")),
            Err(TraceParentError::Flags)
        );
        assert_eq!(
            tp(&format!("00-{TID}-{PID}-A1")),
            Err(TraceParentError::Flags)
        );
    }

    #[test]
    fn lengths_and_separators() {
        assert_eq!(tp(""), Err(TraceParentError::Length));
        assert_eq!(
            tp(&format!("00-{TID}-{PID}-1")),
            Err(TraceParentError::Length)
        );
        assert_eq!(
            tp(&format!("0-{TID}-{PID}-011")),
            Err(TraceParentError::Version)
        );
        assert_eq!(
            tp(&format!("00_{TID}-{PID}-01")),
            Err(TraceParentError::Separator)
        );
        assert_eq!(
            tp(&format!("00-{TID}_{PID}-01")),
            Err(TraceParentError::Separator)
        );
        assert_eq!(
            tp(&format!("00-{}0-{}-01", TID, &PID[..15])),
            Err(TraceParentError::Separator)
        );
        // Trailing garbage after OWS trimming is still trailing data.
        assert_eq!(
            tp(&format!("00-{TID}-{PID}-01 x")),
            Err(TraceParentError::Length)
        );
        // Non-UTF-8 bytes are simply invalid.
        let mut raw = format!("00-{TID}-{PID}-01").into_bytes();
        raw[10] = 0xff;
        assert_eq!(TraceParent::parse(&raw), Err(TraceParentError::TraceId));
    }

    #[test]
    fn repeated_headers_are_invalid() {
        let v = format!("00-{TID}-{PID}-01").into_bytes();
        let h = RequestHeaders::new(vec![
            ("traceparent".into(), v.clone()),
            ("traceparent".into(), v.clone()),
        ]);
        assert_eq!(
            TraceParent::from_headers(&h),
            Some(Err(TraceParentError::Duplicate))
        );
        let h = RequestHeaders::new(vec![("Traceparent".into(), v)]);
        assert!(matches!(TraceParent::from_headers(&h), Some(Ok(_))));
        assert_eq!(TraceParent::from_headers(&RequestHeaders::default()), None);
    }
}
