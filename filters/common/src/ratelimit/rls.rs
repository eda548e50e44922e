//! The few messages of Envoy's rate limit service API
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`) the filter sends and
//! reads, in protobuf wire format, by hand.
//!
//! Why not `prost`: the filter runs in every proxy's Wasm VM, once per worker, and its
//! module size is a cost paid on every configuration push (download, compile, memory).
//! The generated Envoy types plus prost's runtime would add far more than the ~200 lines
//! needed for the handful of fields used here: the request's `domain` and descriptor
//! `entries`, and the response's `overall_code` and per-descriptor `code`,
//! `current_limit`, `limit_remaining` and `duration_until_reset`. Every other response
//! field is skipped. Decoding never panics: malformed or oversized input is an error
//! (the caller then applies the policy's failure mode). The rate limit service's tests
//! check this encoding against prost's.

use super::global::Entry;
use crate::proto::{put_len, put_varint};

/// gRPC service name.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
/// gRPC method name.
pub const METHOD: &str = "ShouldRateLimit";
/// Largest response the filter reads.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Most descriptor statuses decoded.
pub const MAX_STATUSES: usize = 64;
/// Longest `current_limit.name` kept (longer names are cut).
pub const MAX_NAME: usize = 256;

/// A `RateLimitResponse.Code`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Code {
    #[default]
    Unknown,
    Ok,
    OverLimit,
}

impl Code {
    fn from_wire(v: u64) -> Self {
        match v {
            1 => Code::Ok,
            2 => Code::OverLimit,
            _ => Code::Unknown,
        }
    }
}

/// `RateLimitResponse.RateLimit`: the limit the service applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CurrentLimit {
    pub name: String,
    pub requests_per_unit: u32,
    /// `SECOND` 1, `MINUTE` 2, `HOUR` 3, `DAY` 4, ...
    pub unit: u32,
}

/// `RateLimitResponse.DescriptorStatus`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DescriptorStatus {
    pub code: Code,
    pub current_limit: Option<CurrentLimit>,
    pub limit_remaining: u32,
    /// `duration_until_reset` in milliseconds (rounded up).
    pub until_reset_ms: u64,
}

/// `RateLimitResponse` (the fields the filter uses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    pub overall_code: Code,
    pub statuses: Vec<DescriptorStatus>,
}

/// A response that is not valid protobuf, or too large.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated message")]
    Truncated,
    #[error("malformed varint")]
    Varint,
    #[error("unsupported wire type {0}")]
    WireType(u8),
    #[error("more than {MAX_STATUSES} descriptor statuses")]
    TooManyStatuses,
    #[error("response larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
}

/// A `RateLimitRequest` for `domain` with one descriptor per entry list (`hits_addend`
/// left out: one hit).
pub fn encode_request(domain: &str, descriptors: &[Vec<Entry>]) -> Vec<u8> {
    let with_hits: Vec<(&[Entry], u64)> = descriptors.iter().map(|d| (&d[..], 1)).collect();
    encode_request_hits(domain, &with_hits)
}

/// A `RateLimitRequest` for `domain` with one descriptor per (entries, hits): a
/// descriptor's `hits_addend` is set when it asks for other than one hit (a lease).
pub fn encode_request_hits(domain: &str, descriptors: &[(&[Entry], u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    put_len(&mut out, 1, domain.as_bytes());
    let mut descriptor = Vec::new();
    let mut entry = Vec::new();
    for (entries, hits) in descriptors {
        descriptor.clear();
        for (key, value) in *entries {
            entry.clear();
            put_len(&mut entry, 1, key.as_bytes());
            put_len(&mut entry, 2, value.as_bytes());
            put_len(&mut descriptor, 1, &entry);
        }
        if *hits != 1 {
            // RateLimitDescriptor.hits_addend: google.protobuf.UInt64Value { value = 1 }.
            entry.clear();
            put_varint(&mut entry, 1 << 3);
            put_varint(&mut entry, *hits);
            put_len(&mut descriptor, 3, &entry);
        }
        put_len(&mut out, 2, &descriptor);
    }
    out
}

/// Encodes a `RateLimitResponse` (the fields of [`Response`]): what a rate limit service
/// would answer, for tests and fakes.
pub fn encode_response(r: &Response) -> Vec<u8> {
    let code = |c: Code| match c {
        Code::Unknown => 0,
        Code::Ok => 1,
        Code::OverLimit => 2,
    };
    let mut out = Vec::new();
    put_varint(&mut out, 1 << 3);
    put_varint(&mut out, code(r.overall_code));
    for st in &r.statuses {
        let mut s = Vec::new();
        put_varint(&mut s, 1 << 3);
        put_varint(&mut s, code(st.code));
        if let Some(l) = &st.current_limit {
            let mut m = Vec::new();
            put_varint(&mut m, 1 << 3);
            put_varint(&mut m, u64::from(l.requests_per_unit));
            put_varint(&mut m, 2 << 3);
            put_varint(&mut m, u64::from(l.unit));
            put_len(&mut m, 3, l.name.as_bytes());
            put_len(&mut s, 2, &m);
        }
        put_varint(&mut s, 3 << 3);
        put_varint(&mut s, u64::from(st.limit_remaining));
        let mut d = Vec::new();
        put_varint(&mut d, 1 << 3);
        put_varint(&mut d, st.until_reset_ms / 1_000);
        put_varint(&mut d, 2 << 3);
        put_varint(&mut d, (st.until_reset_ms % 1_000) * 1_000_000);
        put_len(&mut s, 4, &d);
        put_len(&mut out, 2, &s);
    }
    out
}

/// Decodes a `RateLimitResponse`.
pub fn decode_response(bytes: &[u8]) -> Result<Response, DecodeError> {
    if bytes.len() > MAX_RESPONSE_BYTES {
        return Err(DecodeError::TooLarge);
    }
    let mut r = Reader(bytes);
    let mut out = Response::default();
    while let Some((field, value)) = r.field()? {
        match (field, value) {
            (1, Value::Varint(v)) => out.overall_code = Code::from_wire(v),
            (2, Value::Bytes(b)) => {
                if out.statuses.len() == MAX_STATUSES {
                    return Err(DecodeError::TooManyStatuses);
                }
                out.statuses.push(decode_status(b)?);
            }
            _ => {}
        }
    }
    Ok(out)
}

fn decode_status(bytes: &[u8]) -> Result<DescriptorStatus, DecodeError> {
    let mut r = Reader(bytes);
    let mut out = DescriptorStatus::default();
    while let Some((field, value)) = r.field()? {
        match (field, value) {
            (1, Value::Varint(v)) => out.code = Code::from_wire(v),
            (2, Value::Bytes(b)) => out.current_limit = Some(decode_limit(b)?),
            (3, Value::Varint(v)) => out.limit_remaining = u32::try_from(v).unwrap_or(u32::MAX),
            (4, Value::Bytes(b)) => out.until_reset_ms = decode_duration_ms(b)?,
            _ => {}
        }
    }
    Ok(out)
}

fn decode_limit(bytes: &[u8]) -> Result<CurrentLimit, DecodeError> {
    let mut r = Reader(bytes);
    let mut out = CurrentLimit::default();
    while let Some((field, value)) = r.field()? {
        match (field, value) {
            (1, Value::Varint(v)) => out.requests_per_unit = u32::try_from(v).unwrap_or(u32::MAX),
            (2, Value::Varint(v)) => out.unit = u32::try_from(v).unwrap_or(0),
            (3, Value::Bytes(b)) => {
                let b = &b[..b.len().min(MAX_NAME)];
                out.name = String::from_utf8_lossy(b).into_owned();
            }
            _ => {}
        }
    }
    Ok(out)
}

/// A `google.protobuf.Duration` in milliseconds, rounded up; negative is zero.
fn decode_duration_ms(bytes: &[u8]) -> Result<u64, DecodeError> {
    let mut r = Reader(bytes);
    let (mut seconds, mut nanos) = (0i64, 0i64);
    while let Some((field, value)) = r.field()? {
        match (field, value) {
            // int64/int32 negatives are ten-byte varints: reinterpret the bits.
            (1, Value::Varint(v)) => seconds = v as i64,
            (2, Value::Varint(v)) => nanos = i64::from(v as i32),
            _ => {}
        }
    }
    let ms = u64::try_from(seconds.max(0))
        .unwrap_or_default()
        .saturating_mul(1_000)
        .saturating_add(
            u64::try_from(nanos.max(0))
                .unwrap_or_default()
                .div_ceil(1_000_000),
        );
    Ok(ms)
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.0.split_first().ok_or(DecodeError::Truncated)?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Varint)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// The next field (number and value), `None` at the end.
    fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, DecodeError> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let value = match (tag & 7) as u8 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| DecodeError::Truncated)?;
                Value::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed
            }
            w => return Err(DecodeError::WireType(w)),
        };
        Ok(Some((tag >> 3, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(k: &str, v: &str) -> Entry {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn request_bytes_are_protobuf() {
        let bytes = encode_request("d", &[vec![e("k", "v")]]);
        // domain "d"; descriptors { entries { key "k" value "v" } }
        assert_eq!(
            bytes,
            vec![0x0a, 1, b'd', 0x12, 8, 0x0a, 6, 0x0a, 1, b'k', 0x12, 1, b'v']
        );
        let long = "x".repeat(300);
        let bytes = encode_request("meshwarden", &[vec![e("policy", &long)], vec![]]);
        assert_eq!(&bytes[..2], &[0x0a, 10]);
        // 300 = 0xac 0x02 as a varint.
        assert!(bytes.windows(3).any(|w| w == [0x12, 0xac, 0x02]));
        assert!(bytes.ends_with(&[0x12, 0]));
    }

    #[test]
    fn a_lease_sets_the_descriptors_hits_addend() {
        let entries = [e("k", "v")];
        let bytes = encode_request_hits("d", &[(&entries, 25), (&entries, 1)]);
        // descriptors { entries {...} hits_addend { value: 25 } }, then one without.
        let leased = [
            0x12, 12, 0x0a, 6, 0x0a, 1, b'k', 0x12, 1, b'v', 0x1a, 2, 0x08, 25,
        ];
        assert!(bytes.windows(leased.len()).any(|w| w == leased));
        assert!(bytes.ends_with(&[0x12, 8, 0x0a, 6, 0x0a, 1, b'k', 0x12, 1, b'v']));
        assert_eq!(
            encode_request_hits("d", &[(&entries, 1)]),
            encode_request("d", &[entries.to_vec()])
        );
    }

    fn status(code: u8, remaining: u8, limit: &[u8], reset: &[u8]) -> Vec<u8> {
        let mut s = vec![0x08, code, 0x18, remaining];
        put_len(&mut s, 2, limit);
        put_len(&mut s, 4, reset);
        s
    }

    #[test]
    fn responses_decode_and_unknown_fields_are_skipped() {
        let mut limit = vec![0x08, 100, 0x10, 1];
        put_len(&mut limit, 3, b"api");
        let reset = vec![0x08, 2, 0x10, 0x80, 0x84, 0xaf, 0x5f]; // 2 s + 200 000 000 ns
        let mut msg = vec![0x08, 2];
        put_len(&mut msg, 2, &status(2, 0, &limit, &reset));
        put_len(&mut msg, 3, b"\x0a\x01a"); // response_headers_to_add: skipped
        msg.extend_from_slice(&[0x29, 1, 2, 3, 4, 5, 6, 7, 8]); // fixed64 field 5: skipped
        put_len(&mut msg, 2, &[0x08, 1]);
        let r = decode_response(&msg).unwrap();
        assert_eq!(r.overall_code, Code::OverLimit);
        assert_eq!(
            r.statuses,
            vec![
                DescriptorStatus {
                    code: Code::OverLimit,
                    current_limit: Some(CurrentLimit {
                        name: "api".into(),
                        requests_per_unit: 100,
                        unit: 1
                    }),
                    limit_remaining: 0,
                    until_reset_ms: 2_200,
                },
                DescriptorStatus {
                    code: Code::Ok,
                    ..Default::default()
                }
            ]
        );
        assert_eq!(decode_response(&[]).unwrap(), Response::default());
        assert_eq!(decode_response(&encode_response(&r)).unwrap(), r);
    }

    #[test]
    fn odd_bytes_are_errors_not_panics() {
        assert_eq!(decode_response(&[0x08]), Err(DecodeError::Truncated));
        assert_eq!(decode_response(&[0x12, 5, 1]), Err(DecodeError::Truncated));
        assert_eq!(decode_response(&[0x0b]), Err(DecodeError::WireType(3)));
        let mut endless = vec![0x08];
        endless.extend_from_slice(&[0xff; 11]);
        assert_eq!(decode_response(&endless), Err(DecodeError::Varint));
        assert_eq!(
            decode_response(&vec![0; MAX_RESPONSE_BYTES + 1]),
            Err(DecodeError::TooLarge)
        );
        let many: Vec<u8> = std::iter::repeat_n([0x12, 0], MAX_STATUSES + 1)
            .flatten()
            .collect();
        assert_eq!(decode_response(&many), Err(DecodeError::TooManyStatuses));
        // Every prefix of a valid message, and arbitrary bytes: an answer or an error.
        let mut msg = vec![0x08, 1];
        put_len(&mut msg, 2, &status(1, 7, &[0x08, 1], &[0x08, 1]));
        for n in 0..msg.len() {
            let _ = decode_response(&msg[..n]);
        }
        let mut x: u32 = 12345;
        for _ in 0..2_000 {
            let bytes: Vec<u8> = (0..(x % 40))
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    (x >> 16) as u8
                })
                .collect();
            let _ = decode_response(&bytes);
        }
    }
}
