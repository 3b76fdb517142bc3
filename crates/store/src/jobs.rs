//! Job rows and their life cycle.
//!
//! `ingesting` (items being stored and scored) → `dispatching` (routed, being published) →
//! `running` (all items on their tiers) → `completed` (every item answered) or `partial`
//! (some failed for good). A job can also be `rejected` (bad input, with a reason) or
//! `cancelled`.

use serde::Serialize;
use sqlx::PgPool;

/// Job states (the `jobs.status` column).
pub mod status {
    pub const INGESTING: &str = "ingesting";
    pub const DISPATCHING: &str = "dispatching";
    pub const RUNNING: &str = "running";
    pub const COMPLETED: &str = "completed";
    pub const PARTIAL: &str = "partial";
    pub const REJECTED: &str = "rejected";
    pub const CANCELLED: &str = "cancelled";

    /// True for states a job never leaves.
    pub fn is_final(s: &str) -> bool {
        matches!(s, COMPLETED | PARTIAL | REJECTED | CANCELLED)
    }
}

/// A job about to be stored.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub job_id: String,
    pub idempotency_key: String,
    pub spec_hash: String,
    pub team: String,
    pub project: String,
    pub task_kind: String,
    pub task: serde_json::Value,
    pub policy: serde_json::Value,
    pub labels: serde_json::Value,
}

/// What storing a job found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// The job is new and now `ingesting`.
    New,
    /// A job with this id or idempotency key exists.
    Existing {
        job_id: String,
        status: String,
        same_content: bool,
    },
}

/// Stores a new job, or reports the one that already holds its id or idempotency key.
///
/// # Errors
/// Database errors only.
pub async fn admit(pool: &PgPool, job: &NewJob) -> sqlx::Result<Admission> {
    let inserted = sqlx::query(
        "INSERT INTO jobs (job_id, idempotency_key, spec_hash, team, project, task_kind, task, \
         policy, labels, status) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'ingesting') \
         ON CONFLICT DO NOTHING",
    )
    .bind(&job.job_id)
    .bind(&job.idempotency_key)
    .bind(&job.spec_hash)
    .bind(&job.team)
    .bind(&job.project)
    .bind(&job.task_kind)
    .bind(&job.task)
    .bind(&job.policy)
    .bind(&job.labels)
    .execute(pool)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Admission::New);
    }
    let row: Option<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT job_id, status, spec_hash FROM jobs WHERE idempotency_key = $1 OR job_id = $2 \
         ORDER BY (idempotency_key = $1) DESC NULLS LAST LIMIT 1",
    )
    .bind(&job.idempotency_key)
    .bind(&job.job_id)
    .fetch_optional(pool)
    .await?;
    match row {
        Some((job_id, status, hash)) => Ok(Admission::Existing {
            same_content: hash.as_deref() == Some(job.spec_hash.as_str()),
            job_id,
            status,
        }),
        // Deleted in between (cannot happen: jobs are never deleted); report as new conflict.
        None => Ok(Admission::Existing {
            job_id: job.job_id.clone(),
            status: status::REJECTED.to_owned(),
            same_content: false,
        }),
    }
}

/// Records a rejected job with its reason. A job id that already belongs to an accepted job
/// is left alone (the dead letter keeps the reason).
///
/// # Errors
/// Database errors only.
pub async fn record_rejection(
    pool: &PgPool,
    job_id: &str,
    team: &str,
    project: &str,
    reason: &str,
) -> sqlx::Result<bool> {
    let n = sqlx::query(
        "INSERT INTO jobs (job_id, team, project, status, rejection_reason, finished_at) \
         VALUES ($1, $2, $3, 'rejected', $4, now()) ON CONFLICT DO NOTHING",
    )
    .bind(job_id)
    .bind(team)
    .bind(project)
    .bind(reason)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Marks an `ingesting` job rejected after some of its items were stored (e.g. a duplicate
/// item id found halfway through a large input), removing those items. A job in any other
/// state is left alone: the message that failed may be a re-submission of a job id that is
/// already running or finished, which must not be disturbed.
///
/// # Errors
/// Database errors only.
pub async fn reject_during_ingest(pool: &PgPool, job_id: &str, reason: &str) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "DELETE FROM items WHERE job_id = $1 \
         AND EXISTS (SELECT 1 FROM jobs WHERE job_id = $1 AND status = 'ingesting')",
    )
    .bind(job_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE jobs SET status = 'rejected', rejection_reason = $2, idempotency_key = NULL, \
         finished_at = now() WHERE job_id = $1 AND status = 'ingesting'",
    )
    .bind(job_id)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Records the routing decision and the plan (JSON of `switchyard_core::calibrate::Plan`)
/// and moves the job to `dispatching`.
///
/// # Errors
/// Database errors only.
pub async fn mark_ingested(
    pool: &PgPool,
    job_id: &str,
    item_count: i64,
    cut: Option<(f32, i64)>,
    plan: &serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE jobs SET status = 'dispatching', item_count = $2, routing_cut = $3, \
         routing_cut_seq = $4, routing_plan = $5 WHERE job_id = $1 AND status = 'ingesting'",
    )
    .bind(job_id)
    .bind(item_count)
    .bind(cut.map(|c| c.0))
    .bind(cut.map(|c| c.1))
    .bind(plan)
    .execute(pool)
    .await?;
    Ok(())
}

/// Moves a `dispatching` job to `running` (every item published).
///
/// (Not merged with [`complete_if_done`] into one statement: a worker finishing the last item
/// between that statement's snapshot and its commit would find the job still `dispatching`
/// and leave it, and the job would stay `running` with nothing left to answer.)
///
/// # Errors
/// Database errors only.
pub async fn mark_running(pool: &PgPool, job_id: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE jobs SET status = 'running', dispatched_at = now() \
         WHERE job_id = $1 AND status = 'dispatching'",
    )
    .bind(job_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Finishes a running job whose items all reached a final state; returns the new status if
/// this call finished it. Safe to call from many workers at once: one wins.
///
/// # Errors
/// Database errors only.
pub async fn complete_if_done(pool: &PgPool, job_id: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "UPDATE jobs SET finished_at = now(), status = CASE WHEN EXISTS \
           (SELECT 1 FROM items WHERE job_id = $1 AND status = 'failed') \
           THEN 'partial' ELSE 'completed' END \
         WHERE job_id = $1 AND status = 'running' AND NOT EXISTS \
           (SELECT 1 FROM items WHERE job_id = $1 AND status IN ('pending', 'queued')) \
         RETURNING status",
    )
    .bind(job_id)
    .fetch_optional(pool)
    .await
}

/// The columns `status` and the dispatcher need.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobRow {
    pub job_id: String,
    pub team: String,
    pub project: String,
    pub task_kind: Option<String>,
    pub status: String,
    pub item_count: Option<i64>,
    pub rejection_reason: Option<String>,
    pub routing_cut: Option<f32>,
    pub routing_cut_seq: Option<i64>,
    pub policy: Option<serde_json::Value>,
    pub task: Option<serde_json::Value>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The job holding an idempotency key, if any.
///
/// # Errors
/// Database errors only.
pub async fn by_idempotency_key(pool: &PgPool, key: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT job_id FROM jobs WHERE idempotency_key = $1")
        .bind(key)
        .fetch_optional(pool)
        .await
}

/// One job by id.
///
/// # Errors
/// Database errors only.
pub async fn get(pool: &PgPool, job_id: &str) -> sqlx::Result<Option<JobRow>> {
    sqlx::query_as(
        "SELECT job_id, team, project, task_kind, status, item_count, rejection_reason, \
         routing_cut, routing_cut_seq, policy, task, created_at, finished_at \
         FROM jobs WHERE job_id = $1",
    )
    .bind(job_id)
    .fetch_optional(pool)
    .await
}

/// Cancels a job that has not finished: items not yet answered are marked `cancelled` (workers
/// skip them). Returns the number of items cancelled, or `None` if the job is unknown or
/// already final.
///
/// # Errors
/// Database errors only.
pub async fn cancel(pool: &PgPool, job_id: &str) -> sqlx::Result<Option<u64>> {
    let mut tx = pool.begin().await?;
    let changed = sqlx::query(
        "UPDATE jobs SET status = 'cancelled', finished_at = now() WHERE job_id = $1 \
         AND status IN ('ingesting', 'dispatching', 'running')",
    )
    .bind(job_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if changed == 0 {
        tx.rollback().await?;
        return Ok(None);
    }
    let items = sqlx::query(
        "UPDATE items SET status = 'cancelled', updated_at = now() \
         WHERE job_id = $1 AND status IN ('pending', 'queued')",
    )
    .bind(job_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(Some(items))
}

/// Which of these jobs are cancelled (workers ask once per fetched batch).
///
/// # Errors
/// Database errors only.
pub async fn cancelled_among(pool: &PgPool, job_ids: &[String]) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT job_id FROM jobs WHERE job_id = ANY($1) AND status = 'cancelled'")
        .bind(job_ids)
        .fetch_all(pool)
        .await
}

/// A failed item put back in the queue, with the attempt number its retry uses (one past
/// every attempt it had, so result keys and message ids stay unique).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReopenedItem {
    pub item_id: String,
    pub text: String,
    pub sensitivity: Option<String>,
    pub routed_tier: Option<String>,
    pub next_attempt: i32,
}

/// Puts a finished job back to `running` and its failed items back to `queued`, returning
/// them for re-publishing (`switchyard retry --failed`).
///
/// # Errors
/// Database errors only.
pub async fn reopen_failed(pool: &PgPool, job_id: &str) -> sqlx::Result<Vec<ReopenedItem>> {
    let mut tx = pool.begin().await?;
    let items: Vec<ReopenedItem> = sqlx::query_as(
        "UPDATE items SET status = 'queued', error = NULL, updated_at = now() \
         WHERE job_id = $1 AND status = 'failed' \
         AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = $1 AND j.purged_at IS NOT NULL) \
         RETURNING item_id, text, sensitivity, routed_tier, GREATEST( \
           COALESCE((SELECT max(r.attempt) FROM results r \
             WHERE r.job_id = items.job_id AND r.item_id = items.item_id), 0), \
           COALESCE(final_attempt, 0)) + 1 AS next_attempt",
    )
    .bind(job_id)
    .fetch_all(&mut *tx)
    .await?;
    if !items.is_empty() {
        sqlx::query(
            "UPDATE jobs SET status = 'running', finished_at = NULL \
             WHERE job_id = $1 AND status IN ('partial', 'completed', 'running')",
        )
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(items)
}
