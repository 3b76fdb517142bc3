//! Jobs the fleet gives up on, and what a stuck-job sweep reads, against a real Postgres (a
//! database per test).
#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::time::Duration;

use sqlx::PgPool;
use switchyard_store::jobs::{self, Failing};
use switchyard_store::sweep;
use switchyard_testkit::TestDb;

mod common;
use common::job_with_items;

const JOB: &str = "job-s";

/// A job in `status` with items `item-1..=n`, queued at attempt 0.
async fn setup(status: &str, n: i64) -> TestDb {
    let db = TestDb::new().await;
    job_with_items(&db.pool, JOB, status, n).await;
    db
}

async fn statuses(pool: &PgPool) -> (String, Option<String>, Vec<String>) {
    let (status, reason, key): (String, Option<String>, Option<String>) = sqlx::query_as(
        "SELECT status, failure_reason, idempotency_key FROM jobs WHERE job_id = $1",
    )
    .bind(JOB)
    .fetch_one(pool)
    .await
    .unwrap();
    let items: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT status FROM items WHERE job_id = $1 ORDER BY 1")
            .bind(JOB)
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(
        key.is_none(),
        status == "failed",
        "a failed job frees its key"
    );
    (status, reason, items)
}

#[tokio::test]
async fn a_dispatching_job_fails_with_its_open_items_and_reason() {
    let db = setup("dispatching", 3).await;
    let got = jobs::fail(&db.pool, JOB, "team", "proj", "input gone")
        .await
        .unwrap();
    assert_eq!(got, Failing::Failed);
    assert_eq!(
        statuses(&db.pool).await,
        (
            "failed".into(),
            Some("input gone".into()),
            vec!["failed".into()]
        )
    );
    // Failing again changes nothing and says so.
    assert_eq!(
        jobs::fail(&db.pool, JOB, "team", "proj", "other")
            .await
            .unwrap(),
        Failing::Failed
    );
    assert_eq!(statuses(&db.pool).await.1, Some("input gone".into()));
}

#[tokio::test]
async fn a_running_job_is_left_alone_by_a_message_that_gives_up() {
    let db = setup("running", 2).await;
    let got = jobs::fail(&db.pool, JOB, "team", "proj", "late copy")
        .await
        .unwrap();
    assert_eq!(got, Failing::LeftAlone("running".into()));
    assert_eq!(
        statuses(&db.pool).await,
        ("running".into(), None, vec!["queued".into()])
    );
}

#[tokio::test]
async fn a_job_never_admitted_gets_a_failed_row() {
    let db = TestDb::new().await;
    assert_eq!(
        jobs::fail(&db.pool, "ghost", "team", "proj", "postgres was down")
            .await
            .unwrap(),
        Failing::Failed
    );
    let (status, reason): (String, Option<String>) =
        sqlx::query_as("SELECT status, failure_reason FROM jobs WHERE job_id = 'ghost'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), reason.as_deref()),
        ("failed", Some("postgres was down"))
    );
}

#[tokio::test]
async fn lost_attempts_leave_out_answered_failed_and_live_ones() {
    let db = setup("running", 4).await;
    let pool = &db.pool;
    // item-1: answered; item-2: its attempt dead-lettered; item-3: a live worker calls it;
    // item-4: nothing works on it.
    sqlx::query(
        "INSERT INTO results (job_id, item_id, attempt, tier, model, answer, confidence, \
         escalated, call_id) VALUES ($1, 'item-1', 0, 'weak', 'm', 'A', 0.9, false, 'c-1')",
    )
    .bind(JOB)
    .execute(pool)
    .await
    .unwrap();
    let key = format!("item:{}:{JOB}:item-2:0", JOB.len());
    sqlx::query(
        "INSERT INTO dead_letters (message_key, kind, job_id, item_id, attempt, subject, error) \
         VALUES ($1, 'item', $2, 'item-2', 0, 's', 'e')",
    )
    .bind(&key)
    .bind(JOB)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO worker_leases (owner, expires_at) \
         VALUES ('w-live', now() + interval '1 minute')",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO call_intents (call_id, job_id, item_id, attempt, team, project, tier, \
         model, provider, owner, prompt_bound, max_tokens) \
         VALUES ('c-3', $1, 'item-3', 0, 'team', 'proj', 'weak', 'm', 'p', 'w-live', 10, 10)",
    )
    .bind(JOB)
    .execute(pool)
    .await
    .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let lease = Duration::from_secs(30);
    let lost = sweep::lost_attempts(&mut conn, JOB, lease, -1, 100)
        .await
        .unwrap();
    let ids: Vec<&str> = lost.iter().map(|l| l.item_id.as_str()).collect();
    assert_eq!(ids, ["item-4"]);
    assert!(sweep::has_live_intent(&mut conn, JOB, lease).await.unwrap());
    assert_eq!(sweep::open_mark(&mut conn, JOB).await.unwrap(), "4:0");
}

/// A job rejected halfway through its input: its stored items go first, the rejection after
/// its dead letter (the caller's order), so nobody sees it `rejected` without its reason. A
/// job past ingest under the same id is left alone by both steps.
#[tokio::test]
async fn a_job_rejected_during_ingest_loses_its_items_then_records_its_reason() {
    let db = setup("ingesting", 3).await;
    jobs::clear_rejected_ingest(&db.pool, JOB).await.unwrap();
    let (status, _, items) = statuses(&db.pool).await;
    assert_eq!((status.as_str(), items.len()), ("ingesting", 0));
    // Another message naming the id (malformed, another content, another team's) is
    // rejected without touching the job, though it is `ingesting`.
    assert!(
        !jobs::record_rejection(&db.pool, JOB, "other-team", "proj", "bad message", false)
            .await
            .unwrap()
    );
    assert_eq!(statuses(&db.pool).await.0, "ingesting");
    assert!(
        jobs::record_rejection(&db.pool, JOB, "team", "proj", "item 2 too big", true)
            .await
            .unwrap()
    );
    let (status, reason, key): (String, Option<String>, Option<String>) = sqlx::query_as(
        "SELECT status, rejection_reason, idempotency_key FROM jobs WHERE job_id = $1",
    )
    .bind(JOB)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), reason.as_deref(), key),
        ("rejected", Some("item 2 too big"), None)
    );

    let running = setup("dispatching", 2).await;
    jobs::clear_rejected_ingest(&running.pool, JOB)
        .await
        .unwrap();
    assert!(
        !jobs::record_rejection(&running.pool, JOB, "team", "proj", "a re-submission", true)
            .await
            .unwrap()
    );
    assert_eq!(
        statuses(&running.pool).await,
        ("dispatching".into(), None, vec!["queued".into()])
    );
}
