//! Jobs with a deadline through the provider's batch API (the simulator's OpenAI Batch API
//! and Anthropic Message Batches): every item
//! answered, every weak call a batch line booked at the batch price, the low-confidence
//! answers escalated to the strong tier in real time (the cascade across rounds), the ledger
//! equal to the simulator's bill to the last unit, and the batches ended with their files
//! deleted.

use std::time::Duration;

use chrono::Utc;
use rust_decimal::Decimal;
use switchyard_core::tariff::Tariff;
use switchyard_runtime::settings::{ModelSettings, Protocol};
use switchyard_sim::SimConfig;
use switchyard_store::prices::{self, NewPrice};

use crate::support::{Harness, STRONG, WEAK, classify_job, mmlu_items};

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

/// A fleet whose weak model has a batch API (the simulator's, answering a batch after
/// `delay`) of `protocol`'s kind, priced at half through it, polled every 200 ms.
async fn fleet(sim: SimConfig, protocol: Protocol) -> Harness {
    fleet_tuned(sim, protocol, |_| {}).await
}

/// As [`fleet`], the weak model's settings then tuned by `tune`.
async fn fleet_tuned(
    sim: SimConfig,
    protocol: Protocol,
    tune: impl FnOnce(&mut ModelSettings),
) -> Harness {
    let provider = provider_of(protocol);
    let h = Harness::start_with(
        |s| {
            let m = s.models.get_mut(WEAK).expect("weak model");
            m.batch = true;
            m.protocol = protocol;
            m.provider = provider.to_owned();
            tune(m);
            let b = &mut s.worker.batching;
            b.max_wait = Duration::from_millis(300);
            b.poll_every = Duration::from_millis(200);
            b.min_time_left = Duration::from_secs(60);
        },
        sim,
    )
    .await;
    let weak = Tariff::new(d("0.6"), None, d("0.6"), d("0.5")).unwrap();
    prices::set(
        &h.db.pool,
        &NewPrice {
            model: WEAK.to_owned(),
            provider: provider.to_owned(),
            tariff: weak,
            effective_from: Utc::now(),
        },
    )
    .await
    .unwrap();
    h
}

#[derive(sqlx::FromRow, Debug)]
struct Row {
    call_id: String,
    model: String,
    batch: bool,
    outcome: String,
    cost_usd: Decimal,
}

/// The simulator's billed calls to the weak model.
fn weak_billed_calls(h: &Harness) -> Vec<switchyard_sim::CallRecord> {
    let sim = h.fleet.sim.as_ref().expect("the simulator runs");
    sim.calls()
        .into_iter()
        .filter(|c| c.model == WEAK && c.billed())
        .collect()
}

/// The simulator's bill for `calls` of the weak model at its price in [`fleet`] (half
/// through the batch API).
fn weak_bill(calls: &[switchyard_sim::CallRecord]) -> Decimal {
    let price = switchyard_sim::ModelPrice {
        input_usd_per_mtok: d("0.6"),
        output_usd_per_mtok: d("0.6"),
        batch_discount: d("0.5"),
        cached_input_usd_per_mtok: None,
        cache_write_usd_per_mtok: None,
        cache_write_1h_usd_per_mtok: None,
    };
    switchyard_sim::bill::bill(calls, &[(WEAK.to_owned(), price)].into()).usd
}

/// The job is complete and every weak call was one batch line, answered once by the
/// simulator and booked once at the batch price (the ledger equals the bill, call id for
/// custom id); nothing is left open, in doubt or held. Returns the ledger rows.
async fn booked_once(h: &Harness, job: &str, n: usize) -> Vec<Row> {
    let status = h.wait_final(job, 120).await;
    assert_eq!(status.job.status, "completed", "{:?}", status.dead_letters);
    assert_eq!(status.done(), n as i64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT call_id, model, batch, outcome, cost_usd FROM ledger WHERE job_id = $1",
    )
    .bind(job)
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    assert!(rows.iter().all(|r| r.outcome != "in_doubt"), "{rows:?}");
    let weak: Vec<&Row> = rows.iter().filter(|r| r.model == WEAK).collect();
    assert_eq!(weak.len(), n, "one weak call per item: {rows:?}");
    assert!(weak.iter().all(|r| r.batch), "{rows:?}");

    let calls = weak_billed_calls(h);
    assert_eq!(calls.len(), n, "each line answered once");
    assert!(calls.iter().all(|c| c.is_batch_line()));
    let mut answered: Vec<String> = calls
        .iter()
        .filter_map(|c| c.client_request_id.clone())
        .collect();
    answered.sort();
    let mut booked: Vec<String> = weak.iter().map(|r| r.call_id.clone()).collect();
    booked.sort();
    assert_eq!(
        answered, booked,
        "the ledger's call ids are the lines' custom ids"
    );
    let bill = weak_bill(&calls);
    let total: Decimal = weak.iter().map(|r| r.cost_usd).sum();
    assert_eq!(bill, total, "the ledger equals the bill");

    // The job is announced once its lines are booked; its batch ends just after (the
    // provider's files are deleted first).
    let left = || async {
        let counts: (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM provider_batches
                     WHERE status NOT IN ('ended', 'abandoned')),
                    (SELECT count(*) FROM provider_batch_lines WHERE status = 'open'),
                    (SELECT count(*) FROM call_intents),
                    (SELECT count(*) FROM budget_reservations)",
        )
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
        counts
    };
    let ended =
        switchyard_testkit::eventually("every batch ended", Duration::from_secs(20), || async {
            (left().await.0 == 0).then_some(())
        });
    ended.await;
    assert_eq!(left().await, (0, 0, 0, 0), "nothing open, in doubt or held");
    rows
}

fn provider_of(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Openai => "sim",
        Protocol::Anthropic => "anthropic",
    }
}

/// A fleet as [`fleet`] says and a job of `n` MMLU items (all weak, escalating below
/// `threshold`) with a day's deadline, submitted.
async fn job_with_deadline(
    sim: SimConfig,
    protocol: Protocol,
    n: usize,
    threshold: f64,
) -> (Harness, String) {
    let h = fleet(sim, protocol).await;
    let spec = classify_job(mmlu_items(n), 0.0, threshold).with_deadline(86_400);
    let job = h.client.submit(spec).await.unwrap();
    (h, job)
}

/// The provider batches that answered lines, by the simulator's call log (each line's call
/// is tagged with its batch; an Anthropic batch is deleted once booked, so a listing after
/// the job would not show it).
fn batches_at_the_provider(h: &Harness) -> std::collections::BTreeSet<String> {
    let sim = h.fleet.sim.as_ref().expect("the simulator runs");
    sim.calls()
        .into_iter()
        .filter(switchyard_sim::CallRecord::is_batch_line)
        .filter_map(|c| c.client)
        .collect()
}

#[tokio::test]
async fn a_job_with_a_deadline_runs_through_provider_batches_at_the_batch_price() {
    cascade_through_batches(Protocol::Openai).await;
}

#[tokio::test]
async fn a_job_with_a_deadline_runs_through_anthropic_message_batches_at_the_batch_price() {
    cascade_through_batches(Protocol::Anthropic).await;
}

async fn cascade_through_batches(protocol: Protocol) {
    let n = 30;
    let (h, job) = job_with_deadline(
        SimConfig {
            batch_delay: Duration::from_millis(300),
            ..SimConfig::default()
        },
        protocol,
        n,
        0.9,
    )
    .await;
    let rows = booked_once(&h, &job, n).await;
    // Low-confidence answers escalated to the strong model in real time (it has no batch
    // API here): the cascade goes on in the next round.
    let status = h.wait_final(&job, 10).await;
    let strong: Vec<&Row> = rows.iter().filter(|r| r.model == STRONG).collect();
    assert!(status.escalated > 0, "the cascade ran");
    assert_eq!(strong.len() as i64, status.escalated, "{rows:?}");
    assert!(strong.iter().all(|r| !r.batch));
    // The worker counted the lines it booked; once its poller has looked again, no batch is
    // open and no line either.
    let worker = &h.fleet.workers[0].as_ref().expect("the worker runs").worker;
    let exported = worker.metrics.encode();
    let booked = format!("switchyard_provider_batch_lines_closed_total{{state=\"booked\"}} {n}");
    assert!(exported.contains(&booked), "{exported}");
    switchyard_testkit::eventually(
        "the open gauges at zero",
        Duration::from_secs(10),
        || async {
            let text = worker.metrics.encode();
            (text.contains("switchyard_provider_batch_lines_open 0")
                && text.contains("switchyard_provider_batch_oldest_seconds 0"))
            .then_some(())
        },
    )
    .await;
    h.finish().await;
}

#[tokio::test]
async fn a_batch_created_but_never_recorded_is_found_by_its_metadata_not_created_twice() {
    lost_creation(Protocol::Openai).await;
}

/// Anthropic batches carry no metadata: the lost one is found by its results' custom ids,
/// and nothing is created while a batch that may be ours still runs.
#[tokio::test]
async fn an_anthropic_batch_created_but_never_recorded_is_found_by_its_results() {
    lost_creation(Protocol::Anthropic).await;
}

async fn lost_creation(protocol: Protocol) {
    // The provider creates the first batch but its answer is lost, as when a worker dies
    // between creating a batch and recording its id.
    let sim = SimConfig {
        batch_delay: Duration::from_millis(200),
        batch_creations_lost: 1,
        ..SimConfig::default()
    };
    each_batch_sent_once(sim, protocol, 12).await;
}

/// Runs a job of `n` items with a deadline against `sim` and checks every line was booked
/// once and each batch of ours was created once at the provider.
async fn each_batch_sent_once(sim: SimConfig, protocol: Protocol, n: usize) {
    let (h, job) = job_with_deadline(sim, protocol, n, 0.0).await;
    booked_once(&h, &job, n).await;
    let ours: i64 = sqlx::query_scalar("SELECT count(*) FROM provider_batches")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    let theirs = batches_at_the_provider(&h);
    assert_eq!(
        theirs.len() as i64,
        ours,
        "one provider batch per batch of ours: {theirs:?}"
    );
    h.finish().await;
}

#[tokio::test]
async fn a_batch_slower_to_create_than_its_lease_is_sent_once() {
    slow_creation(Protocol::Openai).await;
}

#[tokio::test]
async fn an_anthropic_batch_slower_to_create_than_its_lease_is_sent_once() {
    slow_creation(Protocol::Anthropic).await;
}

async fn slow_creation(protocol: Protocol) {
    // The lease is 1 s here (`fleet`: four polls of 200 ms, at least a second).
    let sim = SimConfig {
        batch_create_latency: Duration::from_millis(2500),
        ..SimConfig::default()
    };
    each_batch_sent_once(sim, protocol, 6).await;
}

#[tokio::test]
async fn a_worker_killed_while_its_batches_run_leaves_them_to_another() {
    let n = 12;
    let (mut h, job) = job_with_deadline(
        SimConfig {
            batch_delay: Duration::from_secs(2),
            ..SimConfig::default()
        },
        Protocol::Openai,
        n,
        0.0,
    )
    .await;
    h.count_reaches(
        "a batch running at the provider",
        "SELECT count(*) FROM provider_batches b JOIN provider_batch_lines l USING (batch_id) \
         WHERE b.status = 'submitted' AND l.job_id = $1 LIMIT 1",
        &job,
        i64::try_from(n).unwrap(),
        30,
    )
    .await;
    h.fleet.kill_worker(0).await;
    let tiers: Vec<String> = h.fleet.settings.tiers.keys().cloned().collect();
    h.fleet.start_worker(tiers).await.unwrap();
    booked_once(&h, &job, n).await;
    h.finish().await;
}

#[tokio::test]
async fn a_batch_that_expires_half_done_books_what_was_answered_and_sends_the_rest_again() {
    // Every batch expires after six lines: the rest come back `expired` (Anthropic's
    // per-result state; OpenAI's `batch_expired` takes the same path), unbilled, and go into
    // the next batch while the deadline allows.
    let n = 12;
    let (h, job) = job_with_deadline(
        SimConfig {
            batch_delay: Duration::from_millis(100),
            batch_expire_after_lines: Some(6),
            ..SimConfig::default()
        },
        Protocol::Anthropic,
        n,
        0.0,
    )
    .await;
    booked_once(&h, &job, n).await;
    let (batches, returned): (i64, i64) = sqlx::query_as(
        "SELECT count(DISTINCT batch_id), count(*) FILTER (WHERE status = 'returned') \
         FROM provider_batch_lines WHERE job_id = $1",
    )
    .bind(&job)
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert!(
        batches >= 2 && returned >= 6,
        "{batches} batches, {returned} lines returned"
    );
    h.finish().await;
}

#[tokio::test]
async fn a_model_s_batch_queue_bounds_its_batches_and_every_line_is_still_booked_once() {
    // OpenAI's enqueued-token limit as `batch_queue_tokens`: a batch never holds more than
    // the queue (unless one line alone does), and one waits, recorded, while earlier ones
    // fill the queue.
    let n = 12;
    let queue = 600;
    let h = fleet_tuned(
        SimConfig {
            batch_delay: Duration::from_millis(300),
            ..SimConfig::default()
        },
        Protocol::Openai,
        |m| m.batch_queue_tokens = std::num::NonZeroU64::new(queue),
    )
    .await;
    let spec = classify_job(mmlu_items(n), 0.0, 0.0).with_deadline(86_400);
    let job = h.client.submit(spec).await.unwrap();
    booked_once(&h, &job, n).await;
    let batches: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT count(*), sum(tokens)::int8 FROM provider_batch_lines WHERE job_id = $1 \
         GROUP BY batch_id",
    )
    .bind(&job)
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    assert!(batches.len() >= 2, "{batches:?}");
    for (lines, tokens) in &batches {
        assert!(*tokens > 0, "lines carry their tokens: {batches:?}");
        assert!(
            *lines == 1 || *tokens <= i64::try_from(queue).unwrap(),
            "a batch within the queue: {batches:?}"
        );
    }
    h.finish().await;
}

#[tokio::test]
async fn a_batch_line_whose_answer_cannot_be_read_is_booked_and_called_again() {
    // The first line the provider answers is a 200 with a broken body: billed, unusable.
    let n = 6;
    let (h, job) = job_with_deadline(
        SimConfig {
            batch_delay: Duration::from_millis(100),
            faults: switchyard_sim::Faults {
                script: vec![switchyard_sim::FaultKind::MalformedJson].into(),
                ..switchyard_sim::Faults::default()
            },
            ..SimConfig::default()
        },
        Protocol::Openai,
        n,
        0.0,
    )
    .await;
    let status = h.wait_final(&job, 120).await;
    assert_eq!(status.job.status, "completed", "{:?}", status.dead_letters);
    assert_eq!(status.done(), n as i64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT call_id, model, batch, outcome, cost_usd FROM ledger WHERE job_id = $1",
    )
    .bind(&job)
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    let sim = h.fleet.sim.as_ref().expect("the simulator runs");
    let billed: Vec<switchyard_sim::CallRecord> = sim
        .calls()
        .into_iter()
        .filter(switchyard_sim::CallRecord::billed)
        .collect();
    assert_eq!(billed.len(), n + 1, "the unreadable line was billed too");
    let mut billed_ids: Vec<String> = billed
        .iter()
        .filter_map(|c| c.client_request_id.clone())
        .collect();
    billed_ids.sort();
    let mut booked: Vec<String> = rows.iter().map(|r| r.call_id.clone()).collect();
    booked.sort();
    assert_eq!(
        booked, billed_ids,
        "every billed line booked once: {rows:?}"
    );
    assert_eq!(
        rows.iter().filter(|r| r.outcome == "unusable").count(),
        1,
        "{rows:?}"
    );
    h.finish().await;
}

/// A quality job whose weak model gives no logprobs and sits behind Anthropic's Message
/// Batches: Anthropic has no `n`, so each line's call is its answer and four samples as five
/// requests of the batch (`{call}`, `{call}_s1` … `_s4`), folded back into the call's one
/// ledger row, which books all five at the batch price; the answers' stored confidences are
/// the samples' agreement (quarters, not one constant), as in real time.
#[tokio::test]
async fn an_anthropic_batch_line_draws_its_samples_as_requests_and_books_them_all() {
    let sim = SimConfig {
        logprobs: false,
        batch_delay: Duration::from_millis(300),
        ..SimConfig::default()
    };
    let h = fleet_tuned(sim, Protocol::Anthropic, |m| m.logprobs = false).await;
    let n = 60;
    let mut spec = classify_job(mmlu_items(n), 0.0, 0.0).with_deadline(86_400);
    spec.policy.routing = switchyard_proto::Routing::Quality { value: 0.95 };
    spec.policy.cascade.confidence_threshold = None;
    let job = h.client.submit(spec).await.unwrap();
    let status = h.wait_final(&job, 120).await;
    assert_eq!(status.job.status, "completed", "{:?}", status.dead_letters);

    let rows: Vec<Row> = sqlx::query_as(
        "SELECT call_id, model, batch, outcome, cost_usd FROM ledger \
         WHERE job_id = $1 AND model = $2",
    )
    .bind(&job)
    .bind(WEAK)
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    assert!(!rows.is_empty());
    assert!(
        rows.iter().all(|r| r.batch && r.outcome != "in_doubt"),
        "{rows:?}"
    );
    let calls = weak_billed_calls(&h);
    assert!(calls.iter().all(switchyard_sim::CallRecord::is_batch_line));
    // Every weak call was five requests of its batch, under the call's id and its samples'.
    for r in &rows {
        let mut ids: Vec<String> = calls
            .iter()
            .filter_map(|c| c.client_request_id.clone())
            .filter(|id| switchyard_worker::llm::batch_api::line_of(id).0 == r.call_id)
            .collect();
        ids.sort();
        let want: Vec<String> = (0..5)
            .map(|j| switchyard_worker::llm::batch_api::request_custom_id(&r.call_id, j))
            .collect();
        assert_eq!(ids, want, "call {}", r.call_id);
    }
    assert_eq!(
        calls.len(),
        rows.len() * 5,
        "no request outside the ledger's calls"
    );
    // The ledger equals the provider's bill for all of them, at the batch price.
    let bill = weak_bill(&calls);
    let booked: Decimal = rows.iter().map(|r| r.cost_usd).sum();
    assert_eq!(bill, booked, "the ledger equals the bill");

    // The weak answers' confidences are the samples' agreement, as in real time.
    crate::support::assert_confidences_are_sample_agreement(&h.db.pool, &job).await;
    h.finish().await;
}
