//! In-doubt calls settled by the provider's evidence, end to end: a job runs through the real
//! fleet; then two calls are left with an intent and no booking, as a worker killed mid-call
//! leaves them (one reached the simulator and was billed, one never left). The sweep books
//! both in doubt at their worst case; `ledger reconcile` with the simulator's call log (as a
//! file) settles them; the ledger then equals the simulator's bill (`GET /v1/bill`) to the
//! last unit, and a second reconciliation changes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use rust_decimal::Decimal;
use switchyard_sim::{Bill, ModelPrice};
use switchyard_store::intents;

use crate::support::{Harness, WEAK, classify_job, mmlu_items};

const DEAD: &str = "worker-killed-mid-call";

/// An intent of `DEAD` for item `item` of `job_id`, as a worker writes it before calling.
async fn orphan_intent(h: &Harness, job_id: &str, item: &str, call_id: &str) {
    sqlx::query(
        "INSERT INTO call_intents (call_id, job_id, item_id, attempt, team, project, tier, \
         model, provider, owner, prompt_bound, max_tokens) \
         VALUES ($1, $2, $3, 7, 'team-e2e', 'proj', 'weak', $4, 'sim', $5, 2000, 64)",
    )
    .bind(call_id)
    .bind(job_id)
    .bind(item)
    .bind(WEAK)
    .bind(DEAD)
    .execute(&h.db.pool)
    .await
    .unwrap();
}

async fn ledger_total(h: &Harness) -> Decimal {
    sqlx::query_scalar("SELECT COALESCE(sum(cost_usd), 0) FROM ledger")
        .fetch_one(&h.db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn in_doubt_calls_reconciled_against_the_call_log_make_the_ledger_equal_the_bill() {
    let h = Harness::start().await;
    let job_id = h
        .client
        .submit(classify_job(mmlu_items(12), 0.25, 0.0))
        .await
        .unwrap();
    assert_eq!(h.wait_final(&job_id, 60).await.job.status, "completed");
    let sim = h.fleet.sim.as_ref().unwrap();
    let http = switchyard_testkit::http::client();

    // The killed worker's two calls: both intents written; one request reached the provider.
    orphan_intent(&h, &job_id, "orphan-item-0", "billed-then-killed").await;
    orphan_intent(&h, &job_id, "orphan-item-1", "killed-before-sending").await;
    let answer = http
        .post(format!("{}/chat/completions", sim.base_url()))
        .header("X-Client-Request-Id", "billed-then-killed")
        .json(&serde_json::json!({
            "model": WEAK,
            "messages": [{"role": "user", "content": "Which planet is largest?"}],
            "max_tokens": 64,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);

    // The sweep (any worker's, or this one) books both in doubt at their worst case.
    intents::book_in_doubt(&h.db.pool, Duration::ZERO, 100)
        .await
        .unwrap();
    let (open, open_usd) = intents::unsettled_in_doubt(&h.db.pool).await.unwrap();
    assert_eq!(open, 2, "both orphaned calls are booked in doubt");
    assert!(open_usd > Decimal::ZERO);

    // The provider's evidence, as a file, read as `ledger reconcile --usage FILE` reads it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calls.jsonl");
    let lines: Vec<String> = sim
        .calls()
        .iter()
        .map(|c| serde_json::to_string(c).unwrap())
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    let mut file = switchyard_finance::usage_report::read(&path).unwrap();
    // The simulator's log is complete (`--complete`): the call it never saw was never billed.
    file.evidence.set_complete(true);
    let before = ledger_total(&h).await;
    let s = switchyard_store::reconcile::reconcile(&h.db.pool, &file.evidence, false)
        .await
        .unwrap();
    assert_eq!((s.settled, s.reversed_to_zero), (1, 1), "{s:?}");
    assert_eq!(
        (s.booked_missing, s.in_flight, s.not_in_evidence),
        (0, 0, 0)
    );
    assert_eq!(ledger_total(&h).await - before, s.usd_delta);
    assert!(s.usd_delta < Decimal::ZERO, "worst cases give money back");
    let (open, open_usd) = intents::unsettled_in_doubt(&h.db.pool).await.unwrap();
    assert_eq!((open, open_usd), (0, Decimal::ZERO));

    // The provider's bill at the fleet's prices, over HTTP.
    let prices: BTreeMap<String, ModelPrice> = h
        .fleet
        .settings
        .models
        .keys()
        .filter_map(|m| {
            let p = h.fleet.settings.price_of(m)?;
            Some((
                m.clone(),
                ModelPrice {
                    input_usd_per_mtok: p.input_usd_per_mtok,
                    output_usd_per_mtok: p.output_usd_per_mtok,
                    ..Default::default()
                },
            ))
        })
        .collect();
    let root = sim.base_url().trim_end_matches("/v1").to_owned();
    let put = http
        .put(format!("{root}/sim/prices"))
        .json(&prices)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let bill: Bill = switchyard_testkit::http::get_json(&format!("{}/bill", sim.base_url())).await;
    assert!(bill.unpriced_models.is_empty(), "{bill:?}");
    assert!(bill.calls > 12, "the job's calls and the orphan: {bill:?}");
    assert_eq!(
        ledger_total(&h).await,
        bill.usd,
        "the ledger equals the bill to the last unit"
    );

    // Again: nothing to do.
    let again = switchyard_store::reconcile::reconcile(&h.db.pool, &file.evidence, false)
        .await
        .unwrap();
    assert_eq!(
        (again.settled, again.reversed_to_zero, again.booked_missing),
        (0, 0, 0)
    );
    assert_eq!(again.usd_delta, Decimal::ZERO);
    assert_eq!(ledger_total(&h).await, bill.usd);
    h.finish().await;
}
