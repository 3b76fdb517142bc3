//! `quality=Q` in the fleet: pilot, then route, the audit sample, the plan the offline twin
//! would make, and the estimate `status` and the results export show.

use std::collections::BTreeMap;

use switchyard_core::audit;
use switchyard_proto::Routing;
use switchyard_proto::work::AUDIT_ATTEMPT;
use switchyard_sim::SimConfig;

use crate::support::{Harness, classify_job, mmlu_items, quality_twin_of};

/// Per item: (seq, routed tier, attempts answered).
async fn attempts(h: &Harness, job_id: &str) -> BTreeMap<String, (String, Vec<i32>)> {
    let rows: Vec<(String, String, Option<i32>)> = sqlx::query_as(
        "SELECT i.item_id, i.routed_tier, r.attempt FROM items i \
         LEFT JOIN results r ON r.job_id = i.job_id AND r.item_id = i.item_id \
         WHERE i.job_id = $1 ORDER BY i.seq, r.attempt",
    )
    .bind(job_id)
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    let mut out: BTreeMap<String, (String, Vec<i32>)> = BTreeMap::new();
    for (item, tier, attempt) in rows {
        let e = out.entry(item).or_insert((tier, Vec::new()));
        e.1.extend(attempt);
    }
    out
}

/// Submits `spec`, waits (at most two minutes) for it to complete and returns its id and
/// the plan stored with it.
async fn completed_with_plan(
    h: &Harness,
    spec: switchyard_proto::JobSpec,
) -> (String, serde_json::Value) {
    let job_id = h.client.submit(spec).await.unwrap();
    let stored = completed_plan(h, &job_id).await;
    (job_id, stored)
}

/// Waits (at most two minutes) for job `job_id` to complete and returns its stored plan.
async fn completed_plan(h: &Harness, job_id: &str) -> serde_json::Value {
    let status = h.wait_final(job_id, 120).await;
    assert_eq!(status.job.status, "completed", "{status:?}");
    switchyard_store::quality::stored_plan(&h.db.pool, job_id)
        .await
        .unwrap()
        .expect("a quality job stores its plan")
}

#[tokio::test]
async fn a_quality_job_pilots_then_routes_with_the_plan_its_twin_makes() {
    let h = Harness::start().await;
    let items = mmlu_items(600);
    let mut spec = classify_job(items.clone(), 0.0, 0.0);
    // The job id picks the pilot (a hash of job and item ids), and so the plan: a fixed one
    // makes the test the same every run. With a random id, a CI run drew a
    // pilot whose plan sends every item strong, leaving nothing to audit.
    spec.job_id = "quality-e2e-job".to_owned();
    spec.policy.routing = Routing::Quality { value: 0.95 };
    spec.policy.cascade.confidence_threshold = None;
    spec.policy.audit = Some(0.05);
    let (job_id, stored) = completed_with_plan(&h, spec.clone()).await;

    // The stored plan: routed after a pilot, checked against the target with its margin.
    assert_eq!(stored["stage"], "routed", "{stored}");
    let pilot_fraction = stored["pilot_fraction"].as_f64().unwrap();
    let audit_fraction = stored["audit_fraction"].as_f64().unwrap();
    let plan = &stored["plan"];
    assert!(
        plan["predicted_quality_low"].as_f64().unwrap() >= 0.95 - 1e-9,
        "{plan}"
    );
    assert!(audit_fraction > 0.0, "a plan with nothing to audit: {plan}");

    // Pilot items were answered by both tiers (attempt 0 weak, the audit strong); the other
    // items by their route, and the audit sample among the weak-routed ones by both.
    let by_item = attempts(&h, &job_id).await;
    assert_eq!(by_item.len(), items.len());
    let (mut pilot, mut audited, mut up_front) = (0, 0, 0);
    for (item, (tier, tried)) in &by_item {
        let in_pilot = audit::in_pilot(&job_id, item, pilot_fraction);
        let is_audited =
            !in_pilot && tier == "weak" && audit::sampled(&job_id, item, audit_fraction);
        if in_pilot {
            pilot += 1;
            assert_eq!(tier, "weak", "{item}");
            assert!(
                tried.contains(&0) && tried.contains(&i32::from(AUDIT_ATTEMPT)),
                "{item}: {tried:?}"
            );
        } else if is_audited {
            audited += 1;
            assert!(
                tried.contains(&i32::from(AUDIT_ATTEMPT)),
                "{item}: {tried:?}"
            );
        } else {
            assert!(
                !tried.contains(&i32::from(AUDIT_ATTEMPT)),
                "{item}: {tried:?}"
            );
        }
        if !in_pilot && tier == "strong" {
            up_front += 1;
        }
    }
    assert_eq!(pilot, plan["pilot"].as_u64().unwrap() as usize);
    assert!(pilot >= 18, "{pilot}");
    assert!(audited > 0);
    assert_eq!(up_front, plan["strong_up_front"].as_u64().unwrap() as usize);
    // Every audit call is booked under its item.
    let ledger = h.ledger(&job_id).await;
    let audit_rows = ledger
        .iter()
        .filter(|l| l.attempt == i32::from(AUDIT_ATTEMPT))
        .count();
    assert_eq!(audit_rows, pilot + audited);
    assert!(
        ledger
            .iter()
            .filter(|l| l.attempt == i32::from(AUDIT_ATTEMPT))
            .all(|l| l.tier == "strong")
    );

    // The offline twin, on the same items with the same job id, router, prices and
    // simulator, makes the same pilot and the same plan.
    let replay = quality_twin_of(&h, &SimConfig::default(), &spec, 0.05);
    let twin_plan = replay.plan.unwrap();
    assert_eq!(replay.pilot, pilot);
    assert_eq!(twin_plan.strong_up_front, up_front);
    // The same rule, up to the last bit of a float: the fleet fits it from the pilot's
    // answers in the order they committed, the twin in input order, and a sum in another
    // order may differ in its last digit (seen once in CI: ...94 against ...97).
    assert_same_json(
        &serde_json::to_value(&twin_plan.rule).unwrap(),
        &stored["rule"],
    );
    assert!((twin_plan.audit_fraction - audit_fraction).abs() < 1e-12);

    // `status` and the results export carry the audit's estimate with its interval.
    let q = switchyard_store::quality::job_quality(&h.db.pool, &job_id, "weak")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(q.target, Some(0.95));
    assert_eq!(q.audit.audited, audited);
    assert!(q.audit.low <= q.audit.estimate && q.audit.estimate <= q.audit.high);
    assert!(q.audit.estimate > 0.5, "{:?}", q.audit);
    let text = switchyard_client::report::render_quality(&q);
    assert!(
        text.contains("audit estimate") && text.contains("conservative proxy"),
        "{text}"
    );
    let mut csv = Vec::new();
    switchyard_client::report::export_results(
        &h.db.pool,
        &job_id,
        switchyard_client::report::ResultFormat::Csv,
        "weak",
        &mut csv,
    )
    .await
    .unwrap();
    let csv = String::from_utf8(csv).unwrap();
    let header = csv.lines().next().unwrap();
    assert!(
        header.ends_with("quality_estimate,quality_low,quality_high"),
        "{header}"
    );
    let first = csv.lines().nth(1).unwrap();
    assert!(first.ends_with(&format!(
        "{:.4},{:.4},{:.4}",
        q.audit.estimate, q.audit.low, q.audit.high
    )));
    h.finish().await;
}

/// `a` and `b` are the same JSON, numbers equal to within 1e-9 (relative).
fn assert_same_json(a: &serde_json::Value, b: &serde_json::Value) {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
                "{x} != {y}"
            );
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{a} != {b}");
            for (x, y) in x.iter().zip(y) {
                assert_same_json(x, y);
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(
                x.keys().collect::<Vec<_>>(),
                y.keys().collect::<Vec<_>>(),
                "{a} != {b}"
            );
            for (k, v) in x {
                assert_same_json(v, &y[k]);
            }
        }
        _ => assert_eq!(a, b),
    }
}

#[tokio::test]
async fn two_quality_jobs_with_one_sample_key_pilot_the_same_items() {
    let h = Harness::start().await;
    let items = mmlu_items(300);
    let mut pilots = Vec::new();
    for id in ["paired-a", "paired-b"] {
        let mut spec = classify_job(items.clone(), 0.0, 0.0);
        spec.job_id = id.to_owned();
        // Teams of their own: the first job's answers are not the second's history.
        spec.team = Some(id.to_owned());
        spec.policy.routing = Routing::Quality { value: 0.95 };
        spec.policy.cascade.confidence_threshold = None;
        spec.policy.sample_key = Some("nightly-paired".to_owned());
        let (_, stored) = completed_with_plan(&h, spec).await;
        let fraction = stored["pilot_fraction"].as_f64().unwrap();
        // Every pilot item is audited: the pilot is what the key draws, not the job id.
        let audited: Vec<String> = attempts(&h, id)
            .await
            .into_iter()
            .filter(|(_, (_, a))| a.contains(&i32::from(AUDIT_ATTEMPT)))
            .map(|(item, _)| item)
            .collect();
        let pilot: Vec<String> = items
            .iter()
            .map(|i| i.item_id.clone())
            .filter(|i| audit::in_pilot("nightly-paired", i, fraction))
            .collect();
        assert!(!pilot.is_empty());
        let missing: Vec<&String> = pilot.iter().filter(|i| !audited.contains(i)).collect();
        assert!(
            missing.is_empty(),
            "{id}: pilot items not audited: {missing:?}"
        );
        pilots.push(pilot);
    }
    assert_eq!(pilots[0], pilots[1], "the same pilot");
    h.finish().await;
}

#[tokio::test]
async fn a_quality_job_whose_weak_model_costs_more_pays_for_no_pilot() {
    // A weak tier priced above the strong one (a misconfigured pair, or a "weak" model both
    // worse and dearer, as RouterArena's claude-3-haiku is against gemini-2.0-flash) can
    // save nothing: the job goes all strong, without paying for a pilot's weak answers and
    // audits (it used to pilot 40 items both ways and then send the rest strong: the twin
    // put it at 30-140% above all-strong).
    let weak = "mistralai/Mixtral-8x7B-Instruct-v0.1";
    let h = Harness::start_with(
        |s| {
            let m = s.models.get_mut(weak).expect("the demo's weak model");
            m.input_usd_per_mtok = Some(rust_decimal::Decimal::from(40));
            m.output_usd_per_mtok = Some(rust_decimal::Decimal::from(40));
        },
        SimConfig::default(),
    )
    .await;
    let items = mmlu_items(120);
    let mut spec = classify_job(items.clone(), 0.0, 0.0);
    spec.policy.routing = Routing::Quality { value: 0.95 };
    spec.policy.cascade.confidence_threshold = None;
    let (job_id, stored) = completed_with_plan(&h, spec).await;
    assert_eq!(stored["stage"], "routed", "{stored}");
    assert_eq!(stored["pilot_fraction"].as_f64(), Some(0.0), "{stored}");
    assert_eq!(stored["plan"]["strong_up_front"], items.len(), "{stored}");
    // One strong call an item, nothing else paid for.
    let ledger = h.ledger(&job_id).await;
    assert_eq!(ledger.len(), items.len(), "{ledger:?}");
    assert!(
        ledger
            .iter()
            .all(|l| l.tier == "strong" && l.attempt == 0 && l.outcome == "ok"),
        "{ledger:?}"
    );
    h.finish().await;
}

/// A pilot waits for both answers of every item. Its audit calls lost before any strong
/// worker took them (a dispatcher that died between an item's weak and audit messages, or
/// messages lost in the stream) are published again while it waits: the job completes
/// instead of waiting out the pilot's 30-minute timeout, every pilot item audited once.
#[tokio::test]
async fn a_pilot_whose_audit_calls_were_lost_publishes_them_again() {
    let mut h = Harness::start_with(
        |s| {
            s.dispatcher.sweep_every = std::time::Duration::from_millis(300);
            // Past JetStream's duplicate window, as a lost message would be (a purge does
            // not clear the window's message ids; a message never published is not in it).
            s.nats.duplicate_window = std::time::Duration::from_secs(1);
        },
        SimConfig::default(),
    )
    .await;
    // Only a weak worker: the pilot's audit calls wait in the stream.
    h.fleet.stop_worker(0).await.unwrap();
    h.fleet.start_worker(vec!["weak".to_owned()]).await.unwrap();
    let mut spec = classify_job(mmlu_items(300), 0.0, 0.0);
    spec.policy.routing = Routing::Quality { value: 0.95 };
    spec.policy.cascade.confidence_threshold = None;
    let job_id = h.client.submit(spec).await.unwrap();
    let pilot: i64 = switchyard_testkit::eventually(
        "the pilot's weak answers",
        std::time::Duration::from_secs(60),
        || async {
            let (answered, stored): (i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE EXISTS (SELECT 1 FROM results r \
                   WHERE r.job_id = i.job_id AND r.item_id = i.item_id AND r.attempt = 0)), \
                 count(*) FROM items i WHERE i.job_id = $1",
            )
            .bind(&job_id)
            .fetch_one(&h.db.pool)
            .await
            .ok()?;
            (stored > 0 && answered == stored).then_some(stored)
        },
    )
    .await;
    // The audit calls are lost.
    let t = h.fleet.settings.topology();
    let stream = h.nats.js().get_stream(t.work_stream()).await.unwrap();
    let purged = stream
        .purge()
        .filter(t.work_subject("strong"))
        .await
        .unwrap();
    assert_eq!(purged.purged as i64, pilot, "one audit call per pilot item");
    h.fleet
        .start_worker(vec!["strong".to_owned()])
        .await
        .unwrap();

    let stored = completed_plan(&h, &job_id).await;
    assert_eq!(stored["stage"], "routed", "{stored}");
    let fraction = stored["pilot_fraction"].as_f64().unwrap();
    let by_item = attempts(&h, &job_id).await;
    let audited_pilot = by_item
        .iter()
        .filter(|(item, (_, tried))| {
            audit::in_pilot(&job_id, item, fraction) && tried.contains(&i32::from(AUDIT_ATTEMPT))
        })
        .count();
    assert_eq!(audited_pilot as i64, pilot, "every pilot item audited");
    // Each audit call made and booked once.
    let ledger = h.ledger(&job_id).await;
    let mut audit_items: Vec<&str> = ledger
        .iter()
        .filter(|l| l.attempt == i32::from(AUDIT_ATTEMPT))
        .map(|l| l.item_id.as_str())
        .collect();
    let booked = audit_items.len();
    audit_items.sort_unstable();
    audit_items.dedup();
    assert_eq!(booked, audit_items.len(), "an audit call booked twice");
    h.finish().await;
}
