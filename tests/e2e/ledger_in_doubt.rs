//! In-doubt calls settled by the provider's evidence, end to end: a job runs through the real
//! fleet; then two calls are left with an intent and no booking, as a worker killed mid-call
//! leaves them (one reached the simulator and was billed, one never left). The sweep books
//! both in doubt at their worst case; `ledger reconcile` with the simulator's call log (as a
//! file) settles them; the ledger then equals the simulator's bill (`GET /v1/bill`) to the
//! last unit, and a second reconciliation changes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use rust_decimal::Decimal;
use switchyard_sim::{Bill, FaultKind, Faults, ModelPrice, SimConfig};
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

/// The simulator's call log as `ledger reconcile --usage FILE --complete` reads it: the call
/// it never saw was never billed.
fn call_log(h: &Harness) -> switchyard_store::reconcile::Evidence {
    let sim = h.fleet.sim.as_ref().expect("a simulator");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calls.jsonl");
    let lines: Vec<String> = sim
        .calls()
        .iter()
        .map(|c| serde_json::to_string(c).unwrap())
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    let mut file = switchyard_finance::usage_report::read(&path).unwrap();
    file.evidence.set_complete(true);
    file.evidence
}

/// The simulator's bill of its call log at the fleet's prices, over HTTP.
async fn bill_of(h: &Harness) -> Bill {
    let sim = h.fleet.sim.as_ref().expect("a simulator");
    let http = switchyard_testkit::http::client();
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
    switchyard_testkit::http::get_json(&format!("{}/bill", sim.base_url())).await
}

/// A request sent and not answered within the model's timeout may have been made and billed
/// (a provider bills what it generated, whether or not the client waited). It is booked in
/// doubt at its worst case, settling its hold, and never sent again under its call id: the
/// item is tried under a new one. Reconciliation with the provider's log then settles it (this
/// simulator does not bill a hang: the worst case is given back), and the ledger equals the
/// bill.
#[tokio::test]
async fn a_request_that_timed_out_after_it_was_sent_is_booked_in_doubt_then_reconciled() {
    let sim = SimConfig {
        faults: Faults {
            script: vec![FaultKind::Timeout].into(),
            hang: Duration::from_secs(3),
            ..Faults::default()
        },
        ..SimConfig::default()
    };
    let h = Harness::start_with(
        |s| {
            for m in s.models.values_mut() {
                m.timeout = Duration::from_millis(500);
            }
        },
        sim,
    )
    .await;
    let job_id = h.completed(classify_job(mmlu_items(3), 0.0, 0.0)).await;
    let calls = h.fleet.sim.as_ref().unwrap().calls();
    let hung = switchyard_sim::call_log::faulted_ids(&calls, "timeout");
    assert_eq!(hung.len(), 1, "{calls:?}");
    // No call id was sent twice.
    let mut ids: Vec<&str> = calls
        .iter()
        .filter_map(|c| c.client_request_id.as_deref())
        .collect();
    let sent = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), sent, "a call id sent again after its timeout");
    let in_doubt: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT call_id, usage_source, completion_tokens FROM ledger \
         WHERE job_id = $1 AND outcome = 'in_doubt'",
    )
    .bind(&job_id)
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(in_doubt.len(), 1, "{in_doubt:?}");
    assert_eq!(in_doubt[0].0, hung[0]);
    assert_eq!(in_doubt[0].1, "worst_case");
    assert!(in_doubt[0].2 > 0, "the completion at its bound");
    let (open, _) = intents::unsettled_in_doubt(&h.db.pool).await.unwrap();
    assert_eq!(open, 1);

    let before = ledger_total(&h).await;
    let s = switchyard_store::reconcile::reconcile(&h.db.pool, &call_log(&h), false)
        .await
        .unwrap();
    assert_eq!((s.settled, s.reversed_to_zero), (0, 1), "{s:?}");
    assert!(s.usd_delta < Decimal::ZERO, "{s:?}");
    assert_eq!(ledger_total(&h).await - before, s.usd_delta);
    let bill = bill_of(&h).await;
    assert!(bill.unpriced_models.is_empty(), "{bill:?}");
    assert_eq!(ledger_total(&h).await, bill.usd);
    h.finish().await;
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
    let file = call_log(&h);
    let before = ledger_total(&h).await;
    let s = switchyard_store::reconcile::reconcile(&h.db.pool, &file, false)
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

    let bill = bill_of(&h).await;
    assert!(bill.unpriced_models.is_empty(), "{bill:?}");
    assert!(bill.calls > 12, "the job's calls and the orphan: {bill:?}");
    assert_eq!(
        ledger_total(&h).await,
        bill.usd,
        "the ledger equals the bill to the last unit"
    );

    // Again: nothing to do.
    let again = switchyard_store::reconcile::reconcile(&h.db.pool, &file, false)
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
