//! HTTP status ranges a policy counts as failures: `503`, `"5xx"` or `"500-504"`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// An inclusive range of HTTP statuses within 100–599.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    lo: u16,
    hi: u16,
}

impl StatusRange {
    /// The range `lo..=hi`, if both are statuses and `lo <= hi`.
    pub fn new(lo: u64, hi: u64) -> Option<Self> {
        let ok = (100..=599).contains(&lo) && (100..=599).contains(&hi) && lo <= hi;
        ok.then_some(Self {
            lo: lo as u16,
            hi: hi as u16,
        })
    }

    /// Whether `status` is in the range.
    pub fn contains(self, status: u16) -> bool {
        (self.lo..=self.hi).contains(&status)
    }

    fn parse(s: &str) -> Option<Self> {
        let t = s.trim();
        if let Some(class) = t.strip_suffix("xx").or_else(|| t.strip_suffix("XX")) {
            let d: u64 = class.parse().ok().filter(|_| class.len() == 1)?;
            return Self::new(d * 100, d * 100 + 99);
        }
        match t.split_once('-') {
            Some((a, b)) => Self::new(a.trim().parse().ok()?, b.trim().parse().ok()?),
            None => {
                let n = t.parse().ok()?;
                Self::new(n, n)
            }
        }
    }
}

impl fmt::Display for StatusRange {
    /// Canonical form: `503`, `5xx`, or `500-504`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else if self.lo.is_multiple_of(100) && self.hi == self.lo + 99 {
            write!(f, "{}xx", self.lo / 100)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl Serialize for StatusRange {
    /// A single status as a number, a range as a string.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.lo == self.hi {
            s.serialize_u16(self.lo)
        } else {
            s.serialize_str(&self.to_string())
        }
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        let parsed = match Raw::deserialize(d)? {
            Raw::Number(n) => u64::try_from(n).ok().and_then(|n| Self::new(n, n)),
            Raw::Text(s) => Self::parse(&s),
        };
        parsed.ok_or_else(|| {
            serde::de::Error::custom(
                "must be an HTTP status (503), a class (\"5xx\") or a range (\"500-504\") within 100-599",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn forms_parse_and_print_canonically() {
        for (input, canonical) in [
            (json!(503), json!(503)),
            (json!("503"), json!(503)),
            (json!("5xx"), json!("5xx")),
            (json!("500-599"), json!("5xx")),
            (json!("500 - 504"), json!("500-504")),
        ] {
            let r: StatusRange = serde_json::from_value(input.clone()).unwrap();
            assert_eq!(serde_json::to_value(r).unwrap(), canonical, "{input}");
        }
        for bad in [
            json!(99),
            json!(600),
            json!("6xx"),
            json!("504-500"),
            json!("x"),
            json!(-1),
            json!("55xx"),
        ] {
            assert!(
                serde_json::from_value::<StatusRange>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        let r = StatusRange::parse("5xx").unwrap();
        assert!(r.contains(500) && r.contains(599) && !r.contains(499));
    }
}
