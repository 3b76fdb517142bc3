//! Corrections are reversal entries: the wrong entry stays, a new one cancels it exactly, with
//! a reason; reports, rollups and budgets net them out. Bad corrections write nothing.

use chrono::{Duration as CDuration, Utc};
use rust_decimal::Decimal;
use switchyard_core::tariff::Tariff;
use switchyard_store::corrections::{self, CorrectionError};
use switchyard_store::ledger_reports::{self, Dimension, ReportRequest, Source};
use switchyard_store::prices::{self, NewPrice};
use switchyard_testkit::TestDb;

use switchyard_testkit::ledger::{answered, book, count, d, ledger_total, seed_job};

#[tokio::test]
async fn a_correction_reverses_one_entry_exactly_and_bad_ones_write_nothing() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let now = Utc::now();
    prices::set(
        pool,
        &NewPrice {
            model: "m".into(),
            provider: "test".into(),
            tariff: Tariff::simple(d("0.15"), d("0.6")).unwrap(),
            effective_from: now - CDuration::hours(1),
        },
    )
    .await
    .unwrap();
    seed_job(pool, "job-c", "team-c", "proj", 3).await;
    book(
        pool,
        &[
            answered("job-c", 1, "team-c", "proj", "weak", "m", 1234, 7, now),
            answered("job-c", 2, "team-c", "proj", "weak", "m", 999_999, 1, now),
            answered("job-c", 3, "team-c", "proj", "weak", "m", 1, 1, now),
        ],
    )
    .await;
    let total_before = ledger_total(pool).await;
    let (wrong, wrong_cost): (i64, Decimal) =
        sqlx::query_as("SELECT entry_id, cost_usd FROM ledger WHERE item_id = 'item-2'")
            .fetch_one(pool)
            .await
            .unwrap();

    let r = corrections::reverse(pool, wrong, "provider billed 1k tokens, not 1M (ticket 42)")
        .await
        .unwrap();
    assert_eq!(r.reverses_entry_id, wrong);
    assert_eq!(r.cost_usd, -wrong_cost);
    assert_eq!(ledger_total(pool).await, total_before - wrong_cost);
    let (pt, ct, kind, reason): (i32, i32, String, String) = sqlx::query_as(
        "SELECT prompt_tokens, completion_tokens, kind, reason FROM ledger WHERE entry_id = $1",
    )
    .bind(r.entry_id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((pt, ct, kind.as_str()), (-999_999, -1, "reversal"));
    assert!(reason.contains("ticket 42"));

    // Bad corrections: each a clear error, none writes anything.
    let rows = count(pool, "ledger").await;
    let cases = [
        (wrong, "again", "already reversed"),
        (r.entry_id, "undo the undo", "itself a reversal"),
        (987_654, "typo", "no ledger entry 987654"),
        (wrong - 1, "   ", "needs a reason"),
    ];
    for (entry, reason, expected) in cases {
        let err = corrections::reverse(pool, entry, reason).await.unwrap_err();
        assert!(err.to_string().contains(expected), "{entry}: {err}");
        assert!(!matches!(err, CorrectionError::Database(_)), "{err}");
    }
    assert_eq!(count(pool, "ledger").await, rows);

    // Reports net the reversal out, from the rollup and from the ledger alike; the budget
    // period's spend follows the ledger.
    let today = Utc::now().date_naive();
    let req = ReportRequest {
        group_by: vec![Dimension::Team, Dimension::Model],
        from: ledger_reports::midnight(today),
        to: ledger_reports::midnight(today.succ_opt().unwrap()),
        team: None,
    };
    for source in [Source::Rollup, Source::Ledger] {
        let report = ledger_reports::run(pool, &req, source).await.unwrap();
        assert_eq!(report.rows.len(), 1);
        let row = &report.rows[0];
        assert_eq!(row.cost_usd, total_before - wrong_cost);
        assert_eq!(row.corrections_usd, -wrong_cost);
        assert_eq!(row.calls, 2, "a reversed call nets to zero calls");
        assert_eq!(row.prompt_tokens, 1235);
    }
    let spent: Decimal =
        sqlx::query_scalar("SELECT spent_usd FROM budget_periods WHERE team = 'team-c'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(spent, ledger_total(pool).await);
}
