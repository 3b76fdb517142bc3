//! Finance's access and retention: a read-only role that reads the reporting views and never
//! prompts or answers; purging old prompts and answers leaves the ledger exactly as it was;
//! report formats (FOCUS CSV, JSON rows with decimal strings).

use std::str::FromStr;

use secrecy::SecretString;
use sqlx::ConnectOptions as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use switchyard::finance_cli::{self, PurgeArgs};
use switchyard_finance::format::{self as ledger_format, ReportFormat};
use switchyard_store::ledger_reports::{self, Dimension, ReportRequest, Source};

use crate::finance_support::{count, d};
use crate::support::{Harness, classify_job, mmlu_items};

fn today_report(group_by: Vec<Dimension>) -> ReportRequest {
    let today = chrono::Utc::now().date_naive();
    ReportRequest {
        group_by,
        from: ledger_reports::midnight(today),
        to: ledger_reports::midnight(today.succ_opt().unwrap()),
        team: None,
    }
}

/// A finance login on the test's database (roles are cluster-wide: the name is unique).
pub async fn finance_role(h: &Harness) -> (String, String, sqlx::PgPool) {
    let role = format!("sy_fin_{}", ulid::Ulid::new().to_string().to_lowercase());
    let password = format!("pw-{}", ulid::Ulid::new());
    switchyard_store::finance_role::grant(
        &h.db.pool,
        &role,
        Some(&SecretString::from(password.clone())),
    )
    .await
    .unwrap();
    let options = PgConnectOptions::from_str(&h.db.url)
        .unwrap()
        .username(&role)
        .password(&password);
    let url = options.to_url_lossy().to_string();
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap();
    (role, url, pool)
}

/// Drops the role (its grants in the test database first).
pub async fn drop_role(h: &Harness, role: &str, pool: sqlx::PgPool) {
    pool.close().await;
    switchyard_store::finance_role::revoke(&h.db.pool, role)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE \"{role}\"")))
        .execute(&h.db.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_finance_role_reads_reports_but_never_prompts_or_answers() {
    let h = Harness::start().await;
    let mut spec = classify_job(mmlu_items(40), 0.25, 0.8);
    spec.team = Some("fin".into());
    let job_id = h.client.submit(spec).await.unwrap();
    h.wait_final(&job_id, 60).await;
    let (role, _url, fin) = finance_role(&h).await;

    // Reports, through the views.
    let mine = ledger_reports::run(
        &h.db.pool,
        &today_report(vec![Dimension::Team]),
        Source::Auto,
    )
    .await
    .unwrap();
    let theirs = ledger_reports::run(&fin, &today_report(vec![Dimension::Team]), Source::Auto)
        .await
        .unwrap();
    assert_eq!(theirs.rows, mine.rows);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM reporting.ledger")
        .fetch_one(&fin)
        .await
        .unwrap();
    assert_eq!(n, count(&h.db.pool, "ledger").await);

    // Never prompts or answers, never a table, never a write.
    for sql in [
        "SELECT text FROM items",
        "SELECT answer FROM results",
        "SELECT task FROM jobs",
        "SELECT payload FROM budget_parked",
        "SELECT * FROM ledger",
        "INSERT INTO budgets (team, monthly_usd) VALUES ('x', 1)",
        "UPDATE ledger SET cost_usd = 0",
    ] {
        let err = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&fin)
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("permission denied") || msg.contains("read-only transaction"),
            "{sql}: {msg}"
        );
    }
    // The views it can read carry no prompt or answer column.
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns WHERE table_schema = 'reporting'",
    )
    .fetch_all(&fin)
    .await
    .unwrap();
    assert!(!columns.is_empty());
    for forbidden in [
        "text",
        "answer",
        "payload",
        "task",
        "metadata",
        "instructions",
    ] {
        assert!(
            !columns.iter().any(|c| c == forbidden),
            "{forbidden} visible"
        );
    }
    let read_only: String = sqlx::query_scalar("SHOW default_transaction_read_only")
        .fetch_one(&fin)
        .await
        .unwrap();
    assert_eq!(read_only, "on");
    drop_role(&h, &role, fin).await;
    h.finish().await;
}

#[tokio::test]
async fn purging_old_prompts_and_answers_leaves_the_ledger_untouched() {
    let h = Harness::start().await;
    let pool = &h.db.pool;
    let old = h
        .client
        .submit(classify_job(mmlu_items(30), 0.2, 0.8))
        .await
        .unwrap();
    h.wait_final(&old, 60).await;
    let mut recent = classify_job(mmlu_items(20), 0.2, 0.8);
    recent.job_id = "recent".into();
    let recent = h.client.submit(recent).await.unwrap();
    h.wait_final(&recent, 60).await;
    // The first job finished 40 days ago (jobs are not append-only; the ledger is).
    sqlx::query("UPDATE jobs SET finished_at = now() - interval '40 days' WHERE job_id = $1")
        .bind(&old)
        .execute(pool)
        .await
        .unwrap();
    let digest = "SELECT md5(string_agg(l::text, '|' ORDER BY entry_id)) FROM ledger l";
    let before: String = sqlx::query_scalar(digest).fetch_one(pool).await.unwrap();
    let report_before =
        ledger_reports::run(pool, &today_report(vec![Dimension::Job]), Source::Auto)
            .await
            .unwrap();

    let mut settings = h.fleet.settings.clone();
    settings.finance.retention = None;
    let err = finance_cli::purge(
        settings.clone(),
        PurgeArgs {
            older_than: None,
            dry_run: false,
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("--older-than"), "{err}");
    finance_cli::purge(
        settings,
        PurgeArgs {
            older_than: Some(switchyard_finance::period::parse_age("30d").unwrap()),
            dry_run: false,
        },
    )
    .await
    .unwrap();

    let after: String = sqlx::query_scalar(digest).fetch_one(pool).await.unwrap();
    assert_eq!(after, before, "the ledger changed");
    let report_after = ledger_reports::run(pool, &today_report(vec![Dimension::Job]), Source::Auto)
        .await
        .unwrap();
    assert_eq!(report_after.rows, report_before.rows);
    let texts = |job: String| async move {
        sqlx::query_as::<_, (i64, i64)>(
            "SELECT (SELECT count(*) FROM items WHERE job_id = $1 AND text <> ''), \
             (SELECT count(*) FROM results WHERE job_id = $1 AND answer <> '')",
        )
        .bind(job)
        .fetch_one(pool)
        .await
        .unwrap()
    };
    assert_eq!(texts(old.clone()).await, (0, 0));
    let (items, answers) = texts(recent.clone()).await;
    assert_eq!(items, 20);
    assert!(answers >= 20);
    // The ledger has nowhere to keep prompt text: ids, tokens and money only.
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name = 'ledger' ORDER BY ordinal_position",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for c in &columns {
        assert!(
            ![
                "text", "prompt", "answer", "content", "messages", "metadata"
            ]
            .contains(&c.as_str()),
            "ledger column {c}"
        );
    }
    h.finish().await;
}

#[tokio::test]
async fn reports_come_as_focus_csv_and_json_rows_with_exact_decimal_strings() {
    let h = Harness::start().await;
    for (team, n) in [("north", 25), ("south", 15)] {
        let mut spec = classify_job(mmlu_items(n), 0.3, 0.8);
        spec.team = Some(team.into());
        spec.job_id = format!("fmt-{team}");
        let id = h.client.submit(spec).await.unwrap();
        h.wait_final(&id, 60).await;
    }
    let report = ledger_reports::run(
        &h.db.pool,
        &today_report(vec![Dimension::Team, Dimension::Model, Dimension::Day]),
        Source::Auto,
    )
    .await
    .unwrap();
    let mut csv_bytes = Vec::new();
    ledger_format::write_report(&report, ReportFormat::Csv, &mut csv_bytes).unwrap();
    let mut rdr = csv::Reader::from_reader(csv_bytes.as_slice());
    let header: Vec<String> = rdr.headers().unwrap().iter().map(str::to_owned).collect();
    for col in [
        "BilledCost",
        "EffectiveCost",
        "BillingCurrency",
        "ChargePeriodStart",
        "ChargePeriodEnd",
        "ConsumedQuantity",
        "ConsumedUnit",
        "ServiceCategory",
        "SubAccountName",
        "ResourceName",
        "x_CostAllStrong",
    ] {
        assert!(header.iter().any(|h| h == col), "{col} missing");
    }
    let billed = header.iter().position(|h| h == "BilledCost").unwrap();
    let start = header
        .iter()
        .position(|h| h == "ChargePeriodStart")
        .unwrap();
    let mut csv_total = rust_decimal::Decimal::ZERO;
    let mut records = 0;
    for rec in rdr.records() {
        let rec = rec.unwrap();
        csv_total += d(&rec[billed]);
        assert!(rec[start].ends_with("T00:00:00Z"), "{}", &rec[start]);
        records += 1;
    }
    assert_eq!(records, report.rows.len());
    assert_eq!(csv_total, report.total().cost_usd);

    let mut json_bytes = Vec::new();
    ledger_format::write_report(&report, ReportFormat::Json, &mut json_bytes).unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&json_bytes).unwrap();
    assert_eq!(rows.len(), report.rows.len());
    for r in &rows {
        assert!(r["cost_usd"].is_string(), "{r}");
        assert!(r["cost_all_strong_usd"].is_string(), "{r}");
        assert!(r["team"].is_string() && r["model"].is_string() && r["day"].is_string());
    }
    let mut table = Vec::new();
    ledger_format::write_report(&report, ReportFormat::Table, &mut table).unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(table.contains("total"), "{table}");
    assert!(table.contains(&switchyard_store::money::exact(report.total().cost_usd)));
    h.finish().await;
}
