//! Settling the ledger against a provider's evidence (`switchyard ledger reconcile`).
//!
//! Two kinds of entries are booked without knowing what the provider billed: `in_doubt`
//! calls (the worker died between the request and the booking; booked at their worst case,
//! `usage_source = 'worst_case'`) and calls whose answer carried no usable usage
//! (`usage_source = 'estimated'`). A provider's usage report or call log says what each call
//! really used. For every such entry with evidence, reconciliation books, in one
//! transaction, a reversal of the entry and a new entry `<call_id>:evidence` at the real
//! usage (`usage_source = 'evidence'`, `settles_entry_id` = the entry), priced by Postgres
//! with the price version in force at the entry's own price time. A call the evidence shows
//! was never billed is only reversed (to zero). A billed call the ledger lacks entirely (and
//! that no worker is still calling) is booked from the evidence alone, attributed to team
//! [`UNATTRIBUTED`]. Nothing is ever edited; every key is deterministic, so a second run with
//! the same evidence finds nothing to do.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

/// Team (and project) of calls the provider billed that the ledger knew nothing about.
pub const UNATTRIBUTED: &str = "unattributed";

/// The suffix of the call id of an entry booked from evidence.
pub const EVIDENCE_SUFFIX: &str = ":evidence";

/// What the provider says about one call (several log lines of one call id are summed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallUsage {
    /// Our call id (the `X-Client-Request-Id` the worker sent).
    pub call_id: String,
    /// The model billed, when the evidence names it.
    pub model: Option<String>,
    /// False when every line of this call says it was not billed (an error status, a broken
    /// connection).
    pub billed: bool,
    pub prompt_tokens: i64,
    pub cached_prompt_tokens: i64,
    pub completion_tokens: i64,
    /// What the provider charged, when the evidence says (compared, never booked: the ledger
    /// prices calls itself).
    #[serde(serialize_with = "crate::money::ser_opt")]
    pub cost_usd: Option<Decimal>,
    /// When the provider served it (the price time of a call the ledger lacked).
    pub at: Option<DateTime<Utc>>,
}

impl CallUsage {
    /// Adds another line of the same call: billed lines add their usage, unbilled ones add
    /// nothing.
    pub fn merge(&mut self, other: &CallUsage) {
        if !other.billed {
            return;
        }
        if !self.billed {
            *self = other.clone();
            return;
        }
        self.prompt_tokens += other.prompt_tokens;
        self.cached_prompt_tokens += other.cached_prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.cost_usd = match (self.cost_usd, other.cost_usd) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
        self.model = self.model.take().or_else(|| other.model.clone());
        self.at = match (self.at, other.at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

/// Evidence keyed by call id.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    calls: BTreeMap<String, CallUsage>,
    /// The evidence is the provider's complete record of the period (its whole call log):
    /// a call it does not mention was never billed.
    complete: bool,
}

impl Evidence {
    /// Declares the evidence complete: in-doubt and estimated entries it does not mention
    /// were never billed, and are reversed to zero.
    pub fn set_complete(&mut self, complete: bool) {
        self.complete = complete;
    }

    /// Adds one line of evidence (merged with earlier lines of the same call).
    pub fn add(&mut self, usage: CallUsage) {
        match self.calls.get_mut(&usage.call_id) {
            Some(known) => known.merge(&usage),
            None => {
                self.calls.insert(usage.call_id.clone(), usage);
            }
        }
    }

    /// How many calls the evidence speaks of.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// True when it speaks of none.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// The calls, by call id.
    pub fn calls(&self) -> impl Iterator<Item = &CallUsage> {
        self.calls.values()
    }
}

/// What a reconciliation did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Nothing was written (`--dry-run`): the figures say what a real run would do.
    pub dry_run: bool,
    /// Calls in the evidence.
    pub evidence_calls: u64,
    /// In-doubt or estimated entries reversed and re-booked at the evidence's usage.
    pub settled: u64,
    /// In-doubt or estimated entries reversed to zero: the evidence shows no bill (or, when
    /// complete, does not mention them).
    pub reversed_to_zero: u64,
    /// Billed calls the ledger lacked entirely, booked from the evidence.
    pub booked_missing: u64,
    /// Calls in the evidence whose ledger entry already stands on the provider's usage or
    /// on evidence (nothing to do).
    pub unchanged: u64,
    /// In-doubt or estimated entries the evidence does not mention (still open; with
    /// complete evidence these are reversed to zero instead).
    pub not_in_evidence: u64,
    /// Billed calls with no ledger entry whose intent is still open (a worker may still
    /// book them; left alone).
    pub in_flight: u64,
    /// Evidence naming another model than the ledger entry (left alone: check the file).
    pub model_mismatch: u64,
    /// Settled or booked calls whose evidence carries a cost that differs from the
    /// ledger's price of the same usage.
    pub cost_disagreements: u64,
    /// The ledger's change in total cost (negative: money given back).
    #[serde(serialize_with = "crate::money::ser")]
    pub usd_delta: Decimal,
}

/// Why a reconciliation stopped (nothing written then).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(
        "call `{call_id}`: model `{model}` has no price in force at {at} (set one with \
         `switchyard prices set`)"
    )]
    NoPrice {
        call_id: String,
        model: String,
        at: DateTime<Utc>,
    },
    #[error("call `{call_id}`: {what}")]
    BadEvidence { call_id: String, what: String },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// An entry booked without knowing the real usage.
#[derive(Debug, sqlx::FromRow)]
struct Open {
    entry_id: i64,
    call_id: String,
    model: String,
    cost_usd: Decimal,
}

/// Reconciles the ledger against `evidence`. With `dry_run`, everything is done in a
/// transaction that is rolled back, so the summary is exactly what a real run would do.
///
/// # Errors
/// [`ReconcileError`]; nothing is written then.
pub async fn reconcile(
    pool: &PgPool,
    evidence: &Evidence,
    dry_run: bool,
) -> Result<Summary, ReconcileError> {
    for u in evidence.calls() {
        check(u)?;
    }
    let mut tx = pool.begin().await?;
    // One reconciliation at a time: two at once would both see the same open entries.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('switchyard:reconcile'))")
        .execute(&mut *tx)
        .await?;
    let mut summary = reconcile_in(&mut tx, evidence).await?;
    summary.dry_run = dry_run;
    if dry_run {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(summary)
}

fn check(u: &CallUsage) -> Result<(), ReconcileError> {
    let bad = |what: String| ReconcileError::BadEvidence {
        call_id: u.call_id.clone(),
        what,
    };
    if u.call_id.trim().is_empty() {
        return Err(bad("empty call id".to_owned()));
    }
    for (name, n) in [
        ("prompt_tokens", u.prompt_tokens),
        ("cached_prompt_tokens", u.cached_prompt_tokens),
        ("completion_tokens", u.completion_tokens),
    ] {
        if !(0..=i64::from(i32::MAX)).contains(&n) {
            return Err(bad(format!("{name} {n} is not a token count")));
        }
    }
    if u.cached_prompt_tokens > u.prompt_tokens {
        return Err(bad(format!(
            "cached_prompt_tokens {} exceed prompt_tokens {}",
            u.cached_prompt_tokens, u.prompt_tokens
        )));
    }
    Ok(())
}

/// The call id the evidence knows an entry by (`<id>:settled` is the call `<id>`).
fn base_call_id(call_id: &str) -> &str {
    call_id
        .strip_suffix(":settled")
        .or_else(|| call_id.strip_suffix(EVIDENCE_SUFFIX))
        .unwrap_or(call_id)
}

async fn reconcile_in(
    conn: &mut PgConnection,
    evidence: &Evidence,
) -> Result<Summary, ReconcileError> {
    let mut s = Summary {
        evidence_calls: evidence.len() as u64,
        ..Summary::default()
    };

    let open: Vec<Open> = sqlx::query_as(
        "SELECT l.entry_id, l.call_id, l.model, l.cost_usd FROM ledger l \
         WHERE l.kind = 'call' AND l.usage_source IN ('worst_case', 'estimated') \
         AND NOT EXISTS (SELECT 1 FROM ledger r WHERE r.reverses_entry_id = l.entry_id) \
         ORDER BY l.entry_id",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut settle: Vec<(&Open, &CallUsage)> = Vec::new();
    let mut zero: Vec<&Open> = Vec::new();
    let mut handled: BTreeSet<&str> = BTreeSet::new();
    for o in &open {
        let id = base_call_id(&o.call_id);
        let Some(u) = evidence.calls.get(id) else {
            if evidence.complete {
                zero.push(o);
                s.reversed_to_zero += 1;
            } else {
                s.not_in_evidence += 1;
            }
            continue;
        };
        handled.insert(id);
        if !u.billed {
            zero.push(o);
            s.reversed_to_zero += 1;
        } else if u.model.as_deref().is_some_and(|m| m != o.model) {
            s.model_mismatch += 1;
        } else {
            settle.push((o, u));
        }
    }

    // Calls of the evidence the ledger knows by any key, and calls still being made.
    let ids: Vec<&str> = evidence
        .calls()
        .map(|u| u.call_id.as_str())
        .filter(|id| !handled.contains(id))
        .collect();
    let keys: Vec<String> = ids
        .iter()
        .flat_map(|id| {
            [
                (*id).to_owned(),
                format!("{id}:settled"),
                format!("{id}{EVIDENCE_SUFFIX}"),
            ]
        })
        .collect();
    let known: Vec<String> =
        sqlx::query_scalar("SELECT call_id FROM ledger WHERE call_id = ANY($1)")
            .bind(&keys)
            .fetch_all(&mut *conn)
            .await?;
    let known: BTreeSet<&str> = known.iter().map(|k| base_call_id(k)).collect();
    let flying: Vec<String> =
        sqlx::query_scalar("SELECT call_id FROM call_intents WHERE call_id = ANY($1)")
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?;
    let flying: BTreeSet<&str> = flying.iter().map(String::as_str).collect();
    let mut missing: Vec<&CallUsage> = Vec::new();
    for id in ids {
        let u = &evidence.calls[id];
        if known.contains(id) {
            s.unchanged += 1;
        } else if flying.contains(id) {
            s.in_flight += 1;
        } else if u.billed {
            missing.push(u);
        }
        // An unbilled call the ledger never heard of: nothing to book.
    }

    let reverse: Vec<i64> = settle.iter().map(|(o, _)| o.entry_id).collect();
    crate::corrections::reverse_in(
        &mut *conn,
        &reverse,
        "in-doubt or estimated call settled by the provider's usage evidence",
    )
    .await?;
    let zero_ids: Vec<i64> = zero.iter().map(|o| o.entry_id).collect();
    crate::corrections::reverse_in(
        &mut *conn,
        &zero_ids,
        "the provider's usage evidence shows this call was never billed",
    )
    .await?;
    let booked = book_settlements(conn, &settle).await?;
    s.settled = settle.len() as u64;
    let booked_missing = book_missing(conn, &missing).await?;
    s.booked_missing = missing.len() as u64;
    for (call_id, cost) in booked.iter().chain(&booked_missing) {
        let quoted = evidence
            .calls
            .get(base_call_id(call_id))
            .and_then(|u| u.cost_usd);
        if quoted.is_some_and(|q| q != *cost) {
            s.cost_disagreements += 1;
        }
    }
    // Reversals give back each entry's cost; the new entries cost what they cost.
    s.usd_delta = booked
        .iter()
        .chain(&booked_missing)
        .map(|b| b.1)
        .sum::<Decimal>()
        - settle.iter().map(|(o, _)| o.cost_usd).sum::<Decimal>()
        - zero.iter().map(|o| o.cost_usd).sum::<Decimal>();
    Ok(s)
}

/// Books `<call_id>:evidence` for each settled entry: the entry's call at the evidence's
/// usage, priced at the entry's price time. Counterfactual costs follow the new cost where
/// they were the call's own (or zero); a repriced counterfactual is kept as it was (the
/// ledger does not keep which model it was repriced at). Returns (call id, cost) booked.
async fn book_settlements(
    conn: &mut PgConnection,
    settle: &[(&Open, &CallUsage)],
) -> Result<Vec<(String, Decimal)>, ReconcileError> {
    if settle.is_empty() {
        return Ok(Vec::new());
    }
    let entry: Vec<i64> = settle.iter().map(|(o, _)| o.entry_id).collect();
    let key: Vec<String> = settle
        .iter()
        .map(|(o, _)| format!("{}{EVIDENCE_SUFFIX}", base_call_id(&o.call_id)))
        .collect();
    let pt: Vec<i32> = settle
        .iter()
        .map(|(_, u)| tokens(u.prompt_tokens))
        .collect();
    let cached: Vec<i32> = settle
        .iter()
        .map(|(_, u)| tokens(u.cached_prompt_tokens))
        .collect();
    let ct: Vec<i32> = settle
        .iter()
        .map(|(_, u)| tokens(u.completion_tokens))
        .collect();
    let rows: Vec<(String, Decimal)> = sqlx::query_as(
        "INSERT INTO ledger (call_id, job_id, item_id, attempt, team, project, tier, model, \
         provider, price_id, prompt_tokens, cached_prompt_tokens, completion_tokens, cost_usd, \
         latency_ms, outcome, retry, batch, priced_at, escalation, cost_all_strong_usd, \
         cost_all_weak_usd, provider_response_id, usage_source, settles_entry_id) \
         SELECT q.key, q.job_id, q.item_id, q.attempt, q.team, q.project, q.tier, q.model, \
         q.provider, q.pid, q.pt, q.cached, q.ct, q.cost, q.latency_ms, q.outcome, q.retry, \
         q.batch, q.at, q.escalation, \
         CASE WHEN q.cs IS NULL OR q.cs = q.old THEN q.cost WHEN q.cs = 0 THEN 0 ELSE q.cs END, \
         CASE WHEN q.cw IS NULL OR q.cw = q.old THEN q.cost WHEN q.cw = 0 THEN 0 ELSE q.cw END, \
         q.provider_response_id, 'evidence', q.entry_id \
         FROM (SELECT p.*, call_cost(p.pid, p.pt, p.cached, p.ct, p.batch) AS cost FROM \
           (SELECT l.*, e.key, e.pt, e.cached, e.ct, l.cost_usd AS old, \
             l.cost_all_strong_usd AS cs, l.cost_all_weak_usd AS cw, \
             COALESCE(l.priced_at, l.created_at) AS at, \
             price_in_force(l.model, COALESCE(l.priced_at, l.created_at)) AS pid \
           FROM UNNEST($1::int8[], $2::text[], $3::int4[], $4::int4[], $5::int4[]) \
             AS e(entry_id, key, pt, cached, ct) \
           JOIN ledger l ON l.entry_id = e.entry_id) p) q \
         WHERE q.pid IS NOT NULL \
         ON CONFLICT (call_id) DO NOTHING \
         RETURNING call_id, cost_usd",
    )
    .bind(&entry)
    .bind(&key)
    .bind(&pt)
    .bind(&cached)
    .bind(&ct)
    .fetch_all(&mut *conn)
    .await?;
    if rows.len() != settle.len() {
        // Only an entry whose model lost its price can be missing (its own price version
        // exists, so this means the settlement key was taken): refuse rather than guess.
        let got: BTreeSet<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        let lost = key
            .iter()
            .find(|k| !got.contains(k.as_str()))
            .cloned()
            .unwrap_or_default();
        return Err(ReconcileError::BadEvidence {
            call_id: lost,
            what: "its settlement could not be booked (no price in force at the entry's \
                   price time, or the key is already taken)"
                .to_owned(),
        });
    }
    Ok(rows)
}

/// Books billed calls the ledger lacked, from the evidence alone.
async fn book_missing(
    conn: &mut PgConnection,
    missing: &[&CallUsage],
) -> Result<Vec<(String, Decimal)>, ReconcileError> {
    let mut booked = Vec::new();
    let now = Utc::now();
    for u in missing {
        let model = u.model.clone().ok_or_else(|| ReconcileError::BadEvidence {
            call_id: u.call_id.clone(),
            what: "billed but unknown to the ledger, and the evidence names no model".to_owned(),
        })?;
        let at = u.at.unwrap_or(now);
        let row: Option<(String, Decimal)> = sqlx::query_as(
            "INSERT INTO ledger (call_id, job_id, item_id, attempt, team, project, tier, \
             model, provider, price_id, prompt_tokens, cached_prompt_tokens, \
             completion_tokens, cost_usd, latency_ms, outcome, retry, priced_at, \
             cost_all_strong_usd, cost_all_weak_usd, usage_source) \
             SELECT $1, '', '', 0, $2, $2, 'unknown', $3, p.provider, p.price_id, $4, $5, $6, \
             call_cost(p.price_id, $4, $5, $6, false), 0, 'in_doubt', false, $7, \
             call_cost(p.price_id, $4, $5, $6, false), call_cost(p.price_id, $4, $5, $6, false), \
             'evidence' FROM prices p WHERE p.price_id = price_in_force($3, $7) \
             ON CONFLICT (call_id) DO NOTHING RETURNING call_id, cost_usd",
        )
        .bind(format!("{}{EVIDENCE_SUFFIX}", u.call_id))
        .bind(UNATTRIBUTED)
        .bind(&model)
        .bind(tokens(u.prompt_tokens))
        .bind(tokens(u.cached_prompt_tokens))
        .bind(tokens(u.completion_tokens))
        .bind(at)
        .fetch_optional(&mut *conn)
        .await?;
        match row {
            Some(r) => booked.push(r),
            None => {
                return Err(ReconcileError::NoPrice {
                    call_id: u.call_id.clone(),
                    model,
                    at,
                });
            }
        }
    }
    Ok(booked)
}

/// A token count already checked to fit (see [`check`]).
fn tokens(n: i64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}
