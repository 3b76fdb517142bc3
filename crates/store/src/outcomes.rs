//! What a worker writes after model calls: one transaction per batch of outcomes, holding
//! the results, one ledger row per model call, the items' new states, and the deletion of the
//! calls' intents (see [`crate::intents`]). Messages are settled only after this commits.
//!
//! **Who decides an item.** Two copies of one attempt can both reach a commit (a worker that
//! was presumed dead and was not, a message re-published after JetStream's duplicate window).
//! Exactly one decides: the copy whose result row is inserted first *and* finds its item
//! open at that attempt (`items.attempt`, the item's current attempt, is never above it).
//! Only the decider finishes the item, moves it to the next attempt, or has its escalation
//! published ([`CommitReport::decided`]). The other copy's call is still booked (it was real
//! spend) with ledger `outcome = 'duplicate'`.
//!
//! **Side attempts.** Shadow calls ([`switchyard_proto::work::SHADOW_ATTEMPT`]) and audit
//! calls ([`switchyard_proto::work::AUDIT_ATTEMPT`]) are booked (`shadow`, `audit`) and never
//! change an item's status: their failures are dead-lettered only. An audit's answer is a
//! strong answer the item paid for, so it becomes the item's final answer (docs/quality.md,
//! the worker contract): its commit points `final_attempt` at it for any item that is not
//! `failed` or `cancelled`, open or done, and an own attempt that finishes the item later
//! keeps it. Both orders meet on the item's row lock, so neither commit can undo the other.
//!
//! **Stale failures.** A failure (a worker's, or the reaper's after max deliveries) decides
//! only the item's current attempt: a failure of an attempt the item has moved past, or one
//! that already has an answer, changes nothing.
//!
//! Every statement is idempotent: results are unique per `(job, item, attempt)`, ledger rows
//! per `call_id`, dead letters per attempt; a redelivered outcome changes nothing.

use std::collections::{BTreeSet, HashSet};

use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool};
use switchyard_proto::work::{AUDIT_ATTEMPT, SHADOW_ATTEMPT};

/// Identifies one attempt of one item.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptKey {
    pub job_id: String,
    pub item_id: String,
    pub attempt: i32,
}

impl AttemptKey {
    /// A shadow call: booked with ledger `outcome = 'shadow'`, never the item's answer.
    pub fn is_shadow(&self) -> bool {
        self.attempt == i32::from(SHADOW_ATTEMPT)
    }

    /// An audit call: booked with ledger `outcome = 'audit'`; its answer may become final.
    pub fn is_audit(&self) -> bool {
        self.attempt == i32::from(AUDIT_ATTEMPT)
    }

    /// One of the item's own attempts (the routed one or an escalation), as opposed to a
    /// shadow or audit call that runs beside it.
    pub fn is_own(&self) -> bool {
        self.attempt < i32::from(SHADOW_ATTEMPT)
    }

    /// The dead-letter key of this attempt (length-prefixed: ids may contain `:`).
    pub fn message_key(&self) -> String {
        format!(
            "item:{}:{}:{}:{}",
            self.job_id.len(),
            self.job_id,
            self.item_id,
            self.attempt
        )
    }
}

/// Where a ledger row's token counts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageSource {
    /// The provider's `usage`, validated.
    Provider,
    /// The provider sent no usable `usage`: estimated from the text (4 characters a token).
    Estimated,
    /// Nobody knows whether the call was made (sent, then no answer in time): booked at the
    /// most it can have used, `outcome = 'in_doubt'`, until reconciliation settles it.
    WorstCase,
}

impl UsageSource {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::Provider => "provider",
            UsageSource::Estimated => "estimated",
            UsageSource::WorstCase => "worst_case",
        }
    }
}

/// One model call, as booked in the ledger.
#[derive(Debug, Clone)]
pub struct CallEntry {
    /// Our id of the call (a UUIDv7, written as an intent before the request left).
    pub call_id: String,
    /// The provider's response id, sanitized (see [`sanitize_response_id`]); not unique.
    pub provider_response_id: Option<String>,
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
    pub usage_source: UsageSource,
    pub latency_ms: i32,
    /// The message was delivered before and this call repeats spend.
    pub retry: bool,
    /// When it is priced, its counterfactuals and the budget hold it settles.
    pub booking: crate::booking::Booking,
}

/// What happened to one attempt.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The model answered. With `escalated_to`, the answer is kept but the item moves on to
    /// the next attempt on that tier.
    Answered {
        key: AttemptKey,
        tier: String,
        answer: String,
        /// The answer as the provider's JSON string literal, when `answer` cannot hold it
        /// exactly (lone surrogates): stored as it is, `answer_encoding = 'json'`.
        raw_answer: Option<String>,
        /// Why the answer ended (`stop`, `length`, …), when the provider said.
        finish_reason: Option<String>,
        confidence: f64,
        escalated_to: Option<String>,
        call: CallEntry,
    },
    /// The provider answered (and may bill) but the body holds no usable answer: the call is
    /// booked (`unusable`), the item is not decided (its message is retried). A call in doubt
    /// (sent, no answer in time) comes this way too, at its worst case
    /// ([`UsageSource::WorstCase`]), and is booked `in_doubt`.
    Unusable { key: AttemptKey, call: CallEntry },
    /// The item failed for good (non-retryable error, out of deliveries, an answer over the
    /// size limit). `call` is the billed call that failed it, if any; `intent` the call id
    /// whose intent ends here without a billable call.
    Failed {
        key: AttemptKey,
        subject: String,
        deliveries: i32,
        error: String,
        call: Option<CallEntry>,
        intent: Option<String>,
    },
    /// The attempt's intent ends without a billable call (the call was refused before it
    /// left, or failed in a way providers do not bill); the message is retried.
    Released { key: AttemptKey, call_id: String },
}

impl Outcome {
    /// The attempt this outcome is about.
    pub fn key(&self) -> &AttemptKey {
        match self {
            Outcome::Answered { key, .. }
            | Outcome::Unusable { key, .. }
            | Outcome::Failed { key, .. }
            | Outcome::Released { key, .. } => key,
        }
    }

    /// The billed call this outcome books, if any.
    pub fn call(&self) -> Option<&CallEntry> {
        match self {
            Outcome::Answered { call, .. } | Outcome::Unusable { call, .. } => Some(call),
            Outcome::Failed { call, .. } => call.as_ref(),
            Outcome::Released { .. } => None,
        }
    }

    /// The intent this outcome ends.
    pub fn intent(&self) -> Option<&str> {
        match self {
            Outcome::Answered { call, .. } | Outcome::Unusable { call, .. } => Some(&call.call_id),
            Outcome::Failed { call, intent, .. } => call
                .as_ref()
                .map(|c| c.call_id.as_str())
                .or(intent.as_deref()),
            Outcome::Released { call_id, .. } => Some(call_id),
        }
    }
}

/// What a commit did.
#[derive(Debug, Clone, Default)]
pub struct CommitReport {
    /// Jobs touched (the caller checks them for completion after the commit).
    pub jobs: BTreeSet<String>,
    /// Indexes (into the committed outcomes) of the answers and failures that decided their
    /// item: only these finish an item, and only their escalations are published.
    pub decided: HashSet<usize>,
    /// Calls booked as `duplicate`: a second copy of an attempt whose other copy decided.
    pub duplicates: u64,
    /// Calls whose intent had been booked in doubt (their worker was presumed gone): the
    /// in-doubt entry is reversed and the call booked as it really was.
    pub settled_in_doubt: u64,
}

/// The longest raw `usage` kept on a ledger row.
pub const MAX_RAW_USAGE_BYTES: usize = 4096;

/// A provider's raw `usage` as the ledger keeps it: a JSON object Postgres' `jsonb` can hold
/// (no NUL, in text or escaped), at most [`MAX_RAW_USAGE_BYTES`]; anything else is not kept
/// (the normalized counts are, and a usage no row can store must never lose the booking).
pub fn storable_usage(raw: &str) -> Option<String> {
    if raw.len() > MAX_RAW_USAGE_BYTES || raw.contains('\0') || raw.contains("\\u0000") {
        return None;
    }
    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(raw)
        .ok()
        .map(|_| raw.to_owned())
}

/// Postgres `text` cannot hold NUL: such an answer is stored JSON-escaped (lossless) and
/// flagged `answer_encoding = 'json'`. Returns the stored text and its encoding.
pub fn storable_answer(answer: &str) -> (std::borrow::Cow<'_, str>, Option<&'static str>) {
    if answer.contains('\0') {
        let escaped = serde_json::to_string(answer).unwrap_or_else(|_| String::from("\"\""));
        (std::borrow::Cow::Owned(escaped), Some("json"))
    } else {
        (std::borrow::Cow::Borrowed(answer), None)
    }
}

/// The answer as text, from what was stored: a JSON-encoded answer is decoded (lone
/// surrogates, which no text can hold, become U+FFFD).
pub fn decode_answer(stored: &str, encoding: Option<&str>) -> String {
    match encoding {
        Some("json") => switchyard_core::completion::decode_json_string_lossy(stored),
        _ => stored.to_owned(),
    }
}

/// A provider's response id as the ledger keeps it: printable ASCII only, at most 200
/// characters; `None` when nothing usable is left.
pub fn sanitize_response_id(id: &str) -> Option<String> {
    let clean: String = id
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(200)
        .collect();
    (!clean.is_empty()).then_some(clean)
}

/// Writes a batch of outcomes in one transaction.
///
/// # Errors
/// Database errors; nothing is committed then, and the caller must not settle the messages.
pub async fn commit(pool: &PgPool, outcomes: &[Outcome]) -> sqlx::Result<CommitReport> {
    let mut tx = pool.begin().await?;
    let report = commit_in(&mut tx, outcomes).await?;
    tx.commit().await?;
    Ok(report)
}

/// [`commit`] inside the caller's transaction.
///
/// # Errors
/// Database errors.
pub async fn commit_in(
    conn: &mut PgConnection,
    outcomes: &[Outcome],
) -> sqlx::Result<CommitReport> {
    let mut report = CommitReport::default();
    for o in outcomes {
        report.jobs.insert(o.key().job_id.clone());
    }

    // 1. Results of answers; the first copy of an attempt inserts, later copies do not.
    let answers: Vec<usize> = (0..outcomes.len())
        .filter(|&i| matches!(outcomes[i], Outcome::Answered { .. }))
        .collect();
    let inserted = insert_results(conn, outcomes, &answers).await?;

    // 2. Decide items: own attempts' answers whose result row was inserted here, and own
    //    attempts' failures; audits point a done item's final answer at themselves.
    let deciding: Vec<usize> = answers
        .iter()
        .copied()
        .filter(|&i| outcomes[i].key().is_own() && inserted.contains(outcomes[i].key()))
        .collect();
    for k in decide_answers(conn, outcomes, &deciding).await? {
        report.decided.insert(k);
    }
    for k in decided_before(conn, outcomes, &answers, &inserted).await? {
        report.decided.insert(k);
    }
    let audits: Vec<usize> = answers
        .iter()
        .copied()
        .filter(|&i| outcomes[i].key().is_audit() && inserted.contains(outcomes[i].key()))
        .collect();
    adopt_audits(conn, outcomes, &audits).await?;
    let failures: Vec<usize> = (0..outcomes.len())
        .filter(|&i| matches!(outcomes[i], Outcome::Failed { .. }))
        .collect();
    for k in decide_failures(conn, outcomes, &failures).await? {
        report.decided.insert(k);
    }
    record_dead_letters(conn, outcomes, &failures).await?;

    // 3. The ledger: every billed call, labelled by what it was.
    let mut l = LedgerCols::default();
    for (i, o) in outcomes.iter().enumerate() {
        let Some(call) = o.call() else { continue };
        let key = o.key();
        // A call in doubt is `in_doubt` whatever its attempt (a shadow's or an audit's too),
        // as the sweep books a lost worker's: reports of what is still open count on it.
        let label = if call.usage_source == UsageSource::WorstCase {
            "in_doubt"
        } else if key.is_shadow() {
            "shadow"
        } else if key.is_audit() {
            "audit"
        } else {
            match o {
                Outcome::Answered { .. } if report.decided.contains(&i) => "ok",
                Outcome::Answered { .. } => {
                    report.duplicates += 1;
                    "duplicate"
                }
                _ => "unusable",
            }
        };
        l.push(key, call, label, None);
    }
    if !l.call_id.is_empty() {
        let booked = insert_ledger(conn, &l).await?;
        report.settled_in_doubt = settle_late_bookings(conn, &l, &booked).await?;
        crate::budgets::settle_in(conn, &l.reservation_ids).await?;
    }

    // 4. The intents end here.
    let intents: Vec<&str> = outcomes.iter().filter_map(Outcome::intent).collect();
    if !intents.is_empty() {
        sqlx::query("DELETE FROM call_intents WHERE call_id = ANY($1)")
            .bind(&intents)
            .execute(&mut *conn)
            .await?;
    }
    Ok(report)
}

/// Own answers whose result was there already under their own call, booked `ok`: this very
/// commit, tried again after Postgres committed it but its reply was lost (a restart as it
/// committed). They decided their item then; they are reported decided again, so that the
/// caller publishes their escalation (deduplicated by its message id) and counts their item,
/// which the first try's caller never learnt. A second copy of an attempt has a call of its
/// own and is still a duplicate.
async fn decided_before(
    conn: &mut PgConnection,
    outcomes: &[Outcome],
    answers: &[usize],
    inserted: &HashSet<AttemptKey>,
) -> sqlx::Result<Vec<usize>> {
    let again: Vec<(usize, &str)> = answers
        .iter()
        .filter(|&&i| outcomes[i].key().is_own() && !inserted.contains(outcomes[i].key()))
        .filter_map(|&i| Some((i, outcomes[i].call()?.call_id.as_str())))
        .collect();
    if again.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = again.iter().map(|(_, id)| *id).collect();
    // A call booked in doubt before its answer came has its `ok` row under `<id>:settled`.
    let settled: Vec<String> = ids.iter().map(|id| format!("{id}:settled")).collect();
    let ok: HashSet<String> = sqlx::query_scalar(
        "SELECT regexp_replace(call_id, ':settled$', '') FROM ledger \
         WHERE (call_id = ANY($1) OR call_id = ANY($2)) AND outcome = 'ok'",
    )
    .bind(&ids)
    .bind(&settled)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    Ok(again
        .into_iter()
        .filter(|(_, id)| ok.contains(*id))
        .map(|(i, _)| i)
        .collect())
}

async fn insert_results(
    conn: &mut PgConnection,
    outcomes: &[Outcome],
    answers: &[usize],
) -> sqlx::Result<HashSet<AttemptKey>> {
    if answers.is_empty() {
        return Ok(HashSet::new());
    }
    let mut r = ResultCols::default();
    let stored: Vec<(std::borrow::Cow<'_, str>, Option<&'static str>)> = answers
        .iter()
        .map(|&i| match &outcomes[i] {
            Outcome::Answered {
                raw_answer: Some(raw),
                ..
            } => (std::borrow::Cow::Borrowed(raw.as_str()), Some("json")),
            Outcome::Answered { answer, .. } => storable_answer(answer),
            _ => unreachable_answer(),
        })
        .collect();
    for (n, &i) in answers.iter().enumerate() {
        if let Outcome::Answered {
            key,
            tier,
            confidence,
            escalated_to,
            call,
            finish_reason,
            ..
        } = &outcomes[i]
        {
            r.finish_reason.push(finish_reason.as_deref());
            r.job.push(&key.job_id);
            r.item.push(&key.item_id);
            r.attempt.push(key.attempt);
            r.tier.push(tier);
            r.model.push(&call.model);
            r.answer.push(&stored[n].0);
            r.encoding.push(stored[n].1);
            // NaN and infinities are not confidences; the judge never gives them, but a
            // provider's logprobs are not ours to trust.
            r.confidence.push(if confidence.is_finite() {
                confidence.clamp(0.0, 1.0)
            } else {
                0.0
            });
            r.escalated.push(escalated_to.is_some());
            r.call_id.push(&call.call_id);
        }
    }
    let rows: Vec<(String, String, i32)> = sqlx::query_as(
        "INSERT INTO results (job_id, item_id, attempt, tier, model, answer, answer_encoding, \
         confidence, escalated, call_id, finish_reason) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::text[], $5::text[], \
         $6::text[], $7::text[], $8::float8[], $9::bool[], $10::text[], $11::text[]) \
         ON CONFLICT DO NOTHING RETURNING job_id, item_id, attempt",
    )
    .bind(&r.job)
    .bind(&r.item)
    .bind(&r.attempt)
    .bind(&r.tier)
    .bind(&r.model)
    .bind(&r.answer)
    .bind(&r.encoding)
    .bind(&r.confidence)
    .bind(&r.escalated)
    .bind(&r.call_id)
    .bind(&r.finish_reason)
    .fetch_all(&mut *conn)
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

/// Only called on answers; an empty answer keeps the types honest without a panic.
fn unreachable_answer() -> (std::borrow::Cow<'static, str>, Option<&'static str>) {
    (std::borrow::Cow::Borrowed(""), None)
}

/// Finishes (or moves to the next attempt) the items of `idx`'s answers that are still open
/// at that attempt; returns the indexes that decided.
async fn decide_answers(
    conn: &mut PgConnection,
    outcomes: &[Outcome],
    idx: &[usize],
) -> sqlx::Result<Vec<usize>> {
    if idx.is_empty() {
        return Ok(Vec::new());
    }
    let (mut job, mut item, mut attempt, mut tier, mut next) =
        (vec![], vec![], vec![], vec![], vec![]);
    for &i in idx {
        if let Outcome::Answered {
            key,
            tier: t,
            escalated_to,
            ..
        } = &outcomes[i]
        {
            job.push(key.job_id.as_str());
            item.push(key.item_id.as_str());
            attempt.push(key.attempt);
            tier.push(t.as_str());
            next.push(escalated_to.as_deref());
        }
    }
    let rows: Vec<(String, String, i32)> = sqlx::query_as(
        "UPDATE items i SET \
           status = CASE WHEN u.next IS NULL THEN 'done' ELSE i.status END, \
           attempt = CASE WHEN u.next IS NULL THEN u.attempt ELSE u.attempt + 1 END, \
           attempt_tier = CASE WHEN u.next IS NULL THEN i.attempt_tier ELSE u.next END, \
           final_attempt = CASE WHEN i.final_attempt = $6 THEN i.final_attempt \
             WHEN u.next IS NULL THEN u.attempt ELSE i.final_attempt END, \
           final_tier = CASE WHEN i.final_attempt = $6 THEN i.final_tier \
             WHEN u.next IS NULL THEN u.tier ELSE i.final_tier END, \
           updated_at = now() \
         FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::text[], $5::text[]) \
           AS u(job_id, item_id, attempt, tier, next) \
         WHERE i.job_id = u.job_id AND i.item_id = u.item_id \
           AND i.status IN ('pending', 'queued') AND i.attempt <= u.attempt \
         RETURNING i.job_id, i.item_id, u.attempt",
    )
    .bind(&job)
    .bind(&item)
    .bind(&attempt)
    .bind(&tier)
    .bind(&next)
    .bind(i32::from(AUDIT_ATTEMPT))
    .fetch_all(&mut *conn)
    .await?;
    Ok(matching(outcomes, idx, rows))
}

/// Points the final answer of items that are not `failed` or `cancelled` at their audit
/// answer, without changing their status (an open item keeps it when it finishes, see
/// [`decide_answers`]). Runs after `decide_answers` in the same transaction, so an own
/// attempt of the same batch cannot override it; a concurrent commit of the item's own
/// attempt either sees `final_attempt` already set (after the row lock) or is followed by
/// this update, which re-reads the row under the lock.
async fn adopt_audits(
    conn: &mut PgConnection,
    outcomes: &[Outcome],
    idx: &[usize],
) -> sqlx::Result<()> {
    if idx.is_empty() {
        return Ok(());
    }
    let (mut job, mut item, mut tier) = (vec![], vec![], vec![]);
    for &i in idx {
        if let Outcome::Answered { key, tier: t, .. } = &outcomes[i] {
            job.push(key.job_id.as_str());
            item.push(key.item_id.as_str());
            tier.push(t.as_str());
        }
    }
    sqlx::query(
        "UPDATE items i SET final_attempt = $4, final_tier = u.tier, updated_at = now() \
         FROM UNNEST($1::text[], $2::text[], $3::text[]) AS u(job_id, item_id, tier) \
         WHERE i.job_id = u.job_id AND i.item_id = u.item_id \
           AND i.status NOT IN ('failed', 'cancelled')",
    )
    .bind(&job)
    .bind(&item)
    .bind(&tier)
    .bind(i32::from(AUDIT_ATTEMPT))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Fails the items of `idx`'s failures of own attempts that are current and unanswered;
/// returns the indexes that decided.
async fn decide_failures(
    conn: &mut PgConnection,
    outcomes: &[Outcome],
    idx: &[usize],
) -> sqlx::Result<Vec<usize>> {
    let own: Vec<usize> = idx
        .iter()
        .copied()
        .filter(|&i| outcomes[i].key().is_own())
        .collect();
    if own.is_empty() {
        return Ok(Vec::new());
    }
    let (mut job, mut item, mut attempt, mut error) = (vec![], vec![], vec![], vec![]);
    for &i in &own {
        if let Outcome::Failed { key, error: e, .. } = &outcomes[i] {
            job.push(key.job_id.as_str());
            item.push(key.item_id.as_str());
            attempt.push(key.attempt);
            error.push(e.as_str());
        }
    }
    let rows: Vec<(String, String, i32)> = sqlx::query_as(
        "UPDATE items i SET status = 'failed', error = u.error, attempt = u.attempt, \
           final_attempt = u.attempt, updated_at = now() \
         FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::text[]) \
           AS u(job_id, item_id, attempt, error) \
         WHERE i.job_id = u.job_id AND i.item_id = u.item_id \
           AND i.status IN ('pending', 'queued') AND i.attempt <= u.attempt \
           AND NOT EXISTS (SELECT 1 FROM results r WHERE r.job_id = u.job_id \
             AND r.item_id = u.item_id AND r.attempt >= u.attempt AND r.attempt < $5) \
         RETURNING i.job_id, i.item_id, u.attempt",
    )
    .bind(&job)
    .bind(&item)
    .bind(&attempt)
    .bind(&error)
    .bind(i32::from(SHADOW_ATTEMPT))
    .fetch_all(&mut *conn)
    .await?;
    Ok(matching(outcomes, &own, rows))
}

/// The indexes among `idx` whose attempt key is in `rows` (first match per key).
fn matching(outcomes: &[Outcome], idx: &[usize], rows: Vec<(String, String, i32)>) -> Vec<usize> {
    let mut keys: HashSet<AttemptKey> = rows
        .into_iter()
        .map(|(job_id, item_id, attempt)| AttemptKey {
            job_id,
            item_id,
            attempt,
        })
        .collect();
    idx.iter()
        .copied()
        .filter(|&i| keys.remove(outcomes[i].key()))
        .collect()
}

async fn record_dead_letters(
    conn: &mut PgConnection,
    outcomes: &[Outcome],
    idx: &[usize],
) -> sqlx::Result<()> {
    if idx.is_empty() {
        return Ok(());
    }
    let mut f = FailedCols::default();
    for &i in idx {
        if let Outcome::Failed {
            key,
            subject,
            deliveries,
            error,
            ..
        } = &outcomes[i]
        {
            f.job.push(&key.job_id);
            f.item.push(&key.item_id);
            f.attempt.push(key.attempt);
            f.subject.push(subject);
            f.deliveries.push(*deliveries);
            f.error.push(error);
            f.message_key.push(key.message_key());
        }
    }
    sqlx::query(
        "INSERT INTO dead_letters (message_key, kind, job_id, item_id, attempt, subject, \
         deliveries, error) \
         SELECT u.k, 'item', u.j, u.i, u.a, u.s, u.d, u.e FROM UNNEST($1::text[], \
         $2::text[], $3::text[], $4::int4[], $5::text[], $6::int4[], $7::text[]) \
         AS u(k, j, i, a, s, d, e) ON CONFLICT (message_key) DO NOTHING",
    )
    .bind(&f.message_key)
    .bind(&f.job)
    .bind(&f.item)
    .bind(&f.attempt)
    .bind(&f.subject)
    .bind(&f.deliveries)
    .bind(&f.error)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Inserts ledger rows; returns the call ids inserted (the others were booked before).
async fn insert_ledger(conn: &mut PgConnection, l: &LedgerCols<'_>) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        // Price version and cost are resolved here, by time (see `booking`). A call's own
        // counterfactual is its real-time cost: a batch line's discount is not routing's.
        "INSERT INTO ledger (call_id, job_id, item_id, attempt, team, project, tier, model, \
         provider, price_id, prompt_tokens, cached_prompt_tokens, completion_tokens, \
         cost_usd, latency_ms, outcome, retry, priced_at, escalation, cost_all_strong_usd, \
         cost_all_weak_usd, provider_response_id, usage_source, settles_entry_id, \
         cache_write_tokens, cache_write_1h_tokens, raw_usage, batch) \
         SELECT c.call_id, c.job_id, c.item_id, c.attempt, c.team, c.project, c.tier, \
         c.model, c.provider, c.pid, c.pt, c.cached, c.ct, c.cost, c.latency, c.outcome, \
         c.retry, c.priced_at, c.escalation, \
         counterfactual_cost(c.s_mode, c.s_model, c.priced_at, c.pt, c.cached, c.ct, \
         COALESCE(c.real_time, c.cost)), \
         counterfactual_cost(c.w_mode, c.w_model, c.priced_at, c.pt, c.cached, c.ct, \
         COALESCE(c.real_time, c.cost)), \
         c.response_id, c.usage_source, c.settles, c.written, c.written_1h, c.raw::jsonb, \
         c.batch \
         FROM (SELECT p.*, call_cost(p.pid, p.pt, p.cached, p.written, p.written_1h, p.ct, \
         p.batch) AS cost, \
         CASE WHEN p.batch THEN call_cost(p.pid, p.pt, p.cached, p.written, p.written_1h, \
         p.ct, false) END AS real_time FROM \
         (SELECT u.*, price_in_force(u.model, u.priced_at) AS pid \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int4[], $5::text[], \
         $6::text[], $7::text[], $8::text[], $9::text[], $10::int4[], $11::int4[], \
         $12::int4[], $13::int4[], $14::bool[], $15::timestamptz[], $16::bool[], \
         $17::text[], $18::text[], $19::text[], $20::text[], $21::text[], $22::text[], \
         $23::text[], $24::int8[], $25::int4[], $26::int4[], $27::text[], $28::bool[]) \
         AS u(call_id, job_id, item_id, attempt, team, project, tier, model, provider, \
         pt, cached, ct, latency, retry, priced_at, escalation, s_mode, s_model, w_mode, \
         w_model, outcome, response_id, usage_source, settles, written, written_1h, raw, \
         batch)) p) c \
         ON CONFLICT (call_id) DO NOTHING RETURNING call_id",
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
    .bind(&l.outcome)
    .bind(&l.response_id)
    .bind(&l.usage_source)
    .bind(&l.settles)
    .bind(&l.cache_write_tokens)
    .bind(&l.cache_write_1h_tokens)
    .bind(&l.raw_usage)
    .bind(&l.batch)
    .fetch_all(&mut *conn)
    .await
}

/// Calls of this batch that were not inserted because their id was already booked `in
/// doubt` (their worker was presumed gone while it was still answering): the call's own
/// answer is evidence of what it cost, so the in-doubt entry is reversed and the call booked
/// as it was (`call_id:settled`, `settles_entry_id`). Returns how many.
async fn settle_late_bookings(
    conn: &mut PgConnection,
    l: &LedgerCols<'_>,
    booked: &[String],
) -> sqlx::Result<u64> {
    if booked.len() == l.call_id.len() {
        return Ok(0);
    }
    let booked: HashSet<&str> = booked.iter().map(String::as_str).collect();
    // A worst case is no evidence of what a call cost: a call in doubt committed again (its
    // first commit's reply lost) settles nothing.
    let missing: Vec<&str> = l
        .call_id
        .iter()
        .zip(&l.usage_source)
        .filter(|(id, source)| {
            !booked.contains(**id) && **source != UsageSource::WorstCase.as_str()
        })
        .map(|(id, _)| *id)
        .collect();
    if missing.is_empty() {
        return Ok(0);
    }
    let in_doubt: Vec<(i64, String)> = sqlx::query_as(
        "SELECT l.entry_id, l.call_id FROM ledger l WHERE l.call_id = ANY($1) \
         AND l.kind = 'call' AND l.outcome = 'in_doubt' \
         AND NOT EXISTS (SELECT 1 FROM ledger r WHERE r.reverses_entry_id = l.entry_id)",
    )
    .bind(&missing)
    .fetch_all(&mut *conn)
    .await?;
    if in_doubt.is_empty() {
        return Ok(0);
    }
    let entries: Vec<i64> = in_doubt.iter().map(|e| e.0).collect();
    crate::corrections::reverse_in(
        conn,
        &entries,
        "in-doubt call settled by its own late answer",
    )
    .await?;
    let mut again = LedgerCols::default();
    let settled_ids: Vec<String> = in_doubt
        .iter()
        .map(|(_, id)| format!("{id}:settled"))
        .collect();
    for ((entry, id), settled_id) in in_doubt.iter().zip(&settled_ids) {
        if let Some(n) = l.call_id.iter().position(|c| c == id) {
            again.push_from(l, n, settled_id, Some(*entry));
        }
    }
    insert_ledger(conn, &again).await?;
    Ok(in_doubt.len() as u64)
}

#[derive(Default)]
struct ResultCols<'a> {
    job: Vec<&'a str>,
    item: Vec<&'a str>,
    attempt: Vec<i32>,
    tier: Vec<&'a str>,
    model: Vec<&'a str>,
    answer: Vec<&'a str>,
    encoding: Vec<Option<&'static str>>,
    confidence: Vec<f64>,
    escalated: Vec<bool>,
    call_id: Vec<&'a str>,
    finish_reason: Vec<Option<&'a str>>,
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
    cache_write_tokens: Vec<i32>,
    cache_write_1h_tokens: Vec<i32>,
    raw_usage: Vec<Option<&'a str>>,
    completion_tokens: Vec<i32>,
    latency: Vec<i32>,
    retry: Vec<bool>,
    priced_at: Vec<chrono::DateTime<chrono::Utc>>,
    escalation: Vec<bool>,
    strong_mode: Vec<&'static str>,
    strong_model: Vec<Option<&'a str>>,
    weak_mode: Vec<&'static str>,
    weak_model: Vec<Option<&'a str>>,
    outcome: Vec<&'static str>,
    response_id: Vec<Option<&'a str>>,
    usage_source: Vec<&'static str>,
    settles: Vec<Option<i64>>,
    batch: Vec<bool>,
    reservation_ids: Vec<i64>,
}

impl<'a> LedgerCols<'a> {
    fn push(
        &mut self,
        key: &'a AttemptKey,
        c: &'a CallEntry,
        outcome: &'static str,
        settles: Option<i64>,
    ) {
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
        self.cache_write_tokens.push(c.booking.cache_write_tokens);
        self.cache_write_1h_tokens
            .push(c.booking.cache_write_1h_tokens);
        self.raw_usage.push(c.booking.raw_usage.as_deref());
        self.completion_tokens.push(c.completion_tokens);
        self.latency.push(c.latency_ms);
        self.retry.push(c.retry);
        self.priced_at.push(c.booking.priced_at);
        self.escalation.push(c.booking.escalation);
        self.strong_mode.push(c.booking.all_strong.mode());
        self.strong_model.push(c.booking.all_strong.model());
        self.weak_mode.push(c.booking.all_weak.mode());
        self.weak_model.push(c.booking.all_weak.model());
        self.outcome.push(outcome);
        self.response_id.push(c.provider_response_id.as_deref());
        self.usage_source.push(c.usage_source.as_str());
        self.settles.push(settles);
        self.batch.push(c.booking.batch);
        self.reservation_ids.extend(c.booking.reservation_id);
    }

    /// Row `n` of `from` again, under `call_id`, settling `settles`.
    fn push_from(
        &mut self,
        from: &LedgerCols<'a>,
        n: usize,
        call_id: &'a str,
        settles: Option<i64>,
    ) {
        self.call_id.push(call_id);
        self.job.push(from.job[n]);
        self.item.push(from.item[n]);
        self.attempt.push(from.attempt[n]);
        self.team.push(from.team[n]);
        self.project.push(from.project[n]);
        self.tier.push(from.tier[n]);
        self.model.push(from.model[n]);
        self.provider.push(from.provider[n]);
        self.prompt_tokens.push(from.prompt_tokens[n]);
        self.cached_prompt_tokens.push(from.cached_prompt_tokens[n]);
        self.cache_write_tokens.push(from.cache_write_tokens[n]);
        self.cache_write_1h_tokens
            .push(from.cache_write_1h_tokens[n]);
        self.raw_usage.push(from.raw_usage[n]);
        self.completion_tokens.push(from.completion_tokens[n]);
        self.latency.push(from.latency[n]);
        self.retry.push(from.retry[n]);
        self.priced_at.push(from.priced_at[n]);
        self.escalation.push(from.escalation[n]);
        self.strong_mode.push(from.strong_mode[n]);
        self.strong_model.push(from.strong_model[n]);
        self.weak_mode.push(from.weak_mode[n]);
        self.weak_model.push(from.weak_model[n]);
        self.outcome.push(from.outcome[n]);
        self.response_id.push(from.response_id[n]);
        self.usage_source.push(from.usage_source[n]);
        self.settles.push(settles);
        self.batch.push(from.batch[n]);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_with_nul_round_trip_through_json() {
        for s in [
            "plain",
            "",
            "a\0b",
            "\0",
            "quote \" and \\ and \u{1} and \0",
        ] {
            let (stored, enc) = storable_answer(s);
            assert!(!stored.contains('\0'));
            assert_eq!(enc.is_some(), s.contains('\0'));
            assert_eq!(decode_answer(&stored, enc), s);
        }
    }

    #[test]
    fn response_ids_are_printable_and_bounded() {
        assert_eq!(
            sanitize_response_id("chatcmpl-1").as_deref(),
            Some("chatcmpl-1")
        );
        assert_eq!(sanitize_response_id("a\0b\nc d").as_deref(), Some("abcd"));
        assert_eq!(sanitize_response_id("\u{7}\u{0}"), None);
        assert_eq!(
            sanitize_response_id(&"x".repeat(10_000)).unwrap().len(),
            200
        );
    }
}
