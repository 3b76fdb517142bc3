//! A price version's full tariff: input, cached input, cache-write (5-minute and 1-hour) and
//! output prices (USD per million tokens) and a batch discount, with the validation
//! `switchyard prices set` applies.
//!
//! The ledger's costs are computed by Postgres (`call_cost` in the migrations) so that the
//! version in force at the call's time is resolved where the versions live; [`Tariff::cost`]
//! is the same formula in Rust, for reservations, estimates and the reconciliation tests. Both
//! are exact: `((prompt − cached − written) × input + cached × cached_input + (written −
//! written_1h) × cache_write + written_1h × cache_write_1h + completion × output) × (1 −
//! discount if batch) × 10⁻⁶`, never rounded (a missing cached or cache-write price is the
//! input price; a missing 1-hour price is the 5-minute one). Scales are bounded (prices at most 9
//! decimal places, discounts at most 4) so a cost always fits `rust_decimal`'s 28 digits.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// One million, the unit prices are quoted per.
const MILLION: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);
/// Prices above this (USD per million tokens) are typos, not tariffs.
pub const MAX_USD_PER_MTOK: Decimal = Decimal::from_parts(10_000, 0, 0, false, 0);
/// Decimal places a price may have.
pub const MAX_PRICE_SCALE: u32 = 9;
/// Decimal places a batch discount may have.
pub const MAX_DISCOUNT_SCALE: u32 = 4;

/// A model's prices in one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tariff {
    pub input_usd_per_mtok: Decimal,
    /// Price of prompt tokens the provider served from its cache; `None`: the input price.
    pub cached_input_usd_per_mtok: Option<Decimal>,
    pub output_usd_per_mtok: Decimal,
    /// Fraction taken off calls made through a batch API, in `[0, 1)`.
    pub batch_discount: Decimal,
    /// Price of prompt tokens written to the provider's cache for 5 minutes (Anthropic:
    /// 1.25 × input); `None`: the input price.
    #[serde(default)]
    pub cache_write_usd_per_mtok: Option<Decimal>,
    /// Price of prompt tokens written to the cache for an hour (Anthropic: 2 × input);
    /// `None`: the 5-minute price.
    #[serde(default)]
    pub cache_write_1h_usd_per_mtok: Option<Decimal>,
}

/// Why a tariff cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TariffError {
    #[error("{what} price must not be negative (got {value} USD per million tokens)")]
    Negative { what: &'static str, value: Decimal },
    #[error(
        "{what} price {value} USD per million tokens is absurd (more than {MAX_USD_PER_MTOK}); \
         prices are per million tokens"
    )]
    Absurd { what: &'static str, value: Decimal },
    #[error("{what} price {value} has more than {MAX_PRICE_SCALE} decimal places")]
    TooPrecise { what: &'static str, value: Decimal },
    #[error("cached input price {cached} is above the input price {input}")]
    CachedAboveInput { cached: Decimal, input: Decimal },
    #[error(
        "batch discount {0} must be a fraction in [0, 1) with at most {MAX_DISCOUNT_SCALE} decimals (0.5 = half price)"
    )]
    BadDiscount(Decimal),
}

impl Tariff {
    /// A validated tariff.
    ///
    /// # Errors
    /// Negative, absurd (above 10,000 USD per million tokens) or over-precise prices, a cached
    /// price above the input price, a discount outside `[0, 1)`.
    pub fn new(
        input: Decimal,
        cached_input: Option<Decimal>,
        output: Decimal,
        batch_discount: Decimal,
    ) -> Result<Self, TariffError> {
        let mut prices = vec![("input", input), ("output", output)];
        if let Some(c) = cached_input {
            prices.push(("cached input", c));
        }
        for (what, value) in prices {
            if value.is_sign_negative() && !value.is_zero() {
                return Err(TariffError::Negative { what, value });
            }
            if value > MAX_USD_PER_MTOK {
                return Err(TariffError::Absurd { what, value });
            }
            if value.normalize().scale() > MAX_PRICE_SCALE {
                return Err(TariffError::TooPrecise { what, value });
            }
        }
        if let Some(cached) = cached_input
            && cached > input
        {
            return Err(TariffError::CachedAboveInput { cached, input });
        }
        let d = batch_discount;
        if (d.is_sign_negative() && !d.is_zero())
            || d >= Decimal::ONE
            || d.normalize().scale() > MAX_DISCOUNT_SCALE
        {
            return Err(TariffError::BadDiscount(d));
        }
        Ok(Self {
            input_usd_per_mtok: input.normalize(),
            cached_input_usd_per_mtok: cached_input.map(|c| c.normalize()),
            output_usd_per_mtok: output.normalize(),
            batch_discount: d.normalize(),
            cache_write_usd_per_mtok: None,
            cache_write_1h_usd_per_mtok: None,
        })
    }

    /// The same tariff with cache-write prices (5 minutes, 1 hour).
    ///
    /// # Errors
    /// A negative, absurd or over-precise price.
    pub fn with_cache_writes(
        mut self,
        five_minutes: Option<Decimal>,
        one_hour: Option<Decimal>,
    ) -> Result<Self, TariffError> {
        for (what, value) in [
            ("cache write", five_minutes),
            ("1-hour cache write", one_hour),
        ] {
            let Some(value) = value else { continue };
            if value.is_sign_negative() && !value.is_zero() {
                return Err(TariffError::Negative { what, value });
            }
            if value > MAX_USD_PER_MTOK {
                return Err(TariffError::Absurd { what, value });
            }
            if value.normalize().scale() > MAX_PRICE_SCALE {
                return Err(TariffError::TooPrecise { what, value });
            }
        }
        self.cache_write_usd_per_mtok = five_minutes.map(|p| p.normalize());
        self.cache_write_1h_usd_per_mtok = one_hour.map(|p| p.normalize());
        Ok(self)
    }

    /// A tariff with input and output prices only.
    ///
    /// # Errors
    /// As [`Tariff::new`].
    pub fn simple(input: Decimal, output: Decimal) -> Result<Self, TariffError> {
        Self::new(input, None, output, Decimal::ZERO)
    }

    /// The exact cost of a call: `cached` of the `prompt` tokens at the cached price.
    /// Token counts may be negative (a reversal's).
    pub fn cost(&self, prompt: i64, cached: i64, completion: i64, batch: bool) -> Decimal {
        self.cost_with_writes(prompt, cached, 0, 0, completion, batch)
    }

    /// The exact cost of a call that also wrote `written` of its `prompt` tokens to the
    /// provider's cache, `written_1h` of them for an hour (`call_cost` with seven arguments
    /// in the migrations).
    pub fn cost_with_writes(
        &self,
        prompt: i64,
        cached: i64,
        written: i64,
        written_1h: i64,
        completion: i64,
        batch: bool,
    ) -> Decimal {
        let input = self.input_usd_per_mtok;
        let cached_price = self.cached_input_usd_per_mtok.unwrap_or(input);
        let write = self.cache_write_usd_per_mtok.unwrap_or(input);
        let write_1h = self.cache_write_1h_usd_per_mtok.unwrap_or(write);
        let full = Decimal::from(prompt - cached - written) * input
            + Decimal::from(cached) * cached_price
            + Decimal::from(written - written_1h) * write
            + Decimal::from(written_1h) * write_1h
            + Decimal::from(completion) * self.output_usd_per_mtok;
        let discounted = if batch {
            full * (Decimal::ONE - self.batch_discount)
        } else {
            full
        };
        discounted / MILLION
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
    fn costs_are_exact_with_cache_and_batch() {
        let t = Tariff::new(d("2.5"), Some(d("1.25")), d("10"), d("0.5")).unwrap();
        // 1000 prompt tokens of which 400 cached, 200 completion tokens.
        assert_eq!(t.cost(1000, 400, 200, false), d("0.0040"));
        assert_eq!(t.cost(1000, 400, 200, true), d("0.0020"));
        assert_eq!(t.cost(0, 0, 1, false), d("0.00001"));
        assert_eq!(
            t.cost(-1000, -400, -200, false),
            -t.cost(1000, 400, 200, false)
        );
    }

    #[test]
    fn bad_tariffs_are_named() {
        let e = Tariff::simple(d("-1"), d("1")).unwrap_err();
        assert!(e.to_string().contains("negative"), "{e}");
        let e = Tariff::simple(d("1"), d("20000")).unwrap_err();
        assert!(e.to_string().contains("absurd"), "{e}");
        let e = Tariff::simple(d("0.0000000001"), d("1")).unwrap_err();
        assert!(e.to_string().contains("decimal places"), "{e}");
        let e = Tariff::new(d("1"), Some(d("2")), d("1"), Decimal::ZERO).unwrap_err();
        assert!(e.to_string().contains("above the input"), "{e}");
        for bad in ["1", "-0.1", "1.5", "0.12345"] {
            assert!(Tariff::new(d("1"), None, d("1"), d(bad)).is_err(), "{bad}");
        }
        assert!(Tariff::simple(Decimal::ZERO, d("10000")).is_ok());
    }

    proptest! {
        #[test]
        fn cost_is_additive_and_matches_the_two_price_formula(
            p in 0i64..2_000_000, c in 0i64..1_000_000, o in 0i64..2_000_000,
            pin in 0i64..10_000_000_000_000, pout in 0i64..10_000_000_000_000,
        ) {
            let t = Tariff::simple(Decimal::new(pin, 9), Decimal::new(pout, 9)).unwrap();
            let price = crate::pricing::Price::new(t.input_usd_per_mtok, t.output_usd_per_mtok).unwrap();
            prop_assert_eq!(t.cost(p, 0, o, false), price.cost(p as u32, o as u32));
            prop_assert_eq!(t.cost(p, 0, 0, false) + t.cost(0, 0, o, false), t.cost(p, 0, o, false));
            let cached = c.min(p);
            prop_assert!(t.cost(p, cached, o, true) >= Decimal::ZERO);
        }
    }

    #[test]
    fn cache_writes_are_priced_at_their_own_rates() {
        let t = Tariff::new(d("3"), Some(d("0.3")), d("15"), d("0.5"))
            .unwrap()
            .with_cache_writes(Some(d("3.75")), Some(d("6")))
            .unwrap();
        // 1,000 prompt tokens: 100 read, 500 written (200 for an hour), 400 plain.
        let want = (d("400") * d("3")
            + d("100") * d("0.3")
            + d("300") * d("3.75")
            + d("200") * d("6")
            + d("10") * d("15"))
            / d("1000000");
        assert_eq!(t.cost_with_writes(1000, 100, 500, 200, 10, false), want);
        assert_eq!(
            t.cost_with_writes(1000, 100, 500, 200, 10, true),
            want / d("2")
        );
        // Without write prices, writes cost input; without an hour price, the 5-minute one.
        let plain = Tariff::new(d("3"), None, d("15"), d("0")).unwrap();
        assert_eq!(
            plain.cost_with_writes(10, 0, 4, 2, 0, false),
            plain.cost(10, 0, 0, false)
        );
        let five = plain.with_cache_writes(Some(d("4")), None).unwrap();
        assert_eq!(
            five.cost_with_writes(10, 0, 4, 2, 0, false),
            (d("6") * d("3") + d("4") * d("4")) / d("1000000")
        );
        assert!(plain.with_cache_writes(Some(d("-1")), None).is_err());
    }
}
