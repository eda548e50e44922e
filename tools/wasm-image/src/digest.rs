//! Content digests (`sha256:<64 lowercase hex>`), the identity of every blob and manifest.

use crate::error::Error;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;

const PREFIX: &str = "sha256:";
const HEX_LEN: usize = 64;

/// A SHA-256 content digest as OCI writes it: `sha256:` and 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(format!("{PREFIX}{}", hex::encode(Sha256::digest(bytes))))
    }

    /// Parses `sha256:<hex>`, or bare 64-digit hex as Istio's `WasmPlugin.sha256` field
    /// carries it. Upper-case hex is accepted and normalized to lower case; other
    /// algorithms are refused.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let hex = s.strip_prefix(PREFIX).unwrap_or(s);
        if hex.len() != HEX_LEN || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidDigest {
                value: s.to_string(),
            });
        }
        Ok(Self(format!("{PREFIX}{}", hex.to_ascii_lowercase())))
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits alone, the form of Istio's `WasmPlugin.sha256` field.
    pub fn hex(&self) -> &str {
        &self.0[PREFIX.len()..]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Digest {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Self::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_empty_input_is_the_known_value() {
        assert_eq!(
            Digest::of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn parse_accepts_prefixed_and_bare_hex_and_normalizes_case() {
        let d = Digest::of(b"x");
        assert_eq!(Digest::parse(d.as_str()).unwrap(), d);
        assert_eq!(Digest::parse(d.hex()).unwrap(), d);
        assert_eq!(Digest::parse(&d.hex().to_uppercase()).unwrap(), d);
    }

    #[test]
    fn parse_refuses_other_algorithms_and_bad_hex() {
        for bad in [
            "sha512:abcd",
            "sha256:xyz",
            "",
            "sha256:",
            &format!("sha384:{}", "a".repeat(64)),
            &"g".repeat(64),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
