//! Read models: job status, result export, and per-job spend.

use std::collections::BTreeMap;

use futures_core_compat::BoxRows;
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;

use crate::jobs::{self, JobRow};

/// Everything `switchyard status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    #[serde(flatten)]
    pub job: JobRow,
    /// Items per state (`queued`, `done`, `failed`, `cancelled`).
    pub items_by_state: BTreeMap<String, i64>,
    /// Final answers per tier.
    pub done_by_tier: BTreeMap<String, i64>,
    /// Items routed to each tier at dispatch.
    pub routed_by_tier: BTreeMap<String, i64>,
    /// Items whose answer escalated at least once.
    pub escalated: i64,
    /// Model calls booked, and their cost so far (exact).
    pub calls: i64,
    #[serde(serialize_with = "ser_decimal")]
    pub cost_usd: Decimal,
    /// Cost per tier.
    #[serde(serialize_with = "ser_decimal_map")]
    pub cost_by_tier: BTreeMap<String, Decimal>,
    /// Dead letters recorded for this job (newest first, at most 20).
    pub dead_letters: Vec<DeadLetterRow>,
}

/// A dead letter as shown by `status`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeadLetterRow {
    pub kind: String,
    pub item_id: Option<String>,
    pub attempt: Option<i32>,
    pub deliveries: Option<i32>,
    pub error: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

fn ser_decimal<S: serde::Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&d.normalize().to_string())
}

fn ser_decimal_map<S: serde::Serializer>(
    m: &BTreeMap<String, Decimal>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(m.len()))?;
    for (k, v) in m {
        map.serialize_entry(k, &v.normalize().to_string())?;
    }
    map.end()
}

impl JobStatus {
    /// Items with a final answer or a final failure.
    pub fn finished(&self) -> i64 {
        ["done", "failed", "cancelled"]
            .iter()
            .filter_map(|s| self.items_by_state.get(*s))
            .sum()
    }
    /// Items answered.
    pub fn done(&self) -> i64 {
        self.items_by_state.get("done").copied().unwrap_or(0)
    }
    /// Items failed for good.
    pub fn failed(&self) -> i64 {
        self.items_by_state.get("failed").copied().unwrap_or(0)
    }
}

/// The status of one job, or `None` if no such job was ever submitted.
///
/// # Errors
/// Database errors only.
pub async fn job_status(pool: &PgPool, job_id: &str) -> sqlx::Result<Option<JobStatus>> {
    let Some(job) = jobs::get(pool, job_id).await? else {
        return Ok(None);
    };
    let rows: Vec<(String, Option<String>, Option<String>, i64)> = sqlx::query_as(
        "SELECT status, routed_tier, final_tier, count(*) FROM items WHERE job_id = $1 \
         GROUP BY 1, 2, 3",
    )
    .bind(job_id)
    .fetch_all(pool)
    .await?;
    let mut items_by_state = BTreeMap::new();
    let mut done_by_tier = BTreeMap::new();
    let mut routed_by_tier = BTreeMap::new();
    for (state, routed, fin, n) in rows {
        *items_by_state.entry(state.clone()).or_insert(0) += n;
        if let Some(t) = routed {
            *routed_by_tier.entry(t).or_insert(0) += n;
        }
        if state == "done"
            && let Some(t) = fin
        {
            *done_by_tier.entry(t).or_insert(0) += n;
        }
    }
    let escalated: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT item_id) FROM results WHERE job_id = $1 AND escalated",
    )
    .bind(job_id)
    .fetch_one(pool)
    .await?;
    let cost_rows: Vec<(String, i64, Decimal)> = sqlx::query_as(
        "SELECT tier, count(*), COALESCE(sum(cost_usd), 0) FROM ledger WHERE job_id = $1 \
         GROUP BY tier",
    )
    .bind(job_id)
    .fetch_all(pool)
    .await?;
    let calls = cost_rows.iter().map(|r| r.1).sum();
    let cost_usd = cost_rows.iter().map(|r| r.2).sum();
    let cost_by_tier = cost_rows.into_iter().map(|(t, _, c)| (t, c)).collect();
    let dead_letters = sqlx::query_as(
        "SELECT kind, item_id, attempt, deliveries, error, created_at FROM dead_letters \
         WHERE job_id = $1 ORDER BY dead_letter_id DESC LIMIT 20",
    )
    .bind(job_id)
    .fetch_all(pool)
    .await?;
    Ok(Some(JobStatus {
        job,
        items_by_state,
        done_by_tier,
        routed_by_tier,
        escalated,
        calls,
        cost_usd,
        cost_by_tier,
        dead_letters,
    }))
}

/// One exported result line: the item's final answer and what it cost.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ResultRow {
    pub item_id: String,
    pub status: String,
    pub routed_tier: Option<String>,
    pub final_tier: Option<String>,
    pub model: Option<String>,
    /// The final answer as text (an answer no text can hold exactly, with lone UTF-16
    /// surrogates, has them replaced by U+FFFD here; `answer_raw` has it as sent).
    pub answer: Option<String>,
    /// The answer as the JSON string literal the provider sent, when it could not be kept
    /// as plain text (NUL, lone surrogates); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer_raw: Option<String>,
    pub confidence: Option<f64>,
    pub attempts: i64,
    #[serde(serialize_with = "ser_decimal")]
    pub cost_usd: Decimal,
    pub error: Option<String>,
    pub router_score: f32,
    pub metadata: Option<serde_json::Value>,
}

/// Exports a job's results in input order, streaming (a million rows never sit in memory).
pub fn results_stream<'a>(pool: &'a PgPool, job_id: &'a str) -> BoxRows<'a, ResultRow> {
    use futures::StreamExt as _;
    let rows: BoxRows<'a, ResultRow> = sqlx::query_as(
        "SELECT i.item_id, i.status, i.routed_tier, i.final_tier, r.model, r.answer, \
         CASE WHEN r.answer_encoding IS NOT NULL THEN r.answer END AS answer_raw, \
         r.confidence, COALESCE(l.calls, 0) AS attempts, COALESCE(l.cost, 0) AS cost_usd, \
         i.error, i.router_score, i.metadata \
         FROM items i \
         LEFT JOIN results r ON r.job_id = i.job_id AND r.item_id = i.item_id \
           AND r.attempt = i.final_attempt AND i.status = 'done' \
         LEFT JOIN (SELECT item_id, count(*) AS calls, sum(cost_usd) AS cost FROM ledger \
           WHERE job_id = $1 GROUP BY item_id) l ON l.item_id = i.item_id \
         WHERE i.job_id = $1 ORDER BY i.seq",
    )
    .bind(job_id)
    .fetch(pool);
    Box::pin(rows.map(|row| {
        row.map(|mut r| {
            if let (Some(raw), Some(answer)) = (&r.answer_raw, &mut r.answer) {
                *answer = crate::outcomes::decode_answer(raw, Some("json"));
            }
            r
        })
    }))
}

mod futures_core_compat {
    /// A stream of rows from the database.
    pub type BoxRows<'a, T> =
        std::pin::Pin<Box<dyn futures_core::Stream<Item = sqlx::Result<T>> + Send + 'a>>;
}
