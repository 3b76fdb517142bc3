//! Team budgets: a monthly hard limit that concurrent workers cannot push a team past, an
//! optional soft limit that warns once, and what happens to calls that do not fit.
//!
//! The protocol, per call of a team with a budget:
//!
//! 1. **Reserve** the call's worst-case cost before calling ([`reserve`]). One `UPDATE` of the
//!    team's month row adds it to `reserved_usd` only if `spent + reserved + amount <= limit`;
//!    Postgres evaluates that condition on the latest row version under the row lock, so two
//!    workers can never both take the last dollar. A hold expires at `expires_at`. A hold is
//!    taken only while the call's intent is still the worker's ([`HoldRequest::call_id`]),
//!    so a call with a hold always has an intent to be booked in doubt by.
//! 2. **Renew** the hold while the call is in flight ([`renew_holds`]): every worker process
//!    renews the holds it tracks in one statement, on a task of its own, together with its
//!    lease ([`crate::intents::renew_lease`]); a slow call or a stalled loop never loses one,
//!    and a hold it lost track of (a failed release) expires.
//! 3. **Settle** in the transaction that books the call ([`settle_in`]): the hold is deleted
//!    and the actual cost is added to `spent_usd` by the ledger trigger, in the same commit.
//! 4. **Release** the hold when the call fails or is given back ([`release`]).
//!
//! A worker that died stops renewing; when a reservation does not fit, expired holds of the
//! team are reclaimed first (a dead worker's hold is lost, a live one's never is; a hold whose
//! call intent is still open waits for that call's in-doubt booking, which settles it), and
//! [`release_expired`] gives back expired holds of any month. After a Postgres restart every
//! hold looks expired: nothing is reclaimed until the server has been up for one lease, so
//! live workers renew theirs first. Lock order, everywhere: the team's month row before its
//! reservation rows.
//!
//! **Months.** A hold is taken in the UTC month of its time (the database's clock), and the
//! call it holds for is priced at that same time (`held_at` of [`Reservation::Held`]), so the
//! ledger spends it in the month it was held in: a hold at 23:59:59.9 whose call is booked
//! after midnight leaves neither month over its limit.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

/// The current UTC month, as budget rows key it.
const MONTH_NOW: &str = "date_trunc('month', now() AT TIME ZONE 'UTC')::date";

/// The UTC month of a hold's time (`$9`: a test clock, `NULL` in production: now).
const MONTH_AT: &str =
    "date_trunc('month', COALESCE($9::timestamptz, now()) AT TIME ZONE 'UTC')::date";

/// True when expired holds may be taken: the server has been up for one lease (the
/// parameter `lease_param`, in seconds), so live workers had a chance to renew theirs.
fn up_for(lease_param: &str) -> String {
    format!("now() - pg_postmaster_start_time() > make_interval(secs => {lease_param})")
}

/// What a call that does not fit its team's budget does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenExhausted {
    /// A call above the weak tier goes to the weak tier instead; a weak call waits.
    Downgrade,
    /// The item waits until the budget has room (a raised limit, a correction, a new month).
    Wait,
}

impl WhenExhausted {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            WhenExhausted::Downgrade => "downgrade",
            WhenExhausted::Wait => "wait",
        }
    }

    fn parse(s: &str) -> Self {
        if s == "wait" {
            WhenExhausted::Wait
        } else {
            WhenExhausted::Downgrade
        }
    }
}

/// A budget as `switchyard budget set` gives it.
#[derive(Debug, Clone)]
pub struct BudgetSpec {
    pub team: String,
    pub monthly_usd: Decimal,
    pub soft_usd: Option<Decimal>,
    pub when_exhausted: WhenExhausted,
}

/// Why a budget was not set or shown.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error(
        "unknown team `{team}`: no job was ever submitted for it and it has no budget{}; \
         check the name, or pass --new-team to budget a team before its first job",
        known_hint(.known)
    )]
    UnknownTeam { team: String, known: Vec<String> },
    #[error(
        "team `{0}` has no budget (set one with `switchyard budget set --team {0} --monthly USD`)"
    )]
    NoBudget(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

fn known_hint(known: &[String]) -> String {
    if known.is_empty() {
        String::new()
    } else {
        format!(" (known teams: {})", known.join(", "))
    }
}

/// Largest monthly budget accepted (a typo guard).
const MAX_MONTHLY_USD: i64 = 1_000_000_000;

impl BudgetSpec {
    /// Checks the amounts.
    ///
    /// # Errors
    /// [`BudgetError::Invalid`] naming the problem.
    pub fn validate(&self) -> Result<(), BudgetError> {
        let bad = |m: String| Err(BudgetError::Invalid(m));
        if self.team.trim().is_empty() {
            return bad("--team must not be empty".into());
        }
        let m = self.monthly_usd;
        if m <= Decimal::ZERO {
            return bad(format!("--monthly must be positive (got {m})"));
        }
        if m > Decimal::from(MAX_MONTHLY_USD) {
            return bad(format!(
                "--monthly {m} USD is absurd (more than {MAX_MONTHLY_USD})"
            ));
        }
        if m.normalize().scale() > 9 {
            return bad(format!("--monthly {m} has more than 9 decimal places"));
        }
        if let Some(s) = self.soft_usd {
            if s <= Decimal::ZERO {
                return bad(format!("--soft must be positive (got {s})"));
            }
            if s >= m {
                return bad(format!(
                    "--soft {s} must be below the hard limit --monthly {m}"
                ));
            }
            if s.normalize().scale() > 9 {
                return bad(format!("--soft {s} has more than 9 decimal places"));
            }
        }
        Ok(())
    }
}

/// Teams the fleet knows: those that submitted a job, booked a call or have a budget.
///
/// # Errors
/// Database errors only.
pub async fn known_teams(pool: &PgPool) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT team FROM (SELECT DISTINCT team FROM jobs UNION SELECT team FROM budgets \
         UNION SELECT team FROM budget_periods) t ORDER BY team LIMIT 50",
    )
    .fetch_all(pool)
    .await
}

/// True when `team` is known (see [`known_teams`]).
///
/// # Errors
/// Database errors only.
pub async fn team_is_known(pool: &PgPool, team: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE team = $1) \
         OR EXISTS (SELECT 1 FROM budgets WHERE team = $1) \
         OR EXISTS (SELECT 1 FROM budget_periods WHERE team = $1)",
    )
    .bind(team)
    .fetch_one(pool)
    .await
}

/// Sets (or replaces) a team's budget. A changed soft limit above what was spent this month
/// re-arms its warning.
///
/// # Errors
/// Invalid amounts, an unknown team (unless `allow_new_team`); nothing is written then.
pub async fn set(
    pool: &PgPool,
    spec: &BudgetSpec,
    allow_new_team: bool,
) -> Result<(), BudgetError> {
    spec.validate()?;
    if !allow_new_team && !team_is_known(pool, &spec.team).await? {
        return Err(BudgetError::UnknownTeam {
            team: spec.team.clone(),
            known: known_teams(pool).await?,
        });
    }
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO budgets (team, monthly_usd, soft_usd, when_exhausted) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (team) DO UPDATE SET \
         monthly_usd = EXCLUDED.monthly_usd, soft_usd = EXCLUDED.soft_usd, \
         when_exhausted = EXCLUDED.when_exhausted, updated_at = now()",
    )
    .bind(&spec.team)
    .bind(spec.monthly_usd)
    .bind(spec.soft_usd)
    .bind(spec.when_exhausted.as_str())
    .execute(&mut *tx)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE budget_periods SET soft_warned_at = NULL WHERE team = $1 AND month = {MONTH_NOW} \
         AND soft_warned_at IS NOT NULL AND ($2::numeric IS NULL OR spent_usd < $2)"
    )))
    .bind(&spec.team)
    .bind(spec.soft_usd)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A team's budget this month, as `switchyard budget show` prints it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct BudgetStatus {
    pub team: String,
    pub month: NaiveDate,
    #[serde(serialize_with = "crate::money::ser")]
    pub monthly_usd: Decimal,
    #[serde(serialize_with = "crate::money::ser_opt")]
    pub soft_usd: Option<Decimal>,
    pub when_exhausted: String,
    #[serde(serialize_with = "crate::money::ser")]
    pub spent_usd: Decimal,
    /// Held by calls in flight.
    #[serde(serialize_with = "crate::money::ser")]
    pub reserved_usd: Decimal,
    /// Limit − spent − reserved.
    #[serde(serialize_with = "crate::money::ser")]
    pub available_usd: Decimal,
    pub live_reservations: i64,
    pub soft_warned_at: Option<DateTime<Utc>>,
    /// Items parked until the budget has room.
    pub waiting_items: i64,
    /// Items whose strong call went weak this month.
    pub downgraded_items: i64,
}

/// Budgets this month, of one team or all.
///
/// # Errors
/// [`BudgetError::NoBudget`] when `team` is given and has no budget.
pub async fn show(pool: &PgPool, team: Option<&str>) -> Result<Vec<BudgetStatus>, BudgetError> {
    let rows: Vec<BudgetStatus> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT b.team, {MONTH_NOW} AS month, b.monthly_usd, b.soft_usd, b.when_exhausted, \
         COALESCE(p.spent_usd, 0) AS spent_usd, COALESCE(p.reserved_usd, 0) AS reserved_usd, \
         b.monthly_usd - COALESCE(p.spent_usd, 0) - COALESCE(p.reserved_usd, 0) AS available_usd, \
         (SELECT count(*) FROM budget_reservations r WHERE r.team = b.team \
            AND r.expires_at >= now()) AS live_reservations, \
         p.soft_warned_at, \
         (SELECT count(*) FROM budget_parked k WHERE k.team = b.team) AS waiting_items, \
         (SELECT count(DISTINCT (e.job_id, e.item_id)) FROM budget_events e \
            WHERE e.team = b.team AND e.kind = 'downgraded' \
            AND e.created_at >= {MONTH_NOW}::timestamp AT TIME ZONE 'UTC') AS downgraded_items \
         FROM budgets b LEFT JOIN budget_periods p ON p.team = b.team AND p.month = {MONTH_NOW} \
         WHERE ($1::text IS NULL OR b.team = $1) ORDER BY b.team"
    )))
    .bind(team)
    .fetch_all(pool)
    .await?;
    if let Some(t) = team
        && rows.is_empty()
    {
        if team_is_known(pool, t).await? {
            return Err(BudgetError::NoBudget(t.to_owned()));
        }
        return Err(BudgetError::UnknownTeam {
            team: t.to_owned(),
            known: known_teams(pool).await?,
        });
    }
    Ok(rows)
}

/// Teams with a budget (workers cache this to know which calls need a reservation).
///
/// # Errors
/// Database errors only.
pub async fn budgeted_teams(pool: &PgPool) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT team FROM budgets ORDER BY team")
        .fetch_all(pool)
        .await
}

/// A hold about to be taken.
#[derive(Debug, Clone)]
pub struct HoldRequest<'a> {
    pub team: &'a str,
    /// The call's worst-case cost.
    pub amount_usd: Decimal,
    /// Who renews it (a worker's id), for operators.
    pub holder: &'a str,
    pub job_id: &'a str,
    pub item_id: &'a str,
    pub attempt: i32,
    pub model: &'a str,
    /// How long the hold lives without renewal.
    pub lease: Duration,
    /// The hold's time; `None` (production): the database's clock. Tests set it to take a
    /// hold at a month's last instant.
    pub at: Option<DateTime<Utc>>,
    /// The call's intent (its call id; `None`: no intent to check, tests of the budget
    /// alone). The hold is taken only while that intent is still `holder`'s, and the intent
    /// is locked while it is taken: a worker that stalled between its claim and its hold
    /// past its lease may have had the attempt taken over (its intent ended or booked in
    /// doubt); it then gets no hold ([`Reservation::ClaimLost`]) and must not call. A hold
    /// taken without its intent would let the call go out with nothing to book it in doubt.
    pub call_id: Option<&'a str>,
    /// The call's worst-case tokens (prompt bound, completion bound), when known: the hold is
    /// then the larger of `amount_usd` (the worker's pricing, from its cached price book) and
    /// their cost at the price Postgres has in force at the hold's time, the price the call
    /// is booked at. A price raised with immediate effect is in Postgres before it is in every
    /// worker's cache; a hold at the old price would not cover a booking at the new one.
    pub worst_tokens: Option<(i32, i32)>,
}

/// The hold's amount (see [`HoldRequest::worst_tokens`]), over the given placeholders: the
/// worker's amount, the model, the hold's time (`NULL`: now), the token bounds (`NULL`: the
/// worker's amount alone).
fn amount_sql(amount: &str, model: &str, at: &str, prompt: &str, completion: &str) -> String {
    format!(
        "GREATEST({amount}::numeric, COALESCE(call_cost(price_in_force({model}, \
         COALESCE({at}::timestamptz, now())), {prompt}::int4, 0, {completion}::int4, false), 0))"
    )
}

/// What a reservation found.
#[derive(Debug, Clone, PartialEq)]
pub enum Reservation {
    /// The team has no budget: nothing to hold.
    Unbudgeted,
    /// Held; settle or release it by this id. `held_at` is the hold's time: the call is
    /// priced at it, so its spend lands in the hold's month.
    Held {
        reservation_id: i64,
        held_at: DateTime<Utc>,
    },
    /// The call's worst case does not fit what is left this month.
    DoesNotFit {
        available_usd: Decimal,
        when_exhausted: WhenExhausted,
    },
    /// The call's intent is no longer the holder's (see [`HoldRequest::call_id`]): nothing
    /// is held, and the call must not be made.
    ClaimLost,
}

/// Reserves a call's worst-case cost against its team's budget (see the module docs).
///
/// # Errors
/// Database errors only.
pub async fn reserve(pool: &PgPool, req: &HoldRequest<'_>) -> sqlx::Result<Reservation> {
    // Fast path, one statement: the month row exists and the amount fits.
    let held = insert_hold(
        pool,
        format!(
            "WITH a AS (SELECT {} AS amount), \
             upd AS (UPDATE budget_periods p SET reserved_usd = p.reserved_usd + a.amount \
               FROM budgets b, a WHERE p.team = $1 AND p.month = {MONTH_AT} AND b.team = p.team \
               AND p.spent_usd + p.reserved_usd + a.amount <= b.monthly_usd \
               AND ($10::text IS NULL OR EXISTS (SELECT 1 FROM call_intents c \
                 WHERE c.call_id = $10 AND c.owner = $3 FOR SHARE)) \
               RETURNING p.team, p.month, a.amount) \
             INSERT INTO budget_reservations (team, month, amount_usd, holder, job_id, item_id, \
               attempt, model, expires_at, created_at) \
             SELECT team, month, amount, $3, $4, $5, $6, $7, now() + make_interval(secs => $8), \
               COALESCE($9::timestamptz, now()) FROM upd \
             RETURNING reservation_id, created_at",
            amount_sql("$2", "$7", "$9", "$11", "$12")
        ),
        req,
    )
    .await?;
    if let Some((reservation_id, held_at)) = held {
        return Ok(Reservation::Held {
            reservation_id,
            held_at,
        });
    }
    // Slow path: no month row yet, no budget, no room before expired holds are reclaimed,
    // or the claim was lost. The intent is locked first (the order of the in-doubt sweep,
    // which locks intents before month rows).
    let mut tx = pool.begin().await?;
    if let Some(call_id) = req.call_id {
        let ours: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM call_intents WHERE call_id = $1 AND owner = $2 FOR SHARE",
        )
        .bind(call_id)
        .bind(req.holder)
        .fetch_optional(&mut *tx)
        .await?;
        if ours.is_none() {
            tx.commit().await?;
            return Ok(Reservation::ClaimLost);
        }
    }
    let budget: Option<(Decimal, String)> =
        sqlx::query_as("SELECT monthly_usd, when_exhausted FROM budgets WHERE team = $1")
            .bind(req.team)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((limit, when)) = budget else {
        tx.commit().await?;
        return Ok(Reservation::Unbudgeted);
    };
    let amount: Decimal = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT {}",
        amount_sql("$1", "$2", "$3", "$4", "$5")
    )))
    .bind(req.amount_usd)
    .bind(req.model)
    .bind(req.at)
    .bind(req.worst_tokens.map(|t| t.0))
    .bind(req.worst_tokens.map(|t| t.1))
    .fetch_one(&mut *tx)
    .await?;
    let req = &HoldRequest {
        amount_usd: amount,
        ..req.clone()
    };
    let month_at = MONTH_AT.replace("$9", "$2");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO budget_periods (team, month) VALUES ($1, {month_at}) ON CONFLICT DO NOTHING"
    )))
    .bind(req.team)
    .bind(req.at)
    .execute(&mut *tx)
    .await?;
    let (month, spent, reserved): (NaiveDate, Decimal, Decimal) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT month, spent_usd, reserved_usd FROM budget_periods \
             WHERE team = $1 AND month = {month_at} FOR UPDATE"
        )))
        .bind(req.team)
        .bind(req.at)
        .fetch_one(&mut *tx)
        .await?;
    let reclaimed = reclaim_expired_in(&mut tx, req.team, month, req.lease).await?;
    let reserved = reserved - reclaimed;
    if spent + reserved + req.amount_usd > limit {
        tx.commit().await?;
        return Ok(Reservation::DoesNotFit {
            available_usd: limit - spent - reserved,
            when_exhausted: WhenExhausted::parse(&when),
        });
    }
    sqlx::query(
        "UPDATE budget_periods SET reserved_usd = reserved_usd + $2 \
         WHERE team = $1 AND month = $3",
    )
    .bind(req.team)
    .bind(req.amount_usd)
    .bind(month)
    .execute(&mut *tx)
    .await?;
    let (reservation_id, held_at) = insert_hold(
        &mut *tx,
        format!(
            "INSERT INTO budget_reservations (team, month, amount_usd, holder, job_id, item_id, \
             attempt, model, expires_at, created_at) VALUES ($1, {MONTH_AT}, $2, $3, $4, $5, \
             $6, $7, now() + make_interval(secs => $8), COALESCE($9::timestamptz, now())) \
             RETURNING reservation_id, created_at"
        ),
        req,
    )
    .await?
    .ok_or(sqlx::Error::RowNotFound)?;
    tx.commit().await?;
    Ok(Reservation::Held {
        reservation_id,
        held_at,
    })
}

/// Runs `sql`, an insert of a hold that returns its id and time (if it inserted one), with
/// the request's team, amount, holder, job, item, attempt, model, lease, time, call id and
/// token bounds as $1 to $12.
async fn insert_hold<'e>(
    db: impl sqlx::PgExecutor<'e>,
    sql: String,
    req: &HoldRequest<'_>,
) -> sqlx::Result<Option<(i64, DateTime<Utc>)>> {
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(req.team)
        .bind(req.amount_usd)
        .bind(req.holder)
        .bind(req.job_id)
        .bind(req.item_id)
        .bind(req.attempt)
        .bind(req.model)
        .bind(req.lease.as_secs_f64())
        .bind(req.at)
        .bind(req.call_id)
        .bind(req.worst_tokens.map(|t| t.0))
        .bind(req.worst_tokens.map(|t| t.1))
        .fetch_optional(db)
        .await
}

/// Deletes the team's expired holds of `month` (the caller holds the month row's lock) and
/// takes them off `reserved_usd`; returns the amount reclaimed. Nothing is reclaimed while
/// the server has been up for less than `lease` (see the module docs). A hold whose call
/// intent is still open is not reclaimed: its call may have been made, and the in-doubt
/// booking of that intent settles the hold with the call's worst case. Reclaiming it first
/// would give its room to another call and then book the worst case on top: overspend.
async fn reclaim_expired_in(
    conn: &mut PgConnection,
    team: &str,
    month: NaiveDate,
    lease: Duration,
) -> sqlx::Result<Decimal> {
    let reclaimed: Decimal = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "WITH gone AS (DELETE FROM budget_reservations r WHERE r.team = $1 AND r.month = $2 \
         AND r.expires_at < now() AND {} \
         AND NOT EXISTS (SELECT 1 FROM call_intents c WHERE c.owner = r.holder \
           AND c.job_id = r.job_id AND c.item_id = r.item_id AND c.attempt = r.attempt) \
         RETURNING r.amount_usd) \
         SELECT COALESCE(sum(amount_usd), 0) FROM gone",
        up_for("$3")
    )))
    .bind(team)
    .bind(month)
    .bind(lease.as_secs_f64())
    .fetch_one(&mut *conn)
    .await?;
    if !reclaimed.is_zero() {
        tracing::warn!(team = %team, amount_usd = %reclaimed, "reclaimed budget holds whose workers stopped renewing them");
        sqlx::query(
            "UPDATE budget_periods SET reserved_usd = reserved_usd - $3 \
             WHERE team = $1 AND month = $2",
        )
        .bind(team)
        .bind(month)
        .bind(reclaimed)
        .execute(&mut *conn)
        .await?;
    }
    Ok(reclaimed)
}

/// Extends the holds `reservation_ids` of `holder` by `lease` from now; returns how many
/// were still there. One statement per process and period, whatever the number of calls in
/// flight. Only the holds the holder still tracks are named: a hold it lost track of (its
/// release failed, or the reply to its reservation was lost) must expire, not live as long
/// as the holder does.
///
/// # Errors
/// Database errors only.
pub async fn renew_holds(
    pool: &PgPool,
    holder: &str,
    reservation_ids: &[i64],
    lease: Duration,
) -> sqlx::Result<u64> {
    if reservation_ids.is_empty() {
        return Ok(0);
    }
    Ok(sqlx::query(
        "UPDATE budget_reservations SET expires_at = now() + make_interval(secs => $2) \
         WHERE holder = $1 AND reservation_id = ANY($3)",
    )
    .bind(holder)
    .bind(lease.as_secs_f64())
    .bind(reservation_ids)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Gives back the expired holds of any month (a dead worker's holds of a past month are
/// never reclaimed by a reservation, which only looks at the current one), except those of
/// calls whose intent is still open (the in-doubt sweep books and settles those). Returns
/// the amount released.
///
/// # Errors
/// Database errors only.
pub async fn release_expired(pool: &PgPool, lease: Duration) -> sqlx::Result<Decimal> {
    let mut tx = pool.begin().await?;
    // Month rows first (lock order), then the holds.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT 1 FROM budget_periods p WHERE (p.team, p.month) IN \
         (SELECT team, month FROM budget_reservations WHERE expires_at < now()) AND {} \
         ORDER BY p.team, p.month FOR UPDATE OF p",
        up_for("$1")
    )))
    .bind(lease.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    let released: Option<Decimal> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "WITH gone AS (DELETE FROM budget_reservations r WHERE r.expires_at < now() AND {} \
           AND NOT EXISTS (SELECT 1 FROM call_intents c WHERE c.owner = r.holder \
             AND c.job_id = r.job_id AND c.item_id = r.item_id AND c.attempt = r.attempt) \
           RETURNING team, month, amount_usd), \
         per AS (SELECT team, month, sum(amount_usd) AS amount FROM gone GROUP BY team, month), \
         upd AS (UPDATE budget_periods p SET reserved_usd = p.reserved_usd - per.amount \
           FROM per WHERE p.team = per.team AND p.month = per.month RETURNING per.amount) \
         SELECT sum(amount) FROM upd",
        up_for("$1")
    )))
    .bind(lease.as_secs_f64())
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let released = released.unwrap_or_default();
    if !released.is_zero() {
        tracing::warn!(amount_usd = %released, "released budget holds whose workers stopped renewing them");
    }
    Ok(released)
}

/// Gives a hold back (the call failed or was handed back); false if it was already gone.
///
/// # Errors
/// Database errors only.
pub async fn release(pool: &PgPool, reservation_id: i64) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    // The month row first, as everywhere.
    let locked: Option<(String, NaiveDate)> = sqlx::query_as(
        "SELECT p.team, p.month FROM budget_periods p JOIN budget_reservations r \
         ON r.team = p.team AND r.month = p.month WHERE r.reservation_id = $1 FOR UPDATE OF p",
    )
    .bind(reservation_id)
    .fetch_optional(&mut *tx)
    .await?;
    if locked.is_none() {
        tx.commit().await?;
        return Ok(false);
    }
    let released = sqlx::query(
        "WITH gone AS (DELETE FROM budget_reservations WHERE reservation_id = $1 \
         RETURNING team, month, amount_usd) \
         UPDATE budget_periods p SET reserved_usd = p.reserved_usd - gone.amount_usd \
         FROM gone WHERE p.team = gone.team AND p.month = gone.month",
    )
    .bind(reservation_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(released > 0)
}

/// Settles holds inside the transaction that books their calls: the holds go, and the ledger
/// trigger of that same transaction adds the actual costs to `spent_usd`. Holds that had
/// expired (their worker stopped renewing, then came back) were already reclaimed; they are
/// logged.
///
/// # Errors
/// Database errors (the caller's transaction then fails as a whole).
pub async fn settle_in(conn: &mut PgConnection, reservation_ids: &[i64]) -> sqlx::Result<()> {
    if reservation_ids.is_empty() {
        return Ok(());
    }
    let settled: i64 = sqlx::query_scalar(
        "WITH gone AS (DELETE FROM budget_reservations WHERE reservation_id = ANY($1) \
         RETURNING team, month, amount_usd), \
         per AS (SELECT team, month, sum(amount_usd) AS amount FROM gone GROUP BY team, month), \
         upd AS (UPDATE budget_periods p SET reserved_usd = p.reserved_usd - per.amount \
         FROM per WHERE p.team = per.team AND p.month = per.month RETURNING 1) \
         SELECT count(*) FROM gone",
    )
    .bind(reservation_ids)
    .fetch_one(&mut *conn)
    .await?;
    let expired = reservation_ids.len() as i64 - settled;
    if expired > 0 {
        tracing::warn!(
            expired,
            "calls booked after their budget holds expired (their worker stopped renewing them)"
        );
    }
    Ok(())
}

/// An item parked until its team's budget has room.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Parked {
    pub park_id: i64,
    pub team: String,
    pub job_id: String,
    pub item_id: String,
    pub attempt: i32,
    pub tier: String,
    pub worst_case_usd: Decimal,
    pub payload: Vec<u8>,
}

/// Parks an item (once per attempt) and records a `waiting` event.
///
/// A resumer holds the row of an item it is re-publishing locked until it deletes it; a worker
/// that receives that very message and must park it again waits here for the resumer's
/// commit (`DO UPDATE` waits, `DO NOTHING` would not), then parks it anew: the item is never
/// dropped between the two.
///
/// # Errors
/// Database errors only.
#[expect(clippy::too_many_arguments, reason = "one parked item's columns")]
pub async fn park(
    pool: &PgPool,
    team: &str,
    job_id: &str,
    item_id: &str,
    attempt: i32,
    tier: &str,
    worst_case_usd: Decimal,
    payload: &[u8],
) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO budget_parked (team, job_id, item_id, attempt, tier, worst_case_usd, \
         payload) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (job_id, item_id, attempt) DO UPDATE SET tier = EXCLUDED.tier, \
         worst_case_usd = EXCLUDED.worst_case_usd, payload = EXCLUDED.payload, parked_at = now()",
    )
    .bind(team)
    .bind(job_id)
    .bind(item_id)
    .bind(attempt)
    .bind(tier)
    .bind(worst_case_usd)
    .bind(payload)
    .execute(&mut *tx)
    .await?;
    record_event_in(
        &mut tx,
        team,
        "waiting",
        Some((job_id, item_id, attempt)),
        &format!(
            "worst case {} USD on tier {tier}",
            crate::money::exact(worst_case_usd)
        ),
    )
    .await?;
    tx.commit().await
}

/// Makes the latest earlier answer of an item final, when its next (escalated) call does not
/// fit the budget: the item "goes weak" by keeping the answer it already has, rather than
/// paying a weak model again. Returns that answer's tier, or `None` when the item has no
/// earlier answer or is already closed.
///
/// # Errors
/// Database errors only.
pub async fn keep_earlier_answer(
    pool: &PgPool,
    job_id: &str,
    item_id: &str,
    attempt: i32,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        // An audit answer that is already final stays final (see `outcomes`).
        "UPDATE items i SET status = 'done', \
         final_attempt = CASE WHEN i.final_attempt = $4 THEN i.final_attempt ELSE r.attempt END, \
         final_tier = CASE WHEN i.final_attempt = $4 THEN i.final_tier ELSE r.tier END, \
         updated_at = now() \
         FROM (SELECT attempt, tier FROM results WHERE job_id = $1 AND item_id = $2 \
               AND attempt < $3 ORDER BY attempt DESC LIMIT 1) r \
         WHERE i.job_id = $1 AND i.item_id = $2 AND i.status IN ('pending', 'queued') \
         RETURNING r.tier",
    )
    .bind(job_id)
    .bind(item_id)
    .bind(attempt)
    .bind(i32::from(switchyard_proto::work::AUDIT_ATTEMPT))
    .fetch_optional(pool)
    .await
}

/// Records that an item's strong call went to the weak tier for lack of budget.
///
/// # Errors
/// Database errors only.
pub async fn record_downgrade(
    pool: &PgPool,
    team: &str,
    job_id: &str,
    item_id: &str,
    attempt: i32,
    detail: &str,
) -> sqlx::Result<()> {
    let mut conn = pool.acquire().await?;
    record_event_in(
        &mut conn,
        team,
        "downgraded",
        Some((job_id, item_id, attempt)),
        detail,
    )
    .await
}

async fn record_event_in(
    conn: &mut PgConnection,
    team: &str,
    kind: &str,
    item: Option<(&str, &str, i32)>,
    detail: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO budget_events (team, kind, job_id, item_id, attempt, detail) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(team)
    .bind(kind)
    .bind(item.map(|i| i.0))
    .bind(item.map(|i| i.1))
    .bind(item.map(|i| i.2))
    .bind(detail)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Parked items whose team now has room for them (cumulatively, oldest first), locked in
/// `tx` so that concurrent workers resume disjoint sets. The caller re-publishes them, then
/// [`finish_resume`]s in the same transaction.
///
/// Only items that fit on their own are candidates: with thousands parked, a small item
/// behind `limit` larger ones would otherwise wait for ever while the budget has room for it.
///
/// # Errors
/// Database errors only.
pub async fn resumable(conn: &mut PgConnection, limit: i64) -> sqlx::Result<Vec<Parked>> {
    // Headroom per team this month; no budget or no month row yet: unlimited.
    let candidates: Vec<(Parked, Option<Decimal>)> =
        sqlx::query_as::<_, ParkedWithRoom>(sqlx::AssertSqlSafe(format!(
            "SELECT k.park_id, k.team, k.job_id, k.item_id, k.attempt, k.tier, k.worst_case_usd, \
             k.payload, b.monthly_usd - p.spent_usd - p.reserved_usd AS headroom \
             FROM budget_parked k \
             LEFT JOIN budgets b ON b.team = k.team \
             LEFT JOIN budget_periods p ON p.team = k.team AND p.month = {MONTH_NOW} \
             WHERE b.monthly_usd IS NULL OR p.team IS NULL \
                OR k.worst_case_usd <= b.monthly_usd - p.spent_usd - p.reserved_usd \
             ORDER BY k.park_id LIMIT $1 FOR UPDATE OF k SKIP LOCKED"
        )))
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|r| (r.parked(), r.headroom))
        .collect();
    let mut used: std::collections::HashMap<String, Decimal> = Default::default();
    let mut out = Vec::new();
    for (p, headroom) in candidates {
        match headroom {
            None => out.push(p),
            Some(room) => {
                let u = used.entry(p.team.clone()).or_default();
                if *u + p.worst_case_usd <= room {
                    *u += p.worst_case_usd;
                    out.push(p);
                }
            }
        }
    }
    Ok(out)
}

#[derive(sqlx::FromRow)]
struct ParkedWithRoom {
    park_id: i64,
    team: String,
    job_id: String,
    item_id: String,
    attempt: i32,
    tier: String,
    worst_case_usd: Decimal,
    payload: Vec<u8>,
    headroom: Option<Decimal>,
}

impl ParkedWithRoom {
    fn parked(&self) -> Parked {
        Parked {
            park_id: self.park_id,
            team: self.team.clone(),
            job_id: self.job_id.clone(),
            item_id: self.item_id.clone(),
            attempt: self.attempt,
            tier: self.tier.clone(),
            worst_case_usd: self.worst_case_usd,
            payload: self.payload.clone(),
        }
    }
}

/// Removes resumed items from the parking table.
///
/// # Errors
/// Database errors only.
pub async fn finish_resume(conn: &mut PgConnection, park_ids: &[i64]) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM budget_parked WHERE park_id = ANY($1)")
        .bind(park_ids)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A team whose spend this month just crossed its soft limit.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SoftCrossing {
    pub team: String,
    pub month: NaiveDate,
    #[serde(serialize_with = "crate::money::ser")]
    pub spent_usd: Decimal,
    #[serde(serialize_with = "crate::money::ser")]
    pub soft_usd: Decimal,
    #[serde(serialize_with = "crate::money::ser")]
    pub monthly_usd: Decimal,
}

/// Marks, once per team and month, the soft limits that spend has reached, and returns them
/// (the caller publishes the warning). Concurrent workers cannot both get the same crossing:
/// the `soft_warned_at IS NULL` condition is checked under the row lock.
///
/// # Errors
/// Database errors only.
pub async fn soft_limit_crossings(pool: &PgPool) -> sqlx::Result<Vec<SoftCrossing>> {
    let mut tx = pool.begin().await?;
    let rows: Vec<SoftCrossing> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE budget_periods p SET soft_warned_at = now() FROM budgets b \
         WHERE b.team = p.team AND p.month = {MONTH_NOW} AND b.soft_usd IS NOT NULL \
         AND p.spent_usd >= b.soft_usd AND p.soft_warned_at IS NULL \
         RETURNING p.team, p.month, p.spent_usd, b.soft_usd, b.monthly_usd"
    )))
    .fetch_all(&mut *tx)
    .await?;
    for r in &rows {
        record_event_in(
            &mut tx,
            &r.team,
            "soft_limit",
            None,
            &format!(
                "spent {} of soft limit {} (hard {}) in {}",
                crate::money::exact(r.spent_usd),
                crate::money::exact(r.soft_usd),
                crate::money::exact(r.monthly_usd),
                r.month
            ),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(rows)
}
