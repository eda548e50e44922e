//! Durations written as in Istio and Envoy YAML: `250ms`, `1s`, `1.5s`, `2m`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// A duration from 1 ms to 1 hour, kept in whole milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Millis(u64);

/// Longest accepted duration.
const MAX_MS: u64 = 3_600_000;

impl Millis {
    /// A duration of `ms` milliseconds (not range-checked; for defaults).
    pub const fn new(ms: u64) -> Self {
        Self(ms)
    }

    /// Whole milliseconds.
    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// As a std duration.
    pub fn as_duration(self) -> Duration {
        Duration::from_millis(self.0)
    }
}

impl TryFrom<String> for Millis {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{s:?} needs a unit: ms, s, m or h (e.g. \"500ms\", \"2s\")"))?;
        let (num, unit) = t.split_at(split);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration such as \"500ms\" or \"2s\""))?;
        let scale = match unit {
            "ms" => 1.0,
            "s" => 1_000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            _ => {
                return Err(format!(
                    "{s:?} has unknown unit {unit:?}; use ms, s, m or h"
                ))
            }
        };
        let ms = (value * scale).round();
        if !(1.0..=MAX_MS as f64).contains(&ms) {
            return Err(format!("{s:?} must be from 1ms to 1h"));
        }
        Ok(Self(ms as u64))
    }
}

impl From<Millis> for String {
    fn from(m: Millis) -> String {
        m.to_string()
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}s", self.0 / 1000)
        } else {
            write!(f, "{}ms", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> Result<u64, String> {
        Millis::try_from(s.to_string()).map(Millis::as_millis)
    }

    #[test]
    fn units_parse() {
        assert_eq!(ms("250ms"), Ok(250));
        assert_eq!(ms("2s"), Ok(2000));
        assert_eq!(ms("1.5s"), Ok(1500));
        assert_eq!(ms("1m"), Ok(60_000));
        assert_eq!(ms("1h"), Ok(3_600_000));
    }

    #[test]
    fn bad_durations_are_rejected() {
        for bad in ["", "5", "s", "0s", "2d", "-1s", "1.2.3s", "2h"] {
            assert!(ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["250ms", "2s", "1500ms"] {
            let m = Millis::try_from(s.to_string()).unwrap();
            assert_eq!(Millis::try_from(m.to_string()).unwrap(), m);
        }
    }
}
