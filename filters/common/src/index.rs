//! Which policies can match a request, without testing every policy: an index of the
//! policies' path conditions (exact paths in a hash map, prefixes by length), so a request's
//! cost depends on the policies that could apply to it rather than on how many are
//! configured. Policies without an exact or prefix path condition are always candidates.
//! Small policy lists skip the index (testing them is cheaper than looking up).

use crate::matcher::{CompiledMatch, PathKey};
use crate::request::RequestHeaders;
use std::collections::HashMap;

/// Below this many policies every policy is a candidate.
const MIN_INDEXED: usize = 8;

/// Candidate policies by path.
#[derive(Debug, Clone, Default)]
pub struct PolicyIndex {
    len: u32,
    /// Whether the index is used at all.
    indexed: bool,
    exact: HashMap<Box<[u8]>, Vec<u32>>,
    prefix: HashMap<Box<[u8]>, Vec<u32>>,
    /// Distinct prefix lengths, ascending.
    prefix_lengths: Vec<usize>,
    /// Policies with no exact or prefix path condition.
    always: Vec<u32>,
}

impl PolicyIndex {
    /// Indexes `matchers` (in evaluation order).
    pub fn new<'a>(matchers: impl IntoIterator<Item = &'a CompiledMatch>) -> Self {
        let mut index = Self::default();
        for (i, m) in matchers.into_iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            index.len = i + 1;
            match m.path_key() {
                Some(PathKey::Exact(p)) => index.exact.entry(p.into()).or_default().push(i),
                Some(PathKey::Prefix(p)) => {
                    if !index.prefix_lengths.contains(&p.len()) {
                        index.prefix_lengths.push(p.len());
                    }
                    index.prefix.entry(p.into()).or_default().push(i);
                }
                None => index.always.push(i),
            }
        }
        index.prefix_lengths.sort_unstable();
        index.indexed = index.len as usize >= MIN_INDEXED;
        index
    }

    /// Indices of the policies that may match `req`, ascending (evaluation order). Each
    /// still has to be tested with its full matcher.
    pub fn candidates(&self, req: &RequestHeaders) -> Vec<u32> {
        if !self.indexed {
            return (0..self.len).collect();
        }
        let path = req.path();
        let mut out = self.always.clone();
        if let Some(ids) = self.exact.get(path) {
            out.extend(ids);
        }
        for &n in &self.prefix_lengths {
            if n > path.len() {
                break;
            }
            if let Some(ids) = self.prefix.get(&path[..n]) {
                out.extend(ids);
            }
        }
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matcher::RequestMatch;

    fn matcher(json: &str) -> CompiledMatch {
        serde_json::from_str::<RequestMatch>(json)
            .unwrap()
            .compile()
            .unwrap()
    }

    fn req(path: &str) -> RequestHeaders {
        RequestHeaders::new(vec![(":path".into(), path.as_bytes().to_vec())])
    }

    #[test]
    fn candidates_are_the_policies_whose_path_can_match_in_order() {
        let mut ms: Vec<CompiledMatch> = (0..20)
            .map(|i| matcher(&format!(r#"{{"path":{{"exact":"/p{i}"}}}}"#)))
            .collect();
        ms.push(matcher(r#"{"path":{"prefix":"/api"}}"#));
        ms.push(matcher(r#"{"path":{"regex":"/p1.*"}}"#));
        ms.push(matcher(r#"{"methods":["GET"]}"#));
        ms.push(matcher(r#"{"path":{"prefix":"/api/v2"}}"#));
        let index = PolicyIndex::new(&ms);
        assert_eq!(index.candidates(&req("/p3")), [3, 21, 22]);
        assert_eq!(index.candidates(&req("/api/v2/x?y")), [20, 21, 22, 23]);
        assert_eq!(index.candidates(&req("/")), [21, 22]);
        // Every policy that matches is a candidate.
        for path in ["/p3", "/p15", "/api", "/api/v2/x", "/other", ""] {
            let r = req(path);
            let c = index.candidates(&r);
            for (i, m) in ms.iter().enumerate() {
                if m.matches(&r) {
                    assert!(c.contains(&(i as u32)), "{path}: policy {i}");
                }
            }
        }
    }

    #[test]
    fn small_lists_are_not_indexed() {
        let ms = [matcher(r#"{"path":{"exact":"/a"}}"#), matcher("{}")];
        assert_eq!(PolicyIndex::new(&ms).candidates(&req("/b")), [0, 1]);
    }
}
