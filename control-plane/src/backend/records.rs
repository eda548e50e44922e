//! The stored form of policies and their history, shared by every [`super::PolicyStore`]
//! implementation: a JSON record per policy and per history entry, each carrying a SHA-256
//! of its own content so a record altered in storage is detected when it is read.

use super::Revision;
use crate::policy_set::{content_version, StoredPolicy};
use crate::store::StoreError;
use meshwarden_common::PolicyDocument;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The stored form of one policy.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    document: serde_json::Value,
    version: String,
    generation: u64,
    updated_unix_ms: i64,
    /// The policy's revision (records written before revisions existed have none: 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    revision: u64,
    /// SHA-256 (hex) of the record serialized without this field. Records written before
    /// checksums existed have none and are accepted as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checksum: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Record {
    fn compute_checksum(&self) -> String {
        let unsigned = Record {
            document: self.document.clone(),
            version: self.version.clone(),
            generation: self.generation,
            updated_unix_ms: self.updated_unix_ms,
            revision: self.revision,
            checksum: None,
        };
        let json = serde_json::to_string(&unsigned).expect("records always serialize");
        hex::encode(Sha256::digest(json.as_bytes()))
    }
}

/// A history entry as stored: the revision and a SHA-256 of it.
#[derive(Debug, Serialize, Deserialize)]
struct HistoryRecord {
    #[serde(flatten)]
    revision: Revision,
    checksum: String,
}

fn revision_checksum(revision: &Revision) -> String {
    let json = serde_json::to_string(revision).expect("revisions always serialize");
    hex::encode(Sha256::digest(json.as_bytes()))
}

pub(crate) fn encode(p: &StoredPolicy, revision: u64) -> Result<(String, String), StoreError> {
    let key = crate::store::key(p.kind(), p.name());
    let mut record = Record {
        document: p.doc.to_value(),
        version: p.version.clone(),
        generation: p.generation,
        updated_unix_ms: p.updated_unix_ms,
        revision,
        checksum: None,
    };
    record.checksum = Some(record.compute_checksum());
    let json = serde_json::to_string(&record).map_err(|source| StoreError::Encode {
        key: key.clone(),
        source,
    })?;
    Ok((key, json))
}

/// Why a record was not loaded.
pub(crate) enum Decode {
    /// Intact, but its document fails this build's validation: kept aside.
    Invalid(String),
    /// Damaged on disk: the store must not be served.
    Damaged(String),
}

/// Decodes, checks and re-validates one record. The version is recomputed from the
/// document, so it always matches what this build would compute for the same content.
pub(crate) fn decode(key: &str, json: &str) -> Result<StoredPolicy, Decode> {
    let record: Record = serde_json::from_str(json)
        .map_err(|e| Decode::Damaged(format!("unreadable record: {e}")))?;
    if let Some(sum) = &record.checksum {
        if *sum != record.compute_checksum() {
            return Err(Decode::Damaged(
                "checksum mismatch: the record was altered on disk".into(),
            ));
        }
    }
    let doc = PolicyDocument::from_value(&record.document)
        .map_err(|e| Decode::Invalid(format!("document no longer valid: {e}")))?;
    let expected = crate::store::key(doc.kind(), doc.name().as_str());
    if expected != key {
        return Err(Decode::Damaged(format!(
            "record holds {expected}, not {key}"
        )));
    }
    Ok(StoredPolicy {
        version: content_version(&doc),
        doc,
        generation: record.generation,
        updated_unix_ms: record.updated_unix_ms,
        revision: record.revision,
    })
}

/// The revision field of a stored policy record (0 if unreadable or written before
/// revisions existed).
pub(crate) fn record_revision(json: &str) -> u64 {
    serde_json::from_str::<Record>(json).map_or(0, |r| r.revision)
}

/// One history entry as stored, with its checksum.
pub(crate) fn encode_revision(key: &str, revision: &Revision) -> Result<String, StoreError> {
    let record = HistoryRecord {
        checksum: revision_checksum(revision),
        revision: revision.clone(),
    };
    serde_json::to_string(&record).map_err(|source| StoreError::Encode {
        key: key.to_string(),
        source,
    })
}

/// Decodes and checks one stored history entry; the error says what is wrong with it.
pub(crate) fn decode_revision(json: &str) -> Result<Revision, String> {
    let record: HistoryRecord =
        serde_json::from_str(json).map_err(|e| format!("unreadable: {e}"))?;
    if record.checksum != revision_checksum(&record.revision) {
        return Err("checksum mismatch: the entry was altered in storage".into());
    }
    Ok(record.revision)
}
