//! A provider's quota is shared by the live worker processes through every change of the
//! fleet's size (the shares in use never add up to more than the whole), and a 429's
//! Retry-After pauses the model in every one of them, once.

use std::num::NonZeroU32;
use std::time::Duration;

use switchyard_sim::{Faults, SimConfig};

use crate::support::{Harness, WEAK, classify_job, mmlu_items};

fn limiter(h: &Harness, worker: usize) -> &switchyard_worker::limiter::ModelLimiter {
    &h.fleet.workers[worker].as_ref().unwrap().worker.models[WEAK].limiter
}

fn peers(h: &Harness, worker: usize) -> u32 {
    limiter(h, worker).peers()
}

/// The shares of the model's live rows, in parts per million.
async fn shares(h: &Harness) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT share FROM quota_shares WHERE model = $1 AND expires_at > now() ORDER BY worker_id",
    )
    .bind(WEAK)
    .fetch_all(&h.db.pool)
    .await
    .unwrap()
}

/// Samples, until `done` says so (at most `secs`), that the shares recorded and the shares
/// the live workers apply never add up to more than the whole quota.
async fn never_over_the_quota<F: Fn(&Harness) -> bool>(
    h: &Harness,
    what: &str,
    secs: u64,
    done: F,
) {
    let started = std::time::Instant::now();
    let mut samples = 0;
    loop {
        let recorded: i64 = shares(h).await.iter().sum();
        assert!(
            recorded <= 1_000_000,
            "{what}: recorded shares add up to {recorded} ppm"
        );
        let applied: f64 = h
            .fleet
            .workers
            .iter()
            .flatten()
            .map(|w| w.worker.models[WEAK].limiter.share())
            .sum();
        assert!(
            applied <= 1.0 + 1e-9,
            "{what}: the workers apply {applied} of the quota"
        );
        samples += 1;
        if samples > 5 && done(h) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "{what}: not settled within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn the_quota_is_shared_by_the_live_workers() {
    let sim = SimConfig {
        rpm_limit: Some(1200),
        ..SimConfig::default()
    };
    let mut h = Harness::start_with(
        |s| s.models.get_mut(WEAK).unwrap().rpm = NonZeroU32::new(1200),
        sim,
    )
    .await;
    let tiers: Vec<String> = h.fleet.settings.tiers.keys().cloned().collect();
    h.fleet.start_worker(tiers).await.unwrap();
    switchyard_testkit::eventually(
        "both workers share the quota",
        Duration::from_secs(10),
        || async { (peers(&h, 0) == 2 && peers(&h, 1) == 2).then_some(()) },
    )
    .await;
    let job_id = h
        .client
        .submit(classify_job(mmlu_items(150), 0.0, 0.0))
        .await
        .unwrap();
    let status = h.wait_final(&job_id, 60).await;
    assert_eq!(status.job.status, "completed");
    let limited = h
        .fleet
        .sim
        .as_ref()
        .unwrap()
        .calls()
        .iter()
        .filter(|c| c.status == 429)
        .count();
    assert_eq!(limited, 0, "the fleet exceeded the provider's quota");
    // A worker that stops hands its share back.
    h.fleet.stop_worker(1).await.unwrap();
    switchyard_testkit::eventually(
        "the remaining worker takes the whole quota",
        Duration::from_secs(10),
        || async { (peers(&h, 0) == 1).then_some(()) },
    )
    .await;
    h.finish().await;
}

#[tokio::test]
async fn a_retry_after_pauses_the_model_in_every_worker() {
    let faults = Faults {
        rate_limit_next: 1,
        retry_after_secs: 2,
        ..Faults::default()
    };
    let sim = SimConfig {
        faults,
        ..SimConfig::default()
    };
    // A quota (far above what the test uses), so that the workers share it.
    let tune = |s: &mut switchyard_runtime::Settings| {
        s.worker.concurrency = switchyard_runtime::settings::count(2);
        s.models.get_mut(WEAK).unwrap().rpm = NonZeroU32::new(60_000);
    };
    let mut h = Harness::start_with(tune, sim).await;
    let tiers: Vec<String> = h.fleet.settings.tiers.keys().cloned().collect();
    h.fleet.start_worker(tiers).await.unwrap();
    switchyard_testkit::eventually(
        "two workers registered",
        Duration::from_secs(10),
        || async { (peers(&h, 0) == 2 && peers(&h, 1) == 2).then_some(()) },
    )
    .await;
    let job_id = h
        .client
        .submit(classify_job(mmlu_items(300), 0.0, 0.0))
        .await
        .unwrap();
    let status = h.wait_final(&job_id, 60).await;
    assert_eq!(status.job.status, "completed");
    let calls = h.fleet.sim.as_ref().unwrap().calls();
    let limited = calls
        .iter()
        .find(|c| c.status == 429)
        .expect("the simulator answered one 429");
    // Nobody called the model while the pause held (a little slack for calls already sent).
    let during: Vec<u64> = calls
        .iter()
        .filter(|c| {
            c.status == 200
                && c.unix_ms > limited.unix_ms + 150
                && c.unix_ms < limited.unix_ms + 1800
        })
        .map(|c| c.unix_ms - limited.unix_ms)
        .collect();
    assert!(
        during.is_empty(),
        "calls {during:?} ms after the 429 while the model was paused"
    );
    h.finish().await;
}

#[tokio::test]
async fn shares_move_without_overlap_when_workers_join_stop_and_die() {
    let mut h = Harness::start_with(
        |s| s.models.get_mut(WEAK).unwrap().rpm = NonZeroU32::new(6000),
        SimConfig::default(),
    )
    .await;
    let tiers: Vec<String> = h.fleet.settings.tiers.keys().cloned().collect();
    // Alone, the first worker holds the whole quota.
    switchyard_testkit::eventually(
        "the first worker holds the quota",
        Duration::from_secs(10),
        || async { (limiter(&h, 0).share() == 1.0).then_some(()) },
    )
    .await;
    // Two join: each gets a third, and at no point do the shares exceed the whole.
    h.fleet.start_worker(tiers.clone()).await.unwrap();
    h.fleet.start_worker(tiers.clone()).await.unwrap();
    never_over_the_quota(&h, "joining", 15, |h| {
        (0..3).all(|i| (limiter(h, i).share() - 1.0 / 3.0).abs() < 1e-5)
    })
    .await;
    assert_eq!(shares(&h).await, vec![333_333; 3]);
    // One stops cleanly: the two others take its share.
    h.fleet.stop_worker(2).await.unwrap();
    never_over_the_quota(&h, "leaving", 15, |h| {
        (0..2).all(|i| limiter(h, i).share() == 0.5)
    })
    .await;
    // One dies: its share stays unused until its lease runs out, then the survivor takes it.
    h.fleet.kill_worker(1).await;
    never_over_the_quota(&h, "dying", 15, |h| limiter(h, 0).share() == 1.0).await;
    assert_eq!(peers(&h, 0), 1);
    assert_eq!(shares(&h).await, vec![1_000_000]);
    h.finish().await;
}

#[tokio::test]
async fn a_429_heard_by_many_calls_and_workers_is_one_pause() {
    // Slow answers, so that many calls are in flight when the provider starts refusing; it
    // refuses every call for 600 ms (a spent quota window), whenever and however many come.
    // (`rate_limit_next: 6` refused the next six calls whenever they came: on a loaded
    // machine the first 429 came back before the others had left, and the calls after the
    // pause met the rest of the six: a second episode the provider really caused.)
    let faults = Faults {
        rate_limit_window: Duration::from_millis(600),
        retry_after_secs: 2,
        ..Faults::default()
    };
    let sim = SimConfig {
        faults,
        latency: Duration::from_millis(50),
        ..SimConfig::default()
    };
    let mut h = Harness::start_with(
        |s| s.worker.concurrency = switchyard_runtime::settings::count(8),
        sim,
    )
    .await;
    let tiers: Vec<String> = h.fleet.settings.tiers.keys().cloned().collect();
    h.fleet.start_worker(tiers).await.unwrap();
    let job_id = h
        .client
        .submit(classify_job(mmlu_items(200), 0.0, 0.0))
        .await
        .unwrap();
    let status = h.wait_final(&job_id, 60).await;
    assert_eq!(status.job.status, "completed");
    let calls = h.fleet.sim.as_ref().unwrap().calls();
    let limited: Vec<u64> = calls
        .iter()
        .filter(|c| c.status == 429)
        .map(|c| c.unix_ms)
        .collect();
    assert!(!limited.is_empty(), "the simulator answered no 429");
    println!("{} calls heard the 429", limited.len());
    // One episode in each worker, one pause of two seconds, not one per 429 or per worker.
    for i in 0..2 {
        assert_eq!(limiter(&h, i).episodes(), 1, "worker {i}'s 429 episodes");
    }
    let first = limited[0];
    let resumed = calls
        .iter()
        // (Calls answered in the first 400 ms had left before the pause.)
        .filter(|c| c.status == 200 && c.unix_ms > first + 400)
        .map(|c| c.unix_ms - first)
        .min()
        .expect("calls resumed");
    assert!(
        resumed >= 1_500,
        "calls resumed {resumed} ms after the first 429 (one pause is 2,000 ms)"
    );
    println!("calls resumed {resumed} ms after the first 429");
    h.finish().await;
}
