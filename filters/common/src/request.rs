//! A read-only view of a request's headers, as raw bytes, read from the proxy lazily.

use std::cell::OnceCell;
use std::rc::Rc;

/// Where a lazy [`RequestHeaders`] reads from (the proxy's request header map).
pub trait HeaderSource {
    /// The first value of header `name` (lowercase), if any.
    fn one(&self, name: &str) -> Option<Vec<u8>>;
    /// Every header, in order.
    fn all(&self) -> Vec<(String, Vec<u8>)>;
}

/// Single headers remembered per request before a full read is cheaper.
const SLOTS: usize = 12;

/// One header read on its own: `(name, first value)`.
type Slot = OnceCell<(Box<str>, Option<Vec<u8>>)>;

/// Request headers as the proxy hands them over (lowercase names, byte values, possibly
/// repeated). Lookups never fail on odd bytes.
///
/// A lazy view ([`RequestHeaders::lazy`]) reads nothing until asked: each header named in
/// a lookup is read from the proxy at most once, and the whole map only when something
/// needs all of it (repeated values, a copy of the request). Writes made through
/// [`RequestHeaders::overwrite`] keep the view in step with the proxy.
#[derive(Default)]
pub struct RequestHeaders {
    source: Option<Rc<dyn HeaderSource>>,
    /// Headers read one by one: `(name, first value)`.
    slots: [Slot; SLOTS],
    all: OnceCell<Vec<(String, Vec<u8>)>>,
}

impl std::fmt::Debug for RequestHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestHeaders")
            .field("all", &self.all.get())
            .finish_non_exhaustive()
    }
}

impl Clone for RequestHeaders {
    fn clone(&self) -> Self {
        Self::new(self.pairs().to_vec())
    }
}

impl RequestHeaders {
    /// Wraps header pairs; names are lowercased.
    pub fn new(pairs: Vec<(String, Vec<u8>)>) -> Self {
        let pairs: Vec<(String, Vec<u8>)> = pairs
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        Self {
            all: OnceCell::from(pairs),
            ..Default::default()
        }
    }

    /// Headers from textual pairs (tests).
    #[cfg(test)]
    pub(crate) fn from_text(pairs: &[(&str, &str)]) -> Self {
        Self::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        )
    }

    /// A view that reads from `source` on demand.
    pub fn lazy(source: Rc<dyn HeaderSource>) -> Self {
        Self {
            source: Some(source),
            ..Default::default()
        }
    }

    /// Every header, in order (read in full on first use).
    pub fn pairs(&self) -> &[(String, Vec<u8>)] {
        self.all.get_or_init(|| {
            self.source.as_ref().map_or_else(Vec::new, |s| {
                s.all()
                    .into_iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v))
                    .collect()
            })
        })
    }

    /// The first value of `name` (lowercase).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        if let Some(all) = self.all.get() {
            return find(all, name);
        }
        let source = self.source.as_ref()?;
        for slot in &self.slots {
            match slot.get() {
                Some((n, v)) if &**n == name => return v.as_deref(),
                Some(_) => continue,
                None => {
                    let (_, v) = slot.get_or_init(|| (name.into(), source.one(name)));
                    return v.as_deref();
                }
            }
        }
        find(self.pairs(), name)
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.pairs()
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// How many times `name` occurs.
    pub fn count(&self, name: &str) -> usize {
        self.get_all(name).count()
    }

    /// Records that `name` now has the single value `value` (`None`: removed), after the
    /// same change was made in the proxy.
    pub fn overwrite(&mut self, name: &str, value: Option<&[u8]>) {
        if let Some(all) = self.all.get_mut() {
            all.retain(|(k, _)| k != name);
            if let Some(v) = value {
                all.push((name.to_string(), v.to_vec()));
            }
        }
        for slot in &mut self.slots {
            if matches!(slot.get(), Some((n, _)) if &**n == name) {
                *slot = OnceCell::from((name.into(), value.map(<[u8]>::to_vec)));
            }
        }
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

fn find<'a>(pairs: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

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

    /// A source that counts its reads.
    struct Counting {
        pairs: Vec<(String, Vec<u8>)>,
        one: Cell<usize>,
        all: Cell<usize>,
    }

    impl HeaderSource for Counting {
        fn one(&self, name: &str) -> Option<Vec<u8>> {
            self.one.set(self.one.get() + 1);
            find(&self.pairs, name).map(<[u8]>::to_vec)
        }
        fn all(&self) -> Vec<(String, Vec<u8>)> {
            self.all.set(self.all.get() + 1);
            self.pairs.clone()
        }
    }

    fn counting() -> Rc<Counting> {
        Rc::new(Counting {
            pairs: vec![
                (":path".into(), b"/p".to_vec()),
                ("x-a".into(), b"1".to_vec()),
                ("x-a".into(), b"2".to_vec()),
            ],
            one: Cell::new(0),
            all: Cell::new(0),
        })
    }

    #[test]
    fn lazy_view_reads_each_header_once_and_everything_only_when_needed() {
        let src = counting();
        let h = RequestHeaders::lazy(src.clone());
        assert_eq!(src.one.get() + src.all.get(), 0);
        assert_eq!(h.path(), b"/p");
        assert_eq!(h.path(), b"/p");
        assert_eq!(h.get("x-missing"), None);
        assert_eq!(h.get("x-missing"), None);
        assert_eq!((src.one.get(), src.all.get()), (2, 0));
        assert_eq!(h.count("x-a"), 2);
        assert_eq!(h.get("x-a"), Some(&b"1"[..]));
        assert_eq!((src.one.get(), src.all.get()), (2, 1));
    }

    #[test]
    fn many_distinct_lookups_fall_back_to_one_full_read() {
        let src = counting();
        let h = RequestHeaders::lazy(src.clone());
        for i in 0..SLOTS + 5 {
            assert_eq!(h.get(&format!("x-{i}")), None);
        }
        assert_eq!((src.one.get(), src.all.get()), (SLOTS, 1));
    }

    #[test]
    fn overwrites_are_seen_by_later_lookups() {
        let src = counting();
        let mut h = RequestHeaders::lazy(src.clone());
        assert_eq!(h.get("traceparent"), None);
        h.overwrite("traceparent", Some(b"00-x"));
        assert_eq!(h.get("traceparent"), Some(&b"00-x"[..]));
        let _ = h.pairs();
        h.overwrite("x-a", None);
        assert_eq!(h.count("x-a"), 0);
        h.overwrite("x-a", Some(b"3"));
        assert_eq!(h.get_all("x-a").collect::<Vec<_>>(), vec![&b"3"[..]]);
    }
}
