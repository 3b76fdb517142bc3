//! One dispatcher process working on several jobs at once (`[dispatcher] concurrent_jobs`).

use std::time::Duration;

use futures::future::join_all;
use switchyard_dispatcher::DispatcherCounters;
use switchyard_sim::SimConfig;

use crate::support::{Harness, classify_job, mmlu_items};

/// Backends (of any database) waiting for a lock that the session `pid` holds.
async fn blocked_by(h: &Harness, pid: i32) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
    )
    .bind(pid)
    .fetch_one(&h.db.pool)
    .await
    .unwrap()
}

/// A job whose dispatch is held up mid-way does not hold up the jobs submitted after it.
///
/// How the first job is held, without sleeps: before it is submitted, the test inserts a
/// `jobs` row with its id in a transaction it keeps open. The dispatcher's admission of the
/// job (`INSERT … ON CONFLICT DO NOTHING`) then waits on that uncommitted row, and Postgres
/// shows it waiting on the test's session (`pg_blocking_pids`). With `concurrent_jobs = 1`
/// the other jobs would never be dispatched and this test would time out; with more slots
/// they all complete while the first is provably still held. Rolling back releases it, and it
/// completes too.
#[tokio::test]
async fn a_dispatcher_with_several_slots_works_on_jobs_at_once() {
    let h = Harness::start_with(
        |s| {
            s.dispatcher.concurrent_jobs = switchyard_runtime::settings::count(4);
            s.worker.concurrency = switchyard_runtime::settings::count(8);
        },
        SimConfig::default(),
    )
    .await;

    let held_n = 30;
    let held = classify_job(mmlu_items(held_n), 0.25, 0.0);
    let held_id = held.job_id.clone();
    let mut hold = h.db.pool.begin().await.unwrap();
    let holder: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *hold)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO jobs (job_id, team, project, status) VALUES ($1, 'team-e2e', 'proj', 'ingesting')",
    )
    .bind(&held_id)
    .execute(&mut *hold)
    .await
    .unwrap();
    assert_eq!(h.client.submit(held).await.unwrap(), held_id);
    switchyard_testkit::eventually(
        "the dispatcher waiting on the held job's admission",
        Duration::from_secs(30),
        || async { (blocked_by(&h, holder).await >= 1).then_some(()) },
    )
    .await;

    // Several small jobs at once, behind the held one on the jobs stream.
    let sizes = [1usize, 2, 3, 5, 8, 13];
    let submitted = join_all(sizes.iter().map(|&n| {
        let client = &h.client;
        async move {
            let spec = classify_job(mmlu_items(n), 0.0, 0.0);
            (n, client.submit(spec).await.unwrap())
        }
    }))
    .await;
    for (n, job_id) in &submitted {
        let status = h.wait_final(job_id, 60).await;
        assert_eq!(status.job.status, "completed", "{:?}", status.dead_letters);
        assert_eq!(status.done(), *n as i64, "job {job_id}");
        assert_eq!(status.failed(), 0);
        assert_eq!(h.ledger(job_id).await.len(), *n, "one booked call per item");
    }

    // All of them finished while the first job's dispatch was still held.
    assert_eq!(
        blocked_by(&h, holder).await,
        1,
        "the held job was still being dispatched"
    );
    let d = &h.fleet.dispatcher;
    assert_eq!(
        DispatcherCounters::get(&d.counters.jobs_accepted),
        sizes.len() as u64
    );

    hold.rollback().await.unwrap();
    let status = h.wait_final(&held_id, 60).await;
    assert_eq!(status.job.status, "completed", "{:?}", status.dead_letters);
    assert_eq!(status.done(), held_n as i64);
    assert_eq!(h.ledger(&held_id).await.len(), held_n);
    assert_eq!(
        DispatcherCounters::get(&d.counters.jobs_accepted),
        sizes.len() as u64 + 1
    );
    h.finish().await;
}
