//! Provider faults through the simulator's real HTTP: every kind of misbehaviour is
//! retried with backoff or fails the item with a clear error, by policy, and a circuit breaker
//! stops a dead provider from burning retries, then lets the fleet recover.

use std::collections::BTreeMap;
use std::time::Duration;

use switchyard_sim::{FaultKind, Faults, SimConfig};
use switchyard_worker::WorkerCounters;

use crate::support::{Harness, STRONG, WEAK, classify_job, mmlu_items};

fn model_settings(s: &mut switchyard_runtime::Settings, timeout: Duration, retries: u32) {
    for m in s.models.values_mut() {
        m.timeout = timeout;
        m.max_retries = retries;
    }
}

#[tokio::test]
async fn every_transient_fault_is_retried_and_the_items_complete() {
    let script = FaultKind::TRANSIENT;
    let sim = SimConfig {
        faults: Faults {
            script: script.into(),
            retry_after_secs: 1,
            hang: Duration::from_secs(5),
            trickle: Duration::from_millis(300),
            ..Faults::default()
        },
        ..SimConfig::default()
    };
    let h = Harness::start_with(
        |s| {
            s.worker.concurrency = switchyard_runtime::settings::count(2);
            s.worker.max_deliver = 10;
            // This test is about retries; the breaker has its own test.
            s.worker.breaker.failures = 0;
            // Room for every transient fault of the script within one call: with fewer, the
            // faults that land on one call (which depends on timing) can exhaust it, and its
            // last fault is handed back to JetStream instead of retried in the call.
            model_settings(s, Duration::from_millis(1500), 5);
        },
        sim,
    )
    .await;
    let n = 12;
    let job_id = h
        .client
        .submit(classify_job(mmlu_items(n), 0.0, 0.0))
        .await
        .unwrap();
    let status = h.wait_final(&job_id, 120).await;
    assert_eq!(status.job.status, "completed", "{:?}", status.dead_letters);
    assert_eq!(status.done(), n as i64);

    let calls = h.fleet.sim.as_ref().unwrap().calls();
    let mut faults: BTreeMap<String, usize> = BTreeMap::new();
    for c in &calls {
        if let Some(f) = &c.fault {
            *faults.entry(f.clone()).or_default() += 1;
        }
    }
    for (fault, count) in [
        ("status", 3),
        ("rate_limit", 2),
        ("reset", 1),
        ("timeout", 1),
        ("trickle", 1),
        ("malformed_json", 1),
        ("no_usage", 1),
        ("empty_choices", 1),
    ] {
        assert_eq!(faults.get(fault), Some(&count), "{fault}: {faults:?}");
    }
    let w = &h.fleet.workers[0].as_ref().unwrap().worker;
    assert!(
        WorkerCounters::get(&w.counters.throttled) >= 2,
        "429s waited"
    );
    assert!(
        WorkerCounters::get(&w.counters.retries) >= 3,
        "server errors retried within their calls"
    );
    assert!(
        WorkerCounters::get(&w.counters.naked) >= 4,
        "the items of unusable answers (cut JSON, no choice, a body broken off) and of the \
         call in doubt (timed out) handed back for another delivery"
    );

    // Every answer the simulator sent in full was booked once, under the id the worker sent
    // with it: the slow and the usage-less ones were used (the latter with estimated tokens),
    // the unusable ones (cut JSON, no choice, a body that broke off after its `200`) are
    // booked `unusable`, since a provider bills them too. A request that hung past the
    // timeout may have been billed: booked `in_doubt` at its worst case, never sent again
    // under its id (this simulator does not bill it: reconciliation gives it back).
    let ledger = h.bookings(&job_id).await;
    let booked: BTreeMap<&str, (&str, &str)> = ledger
        .iter()
        .map(|(id, o, u)| (id.as_str(), (o.as_str(), u.as_str())))
        .collect();
    assert_eq!(booked.len(), ledger.len(), "a call booked twice");
    for (fault, outcome, usage) in [
        ("trickle", "ok", "provider"),
        ("no_usage", "ok", "estimated"),
        ("malformed_json", "unusable", "estimated"),
        ("empty_choices", "unusable", "estimated"),
        ("reset", "unusable", "estimated"),
        ("timeout", "in_doubt", "worst_case"),
    ] {
        let id = *switchyard_sim::call_log::faulted_ids(&calls, fault)
            .first()
            .unwrap_or_else(|| panic!("the simulator served no {fault} call"));
        assert_eq!(
            booked.get(id),
            Some(&(outcome, usage)),
            "{fault} call booked as it was"
        );
    }
    // Every call the simulator bills is booked, and nothing else but the call in doubt.
    let billed = switchyard_sim::call_log::billed_ids(&calls);
    let booked_ids: std::collections::BTreeSet<&str> = booked
        .iter()
        .filter(|(_, (outcome, _))| *outcome != "in_doubt")
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(booked_ids, billed);
    h.finish().await;
}

#[tokio::test]
async fn a_fault_that_persists_fails_the_item_with_a_clear_error() {
    let h = Harness::start_with(
        |s| {
            s.worker.max_deliver = 2;
            s.worker.breaker.failures = 0;
            model_settings(s, Duration::from_millis(300), 1);
        },
        SimConfig::default(),
    )
    .await;
    let sim = h.fleet.sim.as_ref().unwrap();
    for (faults, expected) in [
        (
            Faults {
                empty_choices_rate: 1.0,
                ..Faults::default()
            },
            "unusable body: no choices",
        ),
        (
            Faults {
                malformed_rate: 1.0,
                ..Faults::default()
            },
            "unusable body: not a chat completion",
        ),
        (
            Faults {
                timeout_rate: 1.0,
                hang: Duration::from_secs(3),
                ..Faults::default()
            },
            "timed out after 300ms",
        ),
        (
            Faults {
                reset_rate: 1.0,
                ..Faults::default()
            },
            "its body broke off",
        ),
        // A `200` whose body trickles in past the timeout: generated and billed too.
        (
            Faults {
                trickle_rate: 1.0,
                trickle: Duration::from_secs(3),
                ..Faults::default()
            },
            "broke off after",
        ),
        (
            Faults {
                error_rate: 1.0,
                ..Faults::default()
            },
            "returned HTTP 5",
        ),
    ] {
        sim.set_faults(faults);
        let job_id = h
            .client
            .submit(classify_job(mmlu_items(2), 0.0, 0.0))
            .await
            .unwrap();
        let status = h.wait_final(&job_id, 60).await;
        assert_eq!(status.job.status, "partial", "{expected}");
        assert_eq!(status.failed(), 2, "{expected}");
        for d in &status.dead_letters {
            assert!(
                d.error.contains("gave up after 2 deliveries") && d.error.contains(expected),
                "{:?} does not say {expected:?}",
                d.error
            );
        }
        // A provider answered 200 to each delivery of the unusable kinds: those calls are
        // booked (`unusable`, usage estimated), one per delivery; a request that timed out
        // after it was sent may have been billed (`in_doubt`, at its worst case); errors
        // are not booked.
        let ledger = h.ledger(&job_id).await;
        let booked_as = if expected.starts_with("unusable body") || expected.contains("broke off") {
            Some("unusable")
        } else if expected.starts_with("timed out") {
            Some("in_doubt")
        } else {
            None
        };
        assert_eq!(
            ledger.len(),
            if booked_as.is_some() { 4 } else { 0 },
            "{expected}"
        );
        assert!(
            ledger.iter().all(|r| Some(r.outcome.as_str()) == booked_as),
            "{expected}"
        );
    }
    h.finish().await;
}

/// A fleet whose provider answers every call with a server error, its items given
/// `max_deliver` deliveries, and a quick breaker (3 failures, a cooldown of `cooldown`
/// doubling up to twice that).
async fn dead_provider(max_deliver: i64, cooldown: Duration, retries: u32) -> Harness {
    dead_provider_with(max_deliver, cooldown, retries, |_| {}).await
}

/// [`dead_provider`], with `tune` changing the settings last.
async fn dead_provider_with(
    max_deliver: i64,
    cooldown: Duration,
    retries: u32,
    tune: impl FnOnce(&mut switchyard_runtime::Settings),
) -> Harness {
    let sim = SimConfig {
        faults: Faults {
            error_rate: 1.0,
            ..Faults::default()
        },
        ..SimConfig::default()
    };
    Harness::start_with(
        |s| {
            s.worker.concurrency = switchyard_runtime::settings::count(4);
            s.worker.max_deliver = max_deliver;
            s.worker.retry_delay = Duration::from_millis(50);
            s.worker.breaker.failures = 3;
            s.worker.breaker.cooldown = cooldown;
            s.worker.breaker.max_cooldown = cooldown * 2;
            model_settings(s, Duration::from_secs(2), retries);
            tune(s);
        },
        sim,
    )
    .await
}

/// Waits (at most a minute) for the job to complete with all its `n` items done.
async fn completes_every_item(h: &Harness, job_id: &str, n: usize) {
    let status = h.wait_final(job_id, 60).await;
    assert_eq!(status.job.status, "completed");
    assert_eq!(
        (status.done(), status.failed()),
        (n as i64, 0),
        "{status:?}"
    );
}

/// Waits until `probes` more calls (the open breaker's failed probes) have reached the
/// simulator, or an item of the job has failed; asserts none did.
async fn no_item_fails_through_probes(h: &Harness, job_id: &str, probes: usize) {
    let sim = h.fleet.sim.as_ref().unwrap();
    let calls_at_open = sim.calls().len();
    let failed = switchyard_testkit::eventually(
        "the probes fail, or an item does",
        Duration::from_secs(30),
        || async {
            let failed = h.client.status(job_id).await.ok()??.failed();
            (failed > 0 || sim.calls().len() >= calls_at_open + probes).then_some(failed)
        },
    )
    .await;
    assert_eq!(
        failed, 0,
        "items failed untried while the provider was down"
    );
}

/// Submits a job of `n` MMLU items to `h` (weak, never escalated) and waits until the
/// provider's faults have opened the weak model's breaker; the job and the worker.
async fn submit_until_the_breaker_opens(
    h: &Harness,
    n: usize,
) -> (String, switchyard_worker::Worker) {
    let job_id = h
        .client
        .submit(classify_job(mmlu_items(n), 0.0, 0.0))
        .await
        .unwrap();
    let w = h.fleet.workers[0].as_ref().unwrap().worker.clone();
    let weak = w.models.get(WEAK).unwrap();
    switchyard_testkit::eventually("the breaker opens", Duration::from_secs(30), || async {
        weak.breaker.is_open().then_some(())
    })
    .await;
    (job_id, w)
}

#[tokio::test]
async fn a_dead_provider_trips_the_breaker_and_the_fleet_recovers_when_it_returns() {
    let h = dead_provider(1000, Duration::from_millis(300), 3).await;
    let n = 20;
    let (job_id, w) = submit_until_the_breaker_opens(&h, n).await;
    let weak = w.models.get(WEAK).unwrap();
    // While it is open, items are handed back without calling: far fewer calls than the
    // retries they would have burnt (four calls a delivery without the breaker).
    let sim = h.fleet.sim.as_ref().unwrap();
    let (calls_before, naks_before) = (sim.calls().len(), WorkerCounters::get(&w.counters.naked));
    switchyard_testkit::eventually(
        "items bounce off the breaker",
        Duration::from_secs(30),
        || async { (WorkerCounters::get(&w.counters.naked) >= naks_before + 60).then_some(()) },
    )
    .await;
    let calls = sim.calls().len() - calls_before;
    let naks = WorkerCounters::get(&w.counters.naked) - naks_before;
    assert!(
        calls * 4 < naks as usize,
        "{calls} calls for {naks} deliveries: the breaker should hold calls back"
    );
    assert_eq!(h.client.status(&job_id).await.unwrap().unwrap().failed(), 0);

    // The provider comes back: a probe succeeds, the breaker closes, everything completes.
    sim.set_faults(Faults::default());
    completes_every_item(&h, &job_id, n).await;
    assert!(!weak.breaker.is_open());
    assert!(!w.models.get(STRONG).unwrap().breaker.is_open());
    h.finish().await;
}

#[tokio::test]
async fn an_outage_longer_than_the_deliveries_fails_no_item() {
    // Two deliveries an item, and a provider down for many cooldowns: each hand-back to the
    // open breaker spends a delivery, so items on their last one must wait in the worker
    // for the breaker (up to `max_hold`) rather than fail untried.
    let h = dead_provider(2, Duration::from_millis(200), 1).await;
    let n = 8;
    let (job_id, w) = submit_until_the_breaker_opens(&h, n).await;
    let weak = w.models.get(WEAK).unwrap();
    // Six failed probes later (each at least a cooldown apart), every item has long had
    // both its deliveries: handed back, they would all have failed by now (and, with no
    // item left to call, no probe would come).
    no_item_fails_through_probes(&h, &job_id, 6).await;
    let sim = h.fleet.sim.as_ref().unwrap();
    assert!(weak.breaker.is_open());

    // The provider comes back: the waiting items are called and every item completes.
    sim.set_faults(Faults::default());
    completes_every_item(&h, &job_id, n).await;
    // The waits were this fix's, not a lucky timing: items on their last delivery waited.
    assert!(WorkerCounters::get(&w.counters.breaker_waits) > 0);
    h.finish().await;
}

#[tokio::test]
async fn a_worker_stopping_during_an_outage_keeps_the_last_deliveries_of_its_items() {
    // Items waiting in a worker for an open breaker on their last delivery, and the worker
    // stops (a rolling restart, its grace period short): a nak would spend that delivery
    // and the reaper would fail the items untried ("no worker finished this item in 2
    // deliveries"). They go back as copies instead, and the next worker calls them.
    let mut h = dead_provider_with(2, Duration::from_millis(200), 1, |s| {
        s.worker.shutdown_grace = Duration::from_millis(300);
    })
    .await;
    let n = 8;
    let (job_id, w) = submit_until_the_breaker_opens(&h, n).await;
    // Three failed probes later (each at least a cooldown apart), every item has had both
    // its deliveries and waits in the worker (see the test above).
    no_item_fails_through_probes(&h, &job_id, 3).await;
    let tiers = h.fleet.workers[0].as_ref().unwrap().tiers.clone();
    h.fleet.stop_worker(0).await.unwrap();
    assert!(
        WorkerCounters::get(&w.counters.handed_over) > 0,
        "no message was handed back"
    );

    // The provider is back and another worker starts: every item completes, none failed.
    h.fleet.sim.as_ref().unwrap().set_faults(Faults::default());
    h.fleet.start_worker(tiers).await.unwrap();
    completes_every_item(&h, &job_id, n).await;
    h.finish().await;
}

#[tokio::test]
async fn items_beyond_the_breaker_s_waiting_room_go_back_with_their_deliveries() {
    // Room for two items to wait for the breaker, four lane slots, eight items: the others,
    // on their last delivery, go back as copies with their deliveries kept (their slots free
    // for other models' items) instead of holding the lane for the outage, and none fails.
    let h = dead_provider_with(2, Duration::from_millis(200), 1, |s| {
        s.worker.breaker.max_holding = 2;
    })
    .await;
    let n = 8;
    let (job_id, w) = submit_until_the_breaker_opens(&h, n).await;
    no_item_fails_through_probes(&h, &job_id, 6).await;
    let sim = h.fleet.sim.as_ref().unwrap();
    assert!(
        WorkerCounters::get(&w.counters.handed_over) > 0,
        "nothing went back: every item waited in the worker"
    );

    sim.set_faults(Faults::default());
    completes_every_item(&h, &job_id, n).await;
    h.finish().await;
}
