//! What a worker writes after model calls: one transaction per batch of outcomes, holding
//! the results, one ledger row per model call, and the items' new states. Messages are acked
//! only after this commits.
//!
//! Every statement is idempotent: results are unique per `(job, item, attempt)`, ledger rows
//! per `call_id`, item updates only move items that are still open. A redelivered message
//! whose outcome was already committed changes nothing.

use std::collections::BTreeSet;

use rust_decimal::Decimal;
use sqlx::PgPool;

/// Identifies one attempt of one item.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptKey {
    pub job_id: String,
    pub item_id: String,
    pub attempt: i32,
}

impl AttemptKey {
    /// A shadow call ([`switchyard_proto::work::SHADOW_ATTEMPT`]): booked with ledger
    /// `outcome = 'shadow'` (the literal 1000 in [`commit`]'s SQL), never the item's answer.
    pub fn is_shadow(&self) -> bool {
        self.attempt == i32::from(switchyard_proto::work::SHADOW_ATTEMPT)
    }
}

/// One model call, as booked in the ledger.
#[derive(Debug, Clone)]
pub struct CallEntry {
    /// The provider's response id (prefixed by the model), or one minted by the worker.
    pub call_id: String,
    pub team: String,
    pub project: String,
    pub tier: String,
    pub model: String,
    pub provider: String,
    /// The worker's own estimate of the price version and cost (from its price cache). The
    /// ledger books the version Postgres finds in force at `booking.priced_at` and the cost it
    /// computes from it; they differ only when a version changed within the cache's refresh.
    pub price_id: i64,
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
    pub cost_usd: Decimal,
    pub latency_ms: i32,
    /// The message was delivered before and this call repeats spend.
    pub retry: bool,
    /// When it is priced, its counterfactuals and the budget hold it settles.
    pub booking: crate::booking::Booking,
}

/// What happened to one attempt.
#[derive(Debug, Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "outcomes live a few milliseconds in a batch; boxing the call would allocate per call for nothing"
)]
pub enum Outcome {
    /// The model answered. `escalated` answers are kept but the item moves to the next tier.
    Answered {
        key: AttemptKey,
        tier: String,
        answer: String,
        confidence: f64,
        escalated: bool,
        call: CallEntry,
    },
    /// The item failed for good (non-retryable error, or out of deliveries).
    Failed {
        key: AttemptKey,
        subject: String,
        deliveries: i32,
        error: String,
    },
}

impl Outcome {
    /// The attempt this outcome is about.
    pub fn key(&self) -> &AttemptKey {
        match self {
            Outcome::Answered { key, .. } | Outcome::Failed { key, .. } => key,
        }
    }
}

/// Writes a batch of outcomes in one transaction and returns the jobs it touched (the caller
/// checks them for completion after the commit).
///
/// # Errors
/// Database errors; nothing is committed then, and the caller must not ack.
pub async fn commit(pool: &PgPool, outcomes: &[Outcome]) -> sqlx::Result<BTreeSet<String>> {
    let mut r = ResultCols::default();
    let mut l = LedgerCols::default();
    let mut done = DoneCols::default();
    let mut failed = FailedCols::default();
    let mut jobs = BTreeSet::new();
    for o in outcomes {
        jobs.insert(o.key().job_id.clone());
        match o {
            Outcome::Answered {
                key,
                tier,
                answer,
                confidence,
                escalated,
                call,
            } => {
                r.job.push(key.job_id.as_str());
                r.item.push(key.item_id.as_str());
                r.attempt.push(key.attempt);
                r.tier.push(tier.as_str());
                r.model.push(call.model.as_str());
                r.answer.push(answer.as_str());
                r.confidence.push(*confidence);
                r.escalated.push(*escalated);
                r.call_id.push(call.call_id.as_str());
                l.push(key, call);
                // A shadow answer is recorded and booked, but never the item's answer.
                if !escalated && !key.is_shadow() {
                    done.job.push(key.job_id.as_str());
                    done.item.push(key.item_id.as_str());
                    done.attempt.push(key.attempt);
                    done.tier.push(tier.as_str());
                }
            }
            Outcome::Failed {
                key,
                subject,
                deliveries,
                error,
            } => {
                failed.job.push(key.job_id.as_str());
                failed.item.push(key.item_id.as_str());
                failed.attempt.push(key.attempt);
                failed.subject.push(subject.as_str());
                failed.deliveries.push(*deliveries);
                failed.error.push(error.as_str());
                failed.message_key.push(format!(
                    "item:{}:{}:{}:{}",
                    key.job_id.len(),
                    key.job_id,
                    key.item_id,
                    key.attempt
                ));
            }
        }
    }

    let mut tx = pool.begin().await?;
    if !r.job.is_empty() {
        sqlx::query(
            "INSERT INTO results (job_id, item_id, attempt, tier, model, answer, confidence, \
             escalated, call_id) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::text[], $5::text[], \
             $6::text[], $7::float8[], $8::bool[], $9::text[]) ON CONFLICT DO NOTHING",
        )
        .bind(&r.job)
        .bind(&r.item)
        .bind(&r.attempt)
        .bind(&r.tier)
        .bind(&r.model)
        .bind(&r.answer)
        .bind(&r.confidence)
        .bind(&r.escalated)
        .bind(&r.call_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            // Price version and cost are resolved here, by time (see `booking`).
            "INSERT INTO ledger (call_id, job_id, item_id, attempt, team, project, tier, model, \
             provider, price_id, prompt_tokens, cached_prompt_tokens, completion_tokens, \
             cost_usd, latency_ms, outcome, retry, priced_at, escalation, cost_all_strong_usd, \
             cost_all_weak_usd) \
             SELECT c.call_id, c.job_id, c.item_id, c.attempt, c.team, c.project, c.tier, \
             c.model, c.provider, c.pid, c.pt, c.cached, c.ct, c.cost, c.latency, \
             CASE WHEN c.attempt = 1000 THEN 'shadow' ELSE 'ok' END, c.retry, \
             c.priced_at, c.escalation, \
             counterfactual_cost(c.s_mode, c.s_model, c.priced_at, c.pt, c.cached, c.ct, c.cost), \
             counterfactual_cost(c.w_mode, c.w_model, c.priced_at, c.pt, c.cached, c.ct, c.cost) \
             FROM (SELECT p.*, call_cost(p.pid, p.pt, p.cached, p.ct, false) AS cost FROM \
             (SELECT u.*, price_in_force(u.model, u.priced_at) AS pid \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int4[], $5::text[], \
             $6::text[], $7::text[], $8::text[], $9::text[], $10::int4[], $11::int4[], \
             $12::int4[], $13::int4[], $14::bool[], $15::timestamptz[], $16::bool[], \
             $17::text[], $18::text[], $19::text[], $20::text[]) \
             AS u(call_id, job_id, item_id, attempt, team, project, tier, model, provider, \
             pt, cached, ct, latency, retry, priced_at, escalation, s_mode, s_model, w_mode, \
             w_model)) p) c \
             ON CONFLICT (call_id) DO NOTHING",
        )
        .bind(&l.call_id)
        .bind(&l.job)
        .bind(&l.item)
        .bind(&l.attempt)
        .bind(&l.team)
        .bind(&l.project)
        .bind(&l.tier)
        .bind(&l.model)
        .bind(&l.provider)
        .bind(&l.prompt_tokens)
        .bind(&l.cached_prompt_tokens)
        .bind(&l.completion_tokens)
        .bind(&l.latency)
        .bind(&l.retry)
        .bind(&l.priced_at)
        .bind(&l.escalation)
        .bind(&l.strong_mode)
        .bind(&l.strong_model)
        .bind(&l.weak_mode)
        .bind(&l.weak_model)
        .execute(&mut *tx)
        .await?;
        crate::budgets::settle_in(&mut tx, &l.reservation_ids).await?;
    }
    if !done.job.is_empty() {
        sqlx::query(
            "UPDATE items SET status = 'done', final_attempt = u.attempt, final_tier = u.tier, \
             updated_at = now() \
             FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::text[]) \
             AS u(job_id, item_id, attempt, tier) \
             WHERE items.job_id = u.job_id AND items.item_id = u.item_id \
             AND items.status IN ('pending', 'queued')",
        )
        .bind(&done.job)
        .bind(&done.item)
        .bind(&done.attempt)
        .bind(&done.tier)
        .execute(&mut *tx)
        .await?;
    }
    if !failed.job.is_empty() {
        sqlx::query(
            "UPDATE items SET status = 'failed', error = u.error, final_attempt = u.attempt, \
             updated_at = now() \
             FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::text[]) \
             AS u(job_id, item_id, attempt, error) \
             WHERE items.job_id = u.job_id AND items.item_id = u.item_id \
             AND items.status IN ('pending', 'queued')",
        )
        .bind(&failed.job)
        .bind(&failed.item)
        .bind(&failed.attempt)
        .bind(&failed.error)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO dead_letters (message_key, kind, job_id, item_id, attempt, subject, \
             deliveries, error) \
             SELECT u.k, 'item', u.j, u.i, u.a, u.s, u.d, u.e FROM UNNEST($1::text[], \
             $2::text[], $3::text[], $4::int4[], $5::text[], $6::int4[], $7::text[]) \
             AS u(k, j, i, a, s, d, e) ON CONFLICT (message_key) DO NOTHING",
        )
        .bind(&failed.message_key)
        .bind(&failed.job)
        .bind(&failed.item)
        .bind(&failed.attempt)
        .bind(&failed.subject)
        .bind(&failed.deliveries)
        .bind(&failed.error)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(jobs)
}

/// Attempts among `keys` that already have a committed result, with whether that result
/// escalated (a redelivered message then only needs its escalation re-published).
///
/// # Errors
/// Database errors only.
pub async fn existing_results(
    pool: &PgPool,
    keys: &[AttemptKey],
) -> sqlx::Result<Vec<(AttemptKey, bool)>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let jobs: Vec<&str> = keys.iter().map(|k| k.job_id.as_str()).collect();
    let items: Vec<&str> = keys.iter().map(|k| k.item_id.as_str()).collect();
    let attempts: Vec<i32> = keys.iter().map(|k| k.attempt).collect();
    let rows: Vec<(String, String, i32, bool)> = sqlx::query_as(
        "SELECT r.job_id, r.item_id, r.attempt, r.escalated FROM results r \
         JOIN UNNEST($1::text[], $2::text[], $3::int4[]) AS u(job_id, item_id, attempt) \
         ON r.job_id = u.job_id AND r.item_id = u.item_id AND r.attempt = u.attempt",
    )
    .bind(&jobs)
    .bind(&items)
    .bind(&attempts)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(job_id, item_id, attempt, esc)| {
            (
                AttemptKey {
                    job_id,
                    item_id,
                    attempt,
                },
                esc,
            )
        })
        .collect())
}

/// Items among `keys` that are no longer open (done, failed or cancelled): their messages
/// are stale and can be acked without calling a model.
///
/// # Errors
/// Database errors only.
pub async fn closed_items(pool: &PgPool, keys: &[AttemptKey]) -> sqlx::Result<Vec<AttemptKey>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let jobs: Vec<&str> = keys.iter().map(|k| k.job_id.as_str()).collect();
    let items: Vec<&str> = keys.iter().map(|k| k.item_id.as_str()).collect();
    let attempts: Vec<i32> = keys.iter().map(|k| k.attempt).collect();
    let rows: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT u.job_id, u.item_id, u.attempt FROM items i \
         JOIN UNNEST($1::text[], $2::text[], $3::int4[]) AS u(job_id, item_id, attempt) \
         ON i.job_id = u.job_id AND i.item_id = u.item_id \
         WHERE i.status IN ('done', 'failed', 'cancelled')",
    )
    .bind(&jobs)
    .bind(&items)
    .bind(&attempts)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(job_id, item_id, attempt)| AttemptKey {
            job_id,
            item_id,
            attempt,
        })
        .collect())
}

#[derive(Default)]
struct ResultCols<'a> {
    job: Vec<&'a str>,
    item: Vec<&'a str>,
    attempt: Vec<i32>,
    tier: Vec<&'a str>,
    model: Vec<&'a str>,
    answer: Vec<&'a str>,
    confidence: Vec<f64>,
    escalated: Vec<bool>,
    call_id: Vec<&'a str>,
}

#[derive(Default)]
struct LedgerCols<'a> {
    call_id: Vec<&'a str>,
    job: Vec<&'a str>,
    item: Vec<&'a str>,
    attempt: Vec<i32>,
    team: Vec<&'a str>,
    project: Vec<&'a str>,
    tier: Vec<&'a str>,
    model: Vec<&'a str>,
    provider: Vec<&'a str>,
    prompt_tokens: Vec<i32>,
    cached_prompt_tokens: Vec<i32>,
    completion_tokens: Vec<i32>,
    latency: Vec<i32>,
    retry: Vec<bool>,
    priced_at: Vec<chrono::DateTime<chrono::Utc>>,
    escalation: Vec<bool>,
    strong_mode: Vec<&'static str>,
    strong_model: Vec<Option<&'a str>>,
    weak_mode: Vec<&'static str>,
    weak_model: Vec<Option<&'a str>>,
    reservation_ids: Vec<i64>,
}

impl<'a> LedgerCols<'a> {
    fn push(&mut self, key: &'a AttemptKey, c: &'a CallEntry) {
        self.call_id.push(&c.call_id);
        self.job.push(&key.job_id);
        self.item.push(&key.item_id);
        self.attempt.push(key.attempt);
        self.team.push(&c.team);
        self.project.push(&c.project);
        self.tier.push(&c.tier);
        self.model.push(&c.model);
        self.provider.push(&c.provider);
        self.prompt_tokens.push(c.prompt_tokens);
        self.cached_prompt_tokens
            .push(c.booking.cached_prompt_tokens);
        self.completion_tokens.push(c.completion_tokens);
        self.latency.push(c.latency_ms);
        self.retry.push(c.retry);
        self.priced_at.push(c.booking.priced_at);
        self.escalation.push(c.booking.escalation);
        self.strong_mode.push(c.booking.all_strong.mode());
        self.strong_model.push(c.booking.all_strong.model());
        self.weak_mode.push(c.booking.all_weak.mode());
        self.weak_model.push(c.booking.all_weak.model());
        self.reservation_ids.extend(c.booking.reservation_id);
    }
}

#[derive(Default)]
struct DoneCols<'a> {
    job: Vec<&'a str>,
    item: Vec<&'a str>,
    attempt: Vec<i32>,
    tier: Vec<&'a str>,
}

#[derive(Default)]
struct FailedCols<'a> {
    job: Vec<&'a str>,
    item: Vec<&'a str>,
    attempt: Vec<i32>,
    subject: Vec<&'a str>,
    deliveries: Vec<i32>,
    error: Vec<&'a str>,
    message_key: Vec<String>,
}
