//! Resources as the protocol code sees them: opaque, named and versioned.

use envoy_types::pb::google::protobuf::Any;
use sha2::{Digest, Sha256};
use std::fmt::Write;
use std::sync::Arc;

/// One resource ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Resource name, unique within its type.
    pub name: String,
    /// Content-derived version: equal content gives equal versions on every replica.
    pub version: String,
    /// The packed resource.
    pub body: Any,
    /// What the resource carries, in words for status (opaque to the server).
    pub summary: Vec<String>,
}

/// The resources of one type for one node, sorted by name.
pub type Resources = Arc<Vec<Arc<Resource>>>;

/// Aggregate version of several resources (`name=version` lines in name order), used as the
/// state-of-the-world `version_info` and the delta `system_version_info`.
pub fn aggregate_version<'a>(versions: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut pairs: Vec<_> = versions.into_iter().collect();
    pairs.sort_unstable();
    let mut text = String::new();
    for (name, version) in pairs {
        let _ = writeln!(text, "{name}={version}");
    }
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_version_ignores_order() {
        assert_eq!(
            aggregate_version([("a", "1"), ("b", "2")]),
            aggregate_version([("b", "2"), ("a", "1")])
        );
        assert_ne!(
            aggregate_version([("a", "1")]),
            aggregate_version([("a", "1"), ("b", "2")])
        );
        assert_eq!(aggregate_version([]).len(), 16);
    }
}
