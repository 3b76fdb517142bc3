//! Job rows and their life cycle.
//!
//! `ingesting` (items being stored and scored) → `dispatching` (routed, being published) →
//! `running` (all items on their tiers) → `completed` (every item answered) or `partial`
//! (some failed for good). A job can also be `rejected` (bad input, with a reason),
//! `cancelled`, or `failed` (the fleet gave up on it: its message ran out of deliveries, or a
//! sweep found it could not be finished; the reason is kept, see [`fail`]).
//!
//! `progress_at` says when a job was last seen to move (dispatchers touch it when they take a
//! job, and at each change of state; the sweep in `dispatcher/src/sweeper.rs` compares what it
//! sees of the open items between looks): a job not final whose progress is older than the
//! sweep's `stuck_after` is looked at (see [`crate::sweep`]).

use serde::Serialize;
use sqlx::PgPool;

/// Job states (the `jobs.status` column).
pub mod status {
    pub const INGESTING: &str = "ingesting";
    pub const DISPATCHING: &str = "dispatching";
    pub const RUNNING: &str = "running";
    pub const COMPLETED: &str = "completed";
    pub const PARTIAL: &str = "partial";
    pub const FAILED: &str = "failed";
    pub const REJECTED: &str = "rejected";
    pub const CANCELLED: &str = "cancelled";

    /// True for states a job never leaves (`retry --failed` reopens `partial` and
    /// `completed` jobs: a new run of some items, not a way out of the state).
    pub fn is_final(s: &str) -> bool {
        matches!(s, COMPLETED | PARTIAL | FAILED | REJECTED | CANCELLED)
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
    /// The stream sequence of the job message that brings it (see `jobs.message_seq`).
    pub message_seq: Option<i64>,
    /// The spec's deadline, seconds after admission (`jobs.deadline_at` is fixed from it).
    pub deadline_secs: Option<i64>,
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
         policy, labels, message_seq, status, deadline_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'ingesting', \
                 date_trunc('second', now() + $11 * interval '1 second')) \
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
    .bind(job.message_seq)
    .bind(job.deadline_secs)
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

/// Records a rejected job with its reason: a row where no job has the id. With
/// `own_ingest` (the caller's message admitted the job and its ingest stopped halfway, its
/// items removed by [`clear_rejected_ingest`]), a job still `ingesting` becomes rejected too.
/// Otherwise an existing job is left alone whatever its state (the dead letter keeps the
/// reason): the rejected message may be anyone's that names the id, a malformed one or
/// another team's, and must not end the job that owns it. The caller records the dead letter
/// first, so whoever sees the job `rejected` finds its dead letter too. True when a row was
/// written.
///
/// # Errors
/// Database errors only.
pub async fn record_rejection(
    pool: &PgPool,
    job_id: &str,
    team: &str,
    project: &str,
    reason: &str,
    own_ingest: bool,
) -> sqlx::Result<bool> {
    let n = sqlx::query(
        "INSERT INTO jobs (job_id, team, project, status, rejection_reason, finished_at) \
         VALUES ($1, $2, $3, 'rejected', $4, now()) \
         ON CONFLICT (job_id) DO UPDATE SET status = 'rejected', \
           rejection_reason = EXCLUDED.rejection_reason, idempotency_key = NULL, \
           finished_at = now() \
         WHERE $5 AND jobs.status = 'ingesting'",
    )
    .bind(job_id)
    .bind(team)
    .bind(project)
    .bind(reason)
    .bind(own_ingest)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Removes the stored items of an `ingesting` job rejected after some of them were stored
/// (e.g. a duplicate item id found halfway through a large input); the rejection itself is
/// recorded after its dead letter ([`record_rejection`]). A job in any other state is left
/// alone: the message that failed may be a re-submission of a job id that is already
/// running or finished, which must not be disturbed.
///
/// # Errors
/// Database errors only.
pub async fn clear_rejected_ingest(pool: &PgPool, job_id: &str) -> sqlx::Result<()> {
    sqlx::query(
        "DELETE FROM items WHERE job_id = $1 \
         AND EXISTS (SELECT 1 FROM jobs WHERE job_id = $1 AND status = 'ingesting')",
    )
    .bind(job_id)
    .execute(pool)
    .await?;
    Ok(())
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
         routing_cut_seq = $4, routing_plan = $5, progress_at = now() \
         WHERE job_id = $1 AND status = 'ingesting'",
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
pub async fn mark_running<'e>(db: impl sqlx::PgExecutor<'e>, job_id: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE jobs SET status = 'running', dispatched_at = now(), progress_at = now(), \
         progress_mark = NULL WHERE job_id = $1 AND status = 'dispatching'",
    )
    .bind(job_id)
    .execute(db)
    .await?;
    Ok(())
}

/// Finishes a running job whose items all reached a final state; returns the new status if
/// this call finished it. Safe to call from many workers at once: one wins.
///
/// # Errors
/// Database errors only.
pub async fn complete_if_done<'e>(
    db: impl sqlx::PgExecutor<'e>,
    job_id: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "UPDATE jobs SET finished_at = now(), status = CASE WHEN EXISTS \
           (SELECT 1 FROM items WHERE job_id = $1 AND status = 'failed') \
           THEN 'partial' ELSE 'completed' END \
         WHERE job_id = $1 AND status = 'running' AND NOT EXISTS \
           (SELECT 1 FROM items WHERE job_id = $1 AND status IN ('pending', 'queued')) \
         RETURNING status",
    )
    .bind(job_id)
    .fetch_optional(db)
    .await
}

/// What [`fail`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failing {
    /// The job is now `failed` (a row was created for a job that had none), its open items
    /// failed with it.
    Failed,
    /// The job had already reached this state and was left alone (a message of a job that is
    /// running or finished under the same id must not disturb it).
    LeftAlone(String),
}

/// Fails a job the fleet gave up on, with `reason`: an `ingesting` or `dispatching` job, or
/// one with no row yet (its message ran out of deliveries before it was admitted). Its items
/// still open (stored, maybe published, not answered) fail too, with `job failed: <reason>`:
/// the job is final, so nothing may wait for them, and workers that receive them call nothing.
/// Its idempotency key is released, so the same submission can be made again.
///
/// # Errors
/// Database errors only; nothing is changed then.
pub async fn fail(
    pool: &PgPool,
    job_id: &str,
    team: &str,
    project: &str,
    reason: &str,
) -> sqlx::Result<Failing> {
    let mut conn = pool.acquire().await?;
    fail_in(&mut conn, job_id, team, project, reason).await
}

/// [`fail`] on the caller's connection (a sweep works on its job lock's connection).
///
/// # Errors
/// Database errors only; nothing is changed then.
pub async fn fail_in(
    conn: &mut sqlx::PgConnection,
    job_id: &str,
    team: &str,
    project: &str,
    reason: &str,
) -> sqlx::Result<Failing> {
    use sqlx::Connection as _;
    let mut tx = conn.begin().await?;
    let created = sqlx::query(
        "INSERT INTO jobs (job_id, team, project, status, failure_reason, finished_at) \
         VALUES ($1, $2, $3, 'failed', $4, now()) ON CONFLICT DO NOTHING",
    )
    .bind(job_id)
    .bind(team)
    .bind(project)
    .bind(reason)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if created == 1 {
        tx.commit().await?;
        return Ok(Failing::Failed);
    }
    let failed = sqlx::query(
        "UPDATE jobs SET status = 'failed', failure_reason = $2, idempotency_key = NULL, \
         finished_at = now(), progress_at = now() \
         WHERE job_id = $1 AND status IN ('ingesting', 'dispatching')",
    )
    .bind(job_id)
    .bind(reason)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if failed == 0 {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM jobs WHERE job_id = $1")
                .bind(job_id)
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        return Ok(match status.as_deref() {
            Some(status::FAILED) | None => Failing::Failed,
            Some(other) => Failing::LeftAlone(other.to_owned()),
        });
    }
    sqlx::query(
        "UPDATE items SET status = 'failed', error = 'job failed: ' || $2, updated_at = now() \
         WHERE job_id = $1 AND status IN ('pending', 'queued')",
    )
    .bind(job_id)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Failing::Failed)
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
    /// Why the fleet gave up on a `failed` job.
    pub failure_reason: Option<String>,
    pub routing_cut: Option<f32>,
    pub routing_cut_seq: Option<i64>,
    pub policy: Option<serde_json::Value>,
    pub task: Option<serde_json::Value>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When the job must be done (a job with a deadline); `None`: real time.
    pub deadline_at: Option<chrono::DateTime<chrono::Utc>>,
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

/// A job's deadline in Unix seconds, if it has one.
///
/// # Errors
/// Database errors only.
pub async fn deadline_unix(pool: &PgPool, job_id: &str) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar("SELECT extract(epoch FROM deadline_at)::bigint FROM jobs WHERE job_id = $1")
        .bind(job_id)
        .fetch_optional(pool)
        .await
        .map(Option::flatten)
}

/// One job by id.
///
/// # Errors
/// Database errors only.
pub async fn get(pool: &PgPool, job_id: &str) -> sqlx::Result<Option<JobRow>> {
    sqlx::query_as(
        "SELECT job_id, team, project, task_kind, status, item_count, rejection_reason, \
         failure_reason, routing_cut, routing_cut_seq, policy, task, created_at, finished_at, \
         deadline_at \
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
/// them for re-publishing (`switchyard retry --failed`). Only `partial`, `completed` and
/// `running` jobs are reopened: a `failed` job may have items that were never stored, and a
/// `rejected` or `cancelled` one is over.
///
/// The items are committed `queued` (at a new attempt) before their messages are published,
/// and that order is the only one that works: a message published first would reach a worker
/// while its item is still `failed` at the old attempt, and the worker's claim would settle it
/// without a call. A crash between the commit and the publishes leaves items `queued` with no
/// message; the job is `running` with no progress, and a dispatcher's sweep re-publishes them
/// (the job's `progress_at` is touched here, so the sweep's clock starts now).
///
/// # Errors
/// Database errors only.
pub async fn reopen_failed(pool: &PgPool, job_id: &str) -> sqlx::Result<Vec<ReopenedItem>> {
    let mut tx = pool.begin().await?;
    let items: Vec<ReopenedItem> = sqlx::query_as(
        "UPDATE items SET status = 'queued', error = NULL, updated_at = now(), \
         attempt = n.next_attempt, attempt_tier = NULL \
         FROM (SELECT i.item_id, GREATEST( \
           COALESCE((SELECT max(r.attempt) FROM results r \
             WHERE r.job_id = i.job_id AND r.item_id = i.item_id AND r.attempt < 1000), 0), \
           COALESCE(i.final_attempt, 0), i.attempt) + 1 AS next_attempt \
           FROM items i WHERE i.job_id = $1 AND i.status = 'failed') n \
         WHERE items.job_id = $1 AND items.item_id = n.item_id AND items.status = 'failed' \
         AND EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = $1 AND j.purged_at IS NULL \
           AND j.status IN ('partial', 'completed', 'running')) \
         RETURNING items.item_id, items.text, items.sensitivity, items.routed_tier, \
           n.next_attempt",
    )
    .bind(job_id)
    .fetch_all(&mut *tx)
    .await?;
    if !items.is_empty() {
        sqlx::query(
            "UPDATE jobs SET status = 'running', finished_at = NULL, progress_at = now(), \
             progress_mark = NULL WHERE job_id = $1 AND status IN ('partial', 'completed', 'running')",
        )
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(items)
}
