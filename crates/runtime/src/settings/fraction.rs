//! A share or ratio: a number in [0, 1], checked when it is read so that no code downstream
//! has to wonder whether `1.5` or `-0.2` can reach it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// An `f64` in [0, 1] (NaN is refused too). Deserializing an out-of-range value fails with a
/// message naming the value; the TOML error around it names the key and line.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
#[serde(transparent)]
pub struct Fraction(f64);

impl Fraction {
    pub const ZERO: Fraction = Fraction(0.0);
    pub const ONE: Fraction = Fraction(1.0);

    /// `value` if it lies in [0, 1].
    ///
    /// # Errors
    /// A message naming the value.
    pub fn new(value: f64) -> Result<Self, String> {
        if (0.0..=1.0).contains(&value) {
            Ok(Self(value))
        } else {
            Err(format!("{value}: must be between 0 and 1"))
        }
    }

    /// A fraction written in the code; out of range is a bug, so it panics (at compile time
    /// in a `const` block).
    pub const fn literal(value: f64) -> Self {
        assert!(
            0.0 <= value && value <= 1.0,
            "a fraction must be between 0 and 1"
        );
        Self(value)
    }

    /// The number.
    pub const fn get(self) -> f64 {
        self.0
    }
}

impl fmt::Display for Fraction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<Fraction> for f64 {
    fn from(f: Fraction) -> f64 {
        f.0
    }
}

impl TryFrom<f64> for Fraction {
    type Error = String;
    fn try_from(value: f64) -> Result<Self, String> {
        Self::new(value)
    }
}

impl<'de> Deserialize<'de> for Fraction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // TOML integers (`0`, `1`) are fractions too.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Float(f64),
            Int(i64),
        }
        let value = match Raw::deserialize(d)? {
            Raw::Float(f) => f,
            #[allow(clippy::cast_precision_loss, reason = "only 0 and 1 are in range")]
            Raw::Int(i) => i as f64,
        };
        Self::new(value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct T {
        share: Fraction,
    }

    #[test]
    fn out_of_range_is_refused_naming_the_value_and_key() {
        let err = toml::from_str::<T>("share = 1.5").unwrap_err().to_string();
        assert!(err.contains("1.5: must be between 0 and 1"), "{err}");
        assert!(err.contains("share"), "{err}");
        assert!(toml::from_str::<T>("share = -0.1").is_err());
        assert!(Fraction::new(f64::NAN).is_err());
        let ok: T = toml::from_str("share = 0.25").unwrap();
        assert_eq!(ok.share.get(), 0.25);
        let one: T = toml::from_str("share = 1").unwrap();
        assert_eq!(one.share, Fraction::ONE);
    }
}
