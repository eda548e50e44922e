//! Fixtures shared by the control plane's unit tests.

use crate::policy_set::{content_version, StoredPolicy};
use meshwarden_common::PolicyDocument;
use serde_json::{json, Value};

/// A stored policy of `kind` named `name` with `spec`, at generation 1.
pub fn stored(kind: &str, name: &str, spec: Value) -> StoredPolicy {
    let doc = PolicyDocument::from_value(&json!({
        "apiVersion": "meshwarden.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap();
    StoredPolicy {
        version: content_version(&doc),
        doc,
        generation: 1,
        updated_unix_ms: 0,
        revision: 1,
    }
}

/// A stored TracePolicy.
pub fn trace(name: &str, spec: Value) -> StoredPolicy {
    stored("TracePolicy", name, spec)
}
