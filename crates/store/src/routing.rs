//! Routing decisions in Postgres: why each item went where it went, each job's plan, and
//! the answer pairs the fleet learns from.
//!
//! The dispatcher stores, with every item, the rule that decided it (or none), its shifted
//! score, the key the job's cut compares, the cost estimates a budget weighed and the tier
//! it went to ([`ItemRoute`] and `routed_tier`, written by [`crate::items::insert_chunk`]). `switchyard router explain` reads it
//! back ([`explain`]); `router audit` and `router train --from-db` read the weak and strong
//! answers of items that have both, from a shadow call or an escalation ([`audit_items`],
//! [`answer_pairs`]).

use rust_decimal::Decimal;
use sqlx::PgPool;
use switchyard_core::pricing::Price;
use switchyard_proto::work::SHADOW_ATTEMPT;

pub use switchyard_core::route::ItemRoute;

/// [`ItemRoute`]s as the columns of one `UNNEST` insert.
pub(crate) struct RouteCols<'a> {
    pub rule: Vec<Option<&'a str>>,
    pub tier: Vec<Option<&'a str>>,
    pub score: Vec<f32>,
    pub key: Vec<f32>,
    pub est_weak: Vec<Decimal>,
    pub est_strong: Vec<Decimal>,
}

impl<'a> RouteCols<'a> {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            rule: Vec::with_capacity(n),
            tier: Vec::with_capacity(n),
            score: Vec::with_capacity(n),
            key: Vec::with_capacity(n),
            est_weak: Vec::with_capacity(n),
            est_strong: Vec::with_capacity(n),
        }
    }

    pub(crate) fn push(&mut self, r: &'a ItemRoute) {
        self.rule.push(r.rule.as_deref());
        self.tier.push(r.tier.as_deref());
        self.score.push(r.score);
        self.key.push(r.key);
        self.est_weak.push(r.est_weak_usd);
        self.est_strong.push(r.est_strong_usd);
    }
}

/// The price version of `model` in force now, if the database has one.
///
/// # Errors
/// Database errors only.
pub async fn current_price(pool: &PgPool, model: &str) -> sqlx::Result<Option<Price>> {
    let row: Option<(Decimal, Decimal)> = sqlx::query_as(
        "SELECT input_usd_per_mtok, output_usd_per_mtok FROM prices \
         WHERE model = $1 AND effective_from <= now() ORDER BY effective_from DESC LIMIT 1",
    )
    .bind(model)
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(i, o)| Price::new(i, o).ok()))
}

/// The price versions in force now of several models, in one query (the dispatcher prices
/// every job's tiers; one round trip instead of one per tier matters for small jobs).
///
/// # Errors
/// Database errors only.
pub async fn current_prices(
    pool: &PgPool,
    models: &[String],
) -> sqlx::Result<std::collections::BTreeMap<String, Price>> {
    let rows: Vec<(String, Decimal, Decimal)> = sqlx::query_as(
        "SELECT DISTINCT ON (model) model, input_usd_per_mtok, output_usd_per_mtok FROM prices \
         WHERE model = ANY($1) AND effective_from <= now() \
         ORDER BY model, effective_from DESC",
    )
    .bind(models)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(m, i, o)| Price::new(i, o).ok().map(|p| (m, p)))
        .collect())
}

/// The job-level half of an explanation.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRoute {
    pub job_id: String,
    pub team: String,
    pub project: String,
    pub task_kind: Option<String>,
    pub status: String,
    pub policy: Option<serde_json::Value>,
    pub routing_cut: Option<f32>,
    pub routing_cut_seq: Option<i64>,
    pub routing_plan: Option<serde_json::Value>,
}

/// The item-level half.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ItemRouteRow {
    pub item_id: String,
    pub seq: i64,
    pub sensitivity: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub chars: i32,
    pub router_score: f32,
    pub route_rule: Option<String>,
    pub route_tier: Option<String>,
    pub route_score: Option<f32>,
    pub route_key: Option<f32>,
    pub est_weak_usd: Option<Decimal>,
    pub est_strong_usd: Option<Decimal>,
    pub routed_tier: Option<String>,
    pub status: String,
    pub final_tier: Option<String>,
    pub final_attempt: Option<i32>,
}

/// One answer of an item.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptRow {
    pub attempt: i32,
    pub tier: String,
    pub model: String,
    pub confidence: f64,
    pub escalated: bool,
    pub answer: String,
}

impl AttemptRow {
    /// A shadow call's answer (recorded, never final).
    pub fn is_shadow(&self) -> bool {
        self.attempt == i32::from(SHADOW_ATTEMPT)
    }
}

/// Everything `router explain JOB ITEM` shows.
#[derive(Debug, Clone)]
pub struct Explained {
    pub job: JobRoute,
    pub item: ItemRouteRow,
    pub attempts: Vec<AttemptRow>,
}

/// The routing record of one item, `None` if the job or item is unknown.
///
/// # Errors
/// Database errors only.
pub async fn explain(
    pool: &PgPool,
    job_id: &str,
    item_id: &str,
) -> sqlx::Result<Option<Explained>> {
    let job: Option<JobRoute> = sqlx::query_as(
        "SELECT job_id, team, project, task_kind, status, policy, routing_cut, routing_cut_seq, \
         routing_plan FROM jobs WHERE job_id = $1",
    )
    .bind(job_id)
    .fetch_optional(pool)
    .await?;
    let Some(job) = job else { return Ok(None) };
    let item: Option<ItemRouteRow> = sqlx::query_as(
        "SELECT item_id, seq, sensitivity, metadata, char_length(text) AS chars, router_score, \
         route_rule, route_tier, route_score, route_key, est_weak_usd, est_strong_usd, \
         routed_tier, status, final_tier, final_attempt \
         FROM items WHERE job_id = $1 AND item_id = $2",
    )
    .bind(job_id)
    .bind(item_id)
    .fetch_optional(pool)
    .await?;
    let Some(item) = item else { return Ok(None) };
    let attempts = sqlx::query_as(
        "SELECT attempt, tier, model, confidence, escalated, answer FROM results \
         WHERE job_id = $1 AND item_id = $2 ORDER BY attempt",
    )
    .bind(job_id)
    .bind(item_id)
    .fetch_all(pool)
    .await?;
    Ok(Some(Explained {
        job,
        item,
        attempts,
    }))
}

/// One item as the fairness audit sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditItem {
    /// The item's metadata value under the audited key (as text); `None` when absent.
    pub grp: Option<String>,
    pub router_score: f32,
    pub routed_tier: Option<String>,
    pub final_tier: Option<String>,
    pub status: String,
    /// Some answer of the item escalated.
    pub escalated: bool,
    /// The first (weak-tier) answer and a strong-tier answer of the same item, when it has
    /// both (a shadow call or an escalation).
    pub weak_answer: Option<String>,
    pub strong_answer: Option<String>,
    /// The strong answer came from a shadow call.
    pub shadowed: bool,
}

/// Every item of a job with its group under metadata key `label`, in input order.
///
/// # Errors
/// Database errors only.
pub async fn audit_items(
    pool: &PgPool,
    job_id: &str,
    label: &str,
    weak_tier: &str,
    strong_tier: &str,
) -> sqlx::Result<Vec<AuditItem>> {
    sqlx::query_as(
        "SELECT i.metadata ->> $2 AS grp, i.router_score, i.routed_tier, i.final_tier, i.status, \
         EXISTS (SELECT 1 FROM results e WHERE e.job_id = i.job_id AND e.item_id = i.item_id \
                 AND e.escalated) AS escalated, \
         w.answer AS weak_answer, s.answer AS strong_answer, \
         COALESCE(s.attempt = $5, false) AS shadowed \
         FROM items i \
         LEFT JOIN results w ON w.job_id = i.job_id AND w.item_id = i.item_id \
              AND w.attempt = 0 AND w.tier = $3 \
         LEFT JOIN LATERAL (SELECT r.answer, r.attempt FROM results r \
              WHERE r.job_id = i.job_id AND r.item_id = i.item_id AND r.attempt > 0 \
              AND r.tier = $4 ORDER BY r.attempt LIMIT 1) s ON w.answer IS NOT NULL \
         WHERE i.job_id = $1 ORDER BY i.seq",
    )
    .bind(job_id)
    .bind(label)
    .bind(weak_tier)
    .bind(strong_tier)
    .bind(i32::from(SHADOW_ATTEMPT))
    .fetch_all(pool)
    .await
}

/// An item answered by both the weak and the strong tier: a label the fleet produced.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AnswerPair {
    pub job_id: String,
    pub item_id: String,
    pub team: String,
    pub task_kind: String,
    pub text: String,
    pub weak_answer: String,
    pub weak_confidence: f64,
    pub strong_answer: String,
    pub strong_confidence: f64,
    pub shadowed: bool,
}

/// Items with a weak first answer and a later strong answer (shadow call or escalation),
/// optionally of one team and task kind, oldest job first, at most `limit`. Items whose text
/// was purged are left out.
///
/// # Errors
/// Database errors only.
pub async fn answer_pairs(
    pool: &PgPool,
    team: Option<&str>,
    task_kind: Option<&str>,
    weak_tier: &str,
    strong_tier: &str,
    limit: i64,
) -> sqlx::Result<Vec<AnswerPair>> {
    sqlx::query_as(
        "SELECT i.job_id, i.item_id, j.team, j.task_kind, i.text, \
         w.answer AS weak_answer, w.confidence AS weak_confidence, \
         s.answer AS strong_answer, s.confidence AS strong_confidence, \
         (s.attempt = $6) AS shadowed \
         FROM jobs j \
         JOIN items i ON i.job_id = j.job_id \
         JOIN results w ON w.job_id = i.job_id AND w.item_id = i.item_id \
              AND w.attempt = 0 AND w.tier = $3 \
         JOIN LATERAL (SELECT r.answer, r.confidence, r.attempt FROM results r \
              WHERE r.job_id = i.job_id AND r.item_id = i.item_id AND r.attempt > 0 \
              AND r.tier = $4 ORDER BY r.attempt LIMIT 1) s ON true \
         WHERE ($1::text IS NULL OR j.team = $1) AND ($2::text IS NULL OR j.task_kind = $2) \
         AND i.text <> '' \
         ORDER BY j.created_at, j.job_id, i.seq LIMIT $5",
    )
    .bind(team)
    .bind(task_kind)
    .bind(weak_tier)
    .bind(strong_tier)
    .bind(limit)
    .bind(i32::from(SHADOW_ATTEMPT))
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_ledger_sql_knows_the_shadow_attempt() {
        // `outcomes::commit` books `outcome = 'shadow'` for attempt 1000 in its SQL.
        assert_eq!(switchyard_proto::work::SHADOW_ATTEMPT, 1000);
    }
}
