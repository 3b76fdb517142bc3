//! Jobs with a deadline through the provider's Batch API (the simulator's): every item
//! answered, every weak call a batch line booked at the batch price, the low-confidence
//! answers escalated to the strong tier in real time (the cascade across rounds), the ledger
//! equal to the simulator's bill to the last unit, and the batches ended with their files
//! deleted.

use std::time::Duration;

use chrono::Utc;
use rust_decimal::Decimal;
use switchyard_core::tariff::Tariff;
use switchyard_sim::SimConfig;
use switchyard_store::prices::{self, NewPrice};

use crate::support::{Harness, STRONG, WEAK, classify_job, mmlu_items};

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

#[tokio::test]
async fn a_job_with_a_deadline_runs_through_provider_batches_at_the_batch_price() {
    let h = Harness::start_with(
        |s| {
            s.models.get_mut(WEAK).expect("weak model").batch = true;
            let b = &mut s.worker.batching;
            b.max_wait = Duration::from_millis(300);
            b.poll_every = Duration::from_millis(200);
            b.min_time_left = Duration::from_secs(60);
        },
        SimConfig {
            batch_delay: Duration::from_millis(300),
            ..SimConfig::default()
        },
    )
    .await;
    // The weak model at half price through its batch API.
    let weak = Tariff::new(d("0.6"), None, d("0.6"), d("0.5")).unwrap();
    prices::set(
        &h.db.pool,
        &NewPrice {
            model: WEAK.to_owned(),
            provider: "sim".to_owned(),
            tariff: weak,
            effective_from: Utc::now(),
        },
    )
    .await
    .unwrap();

    let n = 30;
    let spec = classify_job(mmlu_items(n), 0.0, 0.9).with_deadline(86_400);
    let job = h.client.submit(spec).await.unwrap();
    let status = h.wait_final(&job, 90).await;
    assert_eq!(status.job.status, "completed", "{:?}", status.dead_letters);
    assert_eq!(status.done(), n as i64);

    #[derive(sqlx::FromRow, Debug)]
    struct Row {
        call_id: String,
        model: String,
        batch: bool,
        cost_usd: Decimal,
    }
    let rows: Vec<Row> =
        sqlx::query_as("SELECT call_id, model, batch, cost_usd FROM ledger WHERE job_id = $1")
            .bind(&job)
            .fetch_all(&h.db.pool)
            .await
            .unwrap();
    let weak_rows: Vec<&Row> = rows.iter().filter(|r| r.model == WEAK).collect();
    assert_eq!(weak_rows.len(), n, "one weak call per item");
    assert!(weak_rows.iter().all(|r| r.batch), "{rows:?}");
    // Escalations ran on the strong model in real time (it has no batch API here).
    let strong: Vec<&Row> = rows.iter().filter(|r| r.model == STRONG).collect();
    assert_eq!(strong.len() as i64, status.escalated, "{rows:?}");
    assert!(status.escalated > 0, "the cascade ran");
    assert!(strong.iter().all(|r| !r.batch));

    // The simulator's bill: every batch line once, at the batch price.
    let sim = h.fleet.sim.as_ref().expect("the simulator runs");
    let calls: Vec<switchyard_sim::CallRecord> = sim
        .calls()
        .into_iter()
        .filter(|c| c.model == WEAK && c.billed())
        .collect();
    assert_eq!(calls.len(), n, "each line answered once");
    assert!(calls.iter().all(|c| c.is_batch_line()));
    let mut ids: Vec<String> = calls
        .iter()
        .filter_map(|c| c.client_request_id.clone())
        .collect();
    ids.sort();
    let mut booked_ids: Vec<String> = weak_rows.iter().map(|r| r.call_id.clone()).collect();
    booked_ids.sort();
    assert_eq!(
        ids, booked_ids,
        "the ledger's call ids are the lines' custom ids"
    );
    let price = switchyard_sim::ModelPrice {
        input_usd_per_mtok: d("0.6"),
        output_usd_per_mtok: d("0.6"),
        batch_discount: d("0.5"),
        cached_input_usd_per_mtok: None,
        cache_write_usd_per_mtok: None,
        cache_write_1h_usd_per_mtok: None,
    };
    let bill = switchyard_sim::bill::bill(&calls, &[(WEAK.to_owned(), price)].into());
    let booked: Decimal = weak_rows.iter().map(|r| r.cost_usd).sum();
    assert_eq!(bill.usd, booked, "the ledger equals the bill");

    // Every batch ended, nothing left open or held.
    let (open, lines_open, intents, holds): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM provider_batches WHERE status NOT IN ('ended', 'abandoned')),
                (SELECT count(*) FROM provider_batch_lines WHERE status = 'open'),
                (SELECT count(*) FROM call_intents),
                (SELECT count(*) FROM budget_reservations)",
    )
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!((open, lines_open, intents, holds), (0, 0, 0, 0));
    h.finish().await;
}
