//! Halts: the big red button. A halt suspends fault injection and/or mirroring on the proxies
//! it selects without touching any policy: while it is in force, the composition pushes an
//! empty policy list for the halted kinds to those proxies (`xds/cache.rs`), so a proxy that
//! then loses the control plane keeps honouring it. Halts are stored beside the policies
//! (auxiliary records, see [`crate::registry::PolicyRegistry::halt`]) and survive restarts.

use meshwarden_common::names::PolicyName;
use meshwarden_common::{Kind, NodeInfo, Selector};
use serde::{Deserialize, Serialize};

/// Store key prefix of halt records (`halt\n<name>`).
pub const HALT_PREFIX: &str = "halt\n";

/// Kinds a halt may suspend: the ones that change what traffic gets, not how it is observed
/// or protected.
pub const HALTABLE: [Kind; 2] = [Kind::FaultPolicy, Kind::MirrorPolicy];

/// Name of the halt made when none is given.
pub const DEFAULT_HALT_NAME: &str = "default";

/// Most halts in force at once (each is checked against every proxy's composition).
pub const MAX_HALTS: usize = 64;

/// Most bytes of a halt's reason.
pub const MAX_REASON_BYTES: usize = 1024;

/// One halt in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Halt {
    /// Identifies the halt for `resume`; a new halt of the same name replaces it.
    pub name: String,
    /// Halted kinds, in [`Kind::ALL`] order; each one of [`HALTABLE`].
    pub kinds: Vec<Kind>,
    /// Which proxies; empty = every proxy.
    #[serde(default)]
    pub selector: Selector,
    /// Free text shown by `get` and `status`.
    #[serde(default)]
    pub reason: String,
    /// When the halt was made, milliseconds since the Unix epoch.
    pub created_unix_ms: i64,
}

/// Why a halt request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HaltError {
    #[error("name: {0}")]
    Name(String),
    #[error(
        "kinds: {0:?} cannot be halted; only FaultPolicy and MirrorPolicy (fault, mirror) can"
    )]
    Kind(String),
    #[error("selector.{0}")]
    Selector(String),
    #[error("reason: {len} bytes, more than the limit of {MAX_REASON_BYTES} bytes")]
    Reason { len: usize },
    #[error("at most {MAX_HALTS} halts can be in force at once; resume some first")]
    TooMany,
}

impl Halt {
    /// A validated halt of `kinds` (names as `Kind::parse` takes them; none = every haltable
    /// kind) on the proxies `selector` selects.
    pub fn new(
        name: &str,
        kinds: &[String],
        selector: Selector,
        reason: String,
        created_unix_ms: i64,
    ) -> Result<Self, HaltError> {
        let name = if name.is_empty() {
            DEFAULT_HALT_NAME
        } else {
            name
        };
        PolicyName::try_from(name.to_string()).map_err(HaltError::Name)?;
        let mut parsed = Vec::new();
        for k in kinds {
            match Kind::parse(k) {
                Some(kind) if HALTABLE.contains(&kind) => parsed.push(kind),
                _ => return Err(HaltError::Kind(k.clone())),
            }
        }
        let kinds = if parsed.is_empty() {
            HALTABLE.to_vec()
        } else {
            Kind::ALL
                .into_iter()
                .filter(|k| parsed.contains(k))
                .collect()
        };
        selector
            .validate()
            .map_err(|e| HaltError::Selector(e.to_string()))?;
        if reason.len() > MAX_REASON_BYTES {
            return Err(HaltError::Reason { len: reason.len() });
        }
        Ok(Self {
            name: name.to_string(),
            kinds,
            selector,
            reason,
            created_unix_ms,
        })
    }

    /// Whether this halt suspends `kind` on `node`.
    pub fn halts(&self, kind: Kind, node: &NodeInfo) -> bool {
        self.kinds.contains(&kind) && self.selector.selects(node)
    }

    /// The store key of this halt.
    pub fn key(&self) -> String {
        format!("{HALT_PREFIX}{}", self.name)
    }
}

/// Whether any of `halts` suspends `kind` on `node`.
pub fn halted(halts: &[Halt], kind: Kind, node: &NodeInfo) -> bool {
    halts.iter().any(|h| h.halts(kind, node))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cluster: &str) -> NodeInfo {
        NodeInfo {
            id: "p".into(),
            cluster: cluster.into(),
            ..Default::default()
        }
    }

    #[test]
    fn no_kinds_means_every_haltable_kind() {
        let h = Halt::new("", &[], Selector::default(), String::new(), 0).unwrap();
        assert_eq!(h.name, DEFAULT_HALT_NAME);
        assert_eq!(h.kinds, [Kind::FaultPolicy, Kind::MirrorPolicy]);
        assert!(h.halts(Kind::FaultPolicy, &node("any")));
        assert!(!h.halts(Kind::RateLimitPolicy, &node("any")));
    }

    #[test]
    fn kinds_are_parsed_leniently_and_only_haltable_ones_taken() {
        let kinds = |ks: &[&str]| {
            let ks: Vec<String> = ks.iter().map(|s| s.to_string()).collect();
            Halt::new("h", &ks, Selector::default(), String::new(), 0)
        };
        assert_eq!(
            kinds(&["mirror", "FaultPolicy", "faultpolicies"])
                .unwrap()
                .kinds,
            [Kind::FaultPolicy, Kind::MirrorPolicy]
        );
        assert_eq!(
            kinds(&["ratelimit"]).unwrap_err().to_string(),
            "kinds: \"ratelimit\" cannot be halted; only FaultPolicy and MirrorPolicy (fault, mirror) can"
        );
        assert!(matches!(kinds(&["nope"]), Err(HaltError::Kind(_))));
    }

    #[test]
    fn selector_scopes_the_halt() {
        let selector = Selector {
            clusters: vec!["eu".into()],
            ..Default::default()
        };
        let h = Halt::new("eu", &["fault".into()], selector, String::new(), 0).unwrap();
        let halts = [h];
        assert!(halted(&halts, Kind::FaultPolicy, &node("eu")));
        assert!(!halted(&halts, Kind::FaultPolicy, &node("us")));
        assert!(!halted(&halts, Kind::MirrorPolicy, &node("eu")));
    }

    #[test]
    fn bad_names_selectors_and_reasons_are_refused_naming_the_field() {
        let err = Halt::new("Bad Name", &[], Selector::default(), String::new(), 0).unwrap_err();
        assert!(err.to_string().starts_with("name: "), "{err}");
        let selector = Selector {
            namespaces: vec!["Not-DNS".into()],
            ..Default::default()
        };
        let err = Halt::new("h", &[], selector, String::new(), 0).unwrap_err();
        assert!(
            err.to_string().starts_with("selector.namespaces[0]: "),
            "{err}"
        );
        let err = Halt::new("h", &[], Selector::default(), "x".repeat(2000), 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "reason: 2000 bytes, more than the limit of 1024 bytes"
        );
    }
}
