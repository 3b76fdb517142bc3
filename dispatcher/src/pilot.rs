//! `quality=Q` jobs: pilot, then route (see `switchyard_core::quality`).
//!
//! A batch job is not latency-bound, so a quality job is dispatched in two stages:
//!
//! 1. **Pilot.** A uniform, hash-chosen slice of the job's candidates (not pinned, not
//!    forced by a rule) is stored and published first: each pilot item to the weak tier with
//!    a record-only rule (its answer is kept and never escalates; a model without logprobs
//!    draws its extra samples) and to the strong tier as an audit call (attempt
//!    `AUDIT_ATTEMPT`, whose answer becomes the item's final one). The dispatcher waits
//!    (bounded by [`PILOT_TIMEOUT`]) until both answers of every pilot item are stored.
//! 2. **Plan and route.** The pilot's answers (and the team's history) are turned into a
//!    plan (`switchyard_core::quality::plan`): the up-front strong cut and the escalation
//!    rule. The plan is stored with the job, then every other item is stored and published:
//!    the pinned and forced ones as usual, the rest strong up front or weak carrying the rule
//!    (and its router score, one of the rule's features), a uniform audit sample of the
//!    weak-routed ones also sent to the strong tier.
//!
//! **Resuming.** The stage is stored in `jobs.routing_plan` (`"stage": "pilot"` with the
//! pilot's fraction, then `"stage": "routed"` with the plan). A dispatcher that takes over
//! a `dispatching` quality job re-publishes what is still queued of the stage it finds
//! (deduplicated by attempt keys) and goes on from there; the pilot's fraction is the stored
//! one, so the same items form the pilot, and the plan, once stored, is never made again.
//! While it waits for the pilot, the calls of it that nothing works on (a weak or audit
//! message the dead dispatcher never published, or one lost in the stream) are published
//! again every `sweep_every`, so no crash moment leaves the pilot waiting for its timeout.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use switchyard_core::agreement::agreement;
use switchyard_core::audit::{self, DEFAULT_AUDIT_SHARE};
use switchyard_core::escalation::{self, AnswerFeatures, Labelled};
use switchyard_core::policy::Cut;
use switchyard_core::quality::{self, CostWeigher, JobItem, PilotAnswer, QualityInputs};
use switchyard_core::samples::DEFAULT_EXTRA_SAMPLES;
use switchyard_proto::work::AUDIT_ATTEMPT;
use switchyard_proto::{EscalationRule, JobSpec, Routing, WorkItem};
use switchyard_store::quality as store;

use crate::Dispatcher;
use crate::emit::{self, cut_from_pair};
use crate::ingest::job_router;
use crate::source::ItemSource;
use switchyard_core::route::TierPrices;

/// How long the dispatcher waits for a pilot's answers before it plans with what it has.
pub const PILOT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How often the pilot's answers are looked for.
const PILOT_POLL: Duration = Duration::from_millis(250);

/// At most this many labelled answers of the team's history are used.
const HISTORY_LIMIT: i64 = 5_000;

/// Which items a dispatch stage stores and publishes, and what their messages carry.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// Every item, by the job's cut (every policy but a quality target).
    All { cut: Cut },
    /// A quality job's pilot: its items only, weak with a record-only rule, and audited.
    Pilot { fraction: f64, samples: u8 },
    /// A quality job after its pilot: every other item, by the plan.
    Routed {
        pilot_fraction: f64,
        rule: EscalationRule,
        audit_fraction: f64,
        /// The confidence threshold for workers that do not know rules yet.
        fallback_threshold: f64,
        /// The plan's up-front cut.
        cut: Cut,
        /// Weighs each item's strong cost for the rule's `cost_slope`.
        cost: Option<CostWeigher>,
    },
}

impl Stage {
    /// The cut items of this stage are routed by (a pilot's all go weak).
    pub fn cut(&self) -> Cut {
        match self {
            Stage::All { cut } | Stage::Routed { cut, .. } => *cut,
            Stage::Pilot { .. } => Cut::Nothing,
        }
    }

    /// Whether this stage stores and publishes the item. `forced`: a pin or a rule decided
    /// its tier (it is never in the pilot). `sample_key`: what the pilot's draw hashes (the
    /// job's [`JobSpec::sample_key`]).
    pub fn includes(&self, sample_key: &str, item_id: &str, forced: bool) -> bool {
        match self {
            Stage::All { .. } => true,
            Stage::Pilot { fraction, .. } => {
                !forced && audit::in_pilot(sample_key, item_id, *fraction)
            }
            Stage::Routed { pilot_fraction, .. } => {
                forced || !audit::in_pilot(sample_key, item_id, *pilot_fraction)
            }
        }
    }

    /// Completes an item's first message for this stage (its rule, its router score) and
    /// returns the audit call to publish with it, if any.
    pub fn decorate(
        &self,
        msg: &mut WorkItem,
        sample_key: &str,
        router_score: f32,
        weak_tier: &str,
        strong_tier: &str,
    ) -> Option<WorkItem> {
        if msg.tier != weak_tier || msg.local_only {
            return None;
        }
        let audited = match self {
            Stage::All { .. } => return None,
            Stage::Pilot { samples, .. } => {
                // Recorded, never escalated, whatever the worker's version.
                msg.escalation = Some(escalation::record_only(*samples));
                msg.confidence_threshold = 0.0;
                msg.escalations_left = 0;
                true
            }
            Stage::Routed {
                rule,
                audit_fraction,
                fallback_threshold,
                cost,
                ..
            } => {
                msg.escalation = Some(rule.clone());
                msg.confidence_threshold = *fallback_threshold;
                msg.cost_weight = cost
                    .filter(|_| rule.cost_slope != 0.0)
                    .map(|c| c.weight(&msg.task, &msg.text));
                audit::sampled(sample_key, &msg.item_id, *audit_fraction)
            }
        };
        msg.router_score = Some(router_score);
        audited.then(|| {
            let mut a = msg.clone();
            a.tier = strong_tier.to_owned();
            a.attempt = AUDIT_ATTEMPT;
            a.escalations_left = 0;
            a.escalation = None;
            a.cost_weight = None;
            a
        })
    }
}

/// What a quality job stores in `jobs.routing_plan`, by stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum StoredStage {
    Pilot {
        pilot_fraction: f64,
        samples: u8,
        audit_share: f64,
    },
    Routed {
        pilot_fraction: f64,
        audit_fraction: f64,
        rule: EscalationRule,
        #[serde(default)]
        fallback_threshold: f64,
        /// The whole plan, for reports (`switchyard status`, `router explain`).
        #[serde(default)]
        plan: serde_json::Value,
        /// How each item's cost weight is computed, for a rule with a `cost_slope` (absent
        /// in plans stored before it: no weight, read as 1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cost: Option<CostWeigher>,
    },
}

/// The stage stored with a job, if it is a quality job's.
pub fn stored_stage(plan: Option<&serde_json::Value>) -> Option<StoredStage> {
    serde_json::from_value(plan?.clone()).ok()
}

/// Extra samples per weak answer: none when the weak model gives logprobs.
pub fn extra_samples(d: &Dispatcher, spec: &JobSpec) -> u8 {
    extra_samples_for(&d.settings, &spec.policy.models)
}

/// [`extra_samples`] for a job whose policy's model overrides are `models`.
pub fn extra_samples_for(
    settings: &switchyard_runtime::Settings,
    models: &std::collections::BTreeMap<String, String>,
) -> u8 {
    let logprobs = settings
        .model_for(&settings.dispatcher.weak_tier, models)
        .and_then(|m| settings.models.get(m))
        .is_none_or(|m| m.logprobs);
    if logprobs { 0 } else { DEFAULT_EXTRA_SAMPLES }
}

/// The stage an item's first message was published under, read back from the job's stored
/// stage: a first message published again (by the stuck-job sweep) must carry the same rule
/// (or the same record-only pilot sampling) as the lost one did. `samples`: the job's extra
/// samples per weak answer ([`extra_samples_for`]; a routed stage does not store them).
pub fn stage_of_item(stored: &StoredStage, sample_key: &str, item_id: &str, samples: u8) -> Stage {
    match stored {
        StoredStage::Pilot {
            pilot_fraction,
            samples,
            ..
        } => Stage::Pilot {
            fraction: *pilot_fraction,
            samples: *samples,
        },
        StoredStage::Routed { pilot_fraction, .. }
            if audit::in_pilot(sample_key, item_id, *pilot_fraction) =>
        {
            Stage::Pilot {
                fraction: *pilot_fraction,
                samples,
            }
        }
        StoredStage::Routed { .. } => {
            routed(stored, None).unwrap_or(Stage::All { cut: Cut::Nothing })
        }
    }
}

/// The audit's cap of a job: its policy's `audit=F`, else the default.
pub fn audit_share(spec: &JobSpec) -> f64 {
    spec.policy.audit.unwrap_or(DEFAULT_AUDIT_SHARE)
}

/// The first stage of a quality job just ingested: the pilot's fraction (from the job's
/// size and the team's history, made exact from its items' `pilot_draws`; none when the
/// router's plan of the job says the weak tier cannot save anything), stored with the job.
///
/// # Errors
/// Database errors.
pub async fn pilot_stage(
    d: &Dispatcher,
    spec: &JobSpec,
    pilot_draws: &mut [f64],
    router_plan: &switchyard_core::calibrate::Plan,
) -> anyhow::Result<StoredStage> {
    let history = history(d, spec).await?.len();
    let share = audit_share(spec);
    let asked = if quality::pilot_can_pay(router_plan.all_weak_usd, router_plan.all_strong_usd) {
        quality::pilot_fraction(pilot_draws.len(), history, share)
    } else {
        tracing::warn!(
            job_id = %spec.job_id,
            all_weak_usd = %router_plan.all_weak_usd,
            all_strong_usd = %router_plan.all_strong_usd,
            "the weak tier costs as much as the strong one on this job or more: no pilot, \
             everything strong"
        );
        0.0
    };
    Ok(StoredStage::Pilot {
        pilot_fraction: quality::exact_pilot_fraction(pilot_draws, asked),
        samples: extra_samples(d, spec),
        audit_share: share,
    })
}

/// Waits (bounded) until every stored pilot item has its weak and its audit answer, or is
/// closed without them; returns the rows as they are then. `Ok(None)`: the job stopped
/// dispatching meanwhile (cancelled).
///
/// When a whole `[dispatcher] sweep_every` went by without an answer, it publishes again the
/// pilot's calls that nothing works on ([`emit::republish_lost_pilot`]), each at most once a
/// duplicate window: a dispatcher that died between an item's weak and audit messages, or a
/// message lost in the stream, would otherwise hold the job (and a dispatcher slot) until
/// the timeout, and leave the plan a label short. (Rarely: a call that is only between
/// deliveries, handed back by its worker, looks the same; its copy is harmless, the workers'
/// claim calls it once, but copies must not pile up, nor keep renewing an item's
/// deliveries.)
///
/// # Errors
/// Database or NATS errors.
pub async fn wait_for_pilot(
    d: &Dispatcher,
    spec: &JobSpec,
    stage: &Stage,
    timeout: Duration,
) -> anyhow::Result<Option<Vec<store::AnsweredItem>>> {
    let job_id = spec.job_id.as_str();
    let deadline = tokio::time::Instant::now() + timeout;
    let every = d.settings.dispatcher.sweep_every;
    let mut next_look = tokio::time::Instant::now() + every;
    // Settled items at the last look, and the calls published again (item, audit?).
    let mut settled_then = None;
    let mut republished = emit::Republished::new();
    loop {
        let still = switchyard_store::jobs::get(&d.pool, job_id)
            .await?
            .is_some_and(|j| j.status == switchyard_store::jobs::status::DISPATCHING);
        if !still {
            return Ok(None);
        }
        let rows = store::answered_items(&d.pool, job_id).await?;
        // Both answers in, or none to come: the item failed, or its audit did (its weak
        // answer then labels nothing, and the plan goes on without it).
        let settled = |r: &store::AnsweredItem| {
            (r.first_answer.is_some() && (r.audit_answer.is_some() || r.audit_failed))
                || matches!(r.status.as_str(), "failed" | "cancelled")
        };
        if rows.iter().all(settled) {
            return Ok(Some(rows));
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            tracing::warn!(
                job_id,
                answered = rows.iter().filter(|r| settled(r)).count(),
                pilot = rows.len(),
                "pilot not fully answered in time; planning with what came back"
            );
            return Ok(Some(rows));
        }
        if now >= next_look {
            next_look = now + every;
            let settled_now = rows.iter().filter(|r| settled(r)).count();
            let stalled = settled_then == Some(settled_now);
            settled_then = Some(settled_now);
            let lease = d.settings.finance.reservation_lease;
            let lost = if stalled {
                store::lost_pilot_calls(&d.pool, job_id, lease).await?
            } else {
                Vec::new()
            };
            if !lost.is_empty() {
                let mut backlogs = crate::sweeper::Backlogs::new(d);
                let sent = emit::republish_lost_pilot(
                    d,
                    spec,
                    stage,
                    lost,
                    &mut backlogs,
                    &mut republished,
                )
                .await?;
                if sent > 0 {
                    tracing::warn!(
                        job_id,
                        sent,
                        "pilot calls nothing worked on were published again"
                    );
                }
            }
        }
        tokio::time::sleep(PILOT_POLL).await;
    }
}

/// The team's labelled answers of earlier jobs of this task kind on the same models.
async fn history(d: &Dispatcher, spec: &JobSpec) -> anyhow::Result<Vec<store::HistoryRow>> {
    let ds = &d.settings.dispatcher;
    let (Some(weak), Some(strong)) = (
        d.settings.model_for(&ds.weak_tier, &spec.policy.models),
        d.settings.model_for(&ds.strong_tier, &spec.policy.models),
    ) else {
        return Ok(Vec::new());
    };
    Ok(store::team_history(
        &d.pool,
        spec.team.as_deref().unwrap_or("default"),
        spec.task.kind().as_str(),
        weak,
        strong,
        &spec.job_id,
        HISTORY_LIMIT,
    )
    .await?)
}

/// Plans the job from its pilot: reads every item again (to cost and rank the candidates),
/// labels the pilot's answers, adds the team's history, and returns the stage to route by.
///
/// # Errors
/// Database failures, or an input that changed since it was checked.
pub async fn plan(
    d: &Dispatcher,
    spec: &JobSpec,
    source: &mut ItemSource,
    prices: &TierPrices,
    pilot_fraction: f64,
    samples: u8,
    pilot_rows: &[store::AnsweredItem],
) -> anyhow::Result<(StoredStage, Cut)> {
    let Routing::Quality { value: target } = spec.policy.routing else {
        anyhow::bail!("job {} has no quality target", spec.job_id);
    };
    source.rewind().await?;
    let router = job_router(d, spec, prices);
    let mut scratch = router.inputs();
    let mut items: Vec<JobItem> = Vec::new();
    let mut seq: i64 = 0;
    while let Some(next) = source.next().await {
        let (_, item) = next.map_err(|e| {
            anyhow::anyhow!(
                "input of job {} changed since it was checked: {e}",
                spec.job_id
            )
        })?;
        let score = crate::ingest::score(d, spec, &item);
        let (route, _) = router.route(&item, seq, score, &mut scratch);
        if route.tier.is_none() {
            let pilot = audit::in_pilot(spec.sample_key(), &item.item_id, pilot_fraction);
            items.push(JobItem {
                seq,
                router_score: route.key,
                weak_usd: router.weak_usd_with_samples(&item.text, samples),
                strong_usd: route.est_strong_usd,
                pilot,
            });
        }
        seq += 1;
    }
    let index: HashMap<i64, usize> = items
        .iter()
        .enumerate()
        .map(|(i, it)| (it.seq, i))
        .collect();
    let task = &spec.task;
    let from_logprobs = samples == 0;
    let pilot: Vec<PilotAnswer> = pilot_rows
        .iter()
        .filter_map(|r| {
            let i = *index.get(&r.seq)?;
            let (weak, strong) = (r.first_answer.as_deref()?, r.audit_answer.as_deref()?);
            Some(PilotAnswer {
                item: i,
                features: AnswerFeatures::of_stored(
                    task,
                    r.router_score,
                    weak,
                    r.first_confidence.unwrap_or(0.0),
                    from_logprobs,
                    samples > 0,
                ),
                short: 1.0 - agreement(task.kind(), weak, strong),
            })
        })
        .collect();
    let history: Vec<Labelled> = history(d, spec)
        .await?
        .iter()
        .map(|h| Labelled {
            features: AnswerFeatures::of_stored(
                task,
                h.router_score,
                &h.weak_answer,
                h.weak_confidence,
                from_logprobs,
                samples > 0,
            ),
            short: 1.0 - agreement(task.kind(), &h.weak_answer, &h.strong_answer),
            weight: 1.0,
        })
        .collect();
    let plan = quality::plan(&QualityInputs {
        target,
        items: &items,
        pilot: &pilot,
        history: &history,
        weak_quality: router.weak_quality,
        extra_samples: samples,
        audit_share: audit_share(spec),
    });
    tracing::info!(
        job_id = %spec.job_id,
        pilot = plan.pilot,
        labelled = pilot.len(),
        history = history.len(),
        strong_up_front = plan.strong_up_front,
        escalation_rate = plan.predicted_escalation_rate,
        predicted_quality = plan.predicted_quality,
        expected_usd = %plan.expected_usd,
        "quality job planned from its pilot"
    );
    let cut = plan.cut;
    let stage = StoredStage::Routed {
        pilot_fraction,
        audit_fraction: plan.audit_fraction,
        rule: plan.rule.clone(),
        fallback_threshold: plan.fallback_threshold,
        plan: serde_json::to_value(&plan).context("plan as JSON")?,
        cost: router.cost_weigher(plan.mean_strong_usd),
    };
    Ok((stage, cut))
}

/// The stage to publish a routed quality job's remaining items with.
pub fn routed(stage: &StoredStage, cut: Option<(f32, i64)>) -> Option<Stage> {
    match stage {
        StoredStage::Routed {
            pilot_fraction,
            audit_fraction,
            rule,
            fallback_threshold,
            cost,
            ..
        } => Some(Stage::Routed {
            pilot_fraction: *pilot_fraction,
            rule: rule.clone(),
            audit_fraction: *audit_fraction,
            fallback_threshold: *fallback_threshold,
            cut: cut_from_pair(cut),
            cost: *cost,
        }),
        StoredStage::Pilot { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_proto::Task;

    fn msg(tier: &str) -> WorkItem {
        WorkItem::new(
            "job",
            "item-7",
            tier,
            "t",
            Task::Generate { instructions: None },
        )
    }

    #[test]
    fn the_two_stages_split_the_items_and_forced_items_wait_for_the_plan() {
        let pilot = Stage::Pilot {
            fraction: 0.2,
            samples: 0,
        };
        let routed = Stage::Routed {
            pilot_fraction: 0.2,
            rule: escalation::EscalationModel::constant(0.3).rule(0.5, 0),
            audit_fraction: 0.05,
            fallback_threshold: 0.7,
            cut: Cut::Nothing,
            cost: None,
        };
        for i in 0..500 {
            let id = format!("item-{i}");
            assert_ne!(
                pilot.includes("job", &id, false),
                routed.includes("job", &id, false)
            );
            assert!(!pilot.includes("job", &id, true) && routed.includes("job", &id, true));
        }
        assert!(Stage::All { cut: Cut::Nothing }.includes("job", "x", true));
        assert_eq!(pilot.cut(), Cut::Nothing);
    }

    #[test]
    fn pilot_messages_never_escalate_and_come_with_an_audit_call() {
        let stage = Stage::Pilot {
            fraction: 1.0,
            samples: 4,
        };
        let mut m = msg("weak");
        let audit = stage
            .decorate(&mut m, "job", 0.25, "weak", "strong")
            .unwrap();
        assert_eq!((m.escalations_left, m.confidence_threshold), (0, 0.0));
        assert_eq!(m.router_score, Some(0.25));
        let rule = m.escalation.as_ref().unwrap();
        assert_eq!(rule.samples, 4);
        assert!(rule.threshold > 1.0);
        assert_eq!(
            (audit.tier.as_str(), audit.attempt),
            ("strong", AUDIT_ATTEMPT)
        );
        assert_eq!(
            (audit.escalations_left, audit.escalation.is_none()),
            (0, true)
        );
        assert_ne!(audit.attempt_key(), m.attempt_key());
        // Strong-routed and local items get nothing.
        let mut s = msg("strong");
        assert!(
            stage
                .decorate(&mut s, "job", 0.0, "weak", "strong")
                .is_none()
        );
        assert!(s.escalation.is_none());
        let mut l = msg("weak");
        l.local_only = true;
        assert!(
            stage
                .decorate(&mut l, "job", 0.0, "weak", "strong")
                .is_none()
        );
    }

    #[test]
    fn routed_messages_carry_the_rule_and_stages_round_trip() {
        let rule = escalation::EscalationModel::constant(0.3).cost_rule(0.4, 0.1, 0);
        let weigher = CostWeigher {
            usd_per_prompt_token: 1e-5,
            fixed_usd: 0.0,
            mean_usd: 1e-3,
        };
        let stage = StoredStage::Routed {
            pilot_fraction: 0.1,
            audit_fraction: 0.0,
            rule: rule.clone(),
            fallback_threshold: 0.75,
            plan: serde_json::json!({"target": 0.95}),
            cost: Some(weigher),
        };
        let json = serde_json::to_value(&stage).unwrap();
        assert_eq!(json["stage"], "routed");
        assert_eq!(stored_stage(Some(&json)), Some(stage.clone()));
        // A plan stored before items were weighed reads back without a weigher.
        let mut older = json.clone();
        older.as_object_mut().unwrap().remove("cost");
        assert!(matches!(
            stored_stage(Some(&older)),
            Some(StoredStage::Routed { cost: None, .. })
        ));
        let s = routed(&stage, Some((0.5, 3))).unwrap();
        assert_eq!(
            s.cut(),
            Cut::Rank {
                score_cut: 0.5,
                last_seq: 3
            }
        );
        let mut m = msg("weak");
        assert!(s.decorate(&mut m, "job", 0.1, "weak", "strong").is_none());
        assert_eq!(m.escalation, Some(rule.clone()));
        assert_eq!(m.confidence_threshold, 0.75);
        // Its cost weight, from its text, for the rule's slope; none without a slope.
        assert_eq!(m.cost_weight, Some(weigher.weight(&m.task, &m.text)));
        let flat = StoredStage::Routed {
            pilot_fraction: 0.1,
            audit_fraction: 0.0,
            rule: escalation::EscalationModel::constant(0.3).rule(0.4, 0),
            fallback_threshold: 0.75,
            plan: serde_json::Value::Null,
            cost: Some(weigher),
        };
        let mut f = msg("weak");
        routed(&flat, None)
            .unwrap()
            .decorate(&mut f, "job", 0.1, "weak", "strong");
        assert_eq!(f.cost_weight, None);
        // Plans of other policies are not quality stages.
        assert_eq!(
            stored_stage(Some(&serde_json::json!({"policy": "x"}))),
            None
        );
    }
}
