//! What a worker records for `/metrics` (families in [`switchyard_runtime::metrics`]).
//!
//! Calls, latency and quota waits are counted when a call returns; tokens, cost and
//! escalations only once the batch that books them is committed, so a scrape never shows
//! spend the ledger does not have.

use std::time::Duration;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use switchyard_runtime::metrics::{CallLabels, ModelLabel, TierLabel, TokenLabels};
use switchyard_store::outcomes::{CommitReport, Outcome};

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
        Err(CallFailure::ShuttingDown { .. }) => "shutdown",
        Err(CallFailure::Unusable(_)) => "unusable",
        Err(CallFailure::InDoubt(_)) => "in_doubt",
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

/// Records the calls a committed batch booked: tokens, cost, escalations, duplicates.
pub fn committed(w: &Worker, outcomes: &[&Outcome], report: &CommitReport) {
    let m = &w.metrics;
    m.duplicate_calls.inc_by(report.duplicates);
    for o in outcomes {
        let Some(call) = o.call() else { continue };
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
        if let Outcome::Answered {
            tier,
            escalated_to: Some(_),
            ..
        } = o
        {
            m.escalations
                .get_or_create(&TierLabel { tier: tier.clone() })
                .inc();
        }
    }
}

/// A delivery of an attempt that already had an outcome.
pub fn settled_before(w: &Worker) {
    w.metrics.settled_before.inc();
}

/// A delivery whose attempt another live worker was calling.
pub fn busy(w: &Worker) {
    w.metrics.busy_deliveries.inc();
}

/// An outcome Postgres refused as it was.
pub fn refused_outcome(w: &Worker) {
    w.metrics.refused_outcomes.inc();
}

/// Calls this process booked in doubt.
pub fn booked_in_doubt(w: &Worker, n: usize) {
    w.metrics.in_doubt_booked.inc_by(n as u64);
}

/// The fleet's unsettled in-doubt entries, as read from the ledger.
pub fn in_doubt_now(w: &Worker, calls: i64, usd: Decimal) {
    w.metrics.in_doubt_calls.set(calls);
    w.metrics
        .in_doubt_nanousd
        .set(i64::try_from(nano_usd(usd)).unwrap_or(i64::MAX));
    // Display only: Prometheus holds floats; the ledger keeps the exact amount.
    w.metrics.in_doubt_usd.set(usd.to_f64().unwrap_or(f64::MAX));
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
