//! What the store's integration tests share: a job with queued items, a price, exact amounts.
#![allow(dead_code, reason = "each test binary uses part of it")]

use chrono::{TimeZone, Utc};
use sqlx::PgPool;
use switchyard_store::prices::{self, NewPrice};

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
