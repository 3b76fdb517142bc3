//! A provider's quota is shared by the live worker processes, and a 429's Retry-After
//! pauses the model in every one of them.

use std::num::NonZeroU32;
use std::time::Duration;

use switchyard_sim::{Faults, SimConfig};

use crate::support::{Harness, WEAK, classify_job, mmlu_items};

fn peers(h: &Harness, worker: usize) -> u32 {
    h.fleet.workers[worker].as_ref().unwrap().worker.models[WEAK]
        .limiter
        .peers()
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
    let mut h = Harness::start_with(|s| s.worker.concurrency = 2, sim).await;
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
