//! Protobuf wire-format writing helpers shared by the hand-written encoders (the rate limit
//! service's request in [`crate::ratelimit::rls`], OTLP spans in [`crate::trace::otlp`]).

/// Wire type of varint fields.
pub(crate) const VARINT: u64 = 0;
/// Wire type of fixed 64-bit fields.
pub(crate) const FIXED64: u64 = 1;
/// Wire type of length-delimited fields (strings, bytes, messages).
pub(crate) const LEN: u64 = 2;

/// Appends `v` as a base-128 varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends the tag of `field` with `wire_type`.
pub(crate) fn put_tag(out: &mut Vec<u8>, field: u64, wire_type: u64) {
    put_varint(out, (field << 3) | wire_type);
}

/// Appends length-delimited `field` (a string, bytes or an encoded message).
pub(crate) fn put_len(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_tag(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Appends varint `field` (left out when zero, like proto3 does).
pub(crate) fn put_uint(out: &mut Vec<u8>, field: u64, v: u64) {
    if v != 0 {
        put_tag(out, field, VARINT);
        put_varint(out, v);
    }
}

/// Appends `fixed64` `field` (left out when zero).
pub(crate) fn put_fixed64(out: &mut Vec<u8>, field: u64, v: u64) {
    if v != 0 {
        put_tag(out, field, FIXED64);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Appends message `field`, encoded by `write` into a scratch buffer first (the length
/// prefix comes before the bytes).
pub(crate) fn put_message(out: &mut Vec<u8>, field: u64, write: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    write(&mut inner);
    put_len(out, field, &inner);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_fields_follow_the_wire_format() {
        let mut out = Vec::new();
        put_varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        out.clear();
        put_uint(&mut out, 3, 0);
        assert!(out.is_empty(), "zero varints are left out");
        put_uint(&mut out, 3, 1);
        put_fixed64(&mut out, 7, 1);
        put_message(&mut out, 2, |m| put_len(m, 1, b"ab"));
        assert_eq!(
            out,
            [0x18, 1, 0x39, 1, 0, 0, 0, 0, 0, 0, 0, 0x12, 4, 0x0a, 2, b'a', b'b']
        );
    }
}
