//! Audits: did a `local_only` item reach an external model?
//!
//! Reads `reporting.local_only_calls` (every booked call of a `local_only` item) for a period
//! and splits it by the deployment's local tiers (configuration, passed in).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// A booked call of a `local_only` item on a tier that is not local.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ExternalCall {
    pub call_id: String,
    pub job_id: String,
    pub item_id: String,
    pub tier: String,
    pub model: String,
    pub provider: String,
    pub created_at: DateTime<Utc>,
}

/// The answer for one period.
#[derive(Debug, Clone, Serialize)]
pub struct LocalOnlyAudit {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub local_tiers: Vec<String>,
    /// Booked calls of local_only items in the period.
    pub local_only_calls: i64,
    /// Those that ran on a tier that is not local (at most 1,000 listed).
    pub external_calls: Vec<ExternalCall>,
    pub external_count: i64,
}

impl LocalOnlyAudit {
    /// "No local_only item reached an external model in this period."
    pub fn clean(&self) -> bool {
        self.external_count == 0
    }
}

/// Audits `[from, to)`.
///
/// # Errors
/// Database errors only.
pub async fn local_only(
    pool: &PgPool,
    local_tiers: &[String],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> sqlx::Result<LocalOnlyAudit> {
    let (local_only_calls, external_count): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE NOT (tier = ANY($1))) \
         FROM reporting.local_only_calls WHERE created_at >= $2 AND created_at < $3",
    )
    .bind(local_tiers)
    .bind(from)
    .bind(to)
    .fetch_one(pool)
    .await?;
    let external_calls = sqlx::query_as(
        "SELECT call_id, job_id, item_id, tier, model, provider, created_at \
         FROM reporting.local_only_calls WHERE created_at >= $2 AND created_at < $3 \
         AND NOT (tier = ANY($1)) ORDER BY created_at LIMIT 1000",
    )
    .bind(local_tiers)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    Ok(LocalOnlyAudit {
        from,
        to,
        local_tiers: local_tiers.to_vec(),
        local_only_calls,
        external_calls,
        external_count,
    })
}
