//! Call intents and worker leases: how the fleet knows, for every model call, that it was
//! about to happen, who was making it, and whether that worker is still alive.
//!
//! The protocol, per delivery of a work message:
//!
//! 1. **Claim** ([`claim`], group-committed across a lane's messages): one statement looks at
//!    the attempt's committed state and, when the attempt is still open, inserts the call's
//!    intent with a fresh UUIDv7. The intent is unique per attempt, so it is also the claim:
//!    a second delivery of an attempt being called by a live worker finds it and waits
//!    ([`Claim::Busy`]), and a delivery of an attempt that already has an outcome calls
//!    nothing ([`Claim::Settled`]), however late it comes.
//! 2. **Call**: the request carries the intent's id (`X-Client-Request-Id`), so a provider's
//!    usage report can be matched to it later.
//! 3. **Book**: the commit that books the call (ledger unique on that id) deletes the intent
//!    in the same transaction.
//!
//! An intent whose owner is gone (`owner_is_gone` in the migrations: a lease that ran out)
//! and that has no booking is a call that may have been billed: [`book_in_doubt`] books it
//! `in_doubt` at its worst case, for every team, and settles the owner's budget hold for it.
//! A claim that finds such an intent takes the attempt over the same way. Except a call of a
//! budgeted team (`held`) whose hold is gone: the hold is taken before the request can leave
//! and given back only when the call did not happen, so that call was never made; its
//! intent ends unbooked (booking its worst case would spend what the budget never reserved).
//!
//! Leases: each worker process renews its lease ([`renew_lease`]) on a task of its own, so a
//! stalled finance loop or a slow batch never lets a live worker's intents or holds be taken.
//! After a Postgres restart every lease looks expired; `owner_is_gone` waits one lease period
//! past the server's start before it calls anyone gone.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use crate::outcomes::AttemptKey;

/// A call about to be made.
#[derive(Debug, Clone)]
pub struct Intent {
    /// The call's id (UUIDv7): the ledger key and the request's `X-Client-Request-Id`.
    pub call_id: String,
    pub key: AttemptKey,
    pub team: String,
    pub project: String,
    pub tier: String,
    pub model: String,
    pub provider: String,
    /// The worst case, as a budget hold computes it (prompt tokens cannot exceed the bound,
    /// completion tokens cannot exceed `max_tokens`).
    pub prompt_bound: i32,
    pub max_tokens: i32,
    /// What the ledger row's counterfactual columns would say if this call is booked in
    /// doubt (see `counterfactual_cost` in the migrations).
    pub escalation: bool,
    pub all_strong: crate::booking::Counterfactual,
    pub all_weak: crate::booking::Counterfactual,
    /// The call goes out only under a budget hold (its team has a budget). With no hold
    /// left, such a call was not made (see [`book_in_doubt`]).
    pub held: bool,
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The intent is written: call.
    Claimed,
    /// The attempt has a committed outcome, or its item is closed: call nothing. `escalate`
    /// is true when this attempt's answer escalated and its item still waits for the next
    /// attempt (the escalation may not have been published: publish it again).
    Settled { escalate: bool },
    /// A later attempt of the item exists: this message is stale.
    Stale,
    /// A live worker is calling this attempt now: wait for its booking.
    Busy,
    /// The item does not exist (its job was deleted): nothing to do.
    NoItem,
}

/// Renews `owner`'s lease for `lease` from now (creating it).
///
/// # Errors
/// Database errors only.
pub async fn renew_lease(pool: &PgPool, owner: &str, lease: Duration) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO worker_leases (owner, expires_at) \
         VALUES ($1, now() + make_interval(secs => $2)) \
         ON CONFLICT (owner) DO UPDATE SET expires_at = EXCLUDED.expires_at",
    )
    .bind(owner)
    .bind(lease.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// Ends `owner`'s lease (a clean exit: whatever it still holds is taken over at once).
///
/// # Errors
/// Database errors only.
pub async fn drop_lease(pool: &PgPool, owner: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM worker_leases WHERE owner = $1")
        .bind(owner)
        .execute(pool)
        .await?;
    Ok(())
}

#[derive(Default)]
struct IntentCols<'a> {
    call_id: Vec<&'a str>,
    job: Vec<&'a str>,
    item: Vec<&'a str>,
    attempt: Vec<i32>,
    team: Vec<&'a str>,
    project: Vec<&'a str>,
    tier: Vec<&'a str>,
    model: Vec<&'a str>,
    provider: Vec<&'a str>,
    prompt_bound: Vec<i32>,
    max_tokens: Vec<i32>,
    escalation: Vec<bool>,
    s_mode: Vec<&'static str>,
    s_model: Vec<Option<&'a str>>,
    w_mode: Vec<&'static str>,
    w_model: Vec<Option<&'a str>>,
    held: Vec<bool>,
}

impl<'a> IntentCols<'a> {
    fn of(intents: &'a [Intent]) -> Self {
        let mut c = Self::default();
        for i in intents {
            c.call_id.push(&i.call_id);
            c.job.push(&i.key.job_id);
            c.item.push(&i.key.item_id);
            c.attempt.push(i.key.attempt);
            c.team.push(&i.team);
            c.project.push(&i.project);
            c.tier.push(&i.tier);
            c.model.push(&i.model);
            c.provider.push(&i.provider);
            c.prompt_bound.push(i.prompt_bound);
            c.max_tokens.push(i.max_tokens);
            c.escalation.push(i.escalation);
            c.s_mode.push(i.all_strong.mode());
            c.s_model.push(i.all_strong.model());
            c.w_mode.push(i.all_weak.mode());
            c.w_model.push(i.all_weak.model());
            c.held.push(i.held);
        }
        c
    }
}

/// Claims each attempt of `intents` for `owner` (see the module docs); one answer per intent,
/// in order. Attempts whose intent belongs to an owner that is gone (`grace`: the lease
/// period) are taken over: that intent is booked in doubt first.
///
/// # Errors
/// Database errors only; nothing is claimed then.
pub async fn claim(
    pool: &PgPool,
    owner: &str,
    grace: Duration,
    intents: &[Intent],
) -> sqlx::Result<Vec<Claim>> {
    let mut out = claim_checked(pool, owner, intents).await?;
    let busy: Vec<usize> = (0..intents.len())
        .filter(|&i| out[i] == Claim::Busy)
        .collect();
    if busy.is_empty() {
        return Ok(out);
    }
    // Whose intents are in the way, and can they be taken over?
    let keys: Vec<&AttemptKey> = busy.iter().map(|&i| &intents[i].key).collect();
    let mut tx = pool.begin().await?;
    let gone: Vec<String> = sqlx::query_scalar(
        "SELECT c.call_id FROM call_intents c \
         JOIN UNNEST($1::text[], $2::text[], $3::int4[]) AS u(job_id, item_id, attempt) \
         ON c.job_id = u.job_id AND c.item_id = u.item_id AND c.attempt = u.attempt \
         WHERE c.owner <> $4 AND owner_is_gone(c.owner, make_interval(secs => $5)) \
         FOR UPDATE OF c SKIP LOCKED",
    )
    .bind(keys.iter().map(|k| k.job_id.as_str()).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.item_id.as_str()).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.attempt).collect::<Vec<_>>())
    .bind(owner)
    .bind(grace.as_secs_f64())
    .fetch_all(&mut *tx)
    .await?;
    if gone.is_empty() {
        tx.commit().await?;
        return Ok(out);
    }
    let booked = book_in_doubt_in(&mut tx, &gone, None).await?;
    tx.commit().await?;
    tracing::warn!(
        calls = booked.len(),
        "took over attempts whose worker is gone; their calls are booked in doubt"
    );
    // Claim the freed attempts again (another delivery may have been quicker: then Busy).
    let retry: Vec<Intent> = busy.iter().map(|&i| intents[i].clone()).collect();
    let again = claim_checked(pool, owner, &retry).await?;
    for (n, &i) in busy.iter().enumerate() {
        out[i] = again[n].clone();
    }
    Ok(out)
}

/// What one claim statement found for an intent.
#[derive(Debug, Clone, PartialEq)]
struct Looked {
    claim: Claim,
    /// The statement's snapshot saw another call's intent on the attempt (see
    /// [`claim_checked`]).
    contested: bool,
    /// This intent (its call id, this owner) is in `call_intents`: inserted now, or by an
    /// earlier try of the same claim whose reply was lost.
    own: bool,
}

/// [`claim_once`], with every contested claim looked at again by a statement of its own,
/// and this claim's own intent withdrawn wherever the answer is not "call".
///
/// Why: the claim statement judges the attempt from its snapshot, taken when it starts, but
/// its insert checks the intent's uniqueness against what is committed when it gets there.
/// A worker committing the attempt's outcome (which deletes its intent, last) between the
/// two leaves this claim judging an attempt still open and inserting where the intent is
/// gone: a second paid call on an answered attempt. That needs another call's intent in the
/// snapshot and gone at the insert, so only such claims (contested) are looked at again, by
/// a statement whose snapshot is taken after the first ended, so after any commit its
/// insert waited for; an attempt found settled there has its fresh intent deleted and is
/// answered as the second look says. An uncontested claim costs nothing more. (Another
/// worker claiming, calling and committing the attempt wholly within this one statement
/// would not be seen: a statement takes milliseconds, a provider's call far longer.)
async fn claim_checked(pool: &PgPool, owner: &str, intents: &[Intent]) -> sqlx::Result<Vec<Claim>> {
    let first = claim_once(pool, owner, intents).await?;
    // Only a claim whose snapshot saw another intent on the attempt, gone by the time it
    // inserted, can have raced a commit: looked at again; the others stand.
    let contested: Vec<usize> = (0..intents.len())
        .filter(|&i| first[i].claim == Claim::Claimed && first[i].contested)
        .collect();
    // An intent of ours under an answer other than "call": written by an earlier try of
    // this claim whose reply was lost (the claim is tried again with the same call id), on
    // an attempt settled since. Left, it would be booked in doubt, a call never made.
    let mut withdrawn: Vec<&str> = (0..intents.len())
        .filter(|&i| first[i].claim != Claim::Claimed && first[i].own)
        .map(|i| intents[i].call_id.as_str())
        .collect();
    let mut out: Vec<Claim> = first.into_iter().map(|l| l.claim).collect();
    if !contested.is_empty() {
        let again: Vec<Intent> = contested.iter().map(|&i| intents[i].clone()).collect();
        let second = claim_once(pool, owner, &again).await?;
        for (n, &i) in contested.iter().enumerate() {
            if second[n].claim != Claim::Claimed {
                withdrawn.push(intents[i].call_id.as_str());
                out[i] = second[n].claim.clone();
            }
        }
    }
    if !withdrawn.is_empty() {
        sqlx::query("DELETE FROM call_intents WHERE call_id = ANY($1) AND owner = $2")
            .bind(&withdrawn)
            .bind(owner)
            .execute(pool)
            .await?;
        tracing::info!(
            attempts = withdrawn.len(),
            "claims of attempts settled meanwhile (a commit raced, or an earlier try's reply was lost) withdrawn before any call"
        );
    }
    Ok(out)
}

/// One claim statement: verdicts from the committed state, intents inserted where open. An
/// intent already there under the same call id and owner is this claim's own, written by an
/// earlier try whose reply was lost (Postgres restarting as it committed): claimed, not
/// busy (a busy answer would keep the attempt from its own worker until that worker exits).
async fn claim_once(pool: &PgPool, owner: &str, intents: &[Intent]) -> sqlx::Result<Vec<Looked>> {
    if intents.is_empty() {
        return Ok(Vec::new());
    }
    let c = IntentCols::of(intents);
    // Verdicts, in order of precedence: the attempt has a result (answered: escalated or not)
    // or a recorded failure; the item is gone or closed (for the item's own attempts; shadow
    // and audit attempts still run for a done item) or has moved on to a later attempt.
    let rows: Vec<(i64, String, bool, bool)> = sqlx::query_as(
        "WITH k AS (SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int4[], \
           $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::int4[], $11::int4[], \
           $12::bool[], $13::text[], $14::text[], $15::text[], $16::text[], $18::bool[]) \
           WITH ORDINALITY AS k(call_id, job_id, item_id, attempt, team, project, tier, model, \
           provider, prompt_bound, max_tokens, escalation, s_mode, s_model, w_mode, w_model, \
           held, ord)), \
         v AS (SELECT k.*, CASE \
             WHEN r.escalated IS NOT NULL THEN \
               CASE WHEN r.escalated AND i.status IN ('pending', 'queued') \
                 AND i.attempt = k.attempt + 1 THEN 'escalate' ELSE 'settled' END \
             WHEN EXISTS (SELECT 1 FROM dead_letters d WHERE d.message_key = 'item:' || \
               octet_length(k.job_id) || ':' || k.job_id || ':' || k.item_id || ':' || k.attempt) \
               THEN 'settled' \
             WHEN i.status IS NULL THEN 'no_item' \
             WHEN i.status = 'cancelled' THEN 'settled' \
             WHEN k.attempt < 1000 AND i.status IN ('done', 'failed') THEN 'settled' \
             WHEN k.attempt < 1000 AND i.attempt > k.attempt THEN 'stale' \
             ELSE 'open' END AS verdict \
           FROM k LEFT JOIN items i ON i.job_id = k.job_id AND i.item_id = k.item_id \
           LEFT JOIN results r ON r.job_id = k.job_id AND r.item_id = k.item_id \
             AND r.attempt = k.attempt), \
         ins AS (INSERT INTO call_intents (call_id, job_id, item_id, attempt, team, project, \
           tier, model, provider, owner, prompt_bound, max_tokens, escalation, s_mode, s_model, \
           w_mode, w_model, held) \
           SELECT call_id, job_id, item_id, attempt, team, project, tier, model, provider, $17, \
           prompt_bound, max_tokens, escalation, s_mode, s_model, w_mode, w_model, held \
           FROM v WHERE verdict = 'open' \
           ON CONFLICT (job_id, item_id, attempt) DO NOTHING RETURNING call_id) \
         SELECT v.ord, v.verdict, ins.call_id IS NOT NULL OR EXISTS (SELECT 1 \
           FROM call_intents c WHERE c.call_id = v.call_id AND c.owner = $17), \
           EXISTS (SELECT 1 FROM call_intents c WHERE c.job_id = v.job_id \
             AND c.item_id = v.item_id AND c.attempt = v.attempt \
             AND c.call_id <> v.call_id) FROM v \
         LEFT JOIN ins ON ins.call_id = v.call_id ORDER BY v.ord",
    )
    .bind(&c.call_id)
    .bind(&c.job)
    .bind(&c.item)
    .bind(&c.attempt)
    .bind(&c.team)
    .bind(&c.project)
    .bind(&c.tier)
    .bind(&c.model)
    .bind(&c.provider)
    .bind(&c.prompt_bound)
    .bind(&c.max_tokens)
    .bind(&c.escalation)
    .bind(&c.s_mode)
    .bind(&c.s_model)
    .bind(&c.w_mode)
    .bind(&c.w_model)
    .bind(owner)
    .bind(&c.held)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(_, verdict, own, contested)| {
            let claim = match verdict.as_str() {
                "open" if own => Claim::Claimed,
                "open" => Claim::Busy,
                "escalate" => Claim::Settled { escalate: true },
                "stale" => Claim::Stale,
                "no_item" => Claim::NoItem,
                _ => Claim::Settled { escalate: false },
            };
            Looked {
                claim,
                contested,
                own,
            }
        })
        .collect())
}

/// A call booked in doubt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InDoubt {
    pub call_id: String,
    pub job_id: String,
    pub item_id: String,
    pub attempt: i32,
    pub team: String,
    pub owner: String,
}

/// Books, in doubt, up to `limit` intents whose owner is gone (`grace`: the lease period),
/// and settles the owners' holds for them. Safe to run in every process at once (rows are
/// taken with `SKIP LOCKED`).
///
/// # Errors
/// Database errors only; nothing is booked then.
pub async fn book_in_doubt(
    pool: &PgPool,
    grace: Duration,
    limit: i64,
) -> sqlx::Result<Vec<InDoubt>> {
    let mut tx = pool.begin().await?;
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT call_id FROM call_intents c \
         WHERE owner_is_gone(c.owner, make_interval(secs => $1)) \
         ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(grace.as_secs_f64())
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if ids.is_empty() {
        tx.commit().await?;
        return Ok(Vec::new());
    }
    let booked = book_in_doubt_in(&mut tx, &ids, None).await?;
    tx.commit().await?;
    Ok(booked)
}

/// Books call `call_id`, whose own ledger entry Postgres refused even in its plainest form
/// (usage it cannot hold, no price in force at the worker's clock), in doubt at its worst
/// case as its intent bounds it (priced by Postgres, as the lost-worker sweep books), with
/// `reason`, and commits `failure` (its attempt's failure, without the call) in the same
/// transaction. The call was made and billed: it is booked, at a cost no lower than it
/// can have been, rather than left to its worker's exit. The failure's commit report, or
/// `None` when the intent cannot be booked (gone, or no price in force when it was
/// written): nothing is committed then.
///
/// # Errors
/// Database errors; nothing is committed then.
pub async fn book_refused_call(
    pool: &PgPool,
    call_id: &str,
    reason: &str,
    failure: &crate::outcomes::Outcome,
) -> sqlx::Result<Option<crate::outcomes::CommitReport>> {
    let mut tx = pool.begin().await?;
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT call_id FROM call_intents WHERE call_id = $1 FOR UPDATE")
            .bind(call_id)
            .fetch_all(&mut *tx)
            .await?;
    if ids.is_empty() {
        return Ok(None);
    }
    if book_in_doubt_in(&mut tx, &ids, Some(reason))
        .await?
        .is_empty()
    {
        return Ok(None);
    }
    let report = crate::outcomes::commit_in(&mut tx, std::slice::from_ref(failure)).await?;
    tx.commit().await?;
    Ok(Some(report))
}

/// Books the intents `call_ids` (locked by the caller) in doubt: a ledger row at the call's
/// worst case, priced at the time its budget hold was taken (or the intent written), the
/// hold settled, the intent deleted. The row's `reason` names the worker whose lease ran out,
/// so an auditor (and a test) can tell whose calls were taken over. Returns the intents
/// booked (or found booked already).
///
/// An intent that is `held` (its call goes out only under a budget hold) with no hold left
/// was never called: it is ended without a booking.
///
/// An intent whose model had no price in force at that time cannot be priced: it is left
/// in place, hold and all, with a warning, and counted again by the next sweep once a price
/// exists (an intent is never deleted without its ledger row: that would be a billed call
/// with no booking). Workers seed prices before their first call, so this is a guard, not a
/// path of the fleet.
///
/// `reason` is the rows' `reason`; by default, the owner whose lease ran out.
async fn book_in_doubt_in(
    conn: &mut PgConnection,
    call_ids: &[String],
    reason: Option<&str>,
) -> sqlx::Result<Vec<InDoubt>> {
    // Calls that go out only under a budget hold and have none: never made (the hold was
    // not taken, the item parked or downgraded, or given back before the request left).
    // Their intents end here, unbooked: a worst case booked for them would be spend the
    // budget never reserved.
    let unsent: Vec<String> = sqlx::query_scalar(
        "DELETE FROM call_intents c WHERE c.call_id = ANY($1) AND c.held \
         AND NOT EXISTS (SELECT 1 FROM budget_reservations r WHERE r.holder = c.owner \
           AND r.job_id = c.job_id AND r.item_id = c.item_id AND r.attempt = c.attempt) \
         RETURNING c.call_id",
    )
    .bind(call_ids)
    .fetch_all(&mut *conn)
    .await?;
    if !unsent.is_empty() {
        tracing::info!(
            calls = unsent.len(),
            "ended the intents of calls never made (no budget hold was taken or it was given back); nothing booked"
        );
    }
    let gone: Vec<InDoubt> = sqlx::query_as(
        "SELECT call_id, job_id, item_id, attempt, team, owner FROM call_intents \
         WHERE call_id = ANY($1)",
    )
    .bind(call_ids)
    .fetch_all(&mut *conn)
    .await?;
    // The holds their owners took for these calls (a hold's time is the call's price time).
    let holds: Vec<(String, i64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT c.call_id, r.reservation_id, r.created_at FROM call_intents c \
         JOIN budget_reservations r ON r.holder = c.owner AND r.job_id = c.job_id \
         AND r.item_id = c.item_id AND r.attempt = c.attempt WHERE c.call_id = ANY($1)",
    )
    .bind(call_ids)
    .fetch_all(&mut *conn)
    .await?;
    let hold_call: Vec<&str> = holds.iter().map(|h| h.0.as_str()).collect();
    let hold_at: Vec<DateTime<Utc>> = holds.iter().map(|h| h.2).collect();
    let booked: Vec<String> = sqlx::query_scalar(
        "WITH h AS (SELECT * FROM UNNEST($2::text[], $3::timestamptz[]) AS h(call_id, held_at)), \
         p AS (SELECT c.*, COALESCE(h.held_at, c.created_at) AS priced_at, \
           price_in_force(c.model, COALESCE(h.held_at, c.created_at)) AS pid \
           FROM call_intents c LEFT JOIN h ON h.call_id = c.call_id \
           WHERE c.call_id = ANY($1)), \
         q AS (SELECT p.*, call_cost(p.pid, p.prompt_bound, 0, p.max_tokens, false) AS cost \
           FROM p WHERE p.pid IS NOT NULL), \
         ins AS (INSERT INTO ledger (call_id, job_id, item_id, attempt, team, project, tier, \
           model, provider, price_id, prompt_tokens, cached_prompt_tokens, completion_tokens, \
           cost_usd, latency_ms, outcome, retry, priced_at, escalation, cost_all_strong_usd, \
           cost_all_weak_usd, usage_source, reason) \
           SELECT q.call_id, q.job_id, q.item_id, q.attempt, q.team, q.project, q.tier, \
           q.model, q.provider, q.pid, q.prompt_bound, 0, q.max_tokens, q.cost, 0, 'in_doubt', \
           false, q.priced_at, q.escalation, \
           counterfactual_cost(q.s_mode, q.s_model, q.priced_at, q.prompt_bound, 0, \
             q.max_tokens, q.cost), \
           counterfactual_cost(q.w_mode, q.w_model, q.priced_at, q.prompt_bound, 0, \
             q.max_tokens, q.cost), \
           'worst_case', COALESCE($4, 'worker ' || q.owner || ' gone: its lease ran out') \
           FROM q ON CONFLICT (call_id) DO NOTHING) \
         DELETE FROM call_intents WHERE call_id IN (SELECT call_id FROM q) RETURNING call_id",
    )
    .bind(call_ids)
    .bind(&hold_call)
    .bind(&hold_at)
    .bind(reason)
    .fetch_all(&mut *conn)
    .await?;
    let booked: std::collections::HashSet<String> = booked.into_iter().collect();
    let hold_ids: Vec<i64> = holds
        .iter()
        .filter(|h| booked.contains(&h.0))
        .map(|h| h.1)
        .collect();
    crate::budgets::settle_in(&mut *conn, &hold_ids).await?;
    let (booked_now, unpriced): (Vec<InDoubt>, Vec<InDoubt>) =
        gone.into_iter().partition(|g| booked.contains(&g.call_id));
    for u in &unpriced {
        tracing::warn!(call_id = %u.call_id, job_id = %u.job_id, owner = %u.owner, "an in-doubt call's model has no price in force: it stays an open intent until one is set (switchyard prices set)");
    }
    Ok(booked_now)
}

/// The owner of `key`'s intent, when there is one and its owner is alive.
///
/// # Errors
/// Database errors only.
pub async fn live_owner(
    pool: &PgPool,
    key: &AttemptKey,
    grace: Duration,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "SELECT owner FROM call_intents WHERE job_id = $1 AND item_id = $2 AND attempt = $3 \
         AND NOT owner_is_gone(owner, make_interval(secs => $4))",
    )
    .bind(&key.job_id)
    .bind(&key.item_id)
    .bind(key.attempt)
    .bind(grace.as_secs_f64())
    .fetch_optional(pool)
    .await
}

/// In-doubt ledger entries not settled yet (still at their worst case, not reversed),
/// fleet-wide: how many, and their cost.
///
/// # Errors
/// Database errors only.
pub async fn unsettled_in_doubt(pool: &PgPool) -> sqlx::Result<(i64, rust_decimal::Decimal)> {
    sqlx::query_as(
        "SELECT count(*), COALESCE(sum(l.cost_usd), 0) FROM ledger l \
         WHERE l.outcome = 'in_doubt' AND l.kind = 'call' AND l.usage_source = 'worst_case' \
         AND NOT EXISTS (SELECT 1 FROM ledger r WHERE r.reverses_entry_id = l.entry_id)",
    )
    .fetch_one(pool)
    .await
}

/// How many intents are open now, and how many of them belong to owners that are gone.
///
/// # Errors
/// Database errors only.
pub async fn open_intents(pool: &PgPool, grace: Duration) -> sqlx::Result<(i64, i64)> {
    sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE owner_is_gone(owner, \
         make_interval(secs => $1))) FROM call_intents",
    )
    .bind(grace.as_secs_f64())
    .fetch_one(pool)
    .await
}
