//! Spend reports: calls, tokens and exact costs grouped by any of team, project, model, tier,
//! job and day or month, with the counterfactual costs (everything on the strong tier, on the
//! weak tier), savings, escalation, shadow, retry and correction costs, the cost per tier, and
//! what budgets did to items.
//!
//! A report reads the daily rollup (`ledger_daily`, kept by a trigger) when its period is made
//! of whole UTC days, and the ledger itself otherwise; both give the same sums to the last unit
//! (every rollup column is a plain sum of ledger rows). Money is summed in NUMERIC and never
//! rounded; only shares (savings %, cost share per tier) are ratios, shown to 4 decimals.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::ser::SerializeMap;
use sqlx::{PgPool, Row};

/// What a report can group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dimension {
    Team,
    Project,
    Model,
    Tier,
    Job,
    Day,
    Month,
}

impl Dimension {
    /// Every dimension, in the order `--group-by` documents them.
    pub const ALL: [Dimension; 7] = [
        Dimension::Team,
        Dimension::Project,
        Dimension::Model,
        Dimension::Tier,
        Dimension::Job,
        Dimension::Day,
        Dimension::Month,
    ];

    /// The name in `--group-by` and in row objects (`job` is `job_id` in rows).
    pub fn name(self) -> &'static str {
        match self {
            Dimension::Team => "team",
            Dimension::Project => "project",
            Dimension::Model => "model",
            Dimension::Tier => "tier",
            Dimension::Job => "job",
            Dimension::Day => "day",
            Dimension::Month => "month",
        }
    }

    /// The key of this dimension in a row object.
    pub fn field(self) -> &'static str {
        match self {
            Dimension::Job => "job_id",
            other => other.name(),
        }
    }

    fn sql(self) -> &'static str {
        match self {
            Dimension::Team => "s.team",
            Dimension::Project => "s.project",
            Dimension::Model => "s.model",
            Dimension::Tier => "s.tier",
            Dimension::Job => "s.job_id",
            Dimension::Day => "to_char(s.day, 'YYYY-MM-DD')",
            Dimension::Month => "to_char(s.day, 'YYYY-MM')",
        }
    }

    /// Parses `team,model,day`.
    ///
    /// # Errors
    /// Unknown names, repeats, or both `day` and `month`.
    pub fn parse_list(s: &str) -> Result<Vec<Dimension>, ReportError> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let d = Dimension::ALL
                .into_iter()
                .find(|d| d.name() == part || (part == "job_id" && *d == Dimension::Job))
                .ok_or_else(|| {
                    ReportError::Invalid(format!(
                        "cannot group by `{part}`: use team, project, model, tier, job, day or month"
                    ))
                })?;
            if out.contains(&d) {
                return Err(ReportError::Invalid(format!("`{part}` is given twice")));
            }
            out.push(d);
        }
        if out.contains(&Dimension::Day) && out.contains(&Dimension::Month) {
            return Err(ReportError::Invalid(
                "group by day or by month, not both".into(),
            ));
        }
        Ok(out)
    }
}

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "unknown team `{0}`: no job was ever submitted for it (check the name; `switchyard budget show` lists budgeted teams)"
    )]
    UnknownTeam(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What to report on: the period is half-open, `[from, to)`.
#[derive(Debug, Clone)]
pub struct ReportRequest {
    pub group_by: Vec<Dimension>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Only this team.
    pub team: Option<String>,
}

/// Where a report reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The rollup when the period is whole UTC days, else the ledger.
    Auto,
    /// The daily rollup (the period must be whole UTC days).
    Rollup,
    /// The ledger rows themselves.
    Ledger,
}

/// One row of a report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportRow {
    /// The values of the grouped dimensions, in `group_by` order.
    pub keys: Vec<(Dimension, String)>,
    pub period_start: Option<DateTime<Utc>>,
    pub period_end: Option<DateTime<Utc>>,
    /// Calls net of reversals.
    pub calls: i64,
    pub prompt_tokens: i64,
    pub cached_prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: Decimal,
    /// Had every item gone to the strong tier (the same tokens repriced; an estimate).
    pub cost_all_strong_usd: Decimal,
    /// Had every item gone to the weak tier (an estimate).
    pub cost_all_weak_usd: Decimal,
    /// Spent on calls that escalations caused.
    pub escalation_cost_usd: Decimal,
    /// Spent on shadow calls (ledger `outcome = 'shadow'`).
    pub shadow_cost_usd: Decimal,
    /// Spent again on items delivered more than once.
    pub retry_cost_usd: Decimal,
    /// Reversal entries (negative).
    pub corrections_usd: Decimal,
    /// In-doubt calls still at their worst case (not yet settled by evidence): counted in
    /// `cost_usd` and budgets until `switchyard ledger reconcile` settles them.
    pub in_doubt_usd: Decimal,
    /// Second copies of an attempt another copy decided: real spend, no answer used.
    pub duplicate_usd: Decimal,
    /// What calls made through providers' batch APIs saved against the real-time price. Not
    /// routing's: left out of [`ReportRow::savings_usd`].
    pub batch_savings_usd: Decimal,
    /// What providers' prompt caches saved (cache reads, less the premium of cache writes)
    /// against list price. Not routing's either.
    pub cache_savings_usd: Decimal,
    pub cost_by_tier: BTreeMap<String, Decimal>,
    pub calls_by_tier: BTreeMap<String, i64>,
    /// Items whose strong call went weak for lack of budget (rows by team, project or job).
    pub budget_downgraded_items: Option<i64>,
    /// Items parked until their budget has room, now (rows by team, project or job).
    pub budget_waiting_items: Option<i64>,
}

/// A share as a 4-decimal ratio (shares are the only rounded figures).
fn share(part: Decimal, whole: Decimal) -> Option<Decimal> {
    if whole.is_zero() {
        None
    } else {
        part.checked_div(whole).map(|r| r.round_dp(4).normalize())
    }
}

impl ReportRow {
    /// The value of a grouped dimension.
    pub fn key(&self, d: Dimension) -> Option<&str> {
        self.keys
            .iter()
            .find(|(k, _)| *k == d)
            .map(|(_, v)| v.as_str())
    }

    /// What routing saved: the all-strong cost minus the actual cost, less what batch prices
    /// saved (the counterfactual is priced in real time, so a batch call's discount would
    /// otherwise count as routing's). Cache reads are priced alike in both, so caching does
    /// not count either ([`ReportRow::cache_savings_usd`] is shown apart).
    pub fn savings_usd(&self) -> Decimal {
        self.cost_all_strong_usd - self.cost_usd - self.batch_savings_usd
    }

    /// Savings as a share of the all-strong cost.
    pub fn savings_share(&self) -> Option<Decimal> {
        share(self.savings_usd(), self.cost_all_strong_usd)
    }

    /// Each tier's share of the cost.
    pub fn tier_cost_share(&self) -> BTreeMap<String, Decimal> {
        self.cost_by_tier
            .iter()
            .filter_map(|(t, c)| share(*c, self.cost_usd).map(|s| (t.clone(), s)))
            .collect()
    }

    /// Total tokens (prompt + completion), FOCUS's consumed quantity.
    pub fn tokens(&self) -> i64 {
        self.prompt_tokens + self.completion_tokens
    }

    fn add(&mut self, o: &ReportRow) {
        self.calls += o.calls;
        self.prompt_tokens += o.prompt_tokens;
        self.cached_prompt_tokens += o.cached_prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.cost_usd += o.cost_usd;
        self.cost_all_strong_usd += o.cost_all_strong_usd;
        self.cost_all_weak_usd += o.cost_all_weak_usd;
        self.escalation_cost_usd += o.escalation_cost_usd;
        self.shadow_cost_usd += o.shadow_cost_usd;
        self.retry_cost_usd += o.retry_cost_usd;
        self.corrections_usd += o.corrections_usd;
        self.in_doubt_usd += o.in_doubt_usd;
        self.duplicate_usd += o.duplicate_usd;
        self.batch_savings_usd += o.batch_savings_usd;
        self.cache_savings_usd += o.cache_savings_usd;
        for (t, c) in &o.cost_by_tier {
            *self.cost_by_tier.entry(t.clone()).or_default() += *c;
        }
        for (t, c) in &o.calls_by_tier {
            *self.calls_by_tier.entry(t.clone()).or_default() += *c;
        }
        if let Some(n) = o.budget_downgraded_items {
            *self.budget_downgraded_items.get_or_insert(0) += n;
        }
        if let Some(n) = o.budget_waiting_items {
            *self.budget_waiting_items.get_or_insert(0) += n;
        }
    }
}

fn ts(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// The JSON row object: dimension keys, the period, counts, and every amount as an exact
/// decimal string (`cost_usd`, `cost_all_strong_usd`, …).
impl serde::Serialize for ReportRow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use crate::money::exact;
        let mut m = s.serialize_map(None)?;
        for (d, v) in &self.keys {
            m.serialize_entry(d.field(), v)?;
        }
        m.serialize_entry("period_start", &ts(self.period_start))?;
        m.serialize_entry("period_end", &ts(self.period_end))?;
        m.serialize_entry("calls", &self.calls)?;
        m.serialize_entry("prompt_tokens", &self.prompt_tokens)?;
        m.serialize_entry("cached_prompt_tokens", &self.cached_prompt_tokens)?;
        m.serialize_entry("completion_tokens", &self.completion_tokens)?;
        m.serialize_entry("cost_usd", &exact(self.cost_usd))?;
        m.serialize_entry("cost_all_strong_usd", &exact(self.cost_all_strong_usd))?;
        m.serialize_entry("cost_all_weak_usd", &exact(self.cost_all_weak_usd))?;
        m.serialize_entry("savings_usd", &exact(self.savings_usd()))?;
        m.serialize_entry("savings_share", &self.savings_share().map(exact))?;
        m.serialize_entry("escalation_cost_usd", &exact(self.escalation_cost_usd))?;
        m.serialize_entry("shadow_cost_usd", &exact(self.shadow_cost_usd))?;
        m.serialize_entry("retry_cost_usd", &exact(self.retry_cost_usd))?;
        m.serialize_entry("corrections_usd", &exact(self.corrections_usd))?;
        m.serialize_entry("in_doubt_usd", &exact(self.in_doubt_usd))?;
        m.serialize_entry("duplicate_usd", &exact(self.duplicate_usd))?;
        m.serialize_entry("batch_savings_usd", &exact(self.batch_savings_usd))?;
        m.serialize_entry("cache_savings_usd", &exact(self.cache_savings_usd))?;
        let by_tier: BTreeMap<&str, String> = self
            .cost_by_tier
            .iter()
            .map(|(t, c)| (t.as_str(), exact(*c)))
            .collect();
        m.serialize_entry("cost_by_tier_usd", &by_tier)?;
        let shares: BTreeMap<String, String> = self
            .tier_cost_share()
            .into_iter()
            .map(|(t, s)| (t, exact(s)))
            .collect();
        m.serialize_entry("tier_cost_share", &shares)?;
        m.serialize_entry("calls_by_tier", &self.calls_by_tier)?;
        m.serialize_entry("budget_downgraded_items", &self.budget_downgraded_items)?;
        m.serialize_entry("budget_waiting_items", &self.budget_waiting_items)?;
        m.end()
    }
}

/// A finished report.
#[derive(Debug, Clone)]
pub struct Report {
    pub group_by: Vec<Dimension>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// `rollup` or `ledger`.
    pub source: &'static str,
    pub rows: Vec<ReportRow>,
}

impl Report {
    /// The sum of every row (the rows partition the period's ledger rows).
    pub fn total(&self) -> ReportRow {
        let mut t = ReportRow {
            period_start: Some(self.from),
            period_end: Some(self.to),
            ..ReportRow::default()
        };
        for r in &self.rows {
            t.add(r);
        }
        t
    }
}

/// UTC midnight of a date.
pub fn midnight(d: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&d.and_time(NaiveTime::MIN))
}

/// The first day of the month after `d`'s.
pub fn next_month(d: NaiveDate) -> NaiveDate {
    let (y, m) = if d.month() == 12 {
        (d.year() + 1, 1)
    } else {
        (d.year(), d.month() + 1)
    };
    NaiveDate::from_ymd_opt(y, m, 1).unwrap_or(d)
}

fn whole_days(t: DateTime<Utc>) -> bool {
    t.time() == NaiveTime::MIN
}

const LEDGER_FACTS: &str = "SELECT (l.created_at AT TIME ZONE 'UTC')::date AS day, l.team, \
    l.project, l.job_id, l.model, l.tier, CASE WHEN l.kind = 'call' THEN 1 ELSE -1 END AS calls, \
    l.prompt_tokens, l.cached_prompt_tokens, l.completion_tokens, l.cost_usd, \
    COALESCE(l.cost_all_strong_usd, l.cost_usd) AS cost_all_strong_usd, \
    COALESCE(l.cost_all_weak_usd, l.cost_usd) AS cost_all_weak_usd, \
    CASE WHEN l.escalation THEN l.cost_usd ELSE 0 END AS escalation_cost_usd, \
    CASE WHEN l.outcome = 'shadow' THEN l.cost_usd ELSE 0 END AS shadow_cost_usd, \
    CASE WHEN l.retry THEN l.cost_usd ELSE 0 END AS retry_cost_usd, \
    CASE WHEN l.kind = 'reversal' THEN l.cost_usd ELSE 0 END AS corrections_usd, \
    CASE WHEN l.outcome = 'in_doubt' AND l.usage_source = 'worst_case' THEN l.cost_usd \
    ELSE 0 END AS in_doubt_cost_usd, \
    CASE WHEN l.outcome = 'duplicate' THEN l.cost_usd ELSE 0 END AS duplicate_cost_usd, \
    COALESCE(v.batch_savings_usd, 0) AS batch_savings_usd, \
    COALESCE(v.cache_savings_usd, 0) AS cache_savings_usd \
    FROM reporting.ledger l LEFT JOIN reporting.ledger_levers v ON v.entry_id = l.entry_id \
    WHERE l.created_at >= $1 AND l.created_at < $2 \
    AND ($3::text IS NULL OR l.team = $3)";

const ROLLUP_FACTS: &str = "SELECT day, team, project, job_id, model, tier, calls, \
    prompt_tokens, cached_prompt_tokens, completion_tokens, cost_usd, cost_all_strong_usd, \
    cost_all_weak_usd, escalation_cost_usd, shadow_cost_usd, retry_cost_usd, corrections_usd, \
    in_doubt_cost_usd, duplicate_cost_usd, batch_savings_usd, cache_savings_usd \
    FROM reporting.spend_daily WHERE day >= ($1 AT TIME ZONE 'UTC')::date \
    AND day < ($2 AT TIME ZONE 'UTC')::date AND ($3::text IS NULL OR team = $3)";

/// What batch prices and prompt caches saved on `job_id`'s calls: `(batch, cache)` USD
/// (see the `ledger_levers` view).
///
/// # Errors
/// Database errors only.
pub async fn job_lever_savings(pool: &PgPool, job_id: &str) -> sqlx::Result<(Decimal, Decimal)> {
    sqlx::query_as(
        "SELECT COALESCE(sum(v.batch_savings_usd), 0), COALESCE(sum(v.cache_savings_usd), 0) \
         FROM reporting.ledger l JOIN reporting.ledger_levers v ON v.entry_id = l.entry_id \
         WHERE l.job_id = $1",
    )
    .bind(job_id)
    .fetch_one(pool)
    .await
}

/// True when `team` submitted a job, booked a call or has a budget (through the reporting
/// views, so the finance role can ask).
///
/// # Errors
/// Database errors only.
pub async fn team_is_known(pool: &PgPool, team: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM reporting.jobs WHERE team = $1) \
         OR EXISTS (SELECT 1 FROM reporting.budget_periods WHERE team = $1) \
         OR EXISTS (SELECT 1 FROM reporting.budgets WHERE team = $1)",
    )
    .bind(team)
    .fetch_one(pool)
    .await
}

/// Runs a report. It reads the `reporting` views only, so the finance role can run it.
///
/// # Errors
/// An empty or reversed period, [`Source::Rollup`] on a period that is not whole days, an
/// unknown team, database errors.
pub async fn run(
    pool: &PgPool,
    req: &ReportRequest,
    source: Source,
) -> Result<Report, ReportError> {
    if req.from >= req.to {
        return Err(ReportError::Invalid(format!(
            "--from {} is not before --to {} (the period is [from, to))",
            req.from, req.to
        )));
    }
    if let Some(team) = &req.team
        && !team_is_known(pool, team).await?
    {
        return Err(ReportError::UnknownTeam(team.clone()));
    }
    let aligned = whole_days(req.from) && whole_days(req.to);
    let use_rollup = match source {
        Source::Auto => aligned,
        Source::Ledger => false,
        Source::Rollup if aligned => true,
        Source::Rollup => {
            return Err(ReportError::Invalid(
                "the rollup holds whole UTC days: give --from and --to as dates".into(),
            ));
        }
    };
    let facts = if use_rollup {
        ROLLUP_FACTS
    } else {
        LEDGER_FACTS
    };
    let dims: Vec<&str> = req.group_by.iter().map(|d| d.sql()).collect();
    let mut select: Vec<String> = dims.iter().map(|d| format!("{d}::text")).collect();
    select.push("s.tier".to_owned());
    let positions: Vec<String> = (1..=select.len()).map(|i| i.to_string()).collect();
    let sql = format!(
        "SELECT {}, sum(s.calls)::int8, sum(s.prompt_tokens)::int8, \
         sum(s.cached_prompt_tokens)::int8, sum(s.completion_tokens)::int8, sum(s.cost_usd), \
         sum(s.cost_all_strong_usd), sum(s.cost_all_weak_usd), sum(s.escalation_cost_usd), \
         sum(s.shadow_cost_usd), sum(s.retry_cost_usd), sum(s.corrections_usd), \
         sum(s.in_doubt_cost_usd), sum(s.duplicate_cost_usd), sum(s.batch_savings_usd), \
         sum(s.cache_savings_usd) FROM ({facts}) s GROUP BY {} ORDER BY {}",
        select.join(", "),
        positions.join(", "),
        positions.join(", ")
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(req.from)
        .bind(req.to)
        .bind(req.team.as_deref())
        .fetch_all(pool)
        .await?;
    let n = req.group_by.len();
    let mut grouped: BTreeMap<Vec<String>, ReportRow> = BTreeMap::new();
    for row in rows {
        let mut key = Vec::with_capacity(n);
        for i in 0..n {
            key.push(row.try_get::<String, _>(i)?);
        }
        let tier: String = row.try_get(n)?;
        let part = ReportRow {
            calls: row.try_get(n + 1)?,
            prompt_tokens: row.try_get(n + 2)?,
            cached_prompt_tokens: row.try_get(n + 3)?,
            completion_tokens: row.try_get(n + 4)?,
            cost_usd: row.try_get(n + 5)?,
            cost_all_strong_usd: row.try_get(n + 6)?,
            cost_all_weak_usd: row.try_get(n + 7)?,
            escalation_cost_usd: row.try_get(n + 8)?,
            shadow_cost_usd: row.try_get(n + 9)?,
            retry_cost_usd: row.try_get(n + 10)?,
            corrections_usd: row.try_get(n + 11)?,
            in_doubt_usd: row.try_get(n + 12)?,
            duplicate_usd: row.try_get(n + 13)?,
            batch_savings_usd: row.try_get(n + 14)?,
            cache_savings_usd: row.try_get(n + 15)?,
            ..ReportRow::default()
        };
        let entry = grouped.entry(key).or_default();
        *entry.cost_by_tier.entry(tier.clone()).or_default() += part.cost_usd;
        *entry.calls_by_tier.entry(tier).or_default() += part.calls;
        entry.add(&ReportRow {
            cost_by_tier: BTreeMap::new(),
            ..part
        });
    }
    if req
        .group_by
        .iter()
        .all(|d| matches!(d, Dimension::Team | Dimension::Project | Dimension::Job))
    {
        attach_budget_effects(pool, req, &mut grouped).await?;
    }
    let rows = grouped
        .into_iter()
        .map(|(key, mut row)| {
            row.keys = req.group_by.iter().copied().zip(key).collect();
            let (start, end) = period_of(&row, req);
            row.period_start = Some(start);
            row.period_end = Some(end);
            row
        })
        .collect();
    Ok(Report {
        group_by: req.group_by.clone(),
        from: req.from,
        to: req.to,
        source: if use_rollup { "rollup" } else { "ledger" },
        rows,
    })
}

/// The charge period of a row: its day or month (within the report's period), else the
/// report's period.
fn period_of(row: &ReportRow, req: &ReportRequest) -> (DateTime<Utc>, DateTime<Utc>) {
    let bounded = |s: DateTime<Utc>, e: DateTime<Utc>| (s.max(req.from), e.min(req.to));
    if let Some(day) = row
        .key(Dimension::Day)
        .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
    {
        let start = midnight(day);
        return bounded(start, start + Duration::days(1));
    }
    if let Some(month) = row
        .key(Dimension::Month)
        .and_then(|m| NaiveDate::parse_from_str(&format!("{m}-01"), "%Y-%m-%d").ok())
    {
        return bounded(midnight(month), midnight(next_month(month)));
    }
    (req.from, req.to)
}

/// Adds, to rows grouped by team, project and/or job, how many items budgets downgraded (in
/// the period) and how many are waiting now; jobs with budget effects but no spend get a row.
async fn attach_budget_effects(
    pool: &PgPool,
    req: &ReportRequest,
    grouped: &mut BTreeMap<Vec<String>, ReportRow>,
) -> Result<(), ReportError> {
    let effects: Vec<(String, String, String, i64, i64)> = sqlx::query_as(
        "SELECT x.team, COALESCE(j.project, 'default'), x.job_id, \
         count(DISTINCT x.item_id) FILTER (WHERE x.what = 'downgraded')::int8, \
         count(DISTINCT x.item_id) FILTER (WHERE x.what = 'waiting')::int8 \
         FROM (SELECT team, job_id, item_id, 'downgraded' AS what FROM reporting.budget_events \
               WHERE kind = 'downgraded' AND created_at >= $1 AND created_at < $2 \
               UNION ALL SELECT team, job_id, item_id, 'waiting' FROM reporting.budget_waiting) x \
         LEFT JOIN reporting.jobs j ON j.job_id = x.job_id \
         WHERE x.job_id IS NOT NULL AND ($3::text IS NULL OR x.team = $3) \
         GROUP BY 1, 2, 3",
    )
    .bind(req.from)
    .bind(req.to)
    .bind(req.team.as_deref())
    .fetch_all(pool)
    .await?;
    for row in grouped.values_mut() {
        row.budget_downgraded_items = Some(0);
        row.budget_waiting_items = Some(0);
    }
    for (team, project, job, downgraded, waiting) in effects {
        let key: Vec<String> = req
            .group_by
            .iter()
            .map(|d| match d {
                Dimension::Team => team.clone(),
                Dimension::Project => project.clone(),
                _ => job.clone(),
            })
            .collect();
        let row = grouped.entry(key).or_insert_with(|| ReportRow {
            budget_downgraded_items: Some(0),
            budget_waiting_items: Some(0),
            ..ReportRow::default()
        });
        *row.budget_downgraded_items.get_or_insert(0) += downgraded;
        *row.budget_waiting_items.get_or_insert(0) += waiting;
    }
    Ok(())
}
