//! Trace and span identifiers and their lowercase-hex wire form.

use std::fmt;

/// A 128-bit trace id. Never all zero when built through [`TraceId::parse_hex`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// A 64-bit span (W3C: parent) id. Never all zero when built through [`SpanId::parse_hex`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// Parses exactly 32 lowercase hex digits; all-zero ids are invalid.
    pub fn parse_hex(s: &[u8]) -> Option<Self> {
        let mut out = [0u8; 16];
        decode_hex(s, &mut out)?;
        Some(Self(out)).filter(|id| !id.is_zero())
    }

    /// Parses 16 or 32 lowercase hex digits (B3); a 64-bit id is left-padded with zeros.
    pub fn parse_hex_64_or_128(s: &[u8]) -> Option<Self> {
        match s.len() {
            32 => Self::parse_hex(s),
            16 => {
                let mut out = [0u8; 16];
                decode_hex(s, &mut out[8..])?;
                Some(Self(out)).filter(|id| !id.is_zero())
            }
            _ => None,
        }
    }

    /// Whether every byte is zero (an invalid id).
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|b| *b == 0)
    }

    /// 32 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        encode_hex(&self.0)
    }
}

impl SpanId {
    /// Parses exactly 16 lowercase hex digits; all-zero ids are invalid.
    pub fn parse_hex(s: &[u8]) -> Option<Self> {
        let mut out = [0u8; 8];
        decode_hex(s, &mut out)?;
        Some(Self(out)).filter(|id| !id.is_zero())
    }

    /// Whether every byte is zero (an invalid id).
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|b| *b == 0)
    }

    /// 16 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        encode_hex(&self.0)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The value of one lowercase hex digit; uppercase and anything else is rejected.
pub(crate) fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Decodes `2 * out.len()` lowercase hex digits into `out`.
pub(crate) fn decode_hex(s: &[u8], out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 {
        return None;
    }
    for (byte, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *byte = hex_digit(pair[0])? << 4 | hex_digit(pair[1])?;
    }
    Some(())
}

/// Lowercase hex of `bytes`.
pub(crate) fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_lowercase_only() {
        let id = TraceId::parse_hex(b"4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        assert_eq!(id.to_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(TraceId::parse_hex(b"4BF92F3577B34DA6A3CE929D0E0E4736").is_none());
        assert!(TraceId::parse_hex(b"4bf92f3577b34da6a3ce929d0e0e473").is_none());
        assert!(TraceId::parse_hex(b"4bf92f3577b34da6a3ce929d0e0e473g").is_none());
        assert!(TraceId::parse_hex(&[b'0'; 32]).is_none());
        assert!(SpanId::parse_hex(b"00f067aa0ba902b7").is_some());
        assert!(SpanId::parse_hex(b"0000000000000000").is_none());
    }

    #[test]
    fn short_trace_ids_are_left_padded() {
        let id = TraceId::parse_hex_64_or_128(b"a3ce929d0e0e4736").unwrap();
        assert_eq!(id.to_hex(), "0000000000000000a3ce929d0e0e4736");
        assert!(TraceId::parse_hex_64_or_128(b"0000000000000000").is_none());
        assert!(TraceId::parse_hex_64_or_128(b"a3ce929d0e0e473").is_none());
    }
}
