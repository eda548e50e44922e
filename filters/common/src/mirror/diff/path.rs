//! JSON locations (`$.items[2].price`) and the ignore patterns users write in
//! `ignoreJsonFields`.
//!
//! Pattern syntax, a small JSONPath subset:
//! - `$` is the document root; `.name` or `['name']` a member; `[3]` an array element;
//! - `.*` or `[*]` any one member or element; `..name` the member `name` at any depth below;
//! - a bare `name` (no leading `$`) is short for `$..name`: that member anywhere.

use std::fmt::Write;

/// One step in a concrete JSON location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// Formats a location as JSONPath (`$.a['b c'][2]`).
pub fn format_path(steps: &[Step]) -> String {
    let mut out = String::from("$");
    for s in steps {
        match s {
            Step::Key(k) if is_plain_key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Step::Key(k) => {
                out.push_str("['");
                for c in k.chars() {
                    if c == '\'' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push_str("']");
            }
            Step::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
        }
    }
    out
}

fn is_plain_key(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PatStep {
    Key(String),
    Index(usize),
    /// Any single member or element.
    Any,
    /// Zero or more steps.
    Descend,
}

/// A compiled ignore pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    steps: Vec<PatStep>,
}

impl PathPattern {
    /// Parses a pattern (see the module docs).
    pub fn parse(src: &str) -> Result<Self, String> {
        let s = src.trim();
        if s.is_empty() {
            return Err("pattern must not be empty".into());
        }
        let Some(mut rest) = s.strip_prefix('$') else {
            if !s.chars().all(|c| !matches!(c, '.' | '[' | ']' | '$' | '*')) {
                return Err(format!(
                    "{src:?}: a pattern is either a member name or a path starting with `$`"
                ));
            }
            return Ok(Self {
                steps: vec![PatStep::Descend, PatStep::Key(s.to_string())],
            });
        };
        let mut steps = Vec::new();
        let bad = |why: &str| format!("{src:?} is not a valid JSON path: {why}");
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("..") {
                steps.push(PatStep::Descend);
                rest = r;
                if rest.starts_with('[') {
                    continue;
                }
                let (name, r) = take_name(rest);
                if name.is_empty() {
                    return Err(bad("`..` must be followed by a name, `*` or `[...]`"));
                }
                steps.push(name_step(name));
                rest = r;
            } else if let Some(r) = rest.strip_prefix('.') {
                let (name, r) = take_name(r);
                if name.is_empty() {
                    return Err(bad("`.` must be followed by a name or `*`"));
                }
                steps.push(name_step(name));
                rest = r;
            } else if let Some(r) = rest.strip_prefix('[') {
                let (step, r) =
                    take_bracket(r).ok_or_else(|| bad("unterminated or invalid `[...]`"))?;
                steps.push(step);
                rest = r;
            } else {
                return Err(bad("expected `.`, `..` or `[`"));
            }
        }
        if steps.is_empty() {
            return Err(bad("`$` alone would ignore the whole body"));
        }
        Ok(Self { steps })
    }

    /// Whether the concrete location `path` matches this pattern exactly.
    pub fn matches(&self, path: &[Step]) -> bool {
        match_steps(&self.steps, path)
    }
}

fn name_step(name: &str) -> PatStep {
    if name == "*" {
        PatStep::Any
    } else {
        PatStep::Key(name.to_string())
    }
}

fn take_name(s: &str) -> (&str, &str) {
    let end = s.find(['.', '[']).unwrap_or(s.len());
    s.split_at(end)
}

fn take_bracket(s: &str) -> Option<(PatStep, &str)> {
    if let Some(r) = s.strip_prefix("*]") {
        return Some((PatStep::Any, r));
    }
    if let Some(quote) = s.chars().next().filter(|c| *c == '\'' || *c == '"') {
        let body = &s[1..];
        let mut key = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => key.push(chars.next()?.1),
                c if c == quote => {
                    let r = body[i + 1..].strip_prefix(']')?;
                    return Some((PatStep::Key(key), r));
                }
                c => key.push(c),
            }
        }
        return None;
    }
    let (num, r) = s.split_once(']')?;
    Some((PatStep::Index(num.trim().parse().ok()?), r))
}

fn match_steps(pat: &[PatStep], path: &[Step]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((PatStep::Descend, rest)) => {
            (0..=path.len()).any(|skip| match_steps(rest, &path[skip..]))
        }
        Some((p, rest)) => match path.split_first() {
            None => false,
            Some((s, path_rest)) => {
                let ok = match (p, s) {
                    (PatStep::Any, _) => true,
                    (PatStep::Key(k), Step::Key(n)) => k == n,
                    (PatStep::Index(i), Step::Index(n)) => i == n,
                    _ => false,
                };
                ok && match_steps(rest, path_rest)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Step {
        Step::Key(s.into())
    }

    #[test]
    fn paths_format_as_jsonpath() {
        assert_eq!(format_path(&[]), "$");
        assert_eq!(
            format_path(&[k("items"), Step::Index(2), k("price")]),
            "$.items[2].price"
        );
        assert_eq!(format_path(&[k("a b"), k("it's")]), r"$['a b']['it\'s']");
    }

    #[test]
    fn absolute_patterns_match_exact_locations() {
        let p = PathPattern::parse("$.timestamp").unwrap();
        assert!(p.matches(&[k("timestamp")]));
        assert!(!p.matches(&[k("a"), k("timestamp")]));
        let p = PathPattern::parse("$.items[*].id").unwrap();
        assert!(p.matches(&[k("items"), Step::Index(4), k("id")]));
        assert!(!p.matches(&[k("items"), k("id")]));
        let p = PathPattern::parse("$.a[1]").unwrap();
        assert!(p.matches(&[k("a"), Step::Index(1)]));
        assert!(!p.matches(&[k("a"), Step::Index(2)]));
        let p = PathPattern::parse("$['odd key'].*").unwrap();
        assert!(p.matches(&[k("odd key"), k("z")]));
    }

    #[test]
    fn bare_names_and_descent_match_anywhere() {
        let p = PathPattern::parse("id").unwrap();
        assert!(p.matches(&[k("id")]));
        assert!(p.matches(&[k("items"), Step::Index(0), k("id")]));
        assert!(!p.matches(&[k("id"), k("x")]));
        let p = PathPattern::parse("$..meta.ts").unwrap();
        assert!(p.matches(&[k("x"), k("meta"), k("ts")]));
        assert!(p.matches(&[k("meta"), k("ts")]));
    }

    #[test]
    fn malformed_patterns_are_rejected() {
        for bad in ["", "$", "$.", "$[", "$[x]", "$a", "a.b", "$..", "$['open"] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
