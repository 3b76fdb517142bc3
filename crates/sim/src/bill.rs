//! The provider's bill: what the simulator would invoice for its call log, exactly.
//!
//! A provider bills every call it answered in full ([`CallRecord::billed`]) at its prices:
//! `((prompt − read − written) × input + read × cached + (written − written_1h) × write +
//! written_1h × write_1h + completion × output) × (1 − discount for batch lines) × 10⁻⁶` USD
//! with prices per million tokens, the same formula the ledger's `call_cost` uses (cache reads
//! and writes come from the Anthropic route's prompt cache, batch lines from the batch API). Nothing is rounded, so a ledger that booked every billed call at
//! the same prices equals this bill to the last unit. Served as `GET /v1/bill` once prices
//! are set with `PUT /sim/prices`.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::call_log::CallRecord;

/// One model's prices, USD per million tokens (decimal strings in JSON).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPrice {
    pub input_usd_per_mtok: Decimal,
    pub output_usd_per_mtok: Decimal,
    /// Fraction off lines served through the batch API (`0.5`: half price).
    #[serde(default)]
    pub batch_discount: Decimal,
    /// Prompt tokens read from the cache; `None`: the input price.
    #[serde(default)]
    pub cached_input_usd_per_mtok: Option<Decimal>,
    /// Prompt tokens written to the cache for 5 minutes; `None`: the input price.
    #[serde(default)]
    pub cache_write_usd_per_mtok: Option<Decimal>,
    /// Written for an hour; `None`: the 5-minute price.
    #[serde(default)]
    pub cache_write_1h_usd_per_mtok: Option<Decimal>,
}

/// The bill of one model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelBill {
    pub calls: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub usd: Decimal,
}

/// The whole bill.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bill {
    /// Billed calls.
    pub calls: u64,
    /// The total, exact.
    pub usd: Decimal,
    pub by_model: BTreeMap<String, ModelBill>,
    /// Models that were billed calls but have no price: the bill is incomplete while any is
    /// listed (their tokens are counted, their cost is not).
    pub unpriced_models: Vec<String>,
}

const PER_MILLION: Decimal = Decimal::from_parts(1, 0, 0, false, 6);

/// The exact bill of `calls` at `prices`.
pub fn bill(calls: &[CallRecord], prices: &BTreeMap<String, ModelPrice>) -> Bill {
    let mut b = Bill::default();
    for c in calls.iter().filter(|c| c.billed()) {
        b.calls += 1;
        let m = b.by_model.entry(c.model.clone()).or_default();
        m.calls += 1;
        m.prompt_tokens += u64::from(c.prompt_tokens);
        m.completion_tokens += u64::from(c.completion_tokens);
        match prices.get(&c.model) {
            Some(p) => {
                let input = p.input_usd_per_mtok;
                let cached = p.cached_input_usd_per_mtok.unwrap_or(input);
                let write = p.cache_write_usd_per_mtok.unwrap_or(input);
                let write_1h = p.cache_write_1h_usd_per_mtok.unwrap_or(write);
                let (read, written) = (c.cached_prompt_tokens, c.cache_write_tokens);
                let plain = c.prompt_tokens.saturating_sub(read).saturating_sub(written);
                let mut cost = (Decimal::from(plain) * input
                    + Decimal::from(read) * cached
                    + Decimal::from(written.saturating_sub(c.cache_write_1h_tokens)) * write
                    + Decimal::from(c.cache_write_1h_tokens) * write_1h
                    + Decimal::from(c.completion_tokens) * p.output_usd_per_mtok)
                    * PER_MILLION;
                if c.is_batch_line() {
                    cost *= Decimal::ONE - p.batch_discount;
                }
                m.usd += cost;
                b.usd += cost;
            }
            None => {
                if !b.unpriced_models.contains(&c.model) {
                    b.unpriced_models.push(c.model.clone());
                }
            }
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn bills_answers_sent_in_full_exactly() {
        let call = |model: &str, status: u16, fault: Option<&str>, pt: u32, ct: u32| {
            let mut c = CallRecord::new(model, status);
            c.fault = fault.map(str::to_owned);
            c.prompt_tokens = pt;
            c.completion_tokens = ct;
            c
        };
        let calls = [
            call("w", 200, None, 1_000, 10),
            call("w", 200, Some("timeout"), 1_000, 10),
            call("w", 429, None, 1_000, 0),
            call("s", 200, Some("no_usage"), 3, 7),
            call("x", 200, None, 1, 1),
        ];
        let prices = BTreeMap::from([
            (
                "w".to_owned(),
                ModelPrice {
                    input_usd_per_mtok: d("0.15"),
                    output_usd_per_mtok: d("0.6"),
                    ..Default::default()
                },
            ),
            (
                "s".to_owned(),
                ModelPrice {
                    input_usd_per_mtok: d("2.5"),
                    output_usd_per_mtok: d("10"),
                    ..Default::default()
                },
            ),
        ]);
        let b = bill(&calls, &prices);
        assert_eq!(b.calls, 3);
        // 1000 × 0.15 + 10 × 0.6 = 156 µ$; 3 × 2.5 + 7 × 10 = 77.5 µ$.
        assert_eq!(b.usd, d("0.0002335"));
        assert_eq!(b.unpriced_models, ["x"]);
        assert_eq!(b.by_model["w"].usd, d("0.000156"));
    }
}
