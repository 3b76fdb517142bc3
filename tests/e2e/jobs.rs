//! Jobs in, routed, answered, escalated, booked.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use futures::TryStreamExt;
use rust_decimal::Decimal;
use switchyard_proto::Item;
use switchyard_sim::SimConfig;

use crate::support::{Harness, STRONG, WEAK, classify_job, data, mmlu_items};

#[tokio::test]
async fn a_job_runs_end_to_end_and_every_call_is_booked_once() {
    let h = Harness::start().await;
    let n = 120;
    let spec = classify_job(mmlu_items(n), 0.25, 0.0);
    let job_id = h.client.submit(spec).await.unwrap();
    let status = h.wait_final(&job_id, 60).await;

    assert_eq!(status.job.status, "completed");
    assert_eq!(status.done(), n as i64);
    // strong-share is exact on the job's own scores.
    assert_eq!(status.routed_by_tier.get("strong"), Some(&30));
    assert_eq!(status.routed_by_tier.get("weak"), Some(&90));
    assert_eq!(status.escalated, 0, "threshold 0 never escalates");

    // Every answered call is one ledger row, keyed by the simulator's response id.
    let ledger = h.ledger(&job_id).await;
    assert_eq!(ledger.len(), n);
    let items: BTreeSet<String> = ledger.iter().map(|r| r.item_id.clone()).collect();
    let served: BTreeSet<String> = h
        .fleet
        .sim
        .as_ref()
        .unwrap()
        .calls()
        .into_iter()
        .filter(|c| c.status == 200 && c.record_id.as_ref().is_some_and(|id| items.contains(id)))
        .filter_map(|c| c.client_request_id)
        .collect();
    let booked: BTreeSet<String> = ledger.iter().map(|r| r.call_id.clone()).collect();
    assert_eq!(booked, served);

    // Cost is exactly tokens × price, tokens as the data recorded them for that model.
    let data = data();
    let mut total = Decimal::ZERO;
    for row in &ledger {
        let record = data.get(&row.item_id).unwrap();
        let m = &record.models[&row.model];
        assert_eq!(
            (row.prompt_tokens as u32, row.completion_tokens as u32),
            (m.prompt_tokens, m.completion_tokens)
        );
        let price = h.fleet.settings.price_of(&row.model).unwrap();
        assert_eq!(
            row.cost_usd,
            price.cost(m.prompt_tokens, m.completion_tokens)
        );
        assert!(row.cost_usd > Decimal::ZERO);
        assert!(!row.retry);
        total += row.cost_usd;
    }
    assert_eq!(status.cost_usd, total);
    let models: BTreeSet<&str> = ledger.iter().map(|r| r.model.as_str()).collect();
    assert_eq!(models, BTreeSet::from([WEAK, STRONG]));

    // Results export: one row per item, in input order, each answer one of the labels.
    let rows: Vec<_> = switchyard_store::reports::results_stream(&h.client.pool, &job_id)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(rows.len(), n);
    assert!(
        rows.iter()
            .all(|r| ["A", "B", "C", "D"].contains(&r.answer.as_deref().unwrap_or("")))
    );

    // The work queue is drained: everything was acked.
    let work = h.fleet.settings.topology().work_stream();
    h.stream_emptied(&work, "work stream drained", 10).await;
    h.finish().await;
}

#[tokio::test]
async fn low_confidence_weak_answers_escalate_and_every_attempt_is_booked() {
    let h = Harness::start().await;
    let n = 40;
    // Nothing routed strong; every weak answer (confidence < 1) escalates.
    let job_id = h
        .client
        .submit(classify_job(mmlu_items(n), 0.0, 1.0))
        .await
        .unwrap();
    let status = h.wait_final(&job_id, 60).await;
    assert_eq!(status.job.status, "completed");
    assert_eq!(status.escalated, n as i64);
    assert_eq!(status.done_by_tier.get("strong"), Some(&(n as i64)));

    let ledger = h.ledger(&job_id).await;
    assert_eq!(
        ledger.len(),
        2 * n,
        "both attempts of every item are paid for"
    );
    let mut per_item: HashMap<&str, Vec<(i32, &str)>> = HashMap::new();
    for r in &ledger {
        per_item
            .entry(&r.item_id)
            .or_default()
            .push((r.attempt, r.tier.as_str()));
    }
    for attempts in per_item.values_mut() {
        attempts.sort();
        assert_eq!(attempts, &vec![(0, "weak"), (1, "strong")]);
    }
    let escalated_results: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM results WHERE job_id = $1 AND escalated AND attempt = 0",
    )
    .bind(&job_id)
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(escalated_results, n as i64);
    h.finish().await;
}

#[tokio::test]
async fn resubmitting_the_same_job_creates_nothing_new() {
    let h = Harness::start().await;
    let mut spec = classify_job(mmlu_items(30), 0.2, 0.0);
    spec.idempotency_key = Some("nightly-2026-11-27".into());
    let job_id = h.client.submit(spec.clone()).await.unwrap();
    h.wait_final(&job_id, 60).await;
    let calls_before = h.fleet.sim.as_ref().unwrap().calls().len();

    // The CLI path: the key is known, the existing job is returned, nothing is published.
    let mut again = spec.clone();
    again.job_id = "another-id".into();
    assert_eq!(h.client.submit(again.clone()).await.unwrap(), job_id);

    // A client that publishes anyway within JetStream's duplicate window: dropped there.
    let payload = switchyard_proto::codec::encode(&spec).unwrap();
    let ack = h
        .client
        .publish_spec(&spec.job_id, "job:nightly-2026-11-27", payload)
        .await
        .unwrap();
    assert!(ack.duplicate);
    // After the window (a new message id), under the original and a new job id: the
    // dispatcher recognises the key and content and creates nothing.
    for (i, s) in [spec.clone(), again].into_iter().enumerate() {
        let payload = switchyard_proto::codec::encode(&s).unwrap();
        let ack = h
            .client
            .publish_spec(&s.job_id, &format!("late-{i}"), payload)
            .await
            .unwrap();
        assert!(!ack.duplicate);
    }
    switchyard_testkit::eventually("duplicates handled", Duration::from_secs(20), || async {
        let d = switchyard_dispatcher::DispatcherCounters::get(
            &h.fleet.dispatcher.counters.jobs_duplicate,
        );
        (d >= 2).then_some(())
    })
    .await;
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 1);
    assert_eq!(h.fleet.sim.as_ref().unwrap().calls().len(), calls_before);
    assert_eq!(h.ledger(&job_id).await.len(), 30);
    h.finish().await;
}

#[tokio::test]
async fn the_same_key_with_different_content_is_rejected_without_touching_the_first_job() {
    let h = Harness::start().await;
    let mut first = classify_job(mmlu_items(10), 0.2, 0.0);
    first.idempotency_key = Some("k1".into());
    let job_id = h.client.submit(first.clone()).await.unwrap();
    h.wait_final(&job_id, 60).await;
    let mut second = classify_job(mmlu_items(12), 0.2, 0.0);
    second.idempotency_key = Some("k1".into());
    let payload = switchyard_proto::codec::encode(&second).unwrap();
    // A different message id: as if sent after JetStream's duplicate window.
    h.client
        .publish_spec(&second.job_id, "late-k1", payload)
        .await
        .unwrap();
    let status = h.wait_final(&second.job_id, 30).await;
    assert_eq!(status.job.status, "rejected");
    assert!(
        status
            .job
            .rejection_reason
            .unwrap()
            .contains("idempotency key `k1`")
    );
    let first_status = h.client.status(&job_id).await.unwrap().unwrap();
    assert_eq!(first_status.job.status, "completed");
    assert_eq!(first_status.done(), 10);
    h.finish().await;
}

#[tokio::test]
async fn local_only_items_stay_local_even_when_they_escalate() {
    let h = Harness::start().await;
    let mut items = mmlu_items(20);
    for it in items.iter_mut().take(8) {
        it.sensitivity = Some("local_only".into());
    }
    let local_ids: BTreeSet<String> = items.iter().take(8).map(|i| i.item_id.clone()).collect();
    // Everything wants to escalate, half the rest is routed strong.
    let job_id = h
        .client
        .submit(classify_job(items, 0.5, 1.0))
        .await
        .unwrap();
    let status = h.wait_final(&job_id, 60).await;
    assert_eq!(status.job.status, "completed");
    assert_eq!(status.routed_by_tier.get("local"), Some(&8));
    assert_eq!(
        status.routed_by_tier.get("strong"),
        Some(&6),
        "strong share counts only unpinned items"
    );
    for row in h.ledger(&job_id).await {
        if local_ids.contains(&row.item_id) {
            assert_eq!(
                row.tier, "local",
                "local_only item {} reached {}",
                row.item_id, row.model
            );
        }
    }
    h.finish().await;
}

#[tokio::test]
async fn a_large_job_goes_through_the_object_store() {
    let h = Harness::start().await;
    let mut client = h.client.clone();
    client.inline_limit = 16 * 1024;
    let spec = classify_job(mmlu_items(300), 0.1, 0.0);
    assert!(switchyard_proto::codec::encode(&spec).unwrap().len() > client.inline_limit);
    let job_id = client.submit(spec).await.unwrap();
    let status = h.wait_final(&job_id, 60).await;
    assert_eq!(status.job.status, "completed");
    assert_eq!(status.done(), 300);
    // The items really went through the bucket.
    let store = h
        .nats
        .js()
        .get_object_store(h.fleet.settings.topology().inputs_bucket())
        .await
        .unwrap();
    assert!(store.info(&job_id).await.is_ok());
    h.finish().await;
}

#[tokio::test]
async fn cancel_stops_what_has_not_started() {
    let sim = SimConfig {
        latency: Duration::from_millis(100),
        ..SimConfig::default()
    };
    let h = Harness::start_with(
        |s| s.worker.concurrency = switchyard_runtime::settings::count(2),
        sim,
    )
    .await;
    let job_id = h
        .client
        .submit(classify_job(mmlu_items(80), 0.0, 0.0))
        .await
        .unwrap();
    switchyard_testkit::eventually("some items answered", Duration::from_secs(30), || async {
        let s = h.client.status(&job_id).await.unwrap()?;
        (s.done() >= 4).then_some(())
    })
    .await;
    let cancelled = h
        .client
        .cancel(&job_id)
        .await
        .unwrap()
        .expect("job was running");
    assert!(cancelled > 0);
    let status = h.wait_final(&job_id, 10).await;
    assert_eq!(status.job.status, "cancelled");
    // Workers drain the cancelled items without calling the model (a few in flight finish).
    let work = h.fleet.settings.topology().work_stream();
    h.stream_emptied(&work, "cancelled items drained", 20).await;
    // Calls made: the items answered before the cancel, the two in flight, and at most what
    // the workers start during their 500 ms cancellation cache (100 ms calls, 2 at a time).
    let calls = h.ledger(&job_id).await.len();
    let not_cancelled = 80 - cancelled as usize;
    assert!(
        calls <= not_cancelled + 12 && calls < 50,
        "{calls} calls after cancelling {cancelled}"
    );
    h.finish().await;
}

#[tokio::test]
async fn summaries_of_unknown_text_are_answered_and_booked() {
    let h = Harness::start().await;
    let items: Vec<Item> = (0..5).map(|i| Item::new(format!("n{i}"), format!("A user's own document number {i}. It says several things about widgets and gadgets."))).collect();
    let mut spec = switchyard_client::new_job(
        switchyard_proto::Task::Summarize {
            max_words: Some(20),
            instructions: None,
        },
        items,
    );
    spec.policy.cascade.max_escalations = Some(0);
    let job_id = h.client.submit(spec).await.unwrap();
    let status = h.wait_final(&job_id, 60).await;
    assert_eq!(status.job.status, "completed");
    let rows: Vec<_> = switchyard_store::reports::results_stream(&h.client.pool, &job_id)
        .try_collect()
        .await
        .unwrap();
    assert!(
        rows.iter()
            .all(|r| !r.answer.as_deref().unwrap_or("").is_empty())
    );
    assert_eq!(h.ledger(&job_id).await.len(), 5);
    h.finish().await;
}

#[tokio::test]
async fn every_finished_job_announces_itself_on_its_done_subject() {
    use futures::StreamExt;
    // Commits without waiting for a batch, so answers are booked as fast as they come.
    let h = Harness::start_with(
        |s| s.worker.commit_interval = Duration::ZERO,
        SimConfig::default(),
    )
    .await;
    let t = h.fleet.settings.topology();
    let mut done = h
        .nats
        .client
        .subscribe(t.job_done_subject("x").replace(".x", ".*"))
        .await
        .unwrap();
    h.nats.client.flush().await.unwrap();
    // Single-item jobs: a worker may answer before the dispatcher marks the job running,
    // and then only the dispatcher sees the job end (this run does not force that order).
    let mut expected = BTreeSet::new();
    for i in 0..20 {
        let spec = classify_job(mmlu_items(i + 1).split_off(i), 0.0, 0.0);
        expected.insert(h.client.submit(spec).await.unwrap());
    }
    let mut announced = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while announced != expected {
        let msg = tokio::time::timeout_at(deadline, done.next())
            .await
            .unwrap_or_else(|_| panic!("announced {announced:?} of {expected:?}"))
            .unwrap();
        let event: switchyard_proto::event::JobEvent =
            switchyard_proto::codec::decode(&msg.payload).unwrap();
        assert_eq!(event.kind, "completed");
        announced.insert(event.job_id);
    }
    h.finish().await;
}
