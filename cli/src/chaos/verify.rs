//! The books at the end of a chaos run: the simulator's call log (every call it answered)
//! joined with the ledger (every call the fleet booked) by response id, and every item's
//! results.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sqlx::PgPool;
use switchyard_sim::CallRecord;

/// What the books say.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Accounting {
    /// Items of the job.
    pub items: i64,
    /// Items with exactly one final result (an answer that did not escalate).
    pub final_results: i64,
    /// Items with neither a final result nor a recorded failure.
    pub lost: i64,
    /// Items with more than one final result.
    pub duplicated_results: i64,
    /// Items that failed for good (dead-lettered).
    pub failed_items: i64,
    /// Calls the simulator answered with a usable body that the client could receive (a
    /// call that hung past the client's timeout is not one).
    pub sim_calls: i64,
    /// Ledger rows of the job.
    pub ledger_rows: i64,
    /// Answered calls booked more than once.
    pub double_charged: i64,
    /// Answered calls with no ledger row: a process died between the answer and the commit.
    pub unbooked_calls: i64,
    /// Ledger rows whose call the simulator never answered (should be none).
    pub ledger_rows_without_call: i64,
    /// Ledger rows of calls repeated after a redelivery (real extra spend, booked once each).
    pub retry_calls: i64,
    /// Ledger rows of `local_only` items on a tier that is not local.
    pub local_only_violations: i64,
}

impl Accounting {
    /// The invariants: nothing lost, nothing answered twice, nothing paid twice.
    pub fn holds(&self) -> bool {
        self.lost == 0
            && self.duplicated_results == 0
            && self.double_charged == 0
            && self.ledger_rows_without_call == 0
            && self.local_only_violations == 0
    }
}

/// Response ids of the calls whose answer a client could receive.
pub fn served_ids(calls: &[CallRecord]) -> BTreeSet<&str> {
    calls
        .iter()
        .filter(|c| c.status == 200 && c.fault.as_deref() != Some("timeout"))
        .filter_map(|c| c.response_id.as_deref())
        .collect()
}

/// Joins the call log with the job's ledger and results.
///
/// # Errors
/// Database errors.
pub async fn account(
    pool: &PgPool,
    job_id: &str,
    calls: &[CallRecord],
    local_tiers: &[String],
) -> sqlx::Result<Accounting> {
    let items: i64 = sqlx::query_scalar("SELECT count(*) FROM items WHERE job_id = $1")
        .bind(job_id)
        .fetch_one(pool)
        .await?;
    let (final_results, duplicated_results): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE n = 1), count(*) FILTER (WHERE n > 1) FROM \
         (SELECT item_id, count(*) AS n FROM results WHERE job_id = $1 AND NOT escalated \
         AND attempt < 1000 GROUP BY item_id) t",
    )
    .bind(job_id)
    .fetch_one(pool)
    .await?;
    let lost: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM items i WHERE i.job_id = $1 AND i.status <> 'failed' \
         AND NOT EXISTS (SELECT 1 FROM results r WHERE r.job_id = i.job_id \
         AND r.item_id = i.item_id AND NOT r.escalated AND r.attempt < 1000)",
    )
    .bind(job_id)
    .fetch_one(pool)
    .await?;
    let failed_items: i64 =
        sqlx::query_scalar("SELECT count(*) FROM items WHERE job_id = $1 AND status = 'failed'")
            .bind(job_id)
            .fetch_one(pool)
            .await?;
    let rows: Vec<(String, bool)> =
        sqlx::query_as("SELECT call_id, retry FROM ledger WHERE job_id = $1")
            .bind(job_id)
            .fetch_all(pool)
            .await?;
    let local_only_violations: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ledger l JOIN items i ON i.job_id = l.job_id \
         AND i.item_id = l.item_id WHERE l.job_id = $1 AND i.sensitivity = 'local_only' \
         AND NOT (l.tier = ANY($2))",
    )
    .bind(job_id)
    .bind(local_tiers)
    .fetch_one(pool)
    .await?;

    let served = served_ids(calls);
    let mut booked: BTreeMap<&str, i64> = BTreeMap::new();
    for (call_id, _) in &rows {
        *booked.entry(call_id.as_str()).or_default() += 1;
    }
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    Ok(Accounting {
        items,
        final_results,
        lost,
        duplicated_results,
        failed_items,
        sim_calls: count(served.len()),
        ledger_rows: count(rows.len()),
        double_charged: count(
            served
                .iter()
                .filter(|id| booked.get(*id).is_some_and(|n| *n > 1))
                .count(),
        ),
        unbooked_calls: count(served.iter().filter(|id| !booked.contains_key(*id)).count()),
        ledger_rows_without_call: count(booked.keys().filter(|id| !served.contains(*id)).count()),
        retry_calls: count(rows.iter().filter(|(_, retry)| *retry).count()),
        local_only_violations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: Option<&str>, status: u16, fault: Option<&str>) -> CallRecord {
        let mut c = CallRecord::new("m", status);
        c.response_id = id.map(str::to_owned);
        c.fault = fault.map(str::to_owned);
        c
    }

    #[test]
    fn only_answers_a_client_could_receive_count_as_served() {
        let calls = [
            call(Some("a"), 200, None),
            call(Some("b"), 200, Some("no_usage")),
            call(Some("c"), 200, Some("timeout")),
            call(None, 503, Some("error_rate")),
            call(None, 200, Some("malformed_json")),
        ];
        assert_eq!(served_ids(&calls), BTreeSet::from(["a", "b"]));
    }
}
