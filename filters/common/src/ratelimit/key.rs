//! Descriptor keys: the bytes that identify one bucket of a policy, and their hashes.

/// Keys longer than this are stored as a 128-bit digest instead of verbatim.
pub const MAX_VERBATIM_KEY: usize = 256;

/// The identity of one bucket: the request's descriptor values, length-prefixed so that
/// `("ab","c")` and `("a","bc")` differ. Over-long keys are replaced by a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BucketKey(Vec<u8>);

impl BucketKey {
    /// The key for these descriptor values, in descriptor order.
    pub fn from_values<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut out = Vec::new();
        for v in values {
            let len = u32::try_from(v.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(v);
        }
        if out.len() > MAX_VERBATIM_KEY {
            let mut digest = Vec::with_capacity(17);
            digest.push(0xff); // cannot start a verbatim key of short values
            digest.extend_from_slice(&hash64(&out, 0x6d65_7368_7761_7264).to_le_bytes());
            digest.extend_from_slice(&hash64(&out, 0x7261_7465_6c69_6d74).to_le_bytes());
            out = digest;
        }
        Self(out)
    }

    /// The stored bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Where the key's slot search starts.
    pub fn slot_hash(&self) -> u64 {
        hash64(&self.0, 0x736c_6f74_7365_6564)
    }
}

/// Longest text [`describe`] returns.
pub const MAX_DESCRIPTION: usize = 128;

/// The descriptor values of a stored key for people (`a`, `a,b`), lossily decoded; a
/// digest of an over-long key reads `#` and its first bytes in hex.
pub fn describe(key: &[u8]) -> String {
    let mut values = Vec::new();
    let mut rest = key;
    while rest.len() >= 4 {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(value) = rest.get(4..4 + len) else {
            break;
        };
        values.push(String::from_utf8_lossy(value).into_owned());
        rest = &rest[4 + len..];
    }
    let mut text = if rest.is_empty() {
        values.join(",")
    } else {
        let hex: String = key.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("#{hex}")
    };
    if text.len() > MAX_DESCRIPTION {
        let mut end = MAX_DESCRIPTION;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// A seeded 64-bit hash ([`crate::random::stable_hash`]). Stable across workers and
/// builds, which is all the slot table needs.
pub fn hash64(bytes: &[u8], seed: u64) -> u64 {
    crate::random::stable_hash(seed, &[bytes])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_describe_their_values() {
        assert_eq!(describe(BucketKey::from_values([]).as_bytes()), "");
        let two = BucketKey::from_values([&b"tenant-a"[..], b"10.0.0.1"]);
        assert_eq!(describe(two.as_bytes()), "tenant-a,10.0.0.1");
        let long = vec![b'x'; MAX_VERBATIM_KEY];
        let digest = BucketKey::from_values([long.as_slice()]);
        assert!(describe(digest.as_bytes()).starts_with("#ff"));
        assert_eq!(describe(&[1, 0]), "#0100", "truncated bytes are not values");
        let wide = "é".repeat(100);
        let key = BucketKey::from_values([wide.as_bytes()]);
        assert!(describe(key.as_bytes()).len() <= MAX_DESCRIPTION);
    }

    #[test]
    fn values_are_length_prefixed() {
        let a = BucketKey::from_values([&b"ab"[..], b"c"]);
        let b = BucketKey::from_values([&b"a"[..], b"bc"]);
        assert_ne!(a, b);
        assert_eq!(a, BucketKey::from_values([&b"ab"[..], b"c"]));
        assert_ne!(
            BucketKey::from_values([&b""[..]]),
            BucketKey::from_values([])
        );
    }

    #[test]
    fn long_keys_become_digests() {
        let long = vec![b'x'; 1_000];
        let k = BucketKey::from_values([long.as_slice()]);
        assert_eq!(k.as_bytes().len(), 17);
        let mut other = long.clone();
        other[999] = b'y';
        assert_ne!(k, BucketKey::from_values([other.as_slice()]));
        assert_eq!(k, BucketKey::from_values([long.as_slice()]));
    }

    #[test]
    fn slot_hashes_spread() {
        let mut hit = [0u32; 16];
        for i in 0..1_600 {
            let k = BucketKey::from_values([format!("tenant-{i}").as_bytes()]);
            hit[(k.slot_hash() % 16) as usize] += 1;
        }
        assert!(hit.iter().all(|n| (60..=140).contains(n)), "{hit:?}");
    }
}
