//! The set of stored policies at one point in time: what the store holds, what the API
//! lists, and what the xDS server composes proxy configurations from.

use crate::halt::Halt;
use meshwarden_common::{Kind, PolicyDocument};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// One stored policy with its bookkeeping.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPolicy {
    pub doc: PolicyDocument,
    /// Content version: a hash of the canonical document, the same on any replica.
    pub version: String,
    /// Store generation at which this content was written.
    pub generation: u64,
    /// Wall-clock time of that write, in milliseconds since the Unix epoch.
    pub updated_unix_ms: i64,
    /// The policy's own revision: 1 when first created, one more with every stored change
    /// (deletions included, so a re-created policy continues its numbering). Its history
    /// keeps the last revisions; an apply may name the revision it was based on.
    pub revision: u64,
}

impl StoredPolicy {
    /// The policy's kind.
    pub fn kind(&self) -> Kind {
        self.doc.kind()
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        self.doc.name().as_str()
    }
}

/// Every policy, sorted by (kind, name), at store generation `generation`, and the halts in
/// force (sorted by name; they do not change the generation).
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub generation: u64,
    pub policies: Vec<StoredPolicy>,
    pub halts: Vec<Halt>,
}

/// Shared, immutable snapshot handed to readers.
pub type SharedPolicySet = Arc<PolicySet>;

impl PolicySet {
    /// Policies of one kind, in name order.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &StoredPolicy> {
        self.policies.iter().filter(move |p| p.kind() == kind)
    }

    /// Looks one policy up.
    pub fn get(&self, kind: Kind, name: &str) -> Option<&StoredPolicy> {
        self.policies
            .iter()
            .find(|p| p.kind() == kind && p.name() == name)
    }
}

/// Content version of a document: the first 16 hex digits of the SHA-256 of its canonical
/// JSON (serde_json sorts object keys, so equal content gives equal bytes).
pub fn content_version(doc: &PolicyDocument) -> String {
    short_hash(doc.to_value().to_string().as_bytes())
}

/// First 16 hex digits of SHA-256.
pub fn short_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    hex::encode(&digest[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fault(percentage: serde_json::Value) -> PolicyDocument {
        PolicyDocument::from_value(&json!({
            "apiVersion": meshwarden_common::API_VERSION, "kind": "FaultPolicy",
            "metadata": {"name": "f"},
            "spec": {"abort": {"httpStatus": 503, "percentage": {"value": percentage}}}
        }))
        .unwrap()
    }

    #[test]
    fn equal_numbers_give_equal_versions() {
        let zero = content_version(&fault(json!(0)));
        assert_eq!(content_version(&fault(json!(-0.0))), zero);
        assert_eq!(content_version(&fault(json!(0.0))), zero);
        assert_ne!(content_version(&fault(json!(1))), zero);
    }
}
