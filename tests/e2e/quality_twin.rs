//! The fleet agrees with its offline twin: a held-out quality job run through the real
//! dispatcher, workers and simulator over HTTP spends, escalates, audits and delivers what
//! `switchyard policy eval` replays for the same items.
//!
//! Needs the worker side of the contract in docs/quality.md (the rule decides escalation;
//! an audit answer becomes the item's final answer).

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use switchyard_proto::work::AUDIT_ATTEMPT;
use switchyard_proto::{Item, JobSpec, Routing, Task};
use switchyard_sim::{Dataset, SimConfig};

use crate::support::{Harness, WEAK, classify_job, data, job_models, mmlu_items, quality_twin_of};

#[tokio::test]
async fn a_held_out_quality_job_through_the_fleet_matches_policy_eval() {
    let sim = SimConfig {
        auroc: 0.85,
        ..SimConfig::default()
    };
    let h = Harness::start_with(|_| {}, sim.clone()).await;
    // The bundled MMLU rows are held out from the default router's training.
    fleet_matches_its_twin(
        &h,
        &sim,
        quality_job(classify_job(mmlu_items(1_000), 0.0, 0.0)),
    )
    .await;
    h.finish().await;
}

/// The same for a weak model without logprobs: each weak answer draws four extra samples in
/// its request, their agreement is its confidence, and the fleet still spends, escalates
/// and delivers what the twin replays.
#[tokio::test]
async fn a_quality_job_of_a_model_without_logprobs_matches_policy_eval() {
    let sim = SimConfig {
        auroc: 0.85,
        logprobs: false,
        ..SimConfig::default()
    };
    let h = Harness::start_with(
        |s| {
            s.models
                .get_mut(WEAK)
                .expect("the weak model is configured")
                .logprobs = false;
        },
        sim.clone(),
    )
    .await;
    fleet_matches_its_twin(
        &h,
        &sim,
        quality_job(classify_job(mmlu_items(400), 0.0, 0.0)),
    )
    .await;
    h.finish().await;
}

/// A summarization job of held-out news (T0pp → text-davinci-002, the demo's pair): the
/// fleet spends, escalates, audits and delivers what the twin replays for free text too.
#[tokio::test]
async fn a_quality_job_of_summaries_matches_policy_eval() {
    let sim = SimConfig::default();
    let h = Harness::start_with(|_| {}, sim.clone()).await;
    let data = data();
    let (weak, strong) = ("T0pp", "text-davinci-002");
    let items: Vec<Item> = data
        .records()
        .filter(|r| r.task == "summarize" && r.models.contains_key(weak))
        .filter(|r| r.models.contains_key(strong))
        .map(|r| Item::new(r.id.clone(), r.prompt.clone()))
        .collect();
    assert!(items.len() > 100, "{} news items", items.len());
    let mut spec = classify_job(items, 0.0, 0.0);
    spec.task = Task::Summarize {
        max_words: Some(120),
        instructions: None,
    };
    spec.policy.models = BTreeMap::from([
        ("weak".to_owned(), weak.to_owned()),
        ("strong".to_owned(), strong.to_owned()),
    ]);
    fleet_matches_its_twin(&h, &sim, quality_job(spec)).await;
    h.finish().await;
}

/// A maths job of GSM8K problems no router of the project saw (the shared file's untouched
/// slice, `tests/fixtures/gsm8k_untouched.jsonl`), free-form answers from the MMLU pair: the
/// fleet spends, escalates, audits and delivers what the twin replays for generated text.
#[tokio::test]
async fn a_quality_job_of_maths_problems_matches_policy_eval() {
    let sim = SimConfig {
        auroc: 0.85,
        ..SimConfig::default()
    };
    let rows = Dataset::from_jsonl_str(
        "gsm8k_untouched.jsonl",
        include_str!("../fixtures/gsm8k_untouched.jsonl"),
    )
    .unwrap();
    let items: Vec<Item> = rows
        .records()
        .map(|r| Item::new(r.id.clone(), r.prompt.clone()))
        .collect();
    assert_eq!(items.len(), 148);
    let h = Harness::start_on(std::sync::Arc::new(rows), |_| {}, sim.clone()).await;
    let mut spec = classify_job(items, 0.0, 0.0);
    spec.task = Task::Generate { instructions: None };
    fleet_matches_its_twin(&h, &sim, quality_job(spec)).await;
    h.finish().await;
}

/// `spec` asking for `quality=0.95` and nothing else.
fn quality_job(mut spec: JobSpec) -> JobSpec {
    spec.policy.routing = Routing::Quality { value: 0.95 };
    spec.policy.cascade.confidence_threshold = None;
    spec
}

/// Runs the quality job `spec` through the fleet and asserts it did what the twin replays
/// for it.
async fn fleet_matches_its_twin(h: &Harness, sim: &SimConfig, spec: JobSpec) {
    let job_id = spec.job_id.clone();
    h.client.submit(spec.clone()).await.unwrap();
    let status = h.wait_final(&job_id, 180).await;
    assert_eq!(status.job.status, "completed", "{status:?}");

    // The twin, on the same items, job id, router, prices and simulator settings.
    let replay = quality_twin_of(h, sim, &spec, switchyard_core::audit::DEFAULT_AUDIT_SHARE);

    // The plan: the rule the dispatcher stored (its cost slope with it) is the twin's.
    let stored: serde_json::Value =
        sqlx::query_scalar("SELECT routing_plan FROM jobs WHERE job_id = $1")
            .bind(&job_id)
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    let planned = replay.plan.as_ref().expect("a quality job has a plan");
    let rule: switchyard_proto::EscalationRule =
        serde_json::from_value(stored["rule"].clone()).unwrap();
    // Read back from Postgres to the bit (serde_json's float_roundtrip): a message published
    // again from the stored plan decides as the first did.
    assert_eq!(rule, planned.rule);
    // The weigher of the items' strong cost is stored with every priced plan; whether the
    // rule uses it (a slope) depends on the draw. With a slope, the decisions below agree
    // only if the dispatcher weighed every weak-routed item as the twin did.
    assert!(
        stored["cost"]["mean_usd"].as_f64().unwrap() > 0.0,
        "{stored}"
    );
    if !sim.logprobs {
        assert_eq!(rule.cost_slope, 0.0, "{rule:?}");
    }

    // Decisions: the same items routed strong, escalated and audited.
    let escalated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM results WHERE job_id = $1 AND attempt = 0 AND escalated",
    )
    .bind(&job_id)
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(escalated as usize, replay.escalated);
    let ledger = h.ledger(&job_id).await;
    let audits = ledger
        .iter()
        .filter(|l| l.attempt == i32::from(AUDIT_ATTEMPT))
        .count();
    assert_eq!(audits, replay.pilot + replay.audited);
    assert_eq!(ledger.len(), replay.calls);
    // Money: the ledger's exact sum is the twin's, call for call.
    let spent: Decimal = ledger.iter().map(|l| l.cost_usd).sum();
    assert_eq!(spent, replay.cost_usd);

    // Quality: the replayed score of every final answer, as the twin computed it.
    let finals: Vec<(String, String)> = sqlx::query_as(
        "SELECT i.item_id, r.model FROM items i JOIN results r ON r.job_id = i.job_id \
         AND r.item_id = i.item_id AND r.attempt = i.final_attempt WHERE i.job_id = $1",
    )
    .bind(&job_id)
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    let by_item: BTreeMap<String, String> = finals.into_iter().collect();
    let (mut q, mut q_strong) = (0.0, 0.0);
    let data = h.replayed();
    let (_, strong) = job_models(&spec);
    for it in spec.items.as_deref().unwrap_or_default() {
        let r = data.get(&it.item_id).unwrap();
        q += r.models[by_item[&it.item_id].as_str()].score;
        q_strong += r.models[strong.as_str()].score;
    }
    assert!((q / q_strong - replay.quality_vs_all_strong).abs() < 1e-9);
    // The promise itself is not asserted here: the job id is new each run, so is the pilot
    // it draws, and one draw may land under 95% (docs/quality.md: "what is still short").
    // This test holds the fleet to its twin, and prints what both achieved.
    println!(
        "fleet = twin: quality {:.4} of all-strong, saved {:.3}, {} escalated, {} calls, cost slope {}",
        replay.quality_vs_all_strong, replay.saved, replay.escalated, replay.calls, rule.cost_slope
    );
    assert!(replay.quality_vs_all_strong > 0.5);
}
