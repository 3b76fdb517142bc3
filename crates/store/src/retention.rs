//! Retention: prompts (item texts, task instructions) and answers of jobs that finished long
//! enough ago are blanked, job by job, while the ledger is left exactly as it was. The ledger
//! never held prompt text in the first place (ids, tokens and money only), so a purge cannot
//! change a cost, a total or a report.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// What a purge did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PurgeSummary {
    pub cutoff: Option<DateTime<Utc>>,
    pub jobs: u64,
    pub items: u64,
    pub results: u64,
    pub dry_run: bool,
}

/// Blanks the prompts and answers of every job that finished before `cutoff` and was not
/// purged yet, one transaction per job (a long purge never holds a long lock).
///
/// # Errors
/// Database errors; jobs purged before the error stay purged.
pub async fn purge_finished_before(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    dry_run: bool,
) -> sqlx::Result<PurgeSummary> {
    let jobs: Vec<String> = sqlx::query_scalar(
        "SELECT job_id FROM jobs WHERE purged_at IS NULL AND finished_at < $1 \
         AND status IN ('completed', 'partial', 'failed', 'rejected', 'cancelled') \
         ORDER BY finished_at",
    )
    .bind(cutoff)
    .fetch_all(pool)
    .await?;
    let mut summary = PurgeSummary {
        cutoff: Some(cutoff),
        dry_run,
        ..PurgeSummary::default()
    };
    for job_id in jobs {
        let mut tx = pool.begin().await?;
        let items = if dry_run {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM items WHERE job_id = $1")
                .bind(&job_id)
                .fetch_one(&mut *tx)
                .await? as u64
        } else {
            sqlx::query("UPDATE items SET text = '', metadata = NULL WHERE job_id = $1")
                .bind(&job_id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        };
        let results = if dry_run {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM results WHERE job_id = $1")
                .bind(&job_id)
                .fetch_one(&mut *tx)
                .await? as u64
        } else {
            sqlx::query("UPDATE results SET answer = '' WHERE job_id = $1")
                .bind(&job_id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        };
        if !dry_run {
            sqlx::query(
                "UPDATE jobs SET purged_at = now(), task = task - 'instructions' \
                 WHERE job_id = $1",
            )
            .bind(&job_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        summary.jobs += 1;
        summary.items += items;
        summary.results += results;
    }
    Ok(summary)
}
