//! Ledger scenarios straight through the store: a job and its items inserted directly, calls
//! booked with the same `outcomes::commit` the workers use, and the sums to check. For the
//! store's own tests and the finance end-to-end tests alike.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgPool;
use switchyard_store::booking::Booking;
use switchyard_store::outcomes::{self, AttemptKey, CallEntry, Outcome, UsageSource};

/// An exact decimal.
pub fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap_or_else(|e| panic!("`{s}` is not a decimal: {e}"))
}

/// A running job with `items` queued items, inserted directly.
pub async fn seed_job(pool: &PgPool, job_id: &str, team: &str, project: &str, items: i64) {
    sqlx::query(
        "INSERT INTO jobs (job_id, idempotency_key, team, project, task_kind, status, item_count) \
         VALUES ($1, $1, $2, $3, 'classify', 'running', $4)",
    )
    .bind(job_id)
    .bind(team)
    .bind(project)
    .bind(items)
    .execute(pool)
    .await
    .expect("insert the job");
    sqlx::query(
        "INSERT INTO items (job_id, item_id, seq, text, input_hash, router_score, status) \
         SELECT $1, 'item-' || g, g, 'prompt text of item ' || g, md5(g::text), 0.5, 'queued' \
         FROM generate_series(1, $2) g",
    )
    .bind(job_id)
    .bind(items)
    .execute(pool)
    .await
    .expect("insert the items");
}

/// One answered call of `item-<item>`, priced at `priced_at`.
#[expect(clippy::too_many_arguments, reason = "a ledger row's columns")]
pub fn answered(
    job_id: &str,
    item: i64,
    team: &str,
    project: &str,
    tier: &str,
    model: &str,
    prompt_tokens: i32,
    completion_tokens: i32,
    priced_at: DateTime<Utc>,
) -> Outcome {
    let key = AttemptKey {
        job_id: job_id.to_owned(),
        item_id: format!("item-{item}"),
        attempt: 0,
    };
    Outcome::Answered {
        tier: tier.to_owned(),
        answer: "A".to_owned(),
        raw_answer: None,
        finish_reason: Some("stop".to_owned()),
        confidence: 0.9,
        escalated_to: None,
        call: CallEntry {
            call_id: format!("{job_id}-{item}-{}", ulid::Ulid::new()),
            provider_response_id: None,
            usage_source: UsageSource::Provider,
            team: team.to_owned(),
            project: project.to_owned(),
            tier: tier.to_owned(),
            model: model.to_owned(),
            provider: "test".to_owned(),
            price_id: 0,
            prompt_tokens,
            completion_tokens,
            cost_usd: Decimal::ZERO,
            latency_ms: 5,
            retry: false,
            booking: Booking::at(priced_at),
        },
        key,
    }
}

/// Books outcomes the way a worker's committer does.
pub async fn book(pool: &PgPool, outcomes: &[Outcome]) {
    outcomes::commit(pool, outcomes)
        .await
        .expect("book the outcomes");
}

/// The ledger's total cost.
pub async fn ledger_total(pool: &PgPool) -> Decimal {
    sqlx::query_scalar("SELECT COALESCE(sum(cost_usd), 0) FROM ledger")
        .fetch_one(pool)
        .await
        .expect("sum the ledger")
}

/// A row count.
pub async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(pool)
        .await
        .expect("count rows")
}

/// A job's ledger rows and the distinct calls among them: equal when no call is booked twice.
pub async fn rows_and_distinct_calls(pool: &PgPool, job_id: &str) -> (i64, i64) {
    sqlx::query_as("SELECT count(*), count(DISTINCT call_id) FROM ledger WHERE job_id = $1")
        .bind(job_id)
        .fetch_one(pool)
        .await
        .expect("count the job's ledger rows")
}
