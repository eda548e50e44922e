//! Validation errors that name the offending field.

use std::fmt;

/// A policy (or filter configuration) that cannot be accepted, with the dotted path of the
/// field at fault (`spec.match.path.regex`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    /// Dotted path of the field, from the document root; empty for the document itself.
    pub field: String,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

impl ValidationError {
    /// An error at `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error, with `prefix` prepended to its field path.
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = join_path(prefix, &self.field);
        self
    }

    /// Converts a serde error without a path (builds without `field-paths`) into a
    /// validation error at `prefix`; serde's message still names unknown or missing fields.
    pub fn from_json(prefix: &str, err: &serde_json::Error) -> Self {
        Self::new(prefix, strip_serde_position(&err.to_string()))
    }

    /// Converts a serde error that knows its path into a validation error under `prefix`.
    #[cfg(feature = "field-paths")]
    pub fn from_serde(prefix: &str, err: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let message = strip_serde_position(&err.into_inner().to_string());
        Self::new(join_path(prefix, &path), message)
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Joins two dotted paths, either of which may be empty. Array indices (`[2]`) attach
/// without a dot.
pub fn join_path(prefix: &str, rest: &str) -> String {
    match (prefix.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_string(),
        (_, true) => prefix.to_string(),
        _ if rest.starts_with('[') => format!("{prefix}{rest}"),
        _ => format!("{prefix}.{rest}"),
    }
}

/// serde_json appends " at line 1 column 42", meaningless for a value we built ourselves.
fn strip_serde_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_with_dots_and_brackets() {
        assert_eq!(join_path("spec", "match.path"), "spec.match.path");
        assert_eq!(join_path("spec.formats", "[1]"), "spec.formats[1]");
        assert_eq!(join_path("", "spec"), "spec");
        assert_eq!(join_path("spec", ""), "spec");
    }

    #[test]
    fn display_names_the_field() {
        let e = ValidationError::new("percent", "must be at most 100").within("spec");
        assert_eq!(e.to_string(), "spec.percent: must be at most 100");
    }
}
