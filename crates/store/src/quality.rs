//! What a `quality=Q` job reads and writes besides its items: the pilot's answers the plan is
//! made from, the team's history of labelled answers, the plan itself (stored in
//! `jobs.routing_plan` with the cut), and the answers the audit estimate is computed from.
//!
//! Attempt numbers: 0 is an item's routed attempt, 1 an escalation, `AUDIT_ATTEMPT` (1001)
//! the audit's (and the pilot's) strong call.

use sqlx::PgPool;
use switchyard_proto::work::AUDIT_ATTEMPT;

/// One stored item of a job with its routed (attempt 0) and audit answers, if any.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AnsweredItem {
    pub item_id: String,
    pub seq: i64,
    pub router_score: f32,
    pub status: String,
    /// The tier the item was routed to (attempt 0).
    pub routed_tier: Option<String>,
    /// Attempt 0: the answer as judged, its confidence, whether it escalated.
    pub first_answer: Option<String>,
    pub first_confidence: Option<f64>,
    pub first_escalated: Option<bool>,
    /// The audit call's answer (strong tier).
    pub audit_answer: Option<String>,
    /// The audit call failed for good (dead-lettered): no answer will come. An audit's
    /// failure does not fail its item, so without this a pilot would wait for it until
    /// its timeout.
    pub audit_failed: bool,
    /// The tier of the item's final answer.
    pub final_tier: Option<String>,
}

/// Every stored item of `job_id`, in input order, with its attempt-0 and audit answers.
/// During a quality job's pilot, the stored items are exactly the pilot's.
///
/// # Errors
/// Database errors only.
pub async fn answered_items(pool: &PgPool, job_id: &str) -> sqlx::Result<Vec<AnsweredItem>> {
    sqlx::query_as(
        "SELECT i.item_id, i.seq, i.router_score, i.status, i.routed_tier, \
         w.answer AS first_answer, w.confidence AS first_confidence, \
         w.escalated AS first_escalated, a.answer AS audit_answer, \
         EXISTS (SELECT 1 FROM dead_letters d WHERE d.message_key = 'item:' || \
           octet_length(i.job_id) || ':' || i.job_id || ':' || i.item_id || ':' || $2) \
           AS audit_failed, i.final_tier \
         FROM items i \
         LEFT JOIN results w ON w.job_id = i.job_id AND w.item_id = i.item_id AND w.attempt = 0 \
         LEFT JOIN results a ON a.job_id = i.job_id AND a.item_id = i.item_id AND a.attempt = $2 \
         WHERE i.job_id = $1 ORDER BY i.seq",
    )
    .bind(job_id)
    .bind(i32::from(AUDIT_ATTEMPT))
    .fetch_all(pool)
    .await
}

/// A stored pilot item whose weak call, audit call or both nothing will ever answer unless
/// their message is published again (see [`lost_pilot_calls`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LostPilotCall {
    /// The item, as a resumed dispatch reads it back to publish.
    #[sqlx(flatten)]
    pub item: crate::items::StoredItem,
    /// Attempt 0 (the weak, record-only call) is lost.
    pub first_lost: bool,
    /// The audit call (`AUDIT_ATTEMPT`, strong) is lost.
    pub audit_lost: bool,
}

/// The calls of a pilot that nothing works on: no answer, no recorded failure (dead
/// letter), no intent of a live worker (`grace`: the workers' lease), not parked for
/// budget. A dispatcher that died between publishing an item's weak message and its audit
/// message, or a message lost in the stream, leaves such a call; the pilot waits for every
/// one, so they are published again rather than waited for until the pilot's timeout.
/// During the pilot the stored items are exactly the pilot's (at most a thousand).
///
/// # Errors
/// Database errors only.
pub async fn lost_pilot_calls(
    pool: &PgPool,
    job_id: &str,
    grace: std::time::Duration,
) -> sqlx::Result<Vec<LostPilotCall>> {
    // For each of the two attempts: no answer, no failure, no live intent, not parked.
    sqlx::query_as(
        "SELECT * FROM (SELECT i.item_id, i.seq, i.text, i.sensitivity, i.router_score, \
           i.routed_tier, i.route_tier, \
           (i.status IN ('pending', 'queued') AND i.attempt = 0 \
           AND NOT EXISTS (SELECT 1 FROM results r WHERE r.job_id = i.job_id \
             AND r.item_id = i.item_id AND r.attempt = 0) \
           AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.message_key = 'item:' || \
             octet_length(i.job_id) || ':' || i.job_id || ':' || i.item_id || ':' || 0) \
           AND NOT EXISTS (SELECT 1 FROM call_intents c WHERE c.job_id = i.job_id \
             AND c.item_id = i.item_id AND c.attempt = 0 \
             AND NOT owner_is_gone(c.owner, make_interval(secs => $2))) \
           AND NOT EXISTS (SELECT 1 FROM budget_parked k WHERE k.job_id = i.job_id \
             AND k.item_id = i.item_id AND k.attempt = 0)) AS first_lost, \
           (i.status NOT IN ('failed', 'cancelled') \
           AND NOT EXISTS (SELECT 1 FROM results r WHERE r.job_id = i.job_id \
             AND r.item_id = i.item_id AND r.attempt = $3) \
           AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.message_key = 'item:' || \
             octet_length(i.job_id) || ':' || i.job_id || ':' || i.item_id || ':' || $3) \
           AND NOT EXISTS (SELECT 1 FROM call_intents c WHERE c.job_id = i.job_id \
             AND c.item_id = i.item_id AND c.attempt = $3 \
             AND NOT owner_is_gone(c.owner, make_interval(secs => $2))) \
           AND NOT EXISTS (SELECT 1 FROM budget_parked k WHERE k.job_id = i.job_id \
             AND k.item_id = i.item_id AND k.attempt = $3)) AS audit_lost \
         FROM items i WHERE i.job_id = $1) x \
         WHERE first_lost OR audit_lost ORDER BY seq",
    )
    .bind(job_id)
    .bind(grace.as_secs_f64())
    .bind(i32::from(AUDIT_ATTEMPT))
    .fetch_all(pool)
    .await
}

/// A labelled answer of an earlier job: a weak first answer and the audit's strong answer
/// on the same item.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct HistoryRow {
    pub router_score: f32,
    pub weak_answer: String,
    pub weak_confidence: f64,
    pub strong_answer: String,
}

/// The team's labelled answers from earlier jobs of the same task kind whose weak attempt
/// ran on `weak_model` and whose audit on `strong_model` (pilots and audits), newest first,
/// at most `limit`, leaving out `except_job`.
///
/// # Errors
/// Database errors only.
pub async fn team_history(
    pool: &PgPool,
    team: &str,
    task_kind: &str,
    weak_model: &str,
    strong_model: &str,
    except_job: &str,
    limit: i64,
) -> sqlx::Result<Vec<HistoryRow>> {
    sqlx::query_as(
        "SELECT i.router_score, w.answer AS weak_answer, w.confidence AS weak_confidence, \
         a.answer AS strong_answer \
         FROM jobs j \
         JOIN items i ON i.job_id = j.job_id \
         JOIN results w ON w.job_id = i.job_id AND w.item_id = i.item_id AND w.attempt = 0 \
              AND w.model = $3 \
         JOIN results a ON a.job_id = i.job_id AND a.item_id = i.item_id AND a.attempt = $6 \
              AND a.model = $4 \
         WHERE j.team = $1 AND j.task_kind = $2 AND j.job_id <> $5 \
         ORDER BY j.created_at DESC, i.seq LIMIT $7",
    )
    .bind(team)
    .bind(task_kind)
    .bind(weak_model)
    .bind(strong_model)
    .bind(except_job)
    .bind(i32::from(AUDIT_ATTEMPT))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The plan stored with a job (`jobs.routing_plan`), if any.
///
/// # Errors
/// Database errors only.
pub async fn stored_plan(pool: &PgPool, job_id: &str) -> sqlx::Result<Option<serde_json::Value>> {
    sqlx::query_scalar("SELECT routing_plan FROM jobs WHERE job_id = $1")
        .bind(job_id)
        .fetch_optional(pool)
        .await
        .map(Option::flatten)
}

/// Stores a quality job's plan after its pilot: the up-front cut and the plan (with its
/// rule), while the job is still `dispatching` and no routed plan is stored yet. Returns
/// false when the job is no longer dispatching (cancelled meanwhile) or another owner stored
/// its plan first (one that lost its job lock in a Postgres restart and went on while the
/// sweeper handed the job to another): the first plan is the one every item follows.
///
/// # Errors
/// Database errors only.
pub async fn store_plan(
    pool: &PgPool,
    job_id: &str,
    cut: Option<(f32, i64)>,
    plan: &serde_json::Value,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE jobs SET routing_cut = $2, routing_cut_seq = $3, routing_plan = $4 \
         WHERE job_id = $1 AND status = 'dispatching' \
         AND (routing_plan IS NULL OR routing_plan->>'stage' IS DISTINCT FROM 'routed')",
    )
    .bind(job_id)
    .bind(cut.map(|c| c.0))
    .bind(cut.map(|c| c.1))
    .bind(plan)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// What `switchyard status`, the results export and the demo report say about a quality
/// job: its target, its plan's prediction and the audit's estimate of what it delivered.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobQuality {
    /// The share of all-strong quality the job asked for.
    pub target: Option<f64>,
    /// `pilot` while the pilot runs, `routed` once the plan is made.
    pub stage: String,
    pub pilot_items: usize,
    /// The plan's predicted quality (share of all-strong) and the bound it was checked at.
    pub planned_quality: Option<f64>,
    pub planned_quality_low: Option<f64>,
    /// The audit's estimate so far, with its 95% interval.
    pub audit: switchyard_core::audit::AuditEstimate,
    /// What the estimate measures.
    pub proxy: &'static str,
}

/// The quality report of `job_id`, if it is a quality job. `weak_tier`: the tier items
/// routed weak went to (the deployment's).
///
/// # Errors
/// Database errors only.
pub async fn job_quality(
    pool: &PgPool,
    job_id: &str,
    weak_tier: &str,
) -> sqlx::Result<Option<JobQuality>> {
    let Some(plan) = stored_plan(pool, job_id).await? else {
        return Ok(None);
    };
    let Some(stage) = plan
        .get("stage")
        .and_then(|s| s.as_str())
        .map(str::to_owned)
    else {
        return Ok(None);
    };
    let Some(pilot_fraction) = plan
        .get("pilot_fraction")
        .and_then(serde_json::Value::as_f64)
    else {
        return Ok(None);
    };
    let (kind, policy): (Option<String>, Option<serde_json::Value>) =
        sqlx::query_as("SELECT task_kind, policy FROM jobs WHERE job_id = $1")
            .bind(job_id)
            .fetch_one(pool)
            .await?;
    let target = policy
        .as_ref()
        .and_then(|p| p.pointer("/routing/value"))
        .and_then(serde_json::Value::as_f64);
    let kind = kind
        .and_then(|k| k.parse::<switchyard_proto::TaskKind>().ok())
        .unwrap_or(switchyard_proto::TaskKind::Generate);
    // The pilot was drawn with the policy's sample key, if it names one.
    let key = policy
        .as_ref()
        .and_then(|p| p.get("sample_key"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or(job_id)
        .to_owned();
    let rows = answered_items(pool, job_id).await?;
    let views: Vec<switchyard_core::audit::ItemView<'_>> = rows
        .iter()
        .map(|r| switchyard_core::audit::ItemView {
            pilot: switchyard_core::audit::in_pilot(&key, &r.item_id, pilot_fraction),
            strong_routed: r.routed_tier.as_deref().is_some_and(|t| t != weak_tier),
            first: r
                .first_answer
                .as_deref()
                .map(|a| (a, r.first_escalated.unwrap_or(false))),
            audit: r.audit_answer.as_deref(),
        })
        .collect();
    let inner = plan.get("plan");
    let get = |k: &str| {
        inner
            .and_then(|p| p.get(k))
            .and_then(serde_json::Value::as_f64)
    };
    Ok(Some(JobQuality {
        target,
        stage,
        pilot_items: views.iter().filter(|v| v.pilot).count(),
        planned_quality: get("predicted_quality"),
        planned_quality_low: get("predicted_quality_low"),
        audit: switchyard_core::audit::estimate_job(kind, &views),
        proxy: switchyard_core::audit::PROXY_LABEL,
    }))
}
