//! The books at the end of a chaos run: the simulator's call log (every call it answered)
//! joined with the ledger (every call the fleet booked) by call id: the worker sends its
//! ledger call id with each request (`X-Client-Request-Id`), the simulator logs it.

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
    /// Calls the simulator answered `200` (whole or broken off mid-body; not a call that hung
    /// past the client's timeout): the calls a provider bills.
    pub sim_calls: i64,
    /// Ledger rows of the run's jobs (calls, in-doubt entries, reversals and settlements).
    pub ledger_rows: i64,
    /// Billed calls booked more than once (net of reversals).
    pub double_charged: i64,
    /// Billed calls with no ledger row at all.
    pub unbooked_calls: i64,
    /// Calls booked in doubt (their worker died between the request and the booking).
    pub in_doubt_calls: i64,
    /// Calls booked as duplicates: a second copy of an attempt another copy decided.
    pub duplicate_calls: i64,
    /// Ledger rows (other than in-doubt ones) whose call the simulator never answered.
    pub ledger_rows_without_call: i64,
    /// Ledger rows of calls repeated after a redelivery (real extra spend, booked once each).
    pub retry_calls: i64,
    /// Ledger rows of `local_only` items on a tier that is not local.
    pub local_only_violations: i64,
}

impl Accounting {
    /// The invariants: nothing lost, nothing answered twice, nothing paid twice, nothing
    /// paid left unbooked.
    pub fn holds(&self) -> bool {
        self.lost == 0
            && self.duplicated_results == 0
            && self.double_charged == 0
            && self.unbooked_calls == 0
            && self.ledger_rows_without_call == 0
            && self.local_only_violations == 0
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    call_id: String,
    kind: String,
    outcome: String,
    retry: bool,
    reversed: bool,
}

/// Joins the call log with the ledger of `ledger_jobs` (every job whose calls the log holds)
/// and with the results of `job_id`.
///
/// # Errors
/// Database errors.
pub async fn account(
    pool: &PgPool,
    job_id: &str,
    ledger_jobs: &[String],
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
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT l.call_id, l.kind, l.outcome, l.retry, EXISTS (SELECT 1 FROM ledger r \
         WHERE r.reverses_entry_id = l.entry_id) AS reversed FROM ledger l \
         WHERE l.job_id = ANY($1)",
    )
    .bind(ledger_jobs)
    .fetch_all(pool)
    .await?;
    let local_only_violations: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ledger l JOIN items i ON i.job_id = l.job_id \
         AND i.item_id = l.item_id WHERE l.job_id = ANY($1) \
         AND i.sensitivity = 'local_only' AND NOT (l.tier = ANY($2))",
    )
    .bind(ledger_jobs)
    .bind(local_tiers)
    .fetch_one(pool)
    .await?;

    let billed = switchyard_sim::call_log::billed_ids(calls);
    // Per call (a settlement `<id>:settled` is the same call), the entries that stand.
    let mut standing: BTreeMap<&str, i64> = BTreeMap::new();
    let mut booked: BTreeSet<&str> = BTreeSet::new();
    let mut without_call = 0usize;
    for r in rows.iter().filter(|r| r.kind == "call") {
        let call = r.call_id.strip_suffix(":settled").unwrap_or(&r.call_id);
        booked.insert(call);
        if !r.reversed {
            *standing.entry(call).or_default() += 1;
        }
        if r.outcome != "in_doubt" && !billed.contains(call) {
            without_call += 1;
        }
    }
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let calls_of = |outcome: &str| {
        count(
            rows.iter()
                .filter(|r| r.kind == "call" && r.outcome == outcome)
                .count(),
        )
    };
    Ok(Accounting {
        items,
        final_results,
        lost,
        duplicated_results,
        failed_items,
        sim_calls: count(billed.len()),
        ledger_rows: count(rows.len()),
        double_charged: count(
            billed
                .iter()
                .filter(|id| standing.get(*id).is_some_and(|n| *n > 1))
                .count(),
        ),
        unbooked_calls: count(billed.iter().filter(|id| !booked.contains(*id)).count()),
        in_doubt_calls: calls_of("in_doubt"),
        duplicate_calls: calls_of("duplicate"),
        ledger_rows_without_call: count(without_call),
        retry_calls: count(rows.iter().filter(|r| r.kind == "call" && r.retry).count()),
        local_only_violations,
    })
}

/// The ledger against the provider's bill, after the in-doubt (and estimated) entries were
/// reconciled against the simulator's call log.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct BillCheck {
    /// Entries settled by the call log (reversed and re-booked, reversed to zero, or booked
    /// because the ledger lacked them).
    pub reconciled_calls: u64,
    /// The ledger's total after reconciliation (exact decimal).
    pub ledger_usd: String,
    /// The simulator's bill of its call log at the fleet's prices (exact decimal).
    pub bill_usd: String,
    /// Zero when the books balance to the last unit.
    pub ledger_minus_bill_usd: String,
    /// Billed models without a price (the bill is incomplete while any is listed).
    pub unpriced_models: Vec<String>,
    /// Per model where the two sides differ: what each counted (calls, tokens, USD), so a
    /// mismatch says where it is.
    pub mismatches: Vec<ModelMismatch>,
}

/// One model's ledger and bill, when they differ.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ModelMismatch {
    pub model: String,
    pub ledger_calls: i64,
    pub ledger_prompt_tokens: i64,
    pub ledger_completion_tokens: i64,
    pub ledger_usd: String,
    pub bill_calls: u64,
    pub bill_prompt_tokens: u64,
    pub bill_completion_tokens: u64,
    pub bill_usd: String,
}

impl BillCheck {
    /// The ledger equals the bill exactly, and the bill is complete.
    pub fn balances(&self) -> bool {
        self.ledger_minus_bill_usd == "0" && self.unpriced_models.is_empty()
    }
}

/// Reconciles the ledger against `calls` (as `switchyard ledger reconcile --usage` does
/// with the call log file), then compares its total with the bill of `calls` at `prices`.
///
/// # Errors
/// Reconciliation or database errors.
pub async fn reconcile_and_bill(
    pool: &PgPool,
    calls: &[CallRecord],
    prices: &BTreeMap<String, switchyard_sim::ModelPrice>,
) -> anyhow::Result<BillCheck> {
    use switchyard_store::money::exact;
    // The simulator's log is complete: a call it never logged was never billed.
    let mut evidence = switchyard_finance::usage_report::from_call_log(calls);
    evidence.evidence.set_complete(true);
    let s = switchyard_store::reconcile::reconcile(pool, &evidence.evidence, false).await?;
    let ledger: rust_decimal::Decimal =
        sqlx::query_scalar("SELECT COALESCE(sum(cost_usd), 0) FROM ledger")
            .fetch_one(pool)
            .await?;
    let bill = switchyard_sim::bill::bill(calls, prices);
    // Reversals count with their sign; a call's row and its reversal net to nothing.
    let by_model: Vec<(String, i64, i64, i64, rust_decimal::Decimal)> = sqlx::query_as(
        "SELECT model, sum(CASE WHEN kind = 'call' THEN 1 ELSE -1 END)::int8, \
         sum(prompt_tokens)::int8, sum(completion_tokens)::int8, sum(cost_usd) \
         FROM ledger GROUP BY model ORDER BY model",
    )
    .fetch_all(pool)
    .await?;
    let mut mismatches = Vec::new();
    let mut models: BTreeSet<&str> = bill.by_model.keys().map(String::as_str).collect();
    models.extend(by_model.iter().map(|m| m.0.as_str()));
    for model in models {
        let l = by_model.iter().find(|m| m.0 == model);
        let b = bill.by_model.get(model).cloned().unwrap_or_default();
        let l_usd = l.map_or(rust_decimal::Decimal::ZERO, |l| l.4);
        if l_usd != b.usd {
            mismatches.push(ModelMismatch {
                model: model.to_owned(),
                ledger_calls: l.map_or(0, |l| l.1),
                ledger_prompt_tokens: l.map_or(0, |l| l.2),
                ledger_completion_tokens: l.map_or(0, |l| l.3),
                ledger_usd: exact(l_usd),
                bill_calls: b.calls,
                bill_prompt_tokens: b.prompt_tokens,
                bill_completion_tokens: b.completion_tokens,
                bill_usd: exact(b.usd),
            });
        }
    }
    Ok(BillCheck {
        reconciled_calls: s.settled + s.reversed_to_zero + s.booked_missing,
        ledger_usd: exact(ledger),
        bill_usd: exact(bill.usd),
        ledger_minus_bill_usd: exact(ledger - bill.usd),
        unpriced_models: bill.unpriced_models,
        mismatches,
    })
}
