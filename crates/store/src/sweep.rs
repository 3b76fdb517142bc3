//! What a dispatcher's stuck-job sweep reads and writes (`dispatcher/src/sweeper.rs`).
//!
//! A job is looked at when it is not finished and its `progress_at` is older than the sweep's
//! `stuck_after` ([`candidates`]). Whether a `running` job moved is judged without any write
//! on the workers' commit path: the sweep keeps a mark of the job's open items (how many, and
//! the sum of their current attempts, [`open_mark`]) in `jobs.progress_mark`; an item that
//! finishes, fails, escalates or is retried changes it. A mark that changed between two looks
//! is progress ([`record_mark`]); one that did not, with no live worker calling any of the
//! job's items ([`has_live_intent`]), is a stuck job.
//!
//! Functions that take a connection run on the job lock's own connection (a sweep holds one
//! connection, however busy the pool is).

use std::time::Duration;

use sqlx::{PgConnection, PgPool};

/// A job the sweep may look at.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Candidate {
    pub job_id: String,
    pub status: String,
}

/// Unfinished jobs whose progress was last seen more than `stuck_after` ago, oldest first.
///
/// # Errors
/// Database errors only.
pub async fn candidates(
    pool: &PgPool,
    stuck_after: Duration,
    limit: i64,
) -> sqlx::Result<Vec<Candidate>> {
    sqlx::query_as(
        "SELECT job_id, status FROM jobs \
         WHERE status IN ('ingesting', 'dispatching', 'running') \
         AND progress_at < now() - make_interval(secs => $1) \
         ORDER BY progress_at LIMIT $2",
    )
    .bind(stuck_after.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// A job as the sweep sees it once it holds the job's lock.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SweptJob {
    pub job_id: String,
    pub status: String,
    /// Still no progress for `stuck_after` (another sweep or a dispatcher may have moved it
    /// since it was picked).
    pub quiet: bool,
    pub team: String,
    pub project: String,
    pub task: Option<serde_json::Value>,
    pub policy: Option<serde_json::Value>,
    pub item_count: Option<i64>,
    pub message_seq: Option<i64>,
    pub progress_mark: Option<String>,
    /// A quality job's stored stage (`jobs.routing_plan`): its first messages carry the
    /// stage's rule, so a re-published one must too.
    pub routing_plan: Option<serde_json::Value>,
    /// The job's deadline in Unix seconds: a re-published message carries it as the first
    /// did.
    pub deadline_unix: Option<i64>,
}

/// Reads the job again (under its lock).
///
/// # Errors
/// Database errors only.
pub async fn job(
    conn: &mut PgConnection,
    job_id: &str,
    stuck_after: Duration,
) -> sqlx::Result<Option<SweptJob>> {
    sqlx::query_as(
        "SELECT job_id, status, progress_at < now() - make_interval(secs => $2) AS quiet, team, \
         project, task, policy, item_count, message_seq, progress_mark, routing_plan, \
         extract(epoch FROM deadline_at)::bigint AS deadline_unix \
         FROM jobs WHERE job_id = $1",
    )
    .bind(job_id)
    .bind(stuck_after.as_secs_f64())
    .fetch_optional(conn)
    .await
}

/// True when a live worker holds an intent on one of the job's items: it is calling it now
/// (`grace`: the workers' lease period, see `owner_is_gone` in the migrations).
///
/// # Errors
/// Database errors only.
pub async fn has_live_intent(
    conn: &mut PgConnection,
    job_id: &str,
    grace: Duration,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM call_intents c WHERE c.job_id = $1 \
         AND NOT owner_is_gone(c.owner, make_interval(secs => $2)))",
    )
    .bind(job_id)
    .bind(grace.as_secs_f64())
    .fetch_one(conn)
    .await
}

/// The mark of a job's open items: `<how many>:<sum of their current attempts>`. It reads
/// only the open items (the `items_open` index), and changes whenever one of them finishes,
/// fails, moves to another attempt, or a retry reopens items.
///
/// # Errors
/// Database errors only.
pub async fn open_mark(conn: &mut PgConnection, job_id: &str) -> sqlx::Result<String> {
    let (open, attempts): (i64, i64) = sqlx::query_as(
        "SELECT count(*), COALESCE(sum(attempt), 0)::int8 FROM items \
         WHERE job_id = $1 AND status IN ('pending', 'queued')",
    )
    .bind(job_id)
    .fetch_one(conn)
    .await?;
    Ok(format!("{open}:{attempts}"))
}

/// Keeps `mark` as what the sweep saw of the job, and counts now as progress (the job moved,
/// or a sweep just did something about it: it is looked at again after `stuck_after`).
///
/// # Errors
/// Database errors only.
pub async fn record_mark(
    conn: &mut PgConnection,
    job_id: &str,
    mark: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE jobs SET progress_at = now(), progress_mark = COALESCE($2, progress_mark) \
         WHERE job_id = $1",
    )
    .bind(job_id)
    .bind(mark)
    .execute(conn)
    .await?;
    Ok(())
}

/// How many of a job's items are stored.
///
/// # Errors
/// Database errors only.
pub async fn stored_items(conn: &mut PgConnection, job_id: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM items WHERE job_id = $1")
        .bind(job_id)
        .fetch_one(conn)
        .await
}

/// An item's current attempt that nothing is working on: its message was lost.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LostAttempt {
    pub item_id: String,
    pub seq: i64,
    pub text: String,
    pub sensitivity: Option<String>,
    /// `items.attempt`.
    pub attempt: i32,
    /// Where it runs: `items.attempt_tier`, else the routed tier.
    pub tier: Option<String>,
    /// Earlier attempts of the item whose answer escalated (used up escalations).
    pub escalations: i64,
    /// The router's score at ingest (`items.router_score`), sent with a quality job's rule.
    pub router_score: f32,
}

/// Up to `limit` open items of a job (with `seq > after_seq`, in input order) whose current
/// attempt has no result, no recorded failure, no intent of a live worker (`grace`: the
/// workers' lease period) and is not parked for budget: nothing will ever answer them unless
/// their message is published again.
///
/// # Errors
/// Database errors only.
pub async fn lost_attempts(
    conn: &mut PgConnection,
    job_id: &str,
    grace: Duration,
    after_seq: i64,
    limit: i64,
) -> sqlx::Result<Vec<LostAttempt>> {
    sqlx::query_as(
        "SELECT i.item_id, i.seq, i.text, i.sensitivity, i.attempt, \
         COALESCE(i.attempt_tier, i.routed_tier) AS tier, \
         (SELECT count(*) FROM results e WHERE e.job_id = i.job_id AND e.item_id = i.item_id \
           AND e.attempt < i.attempt AND e.escalated) AS escalations, i.router_score \
         FROM items i WHERE i.job_id = $1 AND i.status IN ('pending', 'queued') \
         AND i.seq > $3 \
         AND NOT EXISTS (SELECT 1 FROM results r WHERE r.job_id = i.job_id \
           AND r.item_id = i.item_id AND r.attempt = i.attempt) \
         AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.message_key = 'item:' || \
           octet_length(i.job_id) || ':' || i.job_id || ':' || i.item_id || ':' || i.attempt) \
         AND NOT EXISTS (SELECT 1 FROM call_intents c WHERE c.job_id = i.job_id \
           AND c.item_id = i.item_id AND c.attempt = i.attempt \
           AND NOT owner_is_gone(c.owner, make_interval(secs => $2))) \
         AND NOT EXISTS (SELECT 1 FROM budget_parked k WHERE k.job_id = i.job_id \
           AND k.item_id = i.item_id AND k.attempt = i.attempt) \
         ORDER BY i.seq LIMIT $4",
    )
    .bind(job_id)
    .bind(grace.as_secs_f64())
    .bind(after_seq)
    .bind(limit)
    .fetch_all(conn)
    .await
}
