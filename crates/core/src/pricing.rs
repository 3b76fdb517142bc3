//! Exact money. A call's cost is `prompt_tokens × input price + completion_tokens × output
//! price`, prices in USD per million tokens, computed in `rust_decimal` and never rounded:
//! the result has at most the price's scale + 6 decimal places, which `NUMERIC` stores
//! exactly, so sums over millions of calls do not drift.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// One million, the unit prices are quoted per.
const MILLION: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);

/// A model's unit prices, USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    pub input_usd_per_mtok: Decimal,
    pub output_usd_per_mtok: Decimal,
}

/// A price that cannot be used for booking.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PriceError {
    #[error("price must not be negative (got {0} USD per million tokens)")]
    Negative(Decimal),
    #[error("price {0} USD per million tokens is absurd (more than 10,000)")]
    Absurd(Decimal),
}

impl Price {
    /// A validated price.
    ///
    /// # Errors
    /// Negative prices, or prices above 10,000 USD per million tokens (a typo guard).
    pub fn new(input: Decimal, output: Decimal) -> Result<Self, PriceError> {
        for p in [input, output] {
            if p.is_sign_negative() && !p.is_zero() {
                return Err(PriceError::Negative(p));
            }
            if p > Decimal::from(10_000) {
                return Err(PriceError::Absurd(p));
            }
        }
        Ok(Self {
            input_usd_per_mtok: input,
            output_usd_per_mtok: output,
        })
    }

    /// The exact cost of a call with these token counts.
    pub fn cost(&self, prompt_tokens: u32, completion_tokens: u32) -> Decimal {
        (Decimal::from(prompt_tokens) * self.input_usd_per_mtok
            + Decimal::from(completion_tokens) * self.output_usd_per_mtok)
            / MILLION
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn one_token_on_a_cheap_model_is_not_zero() {
        let p = Price::new(d("0.1"), d("0.4")).unwrap();
        assert_eq!(p.cost(0, 1), d("0.0000004"));
        assert_eq!(p.cost(28, 1), d("0.0000032"));
    }

    #[test]
    fn bad_prices_are_refused() {
        assert_eq!(
            Price::new(d("-1"), d("1")),
            Err(PriceError::Negative(d("-1")))
        );
        assert!(matches!(
            Price::new(d("1"), d("20000")),
            Err(PriceError::Absurd(_))
        ));
    }

    proptest! {
        #[test]
        fn cost_is_additive_monotonic_and_never_negative(
            a in 0u32..2_000_000, b in 0u32..2_000_000, c in 0u32..1000,
            pin in 0u64..100_000, pout in 0u64..100_000,
        ) {
            let p = Price::new(Decimal::new(pin as i64, 3), Decimal::new(pout as i64, 3)).unwrap();
            prop_assert!(p.cost(a, b) >= Decimal::ZERO);
            prop_assert!(p.cost(a + c, b) >= p.cost(a, b));
            // Splitting a call's tokens never changes the total: no rounding anywhere.
            prop_assert_eq!(p.cost(a, 0) + p.cost(0, b), p.cost(a, b));
        }
    }
}
