//! The one duration type of every kind: durations as policies write them — `250ms`, `1.5s`,
//! `2m`, `1h` (protobuf/Istio style `0.25s` works too) — kept in whole milliseconds, the
//! resolution of the proxy's timers. Each field states its own range where it is validated.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A non-negative duration with millisecond resolution, written as a string with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DurationSpec {
    millis: u64,
}

/// Longest duration accepted anywhere (one year); larger values are almost certainly typos
/// and would overflow time arithmetic in milliseconds long before u64 does.
const MAX_MILLIS: u64 = 365 * 24 * 3600 * 1000;

impl DurationSpec {
    /// A duration of `millis` milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        Self { millis }
    }

    /// The duration in milliseconds.
    pub const fn as_millis(self) -> u64 {
        self.millis
    }

    /// As a std duration.
    pub const fn as_duration(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.millis)
    }
}

impl TryFrom<String> for DurationSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        parse(&s).map(Self::from_millis)
    }
}

impl From<DurationSpec> for String {
    fn from(d: DurationSpec) -> String {
        d.to_string()
    }
}

impl fmt::Display for DurationSpec {
    /// Canonical form: the largest unit that represents the value exactly (`1500ms`, `2s`, `5m`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.millis;
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
            if ms.is_multiple_of(size) {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

/// Parses `<number><unit>` with unit `ms`, `s`, `m` or `h`; the number may have a fraction
/// (`0.25s`). Sub-millisecond remainders are rejected rather than silently rounded.
fn parse(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{s:?} has no unit; write it like 250ms, 1.5s, 2m or 1h"))?;
    let (number, unit) = t.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "{s:?} is not a duration; write it like 250ms, 1.5s, 2m or 1h"
        ));
    }
    let scale: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
                "{s:?} has unknown unit {unit:?}; use ms, s, m or h"
            ))
        }
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    let bad_number = || format!("{s:?} is not a duration; write it like 250ms, 1.5s, 2m or 1h");
    if whole.is_empty() && frac.is_empty()
        || whole.len() > 12
        || frac.len() > 9
        || frac.contains('.')
    {
        return Err(bad_number());
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad_number())?
    };
    let frac_value: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad_number())?
    };
    let frac_den = 10u64.pow(frac.len() as u32);
    // frac_value / frac_den * scale must be a whole number of milliseconds.
    let frac_scaled = frac_value * scale;
    if !frac_scaled.is_multiple_of(frac_den) {
        return Err(format!("{s:?} is finer than the 1 ms resolution"));
    }
    let millis = whole
        .checked_mul(scale)
        .and_then(|w| w.checked_add(frac_scaled / frac_den))
        .filter(|m| *m <= MAX_MILLIS)
        .ok_or_else(|| format!("{s:?} is longer than the maximum of one year"))?;
    Ok(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> Result<u64, String> {
        parse(s)
    }

    #[test]
    fn units_and_fractions() {
        assert_eq!(ms("250ms"), Ok(250));
        assert_eq!(ms("1.5s"), Ok(1500));
        assert_eq!(ms("0.25s"), Ok(250));
        assert_eq!(ms(".5s"), Ok(500));
        assert_eq!(ms("2m"), Ok(120_000));
        assert_eq!(ms("1h"), Ok(3_600_000));
        assert_eq!(ms("0s"), Ok(0));
    }

    #[test]
    fn rejects_what_it_cannot_represent() {
        for bad in [
            "",
            "5",
            "ms",
            "1.2.3s",
            "-1s",
            "1d",
            "0.0001s",
            "1.5ms",
            "9999999999999h",
            "1 s",
            "NaNs",
        ] {
            assert!(ms(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(ms("1.5ms").unwrap_err().contains("1 ms resolution"));
        assert!(ms("10x").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn display_is_canonical_and_round_trips() {
        for (input, canon) in [
            ("1500ms", "1500ms"),
            ("2s", "2s"),
            ("120s", "2m"),
            ("0.5s", "500ms"),
            ("60m", "1h"),
        ] {
            let d = DurationSpec::try_from(input.to_string()).unwrap();
            assert_eq!(d.to_string(), canon);
            assert_eq!(DurationSpec::try_from(d.to_string()).unwrap(), d);
        }
    }
}
