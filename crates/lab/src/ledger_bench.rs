//! `switchyard ledger bench`: loads N synthetic ledger rows (three months, 20 teams, 7
//! projects, 6 models, jobs of 400 calls) into a scratch database of their own, then times a
//! month's report by team and model from the daily rollup and, for comparison, from the
//! ledger rows. The scratch database is dropped afterwards; nothing touches the deployment's.

use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{Datelike, NaiveDate, Utc};
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use switchyard_store::ledger_reports::{self, Dimension, ReportRequest, Source};

/// What the bench measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchFigures {
    pub ledger_rows: u64,
    pub rollup_rows: i64,
    pub load_seconds: f64,
    /// The month reported on, and how many ledger rows it holds.
    pub month: String,
    pub month_rows: i64,
    /// Report groups (team × model) in that month.
    pub groups: usize,
    /// Month report by team and model from the rollup: first run, and median of 5.
    pub rollup_first_ms: f64,
    pub rollup_median_ms: f64,
    /// The same report from the ledger rows (median of 3).
    pub ledger_median_ms: f64,
    /// Both gave the same figures, to the last unit.
    pub identical: bool,
}

/// Renders the figures for people.
pub fn render(f: &BenchFigures) -> String {
    format!(
        "{} ledger rows loaded in {:.1} s ({} rollup rows)\n\
         month {} ({} ledger rows), report by team and model ({} groups):\n\
         \x20 from the rollup: {:.1} ms first run, {:.1} ms median of 5\n\
         \x20 from the ledger: {:.1} ms median of 3\n\
         \x20 same figures to the last unit: {}\n",
        f.ledger_rows,
        f.load_seconds,
        f.rollup_rows,
        f.month,
        f.month_rows,
        f.groups,
        f.rollup_first_ms,
        f.rollup_median_ms,
        f.ledger_median_ms,
        if f.identical { "yes" } else { "NO" }
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Runs the bench on the Postgres server of `database_url` (in a scratch database).
///
/// # Errors
/// When the scratch database cannot be created or a query fails.
pub async fn run(database_url: &str, rows: u64) -> anyhow::Result<BenchFigures> {
    anyhow::ensure!(rows >= 1000, "--rows must be at least 1000");
    let base =
        PgConnectOptions::from_str(database_url).context("DATABASE_URL is not a valid URL")?;
    let name = format!(
        "switchyard_bench_{}",
        ulid::Ulid::new().to_string().to_lowercase()
    );
    let mut admin = base
        .clone()
        .database("postgres")
        .log_slow_statements(tracing::log::LevelFilter::Off, Duration::ZERO)
        .connect()
        .await
        .context("cannot connect to Postgres")?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .context("cannot create the scratch database")?;
    // Loading 100k rows a statement is slow by design: no slow-statement warnings.
    let options = base
        .clone()
        .database(&name)
        .log_slow_statements(tracing::log::LevelFilter::Off, Duration::ZERO);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await?;
    let result = measure(&pool, rows).await;
    pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .context("cannot drop the scratch database")?;
    admin.close().await.ok();
    result
}

async fn measure(pool: &PgPool, rows: u64) -> anyhow::Result<BenchFigures> {
    switchyard_store::MIGRATOR.run(pool).await?;
    let today = Utc::now().date_naive();
    let this_month = NaiveDate::from_ymd_opt(today.year(), today.month(), 1).unwrap_or(today);
    // Three whole months ending with the last one: start there.
    let mut start = this_month;
    for _ in 0..3 {
        start = (start - chrono::Duration::days(1))
            .with_day(1)
            .unwrap_or(start);
    }
    let month = ledger_reports::next_month(start);
    let start_ts = ledger_reports::midnight(start);
    let span_days = (this_month - start).num_days();
    let models = [
        ("bench-weak-a", "0.15", "0.6"),
        ("bench-weak-b", "0.2", "0.2"),
        ("bench-weak-c", "0.6", "0.6"),
        ("bench-strong-a", "2.5", "10"),
        ("bench-strong-b", "10", "30"),
        ("bench-strong-c", "3", "15"),
    ];
    for (m, i, o) in models {
        sqlx::query(
            "INSERT INTO prices (model, provider, input_usd_per_mtok, output_usd_per_mtok, \
             effective_from) VALUES ($1, 'bench', $2::numeric, $3::numeric, $4)",
        )
        .bind(m)
        .bind(i)
        .bind(o)
        .bind(start_ts - chrono::Duration::days(1))
        .execute(pool)
        .await?;
    }
    let t0 = Instant::now();
    let chunk = 100_000u64;
    let mut lo = 0u64;
    while lo < rows {
        let hi = (lo + chunk).min(rows) - 1;
        sqlx::query(
            "INSERT INTO ledger (call_id, job_id, item_id, attempt, team, project, tier, model, \
             provider, price_id, prompt_tokens, completion_tokens, cost_usd, latency_ms, outcome, \
             retry, priced_at, created_at, escalation, cost_all_strong_usd, cost_all_weak_usd) \
             SELECT 'bench-' || g, 'job-' || (g / 400), 'item-' || g, 0, \
               'team-' || lpad(((g / 400) % 20)::text, 2, '0'), 'project-' || ((g / 400) % 7), \
               CASE WHEN g % 5 = 0 THEN 'strong' ELSE 'weak' END, p.model, 'bench', p.price_id, \
               v.pt, v.ct, (v.pt * p.input_usd_per_mtok + v.ct * p.output_usd_per_mtok) * 0.000001, \
               100, 'ok', false, v.ts, v.ts, false, \
               (v.pt * 10 + v.ct * 30) * 0.000001, (v.pt * 0.15 + v.ct * 0.6) * 0.000001 \
             FROM generate_series($1::int8, $2::int8) g \
             CROSS JOIN LATERAL (SELECT $3::timestamptz \
               + (g::float8 / $4::float8) * make_interval(days => $5::int) AS ts, \
               (50 + g % 400)::int AS pt, (1 + g % 7)::int AS ct, \
               CASE WHEN g % 5 = 0 THEN 'bench-strong-' ELSE 'bench-weak-' END \
               || chr(97 + ((g / 400) % 3)::int) AS model) v \
             JOIN prices p ON p.model = v.model",
        )
        .bind(lo as i64)
        .bind(hi as i64)
        .bind(start_ts)
        .bind(rows as f64)
        .bind(span_days as i32)
        .execute(pool)
        .await?;
        lo = hi + 1;
    }
    sqlx::query("ANALYZE").execute(pool).await?;
    let load_seconds = t0.elapsed().as_secs_f64();
    let rollup_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_daily")
        .fetch_one(pool)
        .await?;
    let from = ledger_reports::midnight(month);
    let to = ledger_reports::midnight(ledger_reports::next_month(month));
    let month_rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ledger WHERE created_at >= $1 AND created_at < $2",
    )
    .bind(from)
    .bind(to)
    .fetch_one(pool)
    .await?;
    let req = ReportRequest {
        group_by: vec![Dimension::Team, Dimension::Model],
        from,
        to,
        team: None,
    };
    let mut rollup_times = Vec::new();
    let mut rollup = None;
    for _ in 0..5 {
        let t = Instant::now();
        let r = ledger_reports::run(pool, &req, Source::Rollup).await?;
        rollup_times.push(ms(t.elapsed()));
        rollup = Some(r);
    }
    let mut ledger_times = Vec::new();
    let mut ledger = None;
    for _ in 0..3 {
        let t = Instant::now();
        let r = ledger_reports::run(pool, &req, Source::Ledger).await?;
        ledger_times.push(ms(t.elapsed()));
        ledger = Some(r);
    }
    let (rollup, ledger) = (
        rollup.context("no rollup run")?,
        ledger.context("no ledger run")?,
    );
    Ok(BenchFigures {
        ledger_rows: rows,
        rollup_rows,
        load_seconds,
        month: month.format("%Y-%m").to_string(),
        month_rows,
        groups: rollup.rows.len(),
        rollup_first_ms: rollup_times.first().copied().unwrap_or(0.0),
        rollup_median_ms: median(rollup_times),
        ledger_median_ms: median(ledger_times),
        identical: rollup.rows == ledger.rows,
    })
}
