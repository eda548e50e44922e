//! Structural JSON comparison that reports the first differing location.
//!
//! Objects compare as maps (member order does not matter; members are visited in sorted
//! order, so "first" is deterministic), arrays element by element, numbers by value (`1` equals
//! `1.0`). Locations matching an ignore pattern are skipped with everything below them.

use super::path::{format_path, PathPattern, Step};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt;

/// How the two documents differ at [`JsonDifference::path`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonDiffKind {
    /// Both have a value there, and they differ.
    Value,
    /// Only the primary has it.
    MissingInMirror,
    /// Only the mirror has it.
    MissingInPrimary,
}

/// The first difference found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonDifference {
    /// JSONPath of the location, e.g. `$.items[2].price`.
    pub path: String,
    pub kind: JsonDiffKind,
}

impl fmt::Display for JsonDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            JsonDiffKind::Value => write!(f, "{} differs", self.path),
            JsonDiffKind::MissingInMirror => write!(f, "{} missing in mirror", self.path),
            JsonDiffKind::MissingInPrimary => write!(f, "{} missing in primary", self.path),
        }
    }
}

/// Compares `primary` with `mirror`, skipping locations that match any of `ignore`.
pub fn first_difference(
    primary: &Value,
    mirror: &Value,
    ignore: &[PathPattern],
) -> Option<JsonDifference> {
    let mut path = Vec::new();
    walk(primary, mirror, ignore, &mut path).map(|kind| JsonDifference {
        path: format_path(&path),
        kind,
    })
}

fn ignored(ignore: &[PathPattern], path: &[Step]) -> bool {
    !path.is_empty() && ignore.iter().any(|p| p.matches(path))
}

/// On a difference, returns its kind and leaves `path` pointing at it.
fn walk(
    a: &Value,
    b: &Value,
    ignore: &[PathPattern],
    path: &mut Vec<Step>,
) -> Option<JsonDiffKind> {
    if ignored(ignore, path) {
        return None;
    }
    match (a, b) {
        (Value::Object(ma), Value::Object(mb)) => {
            let keys: BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
            for key in keys {
                path.push(Step::Key(key.clone()));
                let found = match (ma.get(key), mb.get(key)) {
                    (Some(x), Some(y)) => walk(x, y, ignore, path),
                    (Some(_), None) if !ignored(ignore, path) => {
                        Some(JsonDiffKind::MissingInMirror)
                    }
                    (None, Some(_)) if !ignored(ignore, path) => {
                        Some(JsonDiffKind::MissingInPrimary)
                    }
                    _ => None,
                };
                if found.is_some() {
                    return found;
                }
                path.pop();
            }
            None
        }
        (Value::Array(va), Value::Array(vb)) => {
            for i in 0..va.len().max(vb.len()) {
                path.push(Step::Index(i));
                let found = match (va.get(i), vb.get(i)) {
                    (Some(x), Some(y)) => walk(x, y, ignore, path),
                    (Some(_), None) if !ignored(ignore, path) => {
                        Some(JsonDiffKind::MissingInMirror)
                    }
                    (None, Some(_)) if !ignored(ignore, path) => {
                        Some(JsonDiffKind::MissingInPrimary)
                    }
                    _ => None,
                };
                if found.is_some() {
                    return found;
                }
                path.pop();
            }
            None
        }
        (Value::Number(x), Value::Number(y)) => {
            (!numbers_equal(x, y)).then_some(JsonDiffKind::Value)
        }
        _ => (a != b).then_some(JsonDiffKind::Value),
    }
}

fn numbers_equal(x: &serde_json::Number, y: &serde_json::Number) -> bool {
    if let (Some(a), Some(b)) = (x.as_i64(), y.as_i64()) {
        return a == b;
    }
    if let (Some(a), Some(b)) = (x.as_u64(), y.as_u64()) {
        return a == b;
    }
    match (x.as_f64(), y.as_f64()) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pats(list: &[&str]) -> Vec<PathPattern> {
        list.iter()
            .map(|p| PathPattern::parse(p).unwrap())
            .collect()
    }

    fn diff(a: Value, b: Value, ignore: &[&str]) -> Option<String> {
        first_difference(&a, &b, &pats(ignore)).map(|d| d.to_string())
    }

    #[test]
    fn equal_documents_have_no_difference() {
        let a = json!({"a": 1, "b": [1, 2, {"c": null}], "d": "x"});
        let b = json!({"d": "x", "b": [1, 2.0, {"c": null}], "a": 1.0});
        assert_eq!(diff(a, b, &[]), None);
    }

    #[test]
    fn first_difference_is_reported_with_its_path() {
        let a = json!({"items": [{"id": 1, "price": 10}, {"id": 2, "price": 20}], "z": 1});
        let b = json!({"items": [{"id": 1, "price": 10}, {"id": 2, "price": 21}], "z": 2});
        assert_eq!(diff(a, b, &[]).as_deref(), Some("$.items[1].price differs"));
    }

    #[test]
    fn missing_members_and_elements_are_named() {
        assert_eq!(
            diff(json!({"a": 1, "b": 2}), json!({"a": 1}), &[]).as_deref(),
            Some("$.b missing in mirror")
        );
        assert_eq!(
            diff(json!([1]), json!([1, 2]), &[]).as_deref(),
            Some("$[1] missing in primary")
        );
        assert_eq!(
            diff(json!({"a": 1}), json!([1]), &[]).as_deref(),
            Some("$ differs")
        );
        assert_eq!(
            diff(json!({"a b": 1}), json!({"a b": "1"}), &[]).as_deref(),
            Some("$['a b'] differs")
        );
    }

    #[test]
    fn ignored_fields_are_skipped_at_any_depth() {
        let a = json!({"timestamp": 1, "id": "a", "items": [{"id": 1, "n": 1}], "meta": {"ts": 5}});
        let b = json!({"timestamp": 2, "id": "b", "items": [{"id": 9, "n": 1}], "meta": {"ts": 6}});
        assert_eq!(
            diff(a.clone(), b.clone(), &["$.timestamp", "id", "$.meta"]),
            None
        );
        assert_eq!(
            diff(a.clone(), b.clone(), &["$.timestamp", "$.id", "$.meta"]).as_deref(),
            Some("$.items[0].id differs")
        );
        // An ignored member may also be absent on one side.
        assert_eq!(
            diff(json!({"id": 1, "x": 1}), json!({"x": 1}), &["id"]),
            None
        );
        // Array wildcard.
        assert_eq!(
            diff(a, b, &["$.timestamp", "$.id", "$.items[*].id", "$..ts"]),
            None
        );
    }
}
