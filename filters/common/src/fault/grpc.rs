//! gRPC status codes, written by name (`UNAVAILABLE`, as Istio does) or by number (`14`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Canonical gRPC status code names, indexed by code.
const NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// One of the 17 canonical gRPC status codes (0–16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrpcCode(u8);

impl GrpcCode {
    /// `UNKNOWN`.
    pub const UNKNOWN: GrpcCode = GrpcCode(2);
    /// `DEADLINE_EXCEEDED`.
    pub const DEADLINE_EXCEEDED: GrpcCode = GrpcCode(4);
    /// `INTERNAL`.
    pub const INTERNAL: GrpcCode = GrpcCode(13);
    /// `UNAVAILABLE`.
    pub const UNAVAILABLE: GrpcCode = GrpcCode(14);

    /// The code for `n`, if it is a canonical code.
    pub fn from_number(n: u64) -> Option<Self> {
        (n < NAMES.len() as u64).then_some(Self(n as u8))
    }

    /// The code for a name such as `UNAVAILABLE` (case-insensitive; `Unavailable` too).
    pub fn from_name(name: &str) -> Option<Self> {
        let upper = name.trim().to_ascii_uppercase();
        NAMES
            .iter()
            .position(|n| *n == upper)
            .map(|i| Self(i as u8))
    }

    /// The numeric code.
    pub fn number(self) -> u8 {
        self.0
    }

    /// The canonical name.
    pub fn name(self) -> &'static str {
        NAMES[self.0 as usize]
    }
}

impl fmt::Display for GrpcCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for GrpcCode {
    /// Always the canonical name, as Istio writes it.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for GrpcCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Name(String),
        }
        let bad = |what: String| {
            serde::de::Error::custom(format!(
                "{what} is not a gRPC status; use a name such as UNAVAILABLE or a number from 0 to 16"
            ))
        };
        match Raw::deserialize(d)? {
            Raw::Number(n) => u64::try_from(n)
                .ok()
                .and_then(Self::from_number)
                .ok_or_else(|| bad(n.to_string())),
            Raw::Name(s) => Self::from_name(&s)
                .or_else(|| s.trim().parse().ok().and_then(Self::from_number))
                .ok_or_else(|| bad(format!("{s:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_and_numbers() {
        let c: GrpcCode = serde_json::from_value(json!("UNAVAILABLE")).unwrap();
        assert_eq!(c.number(), 14);
        let c: GrpcCode = serde_json::from_value(json!(14)).unwrap();
        assert_eq!(c, GrpcCode::UNAVAILABLE);
        let c: GrpcCode = serde_json::from_value(json!("resource_exhausted")).unwrap();
        assert_eq!(c.number(), 8);
        let c: GrpcCode = serde_json::from_value(json!("4")).unwrap();
        assert_eq!(c.name(), "DEADLINE_EXCEEDED");
        assert_eq!(serde_json::to_value(c).unwrap(), json!("DEADLINE_EXCEEDED"));
    }

    #[test]
    fn rejects_unknown() {
        for bad in [json!(17), json!(-1), json!("NOPE"), json!(1.5), json!(null)] {
            let e = serde_json::from_value::<GrpcCode>(bad.clone());
            assert!(e.is_err(), "{bad}");
        }
        let e = serde_json::from_value::<GrpcCode>(json!(99))
            .unwrap_err()
            .to_string();
        assert!(e.contains("0 to 16"), "{e}");
    }
}
