//! A read-only view of a request's headers, as raw bytes.

/// Request headers as the proxy hands them over (lowercase names, byte values, possibly
/// repeated). Lookups never fail on odd bytes.
#[derive(Debug, Clone, Default)]
pub struct RequestHeaders {
    pairs: Vec<(String, Vec<u8>)>,
}

impl RequestHeaders {
    /// Wraps header pairs; names are lowercased.
    pub fn new(pairs: Vec<(String, Vec<u8>)>) -> Self {
        let pairs = pairs
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        Self { pairs }
    }

    /// The first value of `name` (lowercase).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// How many times `name` occurs.
    pub fn count(&self, name: &str) -> usize {
        self.get_all(name).count()
    }

    /// The `:path` without its query string.
    pub fn path(&self) -> &[u8] {
        let p = self.get(":path").unwrap_or(b"/");
        match p.iter().position(|b| *b == b'?') {
            Some(i) => &p[..i],
            None => p,
        }
    }

    /// The `:method`.
    pub fn method(&self) -> &[u8] {
        self.get(":method").unwrap_or(b"")
    }

    /// The `:authority` (or `host`).
    pub fn authority(&self) -> &[u8] {
        self.get(":authority")
            .or_else(|| self.get("host"))
            .unwrap_or(b"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_drops_query_and_lookups_are_lowercase() {
        let h = RequestHeaders::new(vec![
            (":path".into(), b"/a/b?x=1".to_vec()),
            ("X-Dup".into(), b"1".to_vec()),
            ("x-dup".into(), b"2".to_vec()),
        ]);
        assert_eq!(h.path(), b"/a/b");
        assert_eq!(h.get("x-dup"), Some(&b"1"[..]));
        assert_eq!(h.count("x-dup"), 2);
        assert_eq!(h.method(), b"");
    }
}
