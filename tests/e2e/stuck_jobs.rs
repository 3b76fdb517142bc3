//! No job stays unfinished: a job message on its last delivery ends its job `failed`, and a
//! dispatcher's sweep finishes jobs left `dispatching` or `running` with no live owner and no
//! progress (re-publishes lost work, completes them, or fails them), one sweeper per job.

use std::time::Duration;

use switchyard_dispatcher::job_lock::JobLock;
use switchyard_dispatcher::sweeper::{self, Swept};
use switchyard_proto::{Item, JobSpec, codec};
use switchyard_runtime::Settings;
use switchyard_sim::SimConfig;

use crate::support::{Harness, classify_job, mmlu_items};

/// A sweep that looks often and calls a job stuck after a second without progress.
fn quick_sweep(s: &mut Settings) {
    s.dispatcher.stuck_after = Duration::from_secs(1);
    s.dispatcher.sweep_every = Duration::from_millis(200);
}

/// A sweep that never runs by itself (the test calls [`sweeper::sweep`]), with a second of
/// `stuck_after`.
fn manual_sweep(s: &mut Settings) {
    s.dispatcher.stuck_after = Duration::from_secs(1);
    s.dispatcher.sweep_every = Duration::from_secs(3600);
}

fn sweeps(h: &Harness) -> u64 {
    h.fleet.dispatcher.metrics.stuck_job_sweeps.get()
}

fn calls(h: &Harness) -> usize {
    h.fleet.sim.as_ref().unwrap().calls().len()
}

async fn sql(h: &Harness, query: &'static str, job_id: &str) {
    sqlx::query(query)
        .bind(job_id)
        .execute(&h.db.pool)
        .await
        .unwrap();
}

/// The job's status; empty while it has no row yet.
async fn job_status(h: &Harness, job_id: &str) -> String {
    sqlx::query_scalar("SELECT status FROM jobs WHERE job_id = $1")
        .bind(job_id)
        .fetch_optional(&h.db.pool)
        .await
        .unwrap()
        .unwrap_or_default()
}

/// Runs a small job to completion; returns its spec.
async fn completed_job(h: &Harness, n: usize) -> JobSpec {
    let spec = classify_job(mmlu_items(n), 0.0, 0.0);
    let job_id = h.client.submit(spec.clone()).await.unwrap();
    assert_eq!(job_id, spec.job_id);
    let s = h.wait_final(&job_id, 60).await;
    assert_eq!(s.job.status, "completed");
    spec
}

/// A 4-item job run to completion, then set back to `running` as a dispatcher leaves it that
/// died between `mark_running` and the completion check; returns it and the calls made so far.
async fn completed_job_left_running(h: &Harness) -> (JobSpec, usize) {
    let spec = completed_job(h, 4).await;
    let before = calls(h);
    sql(
        h,
        "UPDATE jobs SET status = 'running', finished_at = NULL WHERE job_id = $1",
        &spec.job_id,
    )
    .await;
    (spec, before)
}

/// Publishes the job's message again, past JetStream's duplicate window (another message id):
/// a redelivery that comes late.
async fn send_again(h: &Harness, spec: &JobSpec, msg_id: &str) {
    let ack = h
        .client
        .publish_spec(&spec.job_id, msg_id, codec::encode(spec).unwrap())
        .await
        .unwrap();
    assert!(!ack.duplicate);
}

#[tokio::test]
async fn a_job_whose_input_vanished_fails_on_its_last_delivery_with_its_reason() {
    let h = Harness::start_with(|s| s.dispatcher.max_deliver = 2, SimConfig::default()).await;
    let bucket = h.fleet.settings.topology().inputs_bucket();
    let store = h
        .fleet
        .dispatcher
        .js
        .get_object_store(&bucket)
        .await
        .unwrap();
    let mut spec = classify_job(mmlu_items(5), 0.0, 0.0);
    let mut jsonl = Vec::new();
    for item in spec.items.take().unwrap() {
        serde_json::to_writer(&mut jsonl, &item).unwrap();
        jsonl.push(b'\n');
    }
    store.put("vanishing", &mut &jsonl[..]).await.unwrap();
    spec.input = Some(switchyard_proto::InputRef {
        bucket,
        name: "vanishing".into(),
    });
    send_again(&h, &spec, "first").await;
    assert_eq!(h.wait_final(&spec.job_id, 60).await.job.status, "completed");
    // Its dispatcher died while publishing (the job is `dispatching`), and by the time the
    // message comes back the input object is gone: every delivery fails to read it.
    sql(
        &h,
        "UPDATE jobs SET status = 'dispatching', finished_at = NULL WHERE job_id = $1",
        &spec.job_id,
    )
    .await;
    store.delete("vanishing").await.unwrap();
    send_again(&h, &spec, "again").await;
    let s = h.wait_final(&spec.job_id, 60).await;
    assert_eq!(s.job.status, "failed", "{s:?}");
    let reason = s.job.failure_reason.clone().unwrap();
    assert!(
        reason.contains("dispatch failed 2 times") && reason.contains("vanishing"),
        "{reason}"
    );
    assert!(
        s.dead_letters
            .iter()
            .any(|d| d.kind == "job" && d.error == reason),
        "{:?}",
        s.dead_letters
    );
    // The message is settled (terminated), not left in the stream.
    let t = h.fleet.settings.topology();
    switchyard_testkit::eventually(
        "the job message terminated",
        Duration::from_secs(10),
        || async {
            let mut c: async_nats::jetstream::consumer::PullConsumer = h
                .fleet
                .dispatcher
                .js
                .get_stream(t.jobs_stream())
                .await
                .ok()?
                .get_consumer("dispatcher")
                .await
                .ok()?;
            let info = c.info().await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        },
    )
    .await;
    h.finish().await;
}

/// A dispatcher killed after `mark_running` and before the completion check leaves its job
/// message unacked: its redelivery completes the job at once (no sweep runs here).
#[tokio::test]
async fn a_job_message_back_after_its_dispatcher_died_at_mark_running_completes_the_job() {
    let h = Harness::start_with(manual_sweep, SimConfig::default()).await;
    let (spec, before) = completed_job_left_running(&h).await;
    // The unacked message, delivered again.
    send_again(&h, &spec, "redelivered-after-mark-running").await;
    let s = h.wait_final(&spec.job_id, 30).await;
    assert_eq!(s.job.status, "completed");
    assert_eq!(sweeps(&h), 0, "no sweep ran");
    assert_eq!(calls(&h), before, "completing called nothing");
    h.finish().await;
}

#[tokio::test]
async fn a_job_whose_completion_check_was_missed_is_completed_by_the_sweep() {
    let h = Harness::start_with(quick_sweep, SimConfig::default()).await;
    // As if the completion check after `mark_running` had failed (Postgres down).
    let (spec, before) = completed_job_left_running(&h).await;
    let s = h.wait_final(&spec.job_id, 30).await;
    assert_eq!(s.job.status, "completed");
    // The sweep counts a job once it has announced it (after the status is written).
    switchyard_testkit::eventually("the sweep counted", Duration::from_secs(10), || async {
        (sweeps(&h) == 1).then_some(())
    })
    .await;
    assert_eq!(calls(&h), before, "completing called nothing");
    h.finish().await;
}

#[tokio::test]
async fn two_sweeps_never_take_the_same_job() {
    let h = Harness::start_with(manual_sweep, SimConfig::default()).await;
    let spec = completed_job(&h, 3).await;
    let stuck = |h: &Harness| {
        let job_id = spec.job_id.clone();
        let pool = h.db.pool.clone();
        async move {
            sqlx::query(
                "UPDATE jobs SET status = 'running', finished_at = NULL, \
                 progress_at = now() - interval '1 minute' WHERE job_id = $1",
            )
            .bind(&job_id)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    stuck(&h).await;
    // A dispatcher (or another sweep) holds the job: the sweep keeps off it.
    let lock = JobLock::try_acquire(&h.db.pool, &spec.job_id)
        .await
        .unwrap()
        .unwrap();
    let d = &h.fleet.dispatcher;
    assert!(sweeper::sweep(d).await.unwrap().is_empty());
    assert_eq!(job_status(&h, &spec.job_id).await, "running");
    lock.release().await;
    // Two sweeps at once: exactly one finishes the job.
    let (a, b) = tokio::join!(sweeper::sweep(d), sweeper::sweep(d));
    let mut swept: Vec<(String, Swept)> = a.unwrap();
    swept.extend(b.unwrap());
    assert_eq!(
        swept,
        vec![(spec.job_id.clone(), Swept::Completed("completed".into()))]
    );
    assert_eq!(job_status(&h, &spec.job_id).await, "completed");
    assert_eq!(sweeps(&h), 1);
    h.finish().await;
}

#[tokio::test]
async fn a_resumed_dispatch_skips_items_that_have_results() {
    let h = Harness::start().await;
    let n = 6;
    let spec = completed_job(&h, n).await;
    let before = calls(&h);
    assert_eq!(before, n);
    // Its dispatcher died after publishing (still `dispatching`), and its message comes back
    // long after JetStream's duplicate window.
    sql(
        &h,
        "UPDATE jobs SET status = 'dispatching', finished_at = NULL WHERE job_id = $1",
        &spec.job_id,
    )
    .await;
    send_again(&h, &spec, "late").await;
    let s = h.wait_final(&spec.job_id, 30).await;
    assert_eq!(s.job.status, "completed");
    assert_eq!(s.done(), n as i64);
    assert_eq!(calls(&h), before, "an answered item was called again");
    assert_eq!(h.ledger(&spec.job_id).await.len(), n);
    h.finish().await;
}

#[tokio::test]
async fn retried_items_whose_publish_was_lost_are_not_stranded() {
    let h = Harness::start_with(quick_sweep, SimConfig::default()).await;
    let n = 5;
    let spec = completed_job(&h, n).await;
    let failed: Vec<String> = spec.items.as_ref().unwrap()[..2]
        .iter()
        .map(|i: &Item| i.item_id.clone())
        .collect();
    // Two items failed and the job ended partial.
    sqlx::query(
        "UPDATE items SET status = 'failed', error = 'test' WHERE job_id = $1 \
         AND item_id = ANY($2)",
    )
    .bind(&spec.job_id)
    .bind(&failed)
    .execute(&h.db.pool)
    .await
    .unwrap();
    sql(
        &h,
        "UPDATE jobs SET status = 'partial' WHERE job_id = $1",
        &spec.job_id,
    )
    .await;
    // `retry --failed` reopened them and died before publishing anything.
    let reopened = switchyard_store::jobs::reopen_failed(&h.db.pool, &spec.job_id)
        .await
        .unwrap();
    assert_eq!(reopened.len(), 2);
    let s = h.wait_final(&spec.job_id, 60).await;
    assert_eq!(s.job.status, "completed", "{:?}", s.dead_letters);
    assert_eq!(s.done(), n as i64);
    assert!(sweeps(&h) >= 1);
    // The two retried items were called once more each, at their new attempt.
    assert_eq!(calls(&h), n + 2);
    h.finish().await;
}
