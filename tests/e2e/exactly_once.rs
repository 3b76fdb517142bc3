//! Every model call booked exactly once, through the real fleet: work delivered again after
//! its item is done, two copies of an attempt in flight, odd provider answers, repeated
//! provider ids, and 429 storms across a Postgres outage. The simulator's call log is the
//! provider's side of the books; the worker sends its ledger call id with every request
//! (`X-Client-Request-Id`) and the log keeps it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use switchyard_proto::topology::HEADER_MSG_ID;
use switchyard_proto::{PROTOCOL_VERSION, Task, WorkItem, codec};
use switchyard_sim::{Faults, SimConfig};
use switchyard_testkit::eventually;

use crate::support::{Harness, classify_job, fleet_on_own_postgres, mmlu_items, wait_final};

/// The attempt-0 work message of every item of `job_id`, as a dispatcher publishes it.
async fn first_attempts(h: &Harness, job_id: &str) -> Vec<WorkItem> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT item_id, text, routed_tier FROM items WHERE job_id = $1 ORDER BY seq",
    )
    .bind(job_id)
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(item_id, text, tier)| WorkItem {
            v: PROTOCOL_VERSION,
            job_id: job_id.to_owned(),
            item_id,
            attempt: 0,
            tier,
            text,
            task: Task::Classify {
                labels: ["A", "B", "C", "D"]
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect(),
                instructions: None,
            },
            team: "team-e2e".to_owned(),
            project: "proj".to_owned(),
            local_only: false,
            models: Default::default(),
            confidence_threshold: 0.0,
            escalation: None,
            router_score: None,
            cost_weight: None,
            deadline: None,
            escalations_left: 0,
        })
        .collect()
}

/// Publishes `items` again as another client would: each with a message id JetStream has
/// never seen, so its duplicate window does not drop them.
async fn publish_again(h: &Harness, items: &[WorkItem], tag: &str) {
    let js = h.nats.js();
    let t = h.fleet.settings.topology();
    for w in items {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(HEADER_MSG_ID, format!("{tag}:{}", w.attempt_key()).as_str());
        js.publish_with_headers(
            t.work_subject(&w.tier),
            headers,
            codec::encode(w).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
}

/// Waits until the work stream holds nothing (every message settled).
async fn drained(h: &Harness) {
    let work = h.fleet.settings.topology().work_stream();
    h.stream_emptied(&work, "every work message settled", 60)
        .await;
}

/// Billed simulator calls per ledger call id, and the job's ledger `(call_id, outcome)`.
async fn books(h: &Harness, job_id: &str) -> (BTreeMap<String, usize>, Vec<(String, String)>) {
    let mut billed: BTreeMap<String, usize> = BTreeMap::new();
    for c in h.fleet.sim.as_ref().unwrap().calls() {
        if c.billed()
            && let Some(id) = c.client_request_id
        {
            *billed.entry(id).or_default() += 1;
        }
    }
    let ledger: Vec<(String, String)> =
        sqlx::query_as("SELECT call_id, outcome FROM ledger WHERE job_id = $1")
            .bind(job_id)
            .fetch_all(&h.db.pool)
            .await
            .unwrap();
    (billed, ledger)
}

/// Every billed call booked once, no other row, no duplicate, each attempt called once.
async fn assert_each_attempt_called_and_booked_once(h: &Harness, job_id: &str) {
    let (billed, ledger) = books(h, job_id).await;
    let booked: BTreeSet<&str> = ledger.iter().map(|(id, _)| id.as_str()).collect();
    let billed_ids: BTreeSet<&str> = billed.keys().map(String::as_str).collect();
    assert_eq!(
        booked, billed_ids,
        "the ledger is the simulator's bill, call by call"
    );
    assert!(billed.values().all(|n| *n == 1), "a call id billed twice");
    assert!(
        ledger.iter().all(|(_, o)| o == "ok"),
        "no duplicate, no in-doubt entry: {:?}",
        ledger.iter().filter(|(_, o)| o != "ok").collect::<Vec<_>>()
    );
    let per_attempt: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT item_id, attempt, count(*) FROM ledger WHERE job_id = $1 \
         GROUP BY item_id, attempt HAVING count(*) > 1",
    )
    .bind(job_id)
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    assert!(
        per_attempt.is_empty(),
        "attempts called twice: {per_attempt:?}"
    );
}

#[tokio::test]
async fn work_delivered_again_after_its_item_is_done_calls_and_books_nothing() {
    let h = Harness::start().await;
    let n = 40;
    let job_id = h
        .client
        .submit(classify_job(mmlu_items(n), 0.0, 0.0))
        .await
        .unwrap();
    assert_eq!(h.wait_final(&job_id, 60).await.job.status, "completed");
    let calls_before = h.fleet.sim.as_ref().unwrap().calls().len();
    let w = &h.fleet.workers[0].as_ref().unwrap().worker;
    let skipped_before = w.metrics.settled_before.get();

    // Long after the duplicate window, any client re-sends every item's work: first
    // deliveries, as far as JetStream knows.
    let again = first_attempts(&h, &job_id).await;
    publish_again(&h, &again, "late").await;
    drained(&h).await;

    assert_eq!(
        h.fleet.sim.as_ref().unwrap().calls().len(),
        calls_before,
        "no model was called again"
    );
    assert_eq!(
        w.metrics.settled_before.get() - skipped_before,
        n as u64,
        "each re-sent message was seen and settled without a call"
    );
    assert_each_attempt_called_and_booked_once(&h, &job_id).await;
    h.finish().await;
}

#[tokio::test]
async fn two_copies_of_an_attempt_in_flight_call_the_model_once() {
    // Slow answers, two workers: the copies meet while the first is being called.
    let sim = SimConfig {
        latency: Duration::from_millis(400),
        ..SimConfig::default()
    };
    let mut h = Harness::start_with(
        |s| s.worker.concurrency = switchyard_runtime::settings::count(16),
        sim,
    )
    .await;
    let tiers: Vec<String> = h.fleet.settings.tiers.keys().cloned().collect();
    h.fleet.start_worker(tiers).await.unwrap();
    let n = 12;
    let job_id = h
        .client
        .submit(classify_job(mmlu_items(n), 0.0, 0.0))
        .await
        .unwrap();
    let sim = h.fleet.sim.as_ref().unwrap();
    eventually(
        "the first calls in flight",
        Duration::from_secs(30),
        || async { (sim.in_flight_total() > 0).then_some(()) },
    )
    .await;
    let again = first_attempts(&h, &job_id).await;
    publish_again(&h, &again, "copy").await;
    assert_eq!(h.wait_final(&job_id, 60).await.job.status, "completed");
    drained(&h).await;
    assert_each_attempt_called_and_booked_once(&h, &job_id).await;
    let settled: u64 = h
        .fleet
        .workers
        .iter()
        .flatten()
        .map(|w| w.worker.metrics.settled_before.get())
        .sum();
    assert_eq!(
        settled, n as u64,
        "one of each pair of copies called nothing"
    );
    h.finish().await;
}

#[tokio::test]
async fn odd_provider_answers_are_booked_once_and_every_item_finishes() {
    // Every answer odd (each kind in turn), provider ids from a pool of three, and an answer
    // limit the huge answer exceeds.
    let sim = SimConfig {
        faults: Faults {
            odd_rate: 1.0,
            huge_answer_bytes: 300_000,
            response_id_pool: 3,
            ..Faults::default()
        },
        ..SimConfig::default()
    };
    let h = Harness::start_with(
        |s| s.worker.max_answer_bytes = switchyard_runtime::settings::count(64 * 1024),
        sim,
    )
    .await;
    let n = 36;
    let job_id = h
        .client
        .submit(classify_job(mmlu_items(n), 0.0, 0.0))
        .await
        .unwrap();
    let status = h.wait_final(&job_id, 90).await;
    let calls = h.fleet.sim.as_ref().unwrap().calls();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for c in &calls {
        *kinds
            .entry(c.fault.clone().unwrap_or_default())
            .or_default() += 1;
    }
    assert!(kinds.len() >= 5, "the odd kinds were served: {kinds:?}");
    // Every item finished; only the over-size answers failed, saying why.
    assert_eq!(status.done() + status.failed(), n as i64);
    let huge = kinds.get("odd_huge").copied().unwrap_or(0) as i64;
    assert_eq!(status.failed(), huge, "{:?}", status.dead_letters);
    assert!(
        status
            .dead_letters
            .iter()
            .all(|d| d.error.contains("max_answer_bytes")),
        "{:?}",
        status.dead_letters
    );
    // Every call the simulator billed is one ledger row, under the id the worker sent.
    let (billed, ledger) = books(&h, &job_id).await;
    let booked: BTreeSet<&str> = ledger.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(booked.len(), ledger.len());
    assert_eq!(booked, billed.keys().map(String::as_str).collect());
    // Colliding provider ids did not merge calls.
    let (rows, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT provider_response_id) FROM ledger WHERE job_id = $1",
    )
    .bind(&job_id)
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert!(
        distinct <= 3 && rows > distinct,
        "{rows} rows, {distinct} provider ids"
    );
    // Answers no text column holds are exported losslessly.
    let export: Vec<_> = {
        use futures::StreamExt as _;
        switchyard_store::reports::results_stream(&h.client.pool, &job_id)
            .collect::<Vec<_>>()
            .await
    };
    let export: Vec<_> = export.into_iter().map(Result::unwrap).collect();
    let with_nul = export
        .iter()
        .filter(|r| r.answer.as_deref().is_some_and(|a| a.contains('\0')))
        .count();
    let with_surrogate = export
        .iter()
        .filter(|r| {
            r.answer_raw
                .as_deref()
                .is_some_and(|a| a.contains("\\ud800"))
        })
        .count();
    assert_eq!(
        with_nul,
        kinds.get("odd_control_chars").copied().unwrap_or(0)
    );
    assert_eq!(
        with_surrogate,
        kinds.get("odd_lone_surrogate").copied().unwrap_or(0)
    );
    assert!(with_nul > 0 && with_surrogate > 0);
    // Usage the provider got wrong is booked as an estimate, flagged.
    let estimated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ledger WHERE job_id = $1 AND usage_source = 'estimated'",
    )
    .bind(&job_id)
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert!(estimated >= kinds.get("odd_usage").copied().unwrap_or(0) as i64);
    h.finish().await;
}

#[tokio::test]
async fn a_429_storm_across_a_postgres_outage_of_twice_ack_wait_calls_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let ack_wait = Duration::from_secs(2);
    let sim = SimConfig {
        latency: Duration::from_millis(50),
        faults: Faults {
            rate_limit_next: 60,
            retry_after_secs: 1,
            ..Faults::default()
        },
        ..SimConfig::default()
    };
    let tune = |s: &mut switchyard_runtime::Settings| {
        s.worker.ack_wait = ack_wait;
        s.worker.retry_delay = Duration::from_millis(300);
        s.worker.max_deliver = 20;
        s.finance.reservation_lease = Duration::from_secs(2);
    };
    let (pg, _nats, _db, fleet) = fleet_on_own_postgres(dir.path(), tune, sim).await;
    let client = fleet.client();
    let n = 80;
    let job_id = client
        .submit(classify_job(mmlu_items(n), 0.0, 0.0))
        .await
        .unwrap();
    let sim_handle = fleet.sim.as_ref().unwrap();
    eventually("answers flowing", Duration::from_secs(60), || async {
        (sim_handle
            .calls()
            .iter()
            .filter(|c| c.status == 200)
            .count()
            >= 10)
            .then_some(())
    })
    .await;
    // Postgres goes away for twice ack_wait while calls are in flight and being answered.
    pg.stop().unwrap();
    tokio::time::sleep(ack_wait * 2).await;
    pg.resume().await.unwrap();
    let status = wait_final(&client, &job_id, 120).await;
    assert_eq!(status.job.status, "completed");
    let mut billed: BTreeMap<String, usize> = BTreeMap::new();
    for c in sim_handle.calls() {
        if c.billed()
            && let Some(id) = c.client_request_id
        {
            *billed.entry(id).or_default() += 1;
        }
    }
    let ledger: Vec<(String, String, String, i32)> =
        sqlx::query_as("SELECT call_id, outcome, item_id, attempt FROM ledger WHERE job_id = $1")
            .bind(&job_id)
            .fetch_all(&client.pool)
            .await
            .unwrap();
    let duplicates = ledger.iter().filter(|r| r.1 == "duplicate").count();
    let in_doubt = ledger.iter().filter(|r| r.1 == "in_doubt").count();
    assert_eq!(
        (duplicates, in_doubt),
        (0, 0),
        "no worker died, nothing was paid twice"
    );
    let booked: BTreeSet<&str> = ledger.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        booked,
        billed.keys().map(String::as_str).collect::<BTreeSet<_>>()
    );
    let attempts: BTreeSet<(&str, i32)> = ledger.iter().map(|r| (r.2.as_str(), r.3)).collect();
    assert_eq!(attempts.len(), ledger.len(), "each attempt called once");
    fleet.stop().await;
    drop(pg);
}

#[tokio::test]
async fn a_postgres_outage_longer_than_the_deliveries_fails_no_item() {
    // Two deliveries an item and queries that give up on a connection after half a second: a
    // worker that handed an item back each time it could not claim or reserve would spend
    // both within a second of the outage and fail the item untried. It waits instead (the
    // message kept alive) until Postgres answers.
    let dir = tempfile::tempdir().unwrap();
    let tune = |s: &mut switchyard_runtime::Settings| {
        s.worker.max_deliver = 2;
        s.database.acquire_timeout = Duration::from_millis(500);
        s.worker.retry_delay = Duration::from_millis(100);
        // Slow enough calls that the job is still running when Postgres goes away.
        s.worker.concurrency = switchyard_runtime::settings::count(4);
    };
    let sim = SimConfig {
        latency: Duration::from_millis(300),
        ..SimConfig::default()
    };
    let (pg, _nats, _db, fleet) = fleet_on_own_postgres(dir.path(), tune, sim).await;
    let client = fleet.client();
    let n = 60;
    let job_id = client
        .submit(classify_job(mmlu_items(n), 0.0, 0.0))
        .await
        .unwrap();
    let sim_handle = fleet.sim.as_ref().unwrap();
    eventually(
        "dispatched, answers flowing",
        Duration::from_secs(60),
        || async {
            let status = client.status(&job_id).await.ok()??;
            (status.job.status == "running" && sim_handle.calls().len() >= 5).then_some(())
        },
    )
    .await;
    // Postgres goes away for three seconds (six acquire timeouts, thirty retry delays).
    let calls_before_outage = sim_handle.calls().len();
    pg.stop().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.resume().await.unwrap();
    let status = wait_final(&client, &job_id, 120).await;
    assert!(
        sim_handle.calls().len() > calls_before_outage,
        "items were still open at the outage"
    );
    assert_eq!(
        (status.done(), status.failed()),
        (n as i64, 0),
        "every item answered, none failed for the outage: {:?}",
        status.job
    );
    fleet.stop().await;
    drop(pg);
}

#[tokio::test]
async fn a_job_whose_deliveries_all_meet_a_postgres_outage_is_dispatched_once_it_is_back() {
    // Two deliveries of the job message, both inside the outage (each waits half a second
    // for a connection, then a 2 s hand-back): the last one waits for Postgres rather than
    // giving up on the job (whose failure could not even be recorded). Likewise a bad job's
    // rejection.
    let dir = tempfile::tempdir().unwrap();
    let tune = |s: &mut switchyard_runtime::Settings| {
        s.database.acquire_timeout = Duration::from_millis(500);
        s.dispatcher.max_deliver = 2;
    };
    let (pg, _nats, _db, fleet) =
        fleet_on_own_postgres(dir.path(), tune, SimConfig::default()).await;
    let client = fleet.client();
    let n = 20;
    let spec = classify_job(mmlu_items(n), 0.0, 0.0);
    let job_id = spec.job_id.clone();
    pg.stop().unwrap();
    client
        .publish_spec(&job_id, &job_id, codec::encode(&spec).unwrap())
        .await
        .unwrap();
    // And a job that cannot be read (0xc1 is no MessagePack): its rejection must be recorded.
    let bad = "unreadable-in-the-outage";
    client.publish_spec(bad, bad, vec![0xc1]).await.unwrap();
    // The outage's length: both deliveries (at 0 s and after 2.5 s) fall inside it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    pg.resume().await.unwrap();
    let status = wait_final(&client, &job_id, 60).await;
    assert_eq!(status.job.status, "completed", "{:?}", status.job);
    assert_eq!(status.done(), n as i64);
    let rejected = wait_final(&client, bad, 60).await;
    assert_eq!(rejected.job.status, "rejected", "{:?}", rejected.job);
    assert!(rejected.job.rejection_reason.is_some_and(|r| !r.is_empty()));
    assert_eq!(rejected.dead_letters.len(), 1);
    fleet.stop().await;
    drop(pg);
}
