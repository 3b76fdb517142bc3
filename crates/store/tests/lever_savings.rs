//! What batch prices and prompt caches saved is reported apart from what routing saved, the
//! same from the ledger and from the daily rollup, and a reversal takes back what its entry
//! saved.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use chrono::{Duration as CDuration, Utc};
use rust_decimal::Decimal;
use switchyard_core::tariff::Tariff;
use switchyard_store::corrections;
use switchyard_store::ledger_reports::{self, Dimension, ReportRequest, Source};
use switchyard_store::outcomes::Outcome;
use switchyard_store::prices::{self, NewPrice};
use switchyard_testkit::TestDb;
use switchyard_testkit::ledger::{answered, book, d, seed_job};

/// `item`'s answered call, made through a batch and/or with `cached` prompt tokens read from
/// the provider's cache.
fn call(item: i64, batch: bool, cached: i32) -> Outcome {
    let mut o = answered(
        "job-l",
        item,
        "team-l",
        "proj",
        "weak",
        "m",
        10_000,
        500,
        Utc::now(),
    );
    if let Outcome::Answered { call, .. } = &mut o {
        call.booking.batch = batch;
        call.booking.cached_prompt_tokens = cached;
    }
    o
}

async fn report(pool: &sqlx::PgPool, source: Source) -> ledger_reports::ReportRow {
    let today = Utc::now().date_naive();
    let request = ReportRequest {
        group_by: vec![Dimension::Job],
        from: ledger_reports::midnight(today),
        to: ledger_reports::midnight(today.succ_opt().unwrap()),
        team: None,
    };
    ledger_reports::run(pool, &request, source)
        .await
        .unwrap()
        .total()
}

#[tokio::test]
async fn batch_and_cache_savings_are_reported_apart_from_routing_and_reversals_take_them_back() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    // Input 2, cached input 0.5, output 8 per million tokens; batch lines at half price.
    let tariff = Tariff::new(d("2"), Some(d("0.5")), d("8"), d("0.5")).unwrap();
    prices::set(
        pool,
        &NewPrice {
            model: "m".into(),
            provider: "test".into(),
            tariff,
            effective_from: Utc::now() - CDuration::hours(1),
        },
    )
    .await
    .unwrap();
    seed_job(pool, "job-l", "team-l", "proj", 4).await;
    book(
        pool,
        &[
            call(1, true, 0),
            call(2, false, 8_000),
            call(3, true, 4_000),
            call(4, false, 0),
        ],
    )
    .await;
    let cost = |batch, cached| tariff.cost(10_000, cached, 500, batch);
    let booked = cost(true, 0) + cost(false, 8_000) + cost(true, 4_000) + cost(false, 0);
    let batch_saved = (cost(false, 0) - cost(true, 0)) + (cost(false, 4_000) - cost(true, 4_000));
    let cache_saved = (cost(false, 0) - cost(false, 8_000)) + (cost(false, 0) - cost(false, 4_000));
    assert!(batch_saved > Decimal::ZERO && cache_saved > Decimal::ZERO);
    for source in [Source::Ledger, Source::Rollup] {
        let r = report(pool, source).await;
        assert_eq!(r.cost_usd, booked, "{source:?}");
        assert_eq!(r.batch_savings_usd, batch_saved, "{source:?}");
        assert_eq!(r.cache_savings_usd, cache_saved, "{source:?}");
        // One model, its own counterfactual: routing saved nothing, whatever the levers did.
        assert_eq!(r.savings_usd(), Decimal::ZERO, "{source:?}");
    }

    // Reversing the batch call with cache reads takes back both of its savings.
    let entry: i64 = sqlx::query_scalar("SELECT entry_id FROM ledger WHERE item_id = 'item-3'")
        .fetch_one(pool)
        .await
        .unwrap();
    corrections::reverse(pool, entry, "booked twice by a test")
        .await
        .unwrap();
    for source in [Source::Ledger, Source::Rollup] {
        let r = report(pool, source).await;
        assert_eq!(r.cost_usd, booked - cost(true, 4_000), "{source:?}");
        assert_eq!(
            r.batch_savings_usd,
            cost(false, 0) - cost(true, 0),
            "{source:?}"
        );
        assert_eq!(
            r.cache_savings_usd,
            cost(false, 0) - cost(false, 8_000),
            "{source:?}"
        );
        assert_eq!(r.savings_usd(), Decimal::ZERO, "{source:?}");
    }
}
