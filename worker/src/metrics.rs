//! What a worker records for `/metrics` (families in [`switchyard_runtime::metrics`]).
//!
//! Calls, latency and quota waits are counted when a call returns; tokens, cost and
//! escalations only once the batch that books them is committed, so a scrape never shows
//! spend the ledger does not have.

use std::time::Duration;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use switchyard_runtime::metrics::{CallLabels, ModelLabel, TierLabel, TokenLabels};
use switchyard_store::outcomes::Outcome;

use crate::call::{CallFailure, CallStats};
use crate::context::Worker;

/// Records one model call (every attempt the lane made for an item).
pub fn called<T>(
    w: &Worker,
    model: &str,
    result: &Result<T, CallFailure>,
    stats: &CallStats,
    elapsed: Duration,
) {
    let m = &w.metrics;
    let outcome = match result {
        Ok(_) => "ok",
        Err(CallFailure::Exhausted(_)) => "failed",
        Err(CallFailure::Refused(_)) => "refused",
        Err(CallFailure::CircuitOpen { .. }) => "circuit_open",
        Err(CallFailure::ShuttingDown) => "shutdown",
    };
    let model_label = ModelLabel {
        model: model.to_owned(),
    };
    m.calls
        .get_or_create(&CallLabels {
            model: model.to_owned(),
            outcome,
        })
        .inc();
    if result.is_ok() {
        m.call_seconds
            .get_or_create(&model_label)
            .observe(elapsed.saturating_sub(stats.quota_wait).as_secs_f64());
    }
    if stats.throttled > 0 {
        m.rate_limited
            .get_or_create(&model_label)
            .inc_by(u64::from(stats.throttled));
    }
    if !stats.quota_wait.is_zero() {
        m.quota_wait_seconds
            .get_or_create(&model_label)
            .inc_by(stats.quota_wait.as_secs_f64());
    }
}

/// Records the calls a committed batch booked: tokens, cost and escalations.
pub fn committed(w: &Worker, outcomes: &[Outcome]) {
    let m = &w.metrics;
    for o in outcomes {
        let Outcome::Answered {
            tier,
            escalated,
            call,
            ..
        } = o
        else {
            continue;
        };
        for (kind, n) in [
            ("input", call.prompt_tokens),
            ("output", call.completion_tokens),
        ] {
            m.tokens
                .get_or_create(&TokenLabels {
                    model: call.model.clone(),
                    kind,
                })
                .inc_by(u64::try_from(n).unwrap_or(0));
        }
        m.cost_nanousd
            .get_or_create(&ModelLabel {
                model: call.model.clone(),
            })
            .inc_by(nano_usd(call.cost_usd));
        if *escalated {
            m.escalations
                .get_or_create(&TierLabel { tier: tier.clone() })
                .inc();
        }
    }
}

/// USD to whole nano-dollars (exact for any cost with at most nine decimals; a finer
/// fraction is rounded to the nearest nano-dollar).
fn nano_usd(usd: Decimal) -> u64 {
    (usd * Decimal::from(1_000_000_000u64))
        .round()
        .to_u64()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_become_whole_nano_dollars() {
        assert_eq!(nano_usd("0.00000015".parse().unwrap()), 150);
        assert_eq!(nano_usd("1.5".parse().unwrap()), 1_500_000_000);
        assert_eq!(nano_usd(Decimal::ZERO), 0);
    }
}
