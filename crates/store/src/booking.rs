//! What a ledger row needs beyond the call itself: when its price is resolved, the
//! counterfactual costs finance compares against, and the budget hold it settles.
//!
//! The cost and the price version are not taken from the worker: Postgres resolves the version
//! in force at [`Booking::priced_at`] and computes the exact cost at insert (`price_in_force`,
//! `call_cost` in the migrations), so a worker whose price cache is a second old still books
//! the right version, and no float or rounding ever enters the ledger.

use chrono::{DateTime, Utc};

/// A call's share of the counterfactual "every item on one tier" cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Counterfactual {
    /// That world would have paid this call as it is.
    Own,
    /// That world would not have made this call (e.g. a weak answer that escalated, in the
    /// all-strong world).
    Zero,
    /// The same tokens at this model's price in force at the call's time.
    Reprice(String),
}

impl Counterfactual {
    /// The mode as `counterfactual_cost` (SQL) takes it.
    pub fn mode(&self) -> &'static str {
        match self {
            Counterfactual::Own => "own",
            Counterfactual::Zero => "zero",
            Counterfactual::Reprice(_) => "reprice",
        }
    }

    /// The model to reprice with, if any.
    pub fn model(&self) -> Option<&str> {
        match self {
            Counterfactual::Reprice(m) => Some(m),
            _ => None,
        }
    }
}

/// The finance side of one model call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booking {
    /// The call is priced with the version in force at this time (when its answer arrived).
    pub priced_at: DateTime<Utc>,
    /// Prompt tokens served from the provider's cache (priced at the cached-input price).
    pub cached_prompt_tokens: i32,
    /// Prompt tokens written to the provider's cache (priced at the cache-write price), and
    /// of those the ones kept an hour (the 1-hour price).
    pub cache_write_tokens: i32,
    pub cache_write_1h_tokens: i32,
    /// The provider's `usage` object as it came, when it is JSON Postgres can hold
    /// ([`crate::outcomes::storable_usage`]).
    pub raw_usage: Option<String>,
    /// The call happened because an earlier answer of the item escalated.
    pub escalation: bool,
    /// The call was a line of a provider's batch: priced at the price version's batch
    /// discount (`ledger.batch`). Its counterfactuals stay at real-time prices, so reports
    /// show what the batch price saved apart from what routing saved.
    pub batch: bool,
    /// This call's share of the all-strong counterfactual.
    pub all_strong: Counterfactual,
    /// This call's share of the all-weak counterfactual.
    pub all_weak: Counterfactual,
    /// The budget hold this call settles (teams with a budget only).
    pub reservation_id: Option<i64>,
}

impl Booking {
    /// A call priced at `priced_at`, with no counterfactual difference and no hold.
    pub fn at(priced_at: DateTime<Utc>) -> Self {
        Self {
            priced_at,
            cached_prompt_tokens: 0,
            cache_write_tokens: 0,
            cache_write_1h_tokens: 0,
            raw_usage: None,
            escalation: false,
            batch: false,
            all_strong: Counterfactual::Own,
            all_weak: Counterfactual::Own,
            reservation_id: None,
        }
    }
}
