//! Price versions: a call is booked with the version in force at its time; versions and the
//! ledger are never changed in place (Postgres refuses it); a model without a price cannot
//! start a worker.

use chrono::{Duration as CDuration, Utc};
use switchyard_core::tariff::Tariff;
use switchyard_store::prices::{self, NewPrice, PriceSetError};
use switchyard_testkit::{TestDb, TestNats, settings_for};

use crate::finance_support::{answered, book, count, d, seed_job};

fn new_price(model: &str, input: &str, output: &str, at: chrono::DateTime<Utc>) -> NewPrice {
    NewPrice {
        model: model.to_owned(),
        provider: "test".to_owned(),
        tariff: Tariff::simple(d(input), d(output)).unwrap(),
        effective_from: at,
    }
}

/// Item `item` of `job-p` (team `team-p`): a weak call to `m` of 1000 + 100 tokens, priced at
/// `at`.
fn weak_call(item: i64, at: chrono::DateTime<Utc>) -> switchyard_store::outcomes::Outcome {
    answered("job-p", item, "team-p", "proj", "weak", "m", 1000, 100, at)
}

#[tokio::test]
async fn a_call_is_booked_with_the_version_in_force_at_its_time_and_keeps_it() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let now = Utc::now();
    let v1 = prices::set(pool, &new_price("m", "1", "2", now - CDuration::hours(2)))
        .await
        .unwrap();
    let v2 = prices::set(pool, &new_price("m", "3", "4", now - CDuration::hours(1)))
        .await
        .unwrap();
    let v3 = prices::set(pool, &new_price("m", "5", "6", now + CDuration::hours(1)))
        .await
        .unwrap();
    let listed = prices::all(pool).await.unwrap();
    assert_eq!(listed[0].effective_until, Some(v2.effective_from));
    assert_eq!(listed[2].effective_until, None);
    seed_job(pool, "job-p", "team-p", "proj", 3).await;
    book(
        pool,
        &[
            weak_call(1, now - CDuration::minutes(90)),
            weak_call(2, now - CDuration::minutes(30)),
            weak_call(3, now),
        ],
    )
    .await;
    let rows: Vec<(String, i64, rust_decimal::Decimal)> =
        sqlx::query_as("SELECT item_id, price_id, cost_usd FROM ledger ORDER BY item_id")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![
            ("item-1".into(), v1.price_id, d("0.0012")),
            ("item-2".into(), v2.price_id, d("0.0034")),
            ("item-3".into(), v2.price_id, d("0.0034")),
        ]
    );
    assert!(!rows.iter().any(|r| r.1 == v3.price_id));

    // A version that would take effect before calls already booked is refused, nothing written.
    let before = count(pool, "prices").await;
    let err = prices::set(
        pool,
        &new_price("m", "9", "9", now - CDuration::minutes(45)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, PriceSetError::BackDated { calls: 2, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("after the last booked call"),
        "{err}"
    );
    // Two versions from the same instant would overlap.
    let err = prices::set(pool, &new_price("m", "9", "9", v3.effective_from))
        .await
        .unwrap_err();
    assert!(matches!(err, PriceSetError::Overlap { .. }), "{err}");
    assert_eq!(count(pool, "prices").await, before);

    // A later version changes no past cost.
    prices::set(
        pool,
        &new_price("m", "100", "100", now + CDuration::hours(2)),
    )
    .await
    .unwrap();
    let after: Vec<(String, i64, rust_decimal::Decimal)> =
        sqlx::query_as("SELECT item_id, price_id, cost_usd FROM ledger ORDER BY item_id")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(after, rows);
    // `prices list --at`: the version in force then.
    let at = prices::in_force_at(pool, now - CDuration::minutes(90))
        .await
        .unwrap();
    assert_eq!(
        at.iter().map(|v| v.price_id).collect::<Vec<_>>(),
        vec![v1.price_id]
    );
}

#[tokio::test]
async fn postgres_itself_refuses_to_change_the_ledger_or_a_price_version() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let now = Utc::now();
    prices::set(pool, &new_price("m", "1", "1", now - CDuration::hours(1)))
        .await
        .unwrap();
    seed_job(pool, "job-a", "t", "p", 1).await;
    book(
        pool,
        &[answered("job-a", 1, "t", "p", "weak", "m", 10, 1, now)],
    )
    .await;
    for sql in [
        "UPDATE ledger SET cost_usd = 0",
        "DELETE FROM ledger",
        "TRUNCATE ledger",
        "UPDATE prices SET input_usd_per_mtok = 0",
        "DELETE FROM prices",
    ] {
        let err = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("append-only") || msg.contains("never changed"),
            "{sql}: {msg}"
        );
    }
    assert_eq!(count(pool, "ledger").await, 1);
    // A negative cost on a call is refused by the table's constraint.
    let err = sqlx::query(
        "INSERT INTO ledger (call_id, job_id, item_id, attempt, team, project, tier, model, \
         provider, price_id, prompt_tokens, completion_tokens, cost_usd, latency_ms, outcome) \
         SELECT 'x', 'j', 'i', 0, 't', 'p', 'weak', 'm', 'test', price_id, 1, 1, -1, 0, 'ok' \
         FROM prices LIMIT 1",
    )
    .execute(pool)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("ledger_kind_known"), "{err}");
}

#[tokio::test]
async fn a_worker_will_not_start_with_a_model_that_has_no_price() {
    let nats = TestNats::new().await;
    let db = TestDb::new().await;
    let mut settings = settings_for(&nats, &db);
    let strong = settings.models.get_mut(crate::support::STRONG).unwrap();
    strong.input_usd_per_mtok = None;
    strong.output_usd_per_mtok = None;
    let err = switchyard_worker::Worker::connect(settings.clone(), &["weak".to_owned()])
        .await
        .err()
        .expect("refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("has no price"), "{msg}");
    assert!(msg.contains(crate::support::STRONG), "{msg}");
    assert_eq!(count(&db.pool, "ledger").await, 0);

    // Priced in the database: the worker starts, and the configuration seeds only the models
    // that had no price at all.
    prices::set(
        &db.pool,
        &new_price(
            crate::support::STRONG,
            "11",
            "33",
            Utc::now() - CDuration::minutes(1),
        ),
    )
    .await
    .unwrap();
    let w = switchyard_worker::Worker::connect(settings, &["weak".to_owned()])
        .await
        .unwrap();
    let versions = prices::all(&db.pool).await.unwrap();
    let strong_versions: Vec<_> = versions
        .iter()
        .filter(|v| v.model == crate::support::STRONG)
        .collect();
    assert_eq!(strong_versions.len(), 1);
    assert_eq!(strong_versions[0].input_usd_per_mtok, d("11"));
    assert!(
        versions
            .iter()
            .any(|v| v.model == crate::support::WEAK && v.input_usd_per_mtok == d("0.6"))
    );
    w.pool.close().await;
}
