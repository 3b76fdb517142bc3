//! What the store's integration tests share: a job with queued items, a price, exact amounts.
#![allow(dead_code, reason = "each test binary uses part of it")]

use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use sqlx::PgPool;
use switchyard_store::booking::Booking;
use switchyard_store::outcomes::{AttemptKey, CallEntry, UsageSource};
use switchyard_store::prices::{self, NewPrice};
use switchyard_testkit::TestDb;

pub use switchyard_testkit::ledger::d;

/// Job `job_id` (team `team`, project `proj`, a classification) in `status`, with items
/// `item-1..=n`, queued on the weak tier.
pub async fn job_with_items(pool: &PgPool, job_id: &str, status: &str, n: i64) {
    sqlx::query(
        "INSERT INTO jobs (job_id, idempotency_key, team, project, task_kind, status, item_count) \
         VALUES ($1, $1, 'team', 'proj', 'classify', $2, $3)",
    )
    .bind(job_id)
    .bind(status)
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO items (job_id, item_id, seq, text, input_hash, router_score, status, \
         routed_tier) SELECT $1, 'item-' || g, g, 'text ' || g, md5(g::text), 0.5, 'queued', \
         'weak' FROM generate_series(1, $2) g",
    )
    .bind(job_id)
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

/// A database of the test's own with a running job `job_id` of items `item-1..=n`, queued,
/// and `model` at $1 / $2 per million tokens since 2020.
pub async fn priced_job(job_id: &str, model: &str, n: i64) -> TestDb {
    let db = TestDb::new().await;
    job_with_items(&db.pool, job_id, "running", n).await;
    price_since_2020(&db.pool, model, "1", "2").await;
    db
}

/// `model` at `input` / `output` USD per million tokens, in force since 2020.
pub async fn price_since_2020(pool: &PgPool, model: &str, input: &str, output: &str) {
    prices::set(
        pool,
        &NewPrice {
            model: model.to_owned(),
            provider: "test".to_owned(),
            tariff: switchyard_core::tariff::Tariff::simple(d(input), d(output)).unwrap(),
            effective_from: Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap(),
        },
    )
    .await
    .unwrap();
}

/// Attempt `attempt` of item `item-<item>` of `job_id`.
pub fn key(job_id: &str, item: i64, attempt: i32) -> AttemptKey {
    AttemptKey {
        job_id: job_id.to_owned(),
        item_id: format!("item-{item}"),
        attempt,
    }
}

/// Call `id` to the weak `model` (team `team`, project `proj`): `tokens` prompt and
/// completion tokens, counted by `source`, booked at `at`.
pub fn weak_call(
    id: &str,
    model: &str,
    tokens: i32,
    source: UsageSource,
    at: DateTime<Utc>,
) -> CallEntry {
    CallEntry {
        call_id: id.to_owned(),
        provider_response_id: Some("chatcmpl-1".to_owned()),
        team: "team".to_owned(),
        project: "proj".to_owned(),
        tier: "weak".to_owned(),
        model: model.to_owned(),
        provider: "test".to_owned(),
        price_id: 0,
        prompt_tokens: tokens,
        completion_tokens: tokens,
        cost_usd: Decimal::ZERO,
        usage_source: source,
        latency_ms: 1,
        retry: false,
        booking: Booking::at(at),
    }
}

/// A provider batch line of attempt 0 of `job_id`'s `item` on the weak tier, booked under
/// `call`, with no work message and no hold, of 100 tokens.
pub fn batch_line(
    call: &str,
    job_id: &str,
    item: &str,
) -> switchyard_store::provider_batches::NewLine {
    switchyard_store::provider_batches::NewLine {
        call_id: call.to_owned(),
        job_id: job_id.to_owned(),
        item_id: item.to_owned(),
        attempt: 0,
        work: Vec::new(),
        tier: "weak".to_owned(),
        reservation_id: None,
        priced_at: Utc::now(),
        tokens: 100,
    }
}
