//! A model that speaks Anthropic's Messages API, through the fleet: the worker sends the
//! system prompt as Anthropic's top-level `system` (marked for caching), the simulator caches
//! it as Anthropic does, and the ledger books each call's cache write and cache reads at their
//! own rates, exactly, with the provider's raw usage kept on the row.

use chrono::Utc;
use rust_decimal::Decimal;
use switchyard_core::tariff::Tariff;
use switchyard_runtime::settings::Protocol;
use switchyard_sim::SimConfig;
use switchyard_store::ledger_reports;
use switchyard_store::prices::{self, NewPrice};

use crate::support::{Harness, classify_job, mmlu_items};

const WEAK: &str = "mistralai/Mixtral-8x7B-Instruct-v0.1";

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    prompt_tokens: i32,
    cached_prompt_tokens: i32,
    cache_write_tokens: i32,
    cache_write_1h_tokens: i32,
    completion_tokens: i32,
    cost_usd: Decimal,
    raw_usage: Option<serde_json::Value>,
    provider: String,
}

/// A fleet whose weak model speaks Anthropic's protocol (with logprobs or without), priced
/// at Anthropic's rates relative to input: reads 0.1 ×, 5-minute writes 1.25 ×, 1 hour 2 ×.
async fn anthropic_fleet(logprobs: bool) -> (Harness, Tariff) {
    let h = Harness::start_with(
        |s| {
            let m = s
                .models
                .get_mut(WEAK)
                .expect("the weak model is configured");
            m.protocol = Protocol::Anthropic;
            m.provider = "anthropic".to_owned();
            m.logprobs = logprobs;
        },
        SimConfig {
            logprobs,
            ..SimConfig::default()
        },
    )
    .await;
    let tariff = Tariff::new(d("3"), Some(d("0.3")), d("15"), Decimal::ZERO)
        .unwrap()
        .with_cache_writes(Some(d("3.75")), Some(d("6")))
        .unwrap();
    prices::set(
        &h.db.pool,
        &NewPrice {
            model: WEAK.to_owned(),
            provider: "anthropic".to_owned(),
            tariff,
            effective_from: Utc::now(),
        },
    )
    .await
    .unwrap();
    (h, tariff)
}

/// The simulator's requests to the weak model, and its bill for them at `tariff`.
fn weak_bill(h: &Harness, tariff: &Tariff) -> (Vec<switchyard_sim::CallRecord>, Decimal) {
    let sim = h.fleet.sim.as_ref().expect("the simulator runs");
    let price = switchyard_sim::ModelPrice {
        input_usd_per_mtok: tariff.input_usd_per_mtok,
        output_usd_per_mtok: tariff.output_usd_per_mtok,
        batch_discount: Decimal::ZERO,
        cached_input_usd_per_mtok: tariff.cached_input_usd_per_mtok,
        cache_write_usd_per_mtok: tariff.cache_write_usd_per_mtok,
        cache_write_1h_usd_per_mtok: tariff.cache_write_1h_usd_per_mtok,
    };
    let calls: Vec<switchyard_sim::CallRecord> = sim
        .calls()
        .into_iter()
        .filter(|c| c.model == WEAK)
        .collect();
    let bill = switchyard_sim::bill::bill(&calls, &[(WEAK.to_owned(), price)].into());
    (calls, bill.usd)
}

#[tokio::test]
async fn an_anthropic_model_answers_and_its_cache_writes_and_reads_are_booked_at_their_rates() {
    let (h, tariff) = anthropic_fleet(true).await;

    let job = h
        .client
        .submit(classify_job(mmlu_items(12), 0.0, 0.0))
        .await
        .unwrap();
    let status = h.wait_final(&job, 60).await;
    assert_eq!(status.job.status, "completed", "{:?}", status.dead_letters);
    assert_eq!(status.items_by_state.get("done"), Some(&12));

    let rows: Vec<Row> = sqlx::query_as(
        "SELECT prompt_tokens, cached_prompt_tokens, cache_write_tokens, cache_write_1h_tokens, \
         completion_tokens, cost_usd, raw_usage, provider FROM ledger \
         WHERE job_id = $1 AND model = $2 ORDER BY entry_id",
    )
    .bind(&job)
    .bind(WEAK)
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 12, "{rows:?}");
    // The shared system prompt is written to the cache once and read by every other call.
    let writes: Vec<&Row> = rows.iter().filter(|r| r.cache_write_tokens > 0).collect();
    assert_eq!(writes.len(), 1, "{rows:?}");
    assert_eq!(
        rows.iter().filter(|r| r.cached_prompt_tokens > 0).count(),
        11,
        "{rows:?}"
    );
    // The provider's bill at the same rates equals the ledger to the last unit.
    let (_, bill) = weak_bill(&h, &tariff);
    let booked: Decimal = rows.iter().map(|r| r.cost_usd).sum();
    assert_eq!(bill, booked, "the ledger equals the bill");
    for r in &rows {
        assert_eq!(r.provider, "anthropic");
        assert!(
            r.cached_prompt_tokens + r.cache_write_tokens <= r.prompt_tokens,
            "{r:?}"
        );
        let want = tariff.cost_with_writes(
            r.prompt_tokens.into(),
            r.cached_prompt_tokens.into(),
            r.cache_write_tokens.into(),
            r.cache_write_1h_tokens.into(),
            r.completion_tokens.into(),
            false,
        );
        assert_eq!(r.cost_usd, want, "{r:?}");
        let raw = r.raw_usage.as_ref().expect("raw usage kept");
        assert!(raw.get("cache_read_input_tokens").is_some(), "{raw}");
        // The provider's input_tokens leave cache tokens out; the ledger's prompt does not.
        let input = raw["input_tokens"].as_i64().unwrap();
        assert_eq!(
            input + i64::from(r.cached_prompt_tokens) + i64::from(r.cache_write_tokens),
            i64::from(r.prompt_tokens),
            "{raw}"
        );
    }

    // Finance sees what the cache saved apart from what routing saved, from the ledger and
    // from the daily rollup alike: each call at list price (no cache pricing) less what it
    // was booked at. One write at 1.25 × input, then reads at 0.1 ×: a saving.
    let list: Decimal = rows
        .iter()
        .map(|r| tariff.cost(r.prompt_tokens.into(), 0, r.completion_tokens.into(), false))
        .sum();
    let cache_saved = list - booked;
    assert!(cache_saved > Decimal::ZERO, "{cache_saved}");
    let today = Utc::now().date_naive();
    let request = ledger_reports::ReportRequest {
        group_by: vec![ledger_reports::Dimension::Job],
        from: ledger_reports::midnight(today),
        to: ledger_reports::midnight(today.succ_opt().unwrap()),
        team: None,
    };
    for source in [
        ledger_reports::Source::Ledger,
        ledger_reports::Source::Rollup,
    ] {
        let report = ledger_reports::run(&h.db.pool, &request, source)
            .await
            .unwrap();
        let row = report.total();
        assert_eq!(row.cache_savings_usd, cache_saved, "{source:?}");
        assert_eq!(row.batch_savings_usd, Decimal::ZERO, "{source:?}");
        assert_eq!(row.cost_usd, booked, "{source:?}");
        // Routing's savings are the counterfactual's alone (one tier here: none).
        assert_eq!(
            row.savings_usd(),
            row.cost_all_strong_usd - row.cost_usd,
            "{source:?}"
        );
    }
    h.finish().await;
}

/// A quality job whose weak model speaks Anthropic's protocol and gives no logprobs: the
/// worker draws each weak answer's extra samples as requests of their own (Anthropic has no
/// `n`), all under the call's one id, their agreement is the answer's stored confidence (a
/// real signal, not the configured constant), and the ledger's one row per call books every
/// request the provider billed, to the last unit.
#[tokio::test]
async fn a_model_without_n_draws_its_samples_as_requests_and_books_them_all() {
    let (h, tariff) = anthropic_fleet(false).await;
    let mut spec = classify_job(mmlu_items(120), 0.0, 0.0);
    spec.job_id = "anthropic-samples".to_owned();
    spec.policy.routing = switchyard_proto::Routing::Quality { value: 0.95 };
    spec.policy.cascade.confidence_threshold = None;
    h.client.submit(spec).await.unwrap();
    let status = h.wait_final("anthropic-samples", 120).await;
    assert_eq!(status.job.status, "completed", "{status:?}");

    let rows: Vec<(String, Decimal)> =
        sqlx::query_as("SELECT call_id, cost_usd FROM ledger WHERE job_id = $1 AND model = $2")
            .bind("anthropic-samples")
            .bind(WEAK)
            .fetch_all(&h.db.pool)
            .await
            .unwrap();
    assert!(!rows.is_empty());
    let (calls, bill) = weak_bill(&h, &tariff);
    // Every weak call asked five times: the answer and four samples, under its one id.
    for (call_id, _) in &rows {
        let requests = calls
            .iter()
            .filter(|c| c.client_request_id.as_deref() == Some(call_id.as_str()))
            .count();
        assert_eq!(requests, 5, "call {call_id}");
    }
    assert_eq!(
        calls.len(),
        rows.len() * 5,
        "no request outside the ledger's calls"
    );
    // The ledger equals the provider's bill for all of them.
    let booked: Decimal = rows.iter().map(|r| r.1).sum();
    assert_eq!(bill, booked, "the ledger equals the bill");

    // The weak answers' confidences are the samples' agreement.
    crate::support::assert_confidences_are_sample_agreement(&h.db.pool, "anthropic-samples").await;
    h.finish().await;
}

/// An Anthropic answer whose connection breaks after its `200` was generated and is billed:
/// the worker books it (`unusable`, usage estimated) and calls again under a new id; every
/// call the provider bills is booked, and nothing else.
#[tokio::test]
async fn an_anthropic_answer_broken_off_mid_body_is_booked_as_the_provider_bills_it() {
    let (h, _) = anthropic_fleet(true).await;
    let sim = h.fleet.sim.as_ref().expect("the simulator runs");
    sim.set_faults(switchyard_sim::Faults {
        script: vec![switchyard_sim::FaultKind::Reset].into(),
        ..switchyard_sim::Faults::default()
    });
    let job_id = h.completed(classify_job(mmlu_items(3), 0.0, 0.0)).await;
    let calls = sim.calls();
    let reset = switchyard_sim::call_log::faulted_ids(&calls, "reset");
    assert_eq!(reset.len(), 1, "{calls:?}");
    let rows = h.bookings(&job_id).await;
    let booked: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(booked, switchyard_sim::call_log::billed_ids(&calls));
    assert_eq!(booked.len(), rows.len(), "a call booked twice");
    let broken = rows.iter().find(|r| r.0 == reset[0]).expect("booked");
    assert_eq!(
        (broken.1.as_str(), broken.2.as_str()),
        ("unusable", "estimated")
    );
    h.finish().await;
}
