//! Routing in the fleet: job-level calibration (budgets), routing rules and their
//! explanations, quotes that match dispatch, shadow calls, the fairness audit, and a router
//! retrained from the fleet's own outcomes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rust_decimal::Decimal;
use switchyard_client::policy_arg;
use switchyard_client::quote::{JobArgs, TaskArgs};
use switchyard_core::rules::{OneOrMany, Rule};
use switchyard_proto::{Item, Routing, TaskKind};
use switchyard_router::Router;
use switchyard_sim::SimConfig;

use crate::support::{Harness, classify_job, mmlu_items};

fn job_args(policy: &str, labels: &[&str], team: &str) -> JobArgs {
    JobArgs {
        task: TaskArgs {
            task: Some(TaskKind::Classify),
            labels: labels.iter().map(|s| (*s).to_owned()).collect(),
            max_words: None,
            instructions: None,
        },
        policy: policy
            .split(',')
            .map(|p| policy_arg::parse(p).unwrap())
            .collect(),
        models: Vec::new(),
        team: Some(team.to_owned()),
        project: Some("proj".to_owned()),
    }
}

const ABCD: &[&str] = &["A", "B", "C", "D"];

/// `statements-strong` forces MMLU "Statement 1 | …" items strong; `de-bump` shifts the score
/// of items whose metadata says `lang = de`.
fn with_rules(s: &mut switchyard_runtime::Settings) {
    s.routing.rules = vec![
        Rule {
            name: "statements-strong".into(),
            keywords: vec!["Statement 1".into()],
            tier: Some("strong".into()),
            ..Rule::default()
        },
        Rule {
            name: "de-bump".into(),
            metadata: BTreeMap::from([("lang".to_owned(), OneOrMany(vec!["de".into()]))]),
            shift: Some(0.3),
            ..Rule::default()
        },
    ];
}

fn items_with_lang(n: usize) -> Vec<Item> {
    let mut items = mmlu_items(n);
    for (i, it) in items.iter_mut().enumerate() {
        let lang = if i % 4 == 0 { "de" } else { "en" };
        it.metadata
            .insert("lang".into(), serde_json::Value::String(lang.into()));
    }
    items
}

async fn routed_tiers(h: &Harness, job_id: &str) -> Vec<(String, String)> {
    sqlx::query_as("SELECT item_id, routed_tier FROM items WHERE job_id = $1 ORDER BY seq")
        .bind(job_id)
        .fetch_all(&h.db.pool)
        .await
        .unwrap()
}

async fn plan_of(h: &Harness, job_id: &str) -> serde_json::Value {
    sqlx::query_scalar("SELECT routing_plan FROM jobs WHERE job_id = $1")
        .bind(job_id)
        .fetch_one(&h.db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn budget_plans_match_their_quotes_and_every_item_is_explained() {
    let h = Harness::start_with(with_rules, SimConfig::default()).await;
    let settings = h.fleet.settings.clone();
    let items = items_with_lang(200);

    // What all-weak and all-strong would cost, then a budget 30% of the way up.
    let q0 = switchyard_client::quote::compute(
        &settings,
        items.clone(),
        &job_args("strong-share=0", ABCD, "team-e2e"),
    )
    .await
    .unwrap();
    let (lo, hi) = (q0.plan.all_weak_usd, q0.plan.all_strong_usd);
    assert!(hi > lo && lo > Decimal::ZERO);
    let budget = (lo + (hi - lo) * Decimal::new(3, 1)).round_dp(4);
    let policy = format!("budget-usd={budget}");
    let quote = switchyard_client::quote::compute(
        &settings,
        items.clone(),
        &job_args(&policy, ABCD, "team-e2e"),
    )
    .await
    .unwrap();
    assert!(quote.plan.expected_usd <= budget);
    assert!(quote.plan.strong > 0);

    let mut spec = classify_job(items.clone(), 0.0, 0.0);
    spec.policy.routing = Routing::BudgetUsd { value: budget };
    let job_id = h.client.submit(spec).await.unwrap();
    let status = h.wait_final(&job_id, 60).await;
    assert_eq!(status.job.status, "completed");

    // The dispatcher routed every item exactly as the quote did.
    let tiers = routed_tiers(&h, &job_id).await;
    assert_eq!(tiers.len(), items.len());
    for (i, (item_id, tier)) in tiers.iter().enumerate() {
        assert_eq!(item_id, &items[i].item_id);
        assert_eq!(tier, &quote.tier_of(i), "item {item_id}");
    }
    let plan = plan_of(&h, &job_id).await;
    assert_eq!(plan["key"], "gain_per_dollar");
    assert_eq!(plan["strong"], quote.plan.strong);
    let expected: Decimal = plan["expected_usd"].as_str().unwrap().parse().unwrap();
    assert_eq!(expected, quote.plan.expected_usd);
    assert!(expected <= budget);
    // The simulator bills the data's tokens, fewer than the estimate (which counts the
    // instructions too): the job really stayed within its budget.
    assert!(
        status.cost_usd <= budget,
        "spent {} of {budget}",
        status.cost_usd
    );

    // Rules: pins and forced items are outside the policy, shifted ones inside it.
    let forced: Vec<usize> = (0..items.len())
        .filter(|&i| items[i].text.contains("Statement 1"))
        .collect();
    assert!(!forced.is_empty(), "the sample has Statement items");
    for &i in &forced {
        assert_eq!(tiers[i].1, "strong");
    }
    let e = switchyard_store::routing::explain(&h.db.pool, &job_id, &items[forced[0]].item_id)
        .await
        .unwrap()
        .unwrap();
    let ex = switchyard_client::explain::from_job(&e);
    assert_eq!(ex.rule.as_deref(), Some("statements-strong"));
    let text = switchyard_client::explain::render(&ex);
    assert!(
        text.contains("`statements-strong` forces tier `strong`"),
        "{text}"
    );
    assert!(text.contains("final answer  from tier strong"), "{text}");

    let bumped = (0..items.len())
        .find(|&i| i % 4 == 0 && !forced.contains(&i))
        .unwrap();
    let e = switchyard_store::routing::explain(&h.db.pool, &job_id, &items[bumped].item_id)
        .await
        .unwrap()
        .unwrap();
    let ex = switchyard_client::explain::from_job(&e);
    assert_eq!(ex.rule.as_deref(), Some("de-bump"));
    assert!((ex.shift - 0.3).abs() < 1e-5);
    assert!(switchyard_client::explain::render(&ex).contains("shifts the score by +0.3000"));

    // Every policy item's tier follows from its key, the stored cut and its position, and
    // the explanation from the file says the same as the one from the job.
    for (i, (item_id, tier)) in tiers.iter().enumerate() {
        let e = switchyard_store::routing::explain(&h.db.pool, &job_id, item_id)
            .await
            .unwrap()
            .unwrap();
        let ex = switchyard_client::explain::from_job(&e);
        let from_file = switchyard_client::explain::from_quote(&quote, i);
        assert_eq!(ex.tier, from_file.tier);
        assert_eq!(ex.rule, from_file.rule);
        assert_eq!(ex.key, from_file.key);
        if ex.forced_tier.is_none() {
            let (cut, seq) = (ex.cut.unwrap(), ex.cut_seq.unwrap());
            let strong = ex.key > cut || (ex.key == cut && ex.seq <= seq);
            assert_eq!(tier == "strong", strong, "item {item_id}");
        }
    }

    // (A quality target pilots, then routes: `quality.rs`.)
    h.finish().await;
}

#[tokio::test]
async fn shadow_calls_are_booked_as_shadow_never_final_and_feed_the_audit() {
    let h = Harness::start().await;
    let items = items_with_lang(160);
    let mut spec = classify_job(items.clone(), 0.1, 0.85);
    spec.policy.shadow = Some(0.5);
    let job_id = h.client.submit(spec).await.unwrap();
    let status = h.wait_final(&job_id, 60).await;
    assert_eq!(status.job.status, "completed");

    let tiers = routed_tiers(&h, &job_id).await;
    let shadowed: BTreeSet<String> = tiers
        .iter()
        .filter(|(id, tier)| tier == "weak" && switchyard_core::shadow::sampled(&job_id, id, 0.5))
        .map(|(id, _)| id.clone())
        .collect();
    assert!(shadowed.len() > 40, "{}", shadowed.len());
    // Shadow calls may finish after the job: wait (bounded) for all of them.
    h.count_reaches(
        "every shadow call booked",
        "SELECT count(*) FROM ledger WHERE job_id = $1 AND outcome = 'shadow'",
        &job_id,
        shadowed.len() as i64,
        30,
    )
    .await;
    let rows: Vec<(String, i32, String)> = sqlx::query_as(
        "SELECT item_id, attempt, tier FROM ledger WHERE job_id = $1 AND outcome = 'shadow'",
    )
    .bind(&job_id)
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    let booked: BTreeSet<String> = rows.iter().map(|r| r.0.clone()).collect();
    assert_eq!(booked, shadowed);
    assert!(rows.iter().all(|r| r.1 == 1000 && r.2 == "strong"));
    // Never the final answer: no item's final attempt is a shadow call.
    let finals: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM items WHERE job_id = $1 AND (final_attempt = 1000 OR status <> 'done')",
    )
    .bind(&job_id)
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(finals, 0);

    // The audit by language sees the shadow samples and the escalations.
    let ds = &h.fleet.settings.dispatcher;
    let audit_items = switchyard_store::routing::audit_items(
        &h.db.pool,
        &job_id,
        "lang",
        &ds.weak_tier,
        &ds.strong_tier,
    )
    .await
    .unwrap();
    let report = switchyard::audit::audit(
        &job_id,
        "lang",
        &audit_items,
        TaskKind::Classify,
        &ds.weak_tier,
        &ds.strong_tier,
    );
    let groups: Vec<&str> = report.groups.iter().map(|g| g.group.as_str()).collect();
    assert_eq!(groups, ["de", "en"]);
    assert_eq!(report.overall.items, items.len());
    assert!((report.overall.routed_strong - 16.0 / 160.0).abs() < 1e-9);
    let weak_routed = tiers.iter().filter(|t| t.1 == "weak").count() as f64;
    assert!((report.overall.escalated - status.escalated as f64 / weak_routed).abs() < 1e-9);
    assert!(report.overall.shadow_samples > 0 && report.overall.gap.is_some());
    assert!(report.note.is_none());
    h.finish().await;
}

/// The team's traffic (see scripts/make-team-traffic.py): support tickets where the weak
/// model fails on EU tax and payment jargon, something the default router never saw.
const TEAM_TRAFFIC: &str = include_str!("../fixtures/team_tickets.jsonl");
const TICKET_LABELS: &[&str] = &["billing", "bug", "account", "shipping"];

#[tokio::test]
async fn a_router_retrained_from_the_fleets_outcomes_beats_the_default_on_held_out_items() {
    let replayed =
        switchyard_sim::Dataset::from_jsonl_str("team_tickets.jsonl", TEAM_TRAFFIC).unwrap();
    let rows =
        switchyard_router_lab::data::Dataset::parse("team_tickets.jsonl", TEAM_TRAFFIC, None)
            .unwrap();
    let pair = rows.infer_pair().unwrap();
    let rows = rows
        .paired(&pair, &switchyard_router_lab::data::Filter::default())
        .unwrap();
    // Two thirds run through the fleet; the other third is never seen by it.
    let (held_out, fleet_rows): (Vec<_>, Vec<_>) = rows
        .into_iter()
        .partition(|r| switchyard_router_lab::data::id_bucket(&r.id, 3) == 0);
    assert!(held_out.len() > 150 && fleet_rows.len() > 350);
    let h = Harness::start_on(Arc::new(replayed), |_| {}, SimConfig::default()).await;
    let items: Vec<Item> = fleet_rows
        .iter()
        .map(|r| Item::new(r.id.clone(), r.text.clone()))
        .collect();
    let mut spec = classify_job(items, 0.0, 0.0);
    spec.task = switchyard_proto::Task::Classify {
        labels: TICKET_LABELS.iter().map(|s| (*s).to_owned()).collect(),
        instructions: None,
    };
    spec.team = Some("support".into());
    spec.policy.shadow = Some(1.0);
    let job_id = h.client.submit(spec).await.unwrap();
    h.wait_final(&job_id, 60).await;
    h.count_reaches(
        "every shadow call answered",
        "SELECT count(*) FROM results WHERE job_id = $1 AND attempt = 1000",
        &job_id,
        fleet_rows.len() as i64,
        30,
    )
    .await;

    // `router train --from-db --team support --task classify`.
    let labelled = switchyard::learn::labelled_from_db(
        &h.db.pool,
        &h.fleet.settings,
        Some("support"),
        Some(TaskKind::Classify),
        1_000_000,
    )
    .await
    .unwrap();
    assert_eq!(labelled.len(), fleet_rows.len());
    let learned_ids: BTreeSet<&str> = labelled
        .iter()
        .map(|l| l.id.rsplit(':').next().unwrap())
        .collect();
    assert!(
        held_out
            .iter()
            .all(|r| !learned_ids.contains(r.id.as_str()))
    );
    // Nothing for another team.
    let other = switchyard::learn::labelled_from_db(
        &h.db.pool,
        &h.fleet.settings,
        Some("legal"),
        None,
        1_000_000,
    )
    .await
    .unwrap();
    assert!(other.is_empty());

    let base = switchyard::learn::base_artifact(&h.fleet.settings, None).unwrap();
    let learned =
        switchyard::learn::adapt(&base, &labelled, "support-v1", "db", "test".into()).unwrap();
    let adapted = switchyard_router::model::LearnedRouter::new("adapted", &learned.model);
    let default = switchyard_router::default_router();
    let report = switchyard_router_lab::eval::evaluate_routers(
        &held_out,
        &pair,
        &[default.as_ref(), &adapted as &dyn Router],
        &switchyard_router_lab::eval::EvalOptions {
            tfidf_folds: 0,
            random_iters: 2,
            ..Default::default()
        },
    );
    let apgr = |name: &str| report.get(name).unwrap().metrics.apgr;
    let (before, after) = (apgr(default.name()), apgr("adapted"));
    eprintln!(
        "held-out APGR on the team's traffic: default {before:.3}, retrained from the fleet {after:.3}"
    );
    assert!(
        after > before + 0.1,
        "default {before:.3}, retrained {after:.3}"
    );
    h.finish().await;
}

#[tokio::test]
async fn a_budget_the_job_cannot_meet_rejects_it_with_the_minimum() {
    let h = Harness::start().await;
    let mut spec = classify_job(mmlu_items(20), 0.0, 0.0);
    spec.policy.routing = Routing::BudgetUsd {
        value: Decimal::new(1, 6),
    };
    let job_id = h.client.submit(spec).await.unwrap();
    let status = h.wait_final(&job_id, 30).await;
    assert_eq!(status.job.status, "rejected");
    let reason = status.job.rejection_reason.unwrap_or_default();
    assert!(
        reason.contains("budget_usd 0.000001 is below the job's expected cost"),
        "{reason}"
    );
    assert!(h.ledger(&job_id).await.is_empty(), "nothing was called");
    h.finish().await;
}
