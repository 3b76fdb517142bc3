//! What the OpenAI-compatible Batch API keeps in Postgres: API keys (hashed), files (the
//! bytes are in the object store; the rows say whose they are) and batches.
//!
//! Every read takes the caller's team: another team's file or batch is simply not found,
//! which the API answers with 404, as for an id that never existed.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// An API key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyRow {
    pub key_id: String,
    pub team: String,
    pub name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Stores a new key whose secret hashes to `secret_sha256`.
///
/// # Errors
/// Database errors.
pub async fn insert_key(
    pool: &PgPool,
    key_id: &str,
    team: &str,
    name: Option<&str>,
    secret_sha256: &[u8],
) -> sqlx::Result<KeyRow> {
    sqlx::query_as(
        "INSERT INTO api_keys (key_id, team, name, secret_sha256) VALUES ($1, $2, $3, $4)
         RETURNING key_id, team, name, created_at, revoked_at",
    )
    .bind(key_id)
    .bind(team)
    .bind(name)
    .bind(secret_sha256)
    .fetch_one(pool)
    .await
}

/// The live (not revoked) key whose secret hashes to `secret_sha256`.
///
/// # Errors
/// Database errors.
pub async fn key_by_secret(pool: &PgPool, secret_sha256: &[u8]) -> sqlx::Result<Option<KeyRow>> {
    sqlx::query_as(
        "SELECT key_id, team, name, created_at, revoked_at FROM api_keys
         WHERE secret_sha256 = $1 AND revoked_at IS NULL",
    )
    .bind(secret_sha256)
    .fetch_optional(pool)
    .await
}

/// Every key (of `team`, when given), oldest first.
///
/// # Errors
/// Database errors.
pub async fn list_keys(pool: &PgPool, team: Option<&str>) -> sqlx::Result<Vec<KeyRow>> {
    sqlx::query_as(
        "SELECT key_id, team, name, created_at, revoked_at FROM api_keys
         WHERE $1::text IS NULL OR team = $1 ORDER BY created_at, key_id",
    )
    .bind(team)
    .fetch_all(pool)
    .await
}

/// Revokes a key; `false` when there is no such key. Revoking twice keeps the first time.
///
/// # Errors
/// Database errors.
pub async fn revoke_key(pool: &PgPool, key_id: &str) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = $1",
    )
    .bind(key_id)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// A page of at most `limit` of `rows` (fetched `limit + 1`), and whether there were more.
fn page<T>(mut rows: Vec<T>, limit: i64) -> (Vec<T>, bool) {
    let more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    (rows, more)
}

/// A stored file.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FileRow {
    pub file_id: String,
    pub team: String,
    pub purpose: String,
    pub filename: String,
    pub bytes: i64,
    pub object_name: String,
    pub created_at: DateTime<Utc>,
}

const FILE_COLUMNS: &str = "file_id, team, purpose, filename, bytes, object_name, created_at";

/// Records a file whose bytes are already in the object store.
///
/// # Errors
/// Database errors.
pub async fn insert_file(pool: &PgPool, f: &FileRow) -> sqlx::Result<FileRow> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO api_files (file_id, team, purpose, filename, bytes, object_name)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {FILE_COLUMNS}"
    )))
    .bind(&f.file_id)
    .bind(&f.team)
    .bind(&f.purpose)
    .bind(&f.filename)
    .bind(f.bytes)
    .bind(&f.object_name)
    .fetch_one(pool)
    .await
}

/// `team`'s file, unless deleted.
///
/// # Errors
/// Database errors.
pub async fn file(pool: &PgPool, team: &str, file_id: &str) -> sqlx::Result<Option<FileRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {FILE_COLUMNS} FROM api_files
         WHERE team = $1 AND file_id = $2 AND deleted_at IS NULL"
    )))
    .bind(team)
    .bind(file_id)
    .fetch_optional(pool)
    .await
}

/// A page of `team`'s files, newest first, after the cursor `after` (a file id), at most
/// `limit`; one more is fetched to tell whether there are more.
///
/// # Errors
/// Database errors.
pub async fn list_files(
    pool: &PgPool,
    team: &str,
    purpose: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> sqlx::Result<(Vec<FileRow>, bool)> {
    let rows: Vec<FileRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {FILE_COLUMNS} FROM api_files
         WHERE team = $1 AND deleted_at IS NULL
           AND ($2::text IS NULL OR purpose = $2)
           AND ($3::text IS NULL OR file_id < $3)
         ORDER BY file_id DESC LIMIT $4"
    )))
    .bind(team)
    .bind(purpose)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page(rows, limit))
}

/// Marks `team`'s file deleted and returns it (its object is the caller's to remove);
/// `None` when there is no such live file.
///
/// # Errors
/// Database errors.
pub async fn delete_file(
    pool: &PgPool,
    team: &str,
    file_id: &str,
) -> sqlx::Result<Option<FileRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE api_files SET deleted_at = now()
         WHERE team = $1 AND file_id = $2 AND deleted_at IS NULL RETURNING {FILE_COLUMNS}"
    )))
    .bind(team)
    .bind(file_id)
    .fetch_optional(pool)
    .await
}

/// A batch as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct BatchRow {
    pub batch_id: String,
    pub team: String,
    pub key_id: String,
    pub input_file_id: String,
    pub endpoint: String,
    pub completion_window: String,
    pub metadata: Option<serde_json::Value>,
    pub status: String,
    pub errors: Option<serde_json::Value>,
    pub job_id: Option<String>,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub request_total: i64,
    pub request_completed: i64,
    pub request_failed: i64,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub in_progress_at: Option<DateTime<Utc>>,
    pub finalizing_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub failed_at: Option<DateTime<Utc>>,
    pub expired_at: Option<DateTime<Utc>>,
    pub cancelling_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
}

const BATCH_COLUMNS: &str = "batch_id, team, key_id, input_file_id, endpoint, completion_window, \
     metadata, status, errors, job_id, output_file_id, error_file_id, request_total, \
     request_completed, request_failed, created_at, \
     expires_at, in_progress_at, finalizing_at, completed_at, failed_at, expired_at, \
     cancelling_at, cancelled_at";

/// What a new batch is made of.
#[derive(Debug, Clone)]
pub struct NewBatch<'a> {
    pub batch_id: &'a str,
    pub team: &'a str,
    pub key_id: &'a str,
    pub input_file_id: &'a str,
    pub endpoint: &'a str,
    pub completion_window: &'a str,
    pub metadata: Option<serde_json::Value>,
    /// How long it may take (its completion window).
    pub window: std::time::Duration,
}

/// Creates a batch in `validating`, leased to `owner` for `lease` (the validation it is
/// about to run).
///
/// # Errors
/// Database errors.
pub async fn insert_batch(
    pool: &PgPool,
    b: &NewBatch<'_>,
    owner: &str,
    lease: std::time::Duration,
) -> sqlx::Result<BatchRow> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO api_batches (batch_id, team, key_id, input_file_id, endpoint,
             completion_window, metadata, status, expires_at, lease_owner, lease_until)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'validating', now() + $8, $9, now() + $10)
         RETURNING {BATCH_COLUMNS}"
    )))
    .bind(b.batch_id)
    .bind(b.team)
    .bind(b.key_id)
    .bind(b.input_file_id)
    .bind(b.endpoint)
    .bind(b.completion_window)
    .bind(&b.metadata)
    .bind(b.window)
    .bind(owner)
    .bind(lease)
    .fetch_one(pool)
    .await
}

/// `team`'s batch.
///
/// # Errors
/// Database errors.
pub async fn batch(pool: &PgPool, team: &str, batch_id: &str) -> sqlx::Result<Option<BatchRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {BATCH_COLUMNS} FROM api_batches WHERE team = $1 AND batch_id = $2"
    )))
    .bind(team)
    .bind(batch_id)
    .fetch_optional(pool)
    .await
}

/// A page of `team`'s batches, newest first, after the cursor `after`.
///
/// # Errors
/// Database errors.
pub async fn list_batches(
    pool: &PgPool,
    team: &str,
    after: Option<&str>,
    limit: i64,
) -> sqlx::Result<(Vec<BatchRow>, bool)> {
    let rows: Vec<BatchRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {BATCH_COLUMNS} FROM api_batches
         WHERE team = $1 AND ($2::text IS NULL OR batch_id < $2)
         ORDER BY batch_id DESC LIMIT $3"
    )))
    .bind(team)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page(rows, limit))
}

/// Fails a batch still `validating` with the faults of its input file; `false` when it had
/// moved on (cancelled meanwhile, or another process finished the step).
///
/// # Errors
/// Database errors.
pub async fn fail_validation(
    pool: &PgPool,
    batch_id: &str,
    errors: &serde_json::Value,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "UPDATE api_batches SET status = 'failed', failed_at = now(), errors = $2,
             lease_owner = NULL, lease_until = NULL
         WHERE batch_id = $1 AND status = 'validating'",
    )
    .bind(batch_id)
    .bind(errors)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Cancels `team`'s batch: a batch still validating is cancelled at once (nothing of it has
/// started); one in progress goes to `cancelling`, for its runner to finish. Returns the
/// batch as it is after the call (unchanged when it had already ended); `None` when there is
/// no such batch.
///
/// # Errors
/// Database errors.
pub async fn cancel_batch(
    pool: &PgPool,
    team: &str,
    batch_id: &str,
) -> sqlx::Result<Option<BatchRow>> {
    sqlx::query(
        "UPDATE api_batches SET
             status = CASE status WHEN 'validating' THEN 'cancelled' ELSE 'cancelling' END,
             cancelling_at = coalesce(cancelling_at, now()),
             cancelled_at = CASE status WHEN 'validating' THEN now() ELSE cancelled_at END
         WHERE team = $1 AND batch_id = $2 AND status IN ('validating', 'in_progress')",
    )
    .bind(team)
    .bind(batch_id)
    .execute(pool)
    .await?;
    batch(pool, team, batch_id).await
}

/// Takes over one batch whose validation nobody holds any more (its process died before
/// recording a verdict): leases it to `owner` for `lease` and returns it. Concurrent callers
/// get different batches (`SKIP LOCKED`).
///
/// # Errors
/// Database errors.
pub async fn claim_stale_validation(
    pool: &PgPool,
    owner: &str,
    lease: std::time::Duration,
) -> sqlx::Result<Option<BatchRow>> {
    claim(pool, owner, lease, &["validating"]).await
}

/// Leases to `owner` for `lease` one batch in one of `statuses` whose lease ran out (or that
/// has none), the longest due first. The one way a batch's next step is taken: concurrent
/// callers get different batches (`SKIP LOCKED`).
async fn claim(
    pool: &PgPool,
    owner: &str,
    lease: std::time::Duration,
    statuses: &[&str],
) -> sqlx::Result<Option<BatchRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE api_batches SET lease_owner = $1, lease_until = now() + $2
         WHERE batch_id = (
             SELECT batch_id FROM api_batches
             WHERE status = ANY($3) AND (lease_until IS NULL OR lease_until <= now())
             ORDER BY lease_until NULLS FIRST LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING {BATCH_COLUMNS}"
    )))
    .bind(owner)
    .bind(lease)
    .bind(statuses)
    .fetch_optional(pool)
    .await
}

/// Starts a batch whose file passed its checks: `in_progress`, running as `job_id`, with
/// `total` requests of which `prefailed` were refused before the job. Its next look is due
/// at once. `false` when the batch had moved on (cancelled while it was being checked).
///
/// # Errors
/// Database errors.
pub async fn started(
    pool: &PgPool,
    batch_id: &str,
    job_id: &str,
    total: i64,
    prefailed: i64,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "UPDATE api_batches SET status = 'in_progress', in_progress_at = now(), job_id = $2,
             request_total = $3, request_prefailed = $4, request_failed = $4,
             lease_owner = NULL, lease_until = now()
         WHERE batch_id = $1 AND status = 'validating'",
    )
    .bind(batch_id)
    .bind(job_id)
    .bind(total)
    .bind(prefailed)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Takes one running batch (in progress, cancelling or finalizing) whose next look is due,
/// leased to `owner` for `lease`. Concurrent callers get different batches.
///
/// # Errors
/// Database errors.
pub async fn claim_due_run(
    pool: &PgPool,
    owner: &str,
    lease: std::time::Duration,
) -> sqlx::Result<Option<BatchRow>> {
    claim(
        pool,
        owner,
        lease,
        &["in_progress", "cancelling", "finalizing"],
    )
    .await
}

/// Records a running batch's counts (from its job's items) and when it is looked at next.
///
/// # Errors
/// Database errors.
pub async fn progressed(
    pool: &PgPool,
    batch_id: &str,
    completed: i64,
    failed: i64,
    next_look: std::time::Duration,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE api_batches SET request_completed = $2, request_failed = request_prefailed + $3,
             lease_owner = NULL, lease_until = now() + $4
         WHERE batch_id = $1",
    )
    .bind(batch_id)
    .bind(completed)
    .bind(failed)
    .bind(next_look)
    .execute(pool)
    .await?;
    Ok(())
}

/// Marks a running batch past its window: it ends `expired` once its job has stopped.
///
/// # Errors
/// Database errors.
pub async fn expiring(pool: &PgPool, batch_id: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE api_batches SET expired_at = coalesce(expired_at, now()) WHERE batch_id = $1",
    )
    .bind(batch_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// A batch's job has stopped and its files are being written.
///
/// # Errors
/// Database errors.
pub async fn finalizing(pool: &PgPool, batch_id: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE api_batches SET status = 'finalizing',
             finalizing_at = coalesce(finalizing_at, now())
         WHERE batch_id = $1 AND status IN ('in_progress', 'finalizing')",
    )
    .bind(batch_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// How a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Completed,
    Cancelled,
    Expired,
    /// Its job was refused (`errors` says why).
    Failed,
}

/// Ends a running batch with its output and error files and final counts.
///
/// # Errors
/// Database errors.
#[allow(clippy::too_many_arguments)]
pub async fn finished(
    pool: &PgPool,
    batch_id: &str,
    ending: Ending,
    output_file_id: Option<&str>,
    error_file_id: Option<&str>,
    completed: i64,
    failed: i64,
    errors: Option<&serde_json::Value>,
) -> sqlx::Result<bool> {
    let status = match ending {
        Ending::Completed => "completed",
        Ending::Cancelled => "cancelled",
        Ending::Expired => "expired",
        Ending::Failed => "failed",
    };
    let r = sqlx::query(
        "UPDATE api_batches SET status = $2, output_file_id = $3, error_file_id = $4,
             request_completed = $5, request_failed = $6, errors = coalesce($7, errors),
             completed_at = CASE WHEN $2 = 'completed' THEN now() END,
             cancelled_at = CASE WHEN $2 = 'cancelled' THEN now() END,
             expired_at = CASE WHEN $2 = 'expired' THEN coalesce(expired_at, now()) END,
             failed_at = CASE WHEN $2 = 'failed' THEN now() END,
             lease_owner = NULL, lease_until = NULL
         WHERE batch_id = $1 AND status IN ('in_progress', 'cancelling', 'finalizing')",
    )
    .bind(batch_id)
    .bind(status)
    .bind(output_file_id)
    .bind(error_file_id)
    .bind(completed)
    .bind(failed)
    .bind(errors)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Records a file a batch wrote, unless a file of that id is already recorded (a
/// finalization taken over after its process died writes the same ids again).
///
/// # Errors
/// Database errors.
pub async fn insert_file_once(pool: &PgPool, f: &FileRow) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO api_files (file_id, team, purpose, filename, bytes, object_name)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (file_id) DO UPDATE SET bytes = EXCLUDED.bytes",
    )
    .bind(&f.file_id)
    .bind(&f.team)
    .bind(&f.purpose)
    .bind(&f.filename)
    .bind(f.bytes)
    .bind(&f.object_name)
    .execute(pool)
    .await?;
    Ok(())
}

/// Items of a job by state (`done`, `failed`, `queued`, …).
///
/// # Errors
/// Database errors.
pub async fn item_states(
    pool: &PgPool,
    job_id: &str,
) -> sqlx::Result<std::collections::BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM items WHERE job_id = $1 GROUP BY status")
            .bind(job_id)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

/// What a batch's output line is made of: one item of its job, its final answer and that
/// call's ledger entry, the item's total cost and the tiers its own attempts ran on.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ItemOutcome {
    pub item_id: String,
    pub status: String,
    pub error: Option<String>,
    pub answer: Option<String>,
    pub answer_raw: Option<String>,
    pub model: Option<String>,
    pub call_id: Option<String>,
    pub provider_response_id: Option<String>,
    pub prompt_tokens: Option<i32>,
    pub completion_tokens: Option<i32>,
    pub cached_prompt_tokens: Option<i32>,
    pub answered_at: Option<DateTime<Utc>>,
    pub finish_reason: Option<String>,
    pub cost_usd: rust_decimal::Decimal,
    pub tiers: Option<Vec<String>>,
}

/// Every item of `job_id` with what its output line needs.
///
/// # Errors
/// Database errors.
pub async fn item_outcomes(pool: &PgPool, job_id: &str) -> sqlx::Result<Vec<ItemOutcome>> {
    let mut rows: Vec<ItemOutcome> = sqlx::query_as(
        "SELECT i.item_id, i.status, i.error, r.answer,
             CASE WHEN r.answer_encoding IS NOT NULL THEN r.answer END AS answer_raw,
             r.model, r.call_id, l.provider_response_id, l.prompt_tokens, l.completion_tokens,
             l.cached_prompt_tokens, r.created_at AS answered_at, r.finish_reason,
             COALESCE(c.cost, 0) AS cost_usd, t.tiers
         FROM items i
         LEFT JOIN results r ON r.job_id = i.job_id AND r.item_id = i.item_id
           AND r.attempt = i.final_attempt AND i.status = 'done'
         LEFT JOIN ledger l ON l.call_id = r.call_id
         LEFT JOIN (SELECT item_id, sum(cost_usd) AS cost FROM ledger
           WHERE job_id = $1 GROUP BY item_id) c ON c.item_id = i.item_id
         LEFT JOIN (SELECT item_id, array_agg(tier ORDER BY attempt) AS tiers FROM results
           WHERE job_id = $1 AND attempt < 1000 GROUP BY item_id) t ON t.item_id = i.item_id
         WHERE i.job_id = $1",
    )
    .bind(job_id)
    .fetch_all(pool)
    .await?;
    for r in &mut rows {
        if let (Some(raw), Some(answer)) = (&r.answer_raw, &mut r.answer) {
            *answer = crate::outcomes::decode_answer(raw, Some("json"));
        }
    }
    Ok(rows)
}

/// Marks deleted up to `limit` live files created longer than `older_than` ago that no
/// unfinished batch still reads, and returns them (their objects are the caller's to
/// remove). Concurrent callers get different files.
///
/// # Errors
/// Database errors.
pub async fn expire_files(
    pool: &PgPool,
    older_than: std::time::Duration,
    limit: i64,
) -> sqlx::Result<Vec<FileRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE api_files SET deleted_at = now()
         WHERE file_id IN (
             SELECT f.file_id FROM api_files f
             WHERE f.deleted_at IS NULL AND f.created_at < now() - $1
               AND NOT EXISTS (SELECT 1 FROM api_batches b
                   WHERE b.input_file_id = f.file_id
                     AND b.status IN ('validating', 'in_progress', 'cancelling', 'finalizing'))
             ORDER BY f.created_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING {FILE_COLUMNS}"
    )))
    .bind(older_than)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Stops a batch's job that no dispatcher has admitted yet (a cancel or an expiry while the
/// submission waits in its stream): a `cancelled` job row takes its id and idempotency key
/// first, so the admission finds it and runs nothing. `false` when the job was admitted
/// meanwhile (cancel that row instead).
///
/// # Errors
/// Database errors.
pub async fn cancel_unadmitted_job(
    pool: &PgPool,
    job_id: &str,
    idempotency_key: &str,
    team: &str,
    project: &str,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "INSERT INTO jobs (job_id, idempotency_key, team, project, task_kind, status,
             rejection_reason, finished_at)
         VALUES ($1, $2, $3, $4, 'chat', 'cancelled',
             'its batch was cancelled or expired before a dispatcher admitted it', now())
         ON CONFLICT DO NOTHING",
    )
    .bind(job_id)
    .bind(idempotency_key)
    .bind(team)
    .bind(project)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}
