//! Rates (`{requests: 100, unit: second}`) and the token-bucket limit they define.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Largest `requests` per unit and largest `burst`.
pub const MAX_REQUESTS: u64 = 1_000_000_000;

/// The time unit of a rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
}

impl Unit {
    /// Length of the unit in seconds (the `w` of a `RateLimit-Policy` item).
    pub fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
        }
    }

    /// Length of the unit in nanoseconds.
    pub fn nanos(self) -> u64 {
        self.seconds() * 1_000_000_000
    }

    /// The unit's name as written in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `requests` per `unit`: the refill rate of a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub requests: u64,
    pub unit: Unit,
}

impl Rate {
    /// Checks `requests` (1 to [`MAX_REQUESTS`]). The error names the field relative to
    /// the rate.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.requests == 0 || self.requests > MAX_REQUESTS {
            return Err((
                "requests",
                format!("must be from 1 to {MAX_REQUESTS}, got {}", self.requests),
            ));
        }
        Ok(())
    }
}

/// A token bucket's parameters: refill `rate`, capacity `burst` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub rate: Rate,
    pub burst: u64,
}

impl Limit {
    /// A limit with capacity `burst`, or `rate.requests` when `burst` is `None`.
    pub fn new(rate: Rate, burst: Option<u64>) -> Self {
        Self {
            rate,
            burst: burst.unwrap_or(rate.requests),
        }
    }

    /// Fixed-point scale of stored tokens: one token is `unit` nanoseconds' worth of
    /// units, so one nanosecond adds exactly `requests` units and refills never round.
    pub fn scale(&self) -> u64 {
        self.rate.unit.nanos()
    }

    /// Capacity in fixed-point units.
    pub fn capacity(&self) -> u128 {
        u128::from(self.burst) * u128::from(self.scale())
    }

    /// Words for the 429 body: `100 requests per second (burst 50)`.
    pub fn describe(&self) -> String {
        let noun = if self.rate.requests == 1 {
            "request"
        } else {
            "requests"
        };
        format!(
            "{} {noun} per {} (burst {})",
            self.rate.requests, self.rate.unit, self.burst
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_descriptions() {
        assert_eq!(Unit::Day.seconds(), 86_400);
        assert_eq!(Unit::Minute.nanos(), 60_000_000_000);
        let l = Limit::new(
            Rate {
                requests: 100,
                unit: Unit::Second,
            },
            None,
        );
        assert_eq!(l.burst, 100);
        assert_eq!(l.describe(), "100 requests per second (burst 100)");
        let l = Limit::new(
            Rate {
                requests: 1,
                unit: Unit::Hour,
            },
            Some(5),
        );
        assert_eq!(l.describe(), "1 request per hour (burst 5)");
        assert_eq!(l.capacity(), 5 * 3_600_000_000_000);
    }

    #[test]
    fn requests_are_bounded() {
        assert!(Rate {
            requests: 0,
            unit: Unit::Second
        }
        .check()
        .is_err());
        assert!(Rate {
            requests: MAX_REQUESTS + 1,
            unit: Unit::Second
        }
        .check()
        .is_err());
        assert!(Rate {
            requests: MAX_REQUESTS,
            unit: Unit::Day
        }
        .check()
        .is_ok());
    }
}
