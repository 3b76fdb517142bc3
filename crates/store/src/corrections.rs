//! Corrections. The ledger is append-only (Postgres rejects UPDATE, DELETE and TRUNCATE on
//! it), so a wrong entry is cancelled by a reversal entry: the same call's tokens and costs
//! negated, with a reason, booked now (in the current period, as accounting does). An entry
//! can be reversed once; a reversal cannot be reversed.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;

/// Why a correction was refused.
#[derive(Debug, thiserror::Error)]
pub enum CorrectionError {
    #[error("no ledger entry {0}")]
    NoSuchEntry(i64),
    #[error("ledger entry {entry} is itself a reversal (of entry {of}); it cannot be reversed")]
    IsReversal { entry: i64, of: i64 },
    #[error("ledger entry {entry} was already reversed by entry {by}")]
    AlreadyReversed { entry: i64, by: i64 },
    #[error("a correction needs a reason (--reason \"...\")")]
    NoReason,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A reversal as booked.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Reversal {
    pub entry_id: i64,
    pub reverses_entry_id: i64,
    #[serde(serialize_with = "crate::money::ser")]
    pub cost_usd: Decimal,
    pub reason: String,
    pub created_at: DateTime<Utc>,
}

/// Books the reversal of `entry_id` with `reason`.
///
/// # Errors
/// [`CorrectionError`]; nothing is written then.
pub async fn reverse(
    pool: &PgPool,
    entry_id: i64,
    reason: &str,
) -> Result<Reversal, CorrectionError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(CorrectionError::NoReason);
    }
    let mut tx = pool.begin().await?;
    // Serializes two corrections of the same entry (the UNIQUE constraint would too).
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('correct:' || $1::text))")
        .bind(entry_id)
        .execute(&mut *tx)
        .await?;
    let entry: Option<(String, Option<i64>)> =
        sqlx::query_as("SELECT kind, reverses_entry_id FROM ledger WHERE entry_id = $1")
            .bind(entry_id)
            .fetch_optional(&mut *tx)
            .await?;
    match entry {
        None => return Err(CorrectionError::NoSuchEntry(entry_id)),
        Some((kind, Some(of))) if kind == "reversal" => {
            return Err(CorrectionError::IsReversal {
                entry: entry_id,
                of,
            });
        }
        Some(_) => {}
    }
    let by: Option<i64> =
        sqlx::query_scalar("SELECT entry_id FROM ledger WHERE reverses_entry_id = $1")
            .bind(entry_id)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(by) = by {
        return Err(CorrectionError::AlreadyReversed {
            entry: entry_id,
            by,
        });
    }
    let reversal: Reversal = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{REVERSAL_INSERT} WHERE entry_id = $1 \
         RETURNING entry_id, reverses_entry_id, cost_usd, reason, created_at"
    )))
    .bind(entry_id)
    .bind(reason)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(reversal)
}

/// The reversal of ledger entries: the same call's tokens and costs negated, priced at the
/// entry's own time (so a budget month gets back what it was charged), keyed
/// `reversal:<entry_id>`. Completed by a `WHERE` on the reversed entries.
const REVERSAL_INSERT: &str = "INSERT INTO ledger (call_id, kind, reverses_entry_id, reason, \
     job_id, item_id, attempt, team, project, tier, model, provider, price_id, prompt_tokens, \
     cached_prompt_tokens, completion_tokens, cost_usd, latency_ms, outcome, retry, batch, \
     priced_at, escalation, cost_all_strong_usd, cost_all_weak_usd, provider_response_id, \
     usage_source) \
     SELECT 'reversal:' || entry_id, 'reversal', entry_id, $2, job_id, item_id, attempt, \
     team, project, tier, model, provider, price_id, -prompt_tokens, -cached_prompt_tokens, \
     -completion_tokens, -cost_usd, 0, outcome, retry, batch, priced_at, escalation, \
     -COALESCE(cost_all_strong_usd, cost_usd), -COALESCE(cost_all_weak_usd, cost_usd), \
     provider_response_id, usage_source FROM ledger";

/// Reverses `entry_ids` (calls, not reversed yet: the caller checked) with `reason` inside
/// the caller's transaction; an entry already reversed is left as it is.
///
/// # Errors
/// Database errors.
pub async fn reverse_in(
    conn: &mut sqlx::PgConnection,
    entry_ids: &[i64],
    reason: &str,
) -> sqlx::Result<u64> {
    if entry_ids.is_empty() {
        return Ok(0);
    }
    Ok(sqlx::query(sqlx::AssertSqlSafe(format!(
        "{REVERSAL_INSERT} WHERE entry_id = ANY($1) AND kind = 'call' ON CONFLICT DO NOTHING"
    )))
    .bind(entry_ids)
    .bind(reason)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}
