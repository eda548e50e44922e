//! Percentages as Istio writes them: a double from 0 to 100.

use serde::{Deserialize, Serialize};

/// A percentage in `[0, 100]` with at least 0.0001 % resolution (it is kept as parts per
/// 10^8 for sampling decisions).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Percentage(f64);

/// Sampling resolution: parts per hundred million (0.000001 %).
const SCALE: u64 = 100_000_000;

impl Percentage {
    /// 100 %.
    pub const ALL: Percentage = Percentage(100.0);
    /// 0 %.
    pub const NONE: Percentage = Percentage(0.0);

    /// The value, 0 to 100.
    pub fn value(self) -> f64 {
        self.0
    }

    /// The threshold out of `SCALE` that a uniform draw must fall below.
    fn threshold(self) -> u64 {
        (self.0 / 100.0 * SCALE as f64).round() as u64
    }

    /// Decides with a uniformly distributed 64-bit draw (random, or a hash for sticky
    /// selection) whether this percentage selects it.
    pub fn selects(self, draw: u64) -> bool {
        (draw % SCALE) < self.threshold()
    }
}

impl Default for Percentage {
    fn default() -> Self {
        Self::ALL
    }
}

impl TryFrom<f64> for Percentage {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        if !v.is_finite() || !(0.0..=100.0).contains(&v) {
            return Err(format!("must be a number from 0 to 100, got {v}"));
        }
        Ok(Self(v))
    }
}

impl From<Percentage> for f64 {
    fn from(p: Percentage) -> f64 {
        p.0
    }
}

/// A percentage as Istio writes it (`Percent`): `{value: 12.5}`, a double from 0 to 100.
/// Every kind's `percentage` fields use it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PercentSpec {
    pub value: Percentage,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_enforced() {
        assert!(Percentage::try_from(-0.1).is_err());
        assert!(Percentage::try_from(100.01).is_err());
        assert!(Percentage::try_from(f64::NAN).is_err());
        assert!(Percentage::try_from(0.0001).is_ok());
    }

    #[test]
    fn extremes_select_all_or_nothing() {
        for draw in [0, 1, SCALE - 1, u64::MAX] {
            assert!(Percentage::ALL.selects(draw));
            assert!(!Percentage::NONE.selects(draw));
        }
    }

    #[test]
    fn fraction_selected_matches_value() {
        let p = Percentage::try_from(25.0).unwrap();
        let hits = (0..SCALE).step_by(1000).filter(|d| p.selects(*d)).count();
        assert_eq!(hits, 25_000);
        // 0.0001 % is representable.
        let tiny = Percentage::try_from(0.0001).unwrap();
        assert!(tiny.selects(0) && tiny.selects(99) && !tiny.selects(100));
    }
}
