//! `x-request-id`: kept when the request has exactly one valid value, else a UUIDv4.

use super::ids::encode_hex;
use crate::request::RequestHeaders;

/// Header name.
pub const X_REQUEST_ID: &str = "x-request-id";
/// Longest accepted incoming request id.
pub const MAX_LEN: usize = 128;

/// The request's `x-request-id` situation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestIdState {
    /// Exactly one valid value: keep it.
    Valid,
    Absent,
    /// Malformed, or more than one header.
    Invalid,
}

impl RequestIdState {
    /// Inspects the request's `x-request-id` headers.
    pub fn of(headers: &RequestHeaders) -> Self {
        let mut values = headers.get_all(X_REQUEST_ID);
        match (values.next(), values.next()) {
            (None, _) => Self::Absent,
            (Some(v), None) if is_valid(v) => Self::Valid,
            _ => Self::Invalid,
        }
    }
}

/// 1 to [`MAX_LEN`] visible ASCII characters (no spaces or control characters), without
/// `,`: proxies join repeated headers with commas (Envoy does for `x-request-id`), so a
/// comma means two ids.
pub fn is_valid(value: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&value.len())
        && value
            .iter()
            .all(|c| (0x21..=0x7e).contains(c) && *c != b',')
}

/// A version 4 (random) UUID in its lowercase hyphenated form, from 16 random bytes.
pub fn uuid_v4(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = encode_hex(&bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(values: &[&[u8]]) -> RequestIdState {
        let pairs = values
            .iter()
            .map(|v| ("x-request-id".to_string(), v.to_vec()))
            .collect();
        RequestIdState::of(&RequestHeaders::new(pairs))
    }

    #[test]
    fn keeps_exactly_one_valid_value() {
        assert_eq!(state(&[b"abc-123"]), RequestIdState::Valid);
        assert_eq!(state(&[&[b'x'; 128]]), RequestIdState::Valid);
        assert_eq!(state(&[]), RequestIdState::Absent);
        assert_eq!(state(&[b"a", b"b"]), RequestIdState::Invalid);
        for bad in [
            &b""[..],
            b"a,b",
            b"a b",
            b"a\tb",
            b"\x7f",
            b"\xc3\xa9",
            &[b'x'; 129],
        ] {
            assert_eq!(state(&[bad]), RequestIdState::Invalid, "{bad:?}");
        }
    }

    #[test]
    fn uuid_v4_layout() {
        let u = uuid_v4([0xff; 16]);
        assert_eq!(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let u = uuid_v4([0; 16]);
        assert_eq!(u, "00000000-0000-4000-8000-000000000000");
        assert!(is_valid(u.as_bytes()));
    }
}
