//! `switchyard ledger serve`: a read-only HTTP API for finance, and one dashboard page.
//!
//! - `GET /api/report?group_by=team,model&from=…&to=…&team=…&format=json|csv` — the same
//!   report as `switchyard ledger report` (JSON: an array of row objects with exact decimal
//!   strings; CSV: FOCUS columns).
//! - `GET /api/prices` — every price version, with when it stopped being in force.
//! - `GET /api/budgets` — budgets this month.
//! - `GET /` — the dashboard: spend over time by team and by model, savings against sending
//!   everything to the strong tier, with the exact figures of the API beside the charts.
//!
//! Only GET routes exist, and every query reads the `reporting` views, so the server can
//! (and should) connect as the finance role (`switchyard ledger grant-finance`).

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use switchyard_store::ledger_reports::{self, Dimension, ReportError, ReportRequest, Source};
use switchyard_store::prices::PriceVersion;
use tokio_util::sync::CancellationToken;

use crate::format::{self as ledger_format, ReportFormat};
use crate::period::{parse_instant, report_period};

/// The dashboard page (inline SVG charts drawn by a small script; no external assets).
const DASHBOARD: &str = include_str!("ledger_dashboard.html");

/// The API and the dashboard over `pool`.
pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/api/report", get(report))
        .route("/api/prices", get(prices))
        .route("/api/budgets", get(budgets))
        .with_state(pool)
}

/// Serves until `shutdown` is cancelled.
///
/// # Errors
/// When the server fails.
pub async fn serve(
    pool: PgPool,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    axum::serve(listener, router(pool))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

/// An error answer: `{"error": "…"}` with a status.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<ReportError> for ApiError {
    fn from(e: ReportError) -> Self {
        match e {
            ReportError::Database(e) => db(e),
            other => ApiError(StatusCode::BAD_REQUEST, other.to_string()),
        }
    }
}

fn db(e: sqlx::Error) -> ApiError {
    tracing::warn!(error = %e, "finance API query failed");
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, "database error".into())
}

fn bad(m: String) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, m)
}

async fn dashboard() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], Html(DASHBOARD))
}

#[derive(Debug, Deserialize)]
struct ReportQuery {
    group_by: Option<String>,
    from: Option<String>,
    to: Option<String>,
    team: Option<String>,
    format: Option<ReportFormat>,
    /// `ledger` to read the ledger rows instead of the rollup.
    source: Option<String>,
}

fn instant(what: &str, s: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    s.filter(|s| !s.trim().is_empty())
        .map(|s| parse_instant(s).map_err(|e| bad(format!("{what}: {e}"))))
        .transpose()
}

async fn report(
    State(pool): State<PgPool>,
    Query(q): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    let group_by =
        Dimension::parse_list(q.group_by.as_deref().unwrap_or("")).map_err(ApiError::from)?;
    let (from, to) = report_period(
        instant("from", q.from.as_deref())?,
        instant("to", q.to.as_deref())?,
    )
    .map_err(|e| bad(e.to_string()))?;
    let source = match q.source.as_deref() {
        None | Some("") | Some("auto") => Source::Auto,
        Some("ledger") => Source::Ledger,
        Some("rollup") => Source::Rollup,
        Some(other) => {
            return Err(bad(format!(
                "unknown source `{other}` (auto, rollup, ledger)"
            )));
        }
    };
    let req = ReportRequest {
        group_by,
        from,
        to,
        team: q.team.filter(|t| !t.is_empty()),
    };
    let report = ledger_reports::run(&pool, &req, source).await?;
    let format = q.format.unwrap_or(ReportFormat::Json);
    let mut body = Vec::new();
    ledger_format::write_report(&report, format, &mut body)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let content_type = match format {
        ReportFormat::Json => "application/json",
        ReportFormat::Csv => "text/csv; charset=utf-8",
        ReportFormat::Table => "text/plain; charset=utf-8",
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

async fn prices(State(pool): State<PgPool>) -> Result<axum::Json<Vec<PriceVersion>>, ApiError> {
    let rows = sqlx::query_as(
        "SELECT price_id, model, provider, input_usd_per_mtok, cached_input_usd_per_mtok, \
         output_usd_per_mtok, batch_discount, cache_write_usd_per_mtok, \
         cache_write_1h_usd_per_mtok, effective_from, effective_until, created_at \
         FROM reporting.prices ORDER BY model, effective_from",
    )
    .fetch_all(&pool)
    .await
    .map_err(db)?;
    Ok(axum::Json(rows))
}

/// A budget as the API shows it.
#[derive(Debug, Serialize, sqlx::FromRow)]
struct BudgetRow {
    team: String,
    month: NaiveDate,
    #[serde(serialize_with = "switchyard_store::money::ser")]
    monthly_usd: Decimal,
    #[serde(serialize_with = "switchyard_store::money::ser_opt")]
    soft_usd: Option<Decimal>,
    when_exhausted: String,
    #[serde(serialize_with = "switchyard_store::money::ser")]
    spent_usd: Decimal,
    #[serde(serialize_with = "switchyard_store::money::ser")]
    reserved_usd: Decimal,
    #[serde(serialize_with = "switchyard_store::money::ser")]
    available_usd: Decimal,
    soft_warned_at: Option<DateTime<Utc>>,
    waiting_items: i64,
}

async fn budgets(State(pool): State<PgPool>) -> Result<axum::Json<Vec<BudgetRow>>, ApiError> {
    let rows = sqlx::query_as(
        "SELECT b.team, b.month, b.monthly_usd, b.soft_usd, b.when_exhausted, b.spent_usd, \
         b.reserved_usd, b.available_usd, b.soft_warned_at, \
         (SELECT count(*) FROM reporting.budget_waiting w WHERE w.team = b.team) AS waiting_items \
         FROM reporting.budgets b ORDER BY b.team",
    )
    .fetch_all(&pool)
    .await
    .map_err(db)?;
    Ok(axum::Json(rows))
}
