//! What the fleet keeps of the batches it sends to providers' batch APIs (the migration
//! `20261204000500_provider_batches.sql` says why in this order): a batch and its lines are
//! recorded before anything is uploaded; the provider's ids after the batch is created; any
//! worker takes over a batch whose lease ran out. An attempt is in at most one open line, so
//! a redelivered work message records nothing new.
//!
//! **A batch owns its lines' intents and holds.** A line's call intent and budget hold were
//! taken by the worker that claimed the attempt, under its lease; once the line is recorded
//! they belong to the batch (`owner`/`holder` = the batch id, with a lease of the batch's own
//! in `worker_leases` past its deadline and at least a day). A worker that dies while its
//! batches run leaves nothing to book in doubt; any worker that adopts the batch books its
//! lines. Only a batch nobody ended by then has its open lines booked in doubt at their worst
//! case (the sweeper's usual path), and a late answer settles them as for any call.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// The metadata key that names our batch at the provider.
pub const METADATA_KEY: &str = "switchyard_batch";

/// A line: an attempt and the ledger call id it will be booked under (also its `custom_id`
/// at the provider), with what booking it needs.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct NewLine {
    pub call_id: String,
    pub job_id: String,
    pub item_id: String,
    pub attempt: i32,
    /// The attempt's work message as delivered (MessagePack).
    pub work: Vec<u8>,
    /// The tier it runs on.
    pub tier: String,
    /// The budget hold its booking settles.
    pub reservation_id: Option<i64>,
    /// When its call is priced (the hold's time, or when it was recorded).
    pub priced_at: DateTime<Utc>,
    /// Its estimated input tokens: what it puts in the provider's batch queue.
    pub tokens: i32,
}

/// A batch about to be recorded.
#[derive(Debug, Clone)]
pub struct NewBatch {
    pub batch_id: String,
    pub model: String,
    pub provider: String,
    pub deadline: DateTime<Utc>,
    pub lines: Vec<NewLine>,
}

/// A recorded batch.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BatchRow {
    pub batch_id: String,
    pub model: String,
    pub provider: String,
    pub status: String,
    pub provider_batch_id: Option<String>,
    pub input_file_id: Option<String>,
    pub line_count: i32,
    pub deadline: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "batch_id, model, provider, status, provider_batch_id, input_file_id, \
     line_count, deadline, created_at";

/// Records a batch and those of its lines whose attempt is not in an open line already;
/// returns the call ids recorded (the lines to upload). A batch none of whose lines is new is
/// not kept. The batch is leased to `owner` (a worker's lease owner) for `lease` (the upload
/// and create it is about to do), and the recorded lines' call intents and budget holds move
/// from `owner` to the batch, in the same transaction (see the module docs).
///
/// # Errors
/// Database errors (nothing is recorded then).
pub async fn record(
    pool: &PgPool,
    b: &NewBatch,
    owner: &str,
    lease: std::time::Duration,
) -> sqlx::Result<Vec<String>> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO provider_batches (batch_id, model, provider, status, deadline, lease_owner,
             lease_until)
         VALUES ($1, $2, $3, 'recorded', $4, $5, now() + $6)",
    )
    .bind(&b.batch_id)
    .bind(&b.model)
    .bind(&b.provider)
    .bind(b.deadline)
    .bind(owner)
    .bind(lease)
    .execute(&mut *tx)
    .await?;
    let call: Vec<&str> = b.lines.iter().map(|l| l.call_id.as_str()).collect();
    let job: Vec<&str> = b.lines.iter().map(|l| l.job_id.as_str()).collect();
    let item: Vec<&str> = b.lines.iter().map(|l| l.item_id.as_str()).collect();
    let attempt: Vec<i32> = b.lines.iter().map(|l| l.attempt).collect();
    let work: Vec<&[u8]> = b.lines.iter().map(|l| l.work.as_slice()).collect();
    let tier: Vec<&str> = b.lines.iter().map(|l| l.tier.as_str()).collect();
    let hold: Vec<Option<i64>> = b.lines.iter().map(|l| l.reservation_id).collect();
    let priced_at: Vec<DateTime<Utc>> = b.lines.iter().map(|l| l.priced_at).collect();
    let tokens: Vec<i32> = b.lines.iter().map(|l| l.tokens).collect();
    let recorded: Vec<String> = sqlx::query_scalar(
        "INSERT INTO provider_batch_lines (batch_id, call_id, job_id, item_id, attempt, work,
             tier, reservation_id, priced_at, tokens)
         SELECT $1, u.c, u.j, u.i, u.a, u.w, u.t, u.r, u.p, u.k
         FROM UNNEST($2::text[], $3::text[], $4::text[], $5::int4[], $6::bytea[], $7::text[],
                     $8::int8[], $9::timestamptz[], $10::int4[]) AS u(c, j, i, a, w, t, r, p, k)
         ON CONFLICT DO NOTHING RETURNING call_id",
    )
    .bind(&b.batch_id)
    .bind(&call)
    .bind(&job)
    .bind(&item)
    .bind(&attempt)
    .bind(&work)
    .bind(&tier)
    .bind(&hold)
    .bind(&priced_at)
    .bind(&tokens)
    .fetch_all(&mut *tx)
    .await?;
    if recorded.is_empty() {
        tx.rollback().await?;
        return Ok(recorded);
    }
    sqlx::query("UPDATE provider_batches SET line_count = $2 WHERE batch_id = $1")
        .bind(&b.batch_id)
        .bind(i32::try_from(recorded.len()).unwrap_or(i32::MAX))
        .execute(&mut *tx)
        .await?;
    hand_over(&mut tx, &b.batch_id, owner, &recorded, b.deadline).await?;
    tx.commit().await?;
    Ok(recorded)
}

/// Moves the intents and holds of `call_ids` (lines of `batch_id`) from `owner` to the batch,
/// which gets a lease of its own (past its deadline, at least a day): the sweeper leaves them alone while
/// it lasts, and the holds are neither renewed by `owner` any more nor reclaimed.
async fn hand_over(
    tx: &mut sqlx::PgConnection,
    batch_id: &str,
    owner: &str,
    call_ids: &[String],
    deadline: DateTime<Utc>,
) -> sqlx::Result<()> {
    // Past the deadline, and at least a day after the batch is recorded (the longest a
    // provider takes to end a batch), with an hour's margin for the worker that polls it.
    let until: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO worker_leases (owner, expires_at)
         VALUES ($1, greatest($2, now() + interval '24 hours') + interval '1 hour')
         ON CONFLICT (owner) DO UPDATE
         SET expires_at = greatest(worker_leases.expires_at, EXCLUDED.expires_at)
         RETURNING expires_at",
    )
    .bind(batch_id)
    .bind(deadline)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("UPDATE call_intents SET owner = $1 WHERE call_id = ANY($2) AND owner = $3")
        .bind(batch_id)
        .bind(call_ids)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE budget_reservations r SET holder = $1, expires_at = greatest(r.expires_at, $4)
         FROM provider_batch_lines l
         WHERE l.batch_id = $1 AND l.call_id = ANY($2) AND r.holder = $3
           AND (r.job_id, r.item_id, r.attempt) = (l.job_id, l.item_id, l.attempt)",
    )
    .bind(batch_id)
    .bind(call_ids)
    .bind(owner)
    .bind(until)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Records the provider's ids of a batch it created; `false` when it was recorded before (a
/// worker that found it by its metadata did) or the batch is no longer `recorded`.
///
/// # Errors
/// Database errors.
pub async fn submitted(
    pool: &PgPool,
    batch_id: &str,
    provider_batch_id: &str,
    input_file_id: Option<&str>,
    next_look: std::time::Duration,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "UPDATE provider_batches SET status = 'submitted', provider_batch_id = $2,
             input_file_id = $3, submitted_at = now(), lease_owner = NULL,
             lease_until = now() + $4
         WHERE batch_id = $1 AND status = 'recorded'",
    )
    .bind(batch_id)
    .bind(provider_batch_id)
    .bind(input_file_id)
    .bind(next_look)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Extends `owner`'s lease on recorded batch `batch_id` by `lease` from now, while it sends
/// the batch (an upload can outlast a lease); false when the lease is no longer `owner`'s
/// or the batch no longer `recorded`.
///
/// # Errors
/// Database errors.
pub async fn keep_lease(
    pool: &PgPool,
    batch_id: &str,
    owner: &str,
    lease: std::time::Duration,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "UPDATE provider_batches SET lease_until = now() + $3
         WHERE batch_id = $1 AND lease_owner = $2 AND status = 'recorded'",
    )
    .bind(batch_id)
    .bind(owner)
    .bind(lease)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// The provider's id recorded for `batch_id`, if any.
///
/// # Errors
/// Database errors.
pub async fn provider_id(pool: &PgPool, batch_id: &str) -> sqlx::Result<Option<String>> {
    Ok(sqlx::query_scalar::<_, Option<String>>(
        "SELECT provider_batch_id FROM provider_batches WHERE batch_id = $1",
    )
    .bind(batch_id)
    .fetch_optional(pool)
    .await?
    .flatten())
}

/// The provider batch ids at `provider` recorded for a local batch since `since`: a provider
/// batch created since then and found while looking for an orphan is only ours if no other
/// local batch holds it (a batch's id is recorded after the provider created it).
///
/// # Errors
/// Database errors.
pub async fn provider_ids_since(
    pool: &PgPool,
    provider: &str,
    since: DateTime<Utc>,
) -> sqlx::Result<std::collections::HashSet<String>> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT provider_batch_id FROM provider_batches
         WHERE provider = $1 AND provider_batch_id IS NOT NULL AND submitted_at >= $2",
    )
    .bind(provider)
    .bind(since)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// The estimated input tokens of `batch_id`'s open lines.
///
/// # Errors
/// Database errors.
pub async fn batch_tokens(pool: &PgPool, batch_id: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT COALESCE(sum(tokens), 0)::int8 FROM provider_batch_lines
         WHERE batch_id = $1 AND status = 'open'",
    )
    .bind(batch_id)
    .fetch_one(pool)
    .await
}

/// The estimated input tokens of `model`'s open lines in batches submitted to the provider
/// (fleet-wide): what its batch queue holds of ours now.
///
/// # Errors
/// Database errors.
pub async fn enqueued_tokens(pool: &PgPool, model: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT COALESCE(sum(l.tokens), 0)::int8 FROM provider_batch_lines l
         JOIN provider_batches b USING (batch_id)
         WHERE b.model = $1 AND b.status = 'submitted' AND l.status = 'open'",
    )
    .bind(model)
    .fetch_one(pool)
    .await
}

/// Takes one open batch (recorded or submitted) of one of `models` whose lease ran out,
/// leased to `owner` for `lease`: a submitted one to poll, a recorded one to find at the provider by its metadata
/// (its creator died between creating and recording it) or to send. Concurrent callers get
/// different batches.
///
/// # Errors
/// Database errors.
pub async fn claim_due(
    pool: &PgPool,
    owner: &str,
    lease: std::time::Duration,
    models: &[String],
) -> sqlx::Result<Option<BatchRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE provider_batches SET lease_owner = $1, lease_until = now() + $2
         WHERE batch_id = (
             SELECT batch_id FROM provider_batches
             WHERE status IN ('recorded', 'submitted') AND model = ANY($3)
               AND (lease_until IS NULL OR lease_until <= now())
             ORDER BY lease_until NULLS FIRST LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING {COLUMNS}"
    )))
    .bind(owner)
    .bind(lease)
    .bind(models)
    .fetch_optional(pool)
    .await
}

/// The open lines of a batch.
///
/// # Errors
/// Database errors.
pub async fn open_lines(pool: &PgPool, batch_id: &str) -> sqlx::Result<Vec<NewLine>> {
    sqlx::query_as(
        "SELECT call_id, job_id, item_id, attempt, COALESCE(work, ''::bytea) AS work,
             COALESCE(tier, '') AS tier, reservation_id, priced_at, tokens
         FROM provider_batch_lines WHERE batch_id = $1 AND status = 'open' ORDER BY call_id",
    )
    .bind(batch_id)
    .fetch_all(pool)
    .await
}

/// Gives up the lease on a batch still running at its provider: any worker looks at it
/// again after `after`.
///
/// # Errors
/// Database errors.
pub async fn look_later(
    pool: &PgPool,
    batch_id: &str,
    after: std::time::Duration,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE provider_batches SET lease_owner = NULL, lease_until = now() + $2
         WHERE batch_id = $1 AND status IN ('recorded', 'submitted')",
    )
    .bind(batch_id)
    .bind(after)
    .execute(pool)
    .await?;
    Ok(())
}

/// Closes lines: `booked` (their outcome is committed: the commit deleted their intents and
/// settled their holds) or `returned` (sent back to real time, nothing billed for them at the
/// provider: their intents and holds are given up here, so the attempt can be claimed again).
/// Returns how many were still open.
///
/// # Errors
/// Database errors (nothing is closed then).
pub async fn close_lines(
    pool: &PgPool,
    batch_id: &str,
    call_ids: &[String],
    booked: bool,
) -> sqlx::Result<u64> {
    let mut tx = pool.begin().await?;
    let closed: Vec<(String, String, i32)> = sqlx::query_as(
        "UPDATE provider_batch_lines SET status = $3
         WHERE batch_id = $1 AND call_id = ANY($2) AND status = 'open'
         RETURNING job_id, item_id, attempt",
    )
    .bind(batch_id)
    .bind(call_ids)
    .bind(if booked { "booked" } else { "returned" })
    .fetch_all(&mut *tx)
    .await?;
    let mut holds = Vec::new();
    if !booked && !closed.is_empty() {
        sqlx::query("DELETE FROM call_intents WHERE call_id = ANY($2) AND owner = $1")
            .bind(batch_id)
            .bind(call_ids)
            .execute(&mut *tx)
            .await?;
        let job: Vec<&str> = closed.iter().map(|c| c.0.as_str()).collect();
        let item: Vec<&str> = closed.iter().map(|c| c.1.as_str()).collect();
        let attempt: Vec<i32> = closed.iter().map(|c| c.2).collect();
        holds = sqlx::query_scalar(
            "SELECT r.reservation_id FROM budget_reservations r
             JOIN UNNEST($2::text[], $3::text[], $4::int4[]) AS u(j, i, a)
               ON (r.job_id, r.item_id, r.attempt) = (u.j, u.i, u.a)
             WHERE r.holder = $1",
        )
        .bind(batch_id)
        .bind(&job)
        .bind(&item)
        .bind(&attempt)
        .fetch_all(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    // Each hold in its own transaction, month row first as everywhere. A crash before this
    // leaves holds without an intent: reclaimed once they expire, as any such hold.
    for id in holds {
        crate::budgets::release(pool, id).await?;
    }
    Ok(closed.len() as u64)
}

/// Ends a batch (its lines all closed, its files noted); `abandoned` when nothing of it was
/// sent. Its own lease goes: a line somehow still open is then the sweeper's to book in
/// doubt, as any intent whose owner is gone.
///
/// # Errors
/// Database errors.
pub async fn end(
    pool: &PgPool,
    batch_id: &str,
    output_file_id: Option<&str>,
    error_file_id: Option<&str>,
    abandoned: bool,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE provider_batches SET status = $2, output_file_id = $3, error_file_id = $4,
             ended_at = now(), lease_owner = NULL, lease_until = NULL
         WHERE batch_id = $1 AND status IN ('recorded', 'submitted')",
    )
    .bind(batch_id)
    .bind(if abandoned { "abandoned" } else { "ended" })
    .bind(output_file_id)
    .bind(error_file_id)
    .execute(pool)
    .await?;
    crate::intents::drop_lease(pool, batch_id).await
}

/// The fleet's open provider batches at a glance, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct OpenSummary {
    pub recorded: i64,
    pub submitted: i64,
    /// Seconds since the oldest open batch was recorded (0: none open).
    pub oldest_seconds: i64,
    pub open_lines: i64,
}

/// Counts the open batches and lines.
///
/// # Errors
/// Database errors.
pub async fn open_summary(pool: &PgPool) -> sqlx::Result<OpenSummary> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'recorded') AS recorded,
                count(*) FILTER (WHERE status = 'submitted') AS submitted,
                COALESCE(extract(epoch FROM now() - min(created_at))::int8, 0)
                    AS oldest_seconds,
                (SELECT count(*) FROM provider_batch_lines WHERE status = 'open') AS open_lines
         FROM provider_batches WHERE status IN ('recorded', 'submitted')",
    )
    .fetch_one(pool)
    .await
}
