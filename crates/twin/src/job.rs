//! One job replayed the way the fleet runs it: the same pilot and audit samples (hashes of
//! the job and item ids), the same plan (`switchyard_core::quality`), the same escalation
//! decision (`switchyard_core::escalation::decide`) on the same answers and confidences
//! (the simulator's replay, `switchyard_sim::replay`, as its HTTP server would answer), and
//! every call priced from its replayed tokens. Only the clock and the network are missing.
//!
//! What the fleet cannot know and the twin can: each final answer's replayed score, so the
//! twin prints the quality actually achieved (as a share of all-strong) next to the audit's
//! estimate.

use rust_decimal::Decimal;
use serde::Serialize;
use switchyard_core::agreement::agreement;
use switchyard_core::audit::{self, AuditEstimate};
use switchyard_core::confidence::{self, Judgement, TokenLogprob};
use switchyard_core::escalation::{self, AnswerFeatures, EscalationModel, Labelled};
use switchyard_core::estimate::Estimator;
use switchyard_core::policy::{Cut, Route, strong_count, top_k_cut};
use switchyard_core::pricing::Price;
use switchyard_core::prompt;
use switchyard_core::quality::{self, JobItem, PilotAnswer, QualityInputs, QualityPlan};
use switchyard_core::samples::sample_agreement;
use switchyard_proto::{EscalationRule, Task};
use switchyard_sim::confidence::Calibration;
use switchyard_sim::replay::{Answer, Question, sample};

/// The models of a job and their prices.
#[derive(Debug, Clone)]
pub struct Models {
    pub weak: String,
    pub strong: String,
    pub weak_price: Price,
    pub strong_price: Price,
}

/// How the simulator answers.
#[derive(Debug, Clone, Copy)]
pub struct SimSetup {
    pub calibration: Calibration,
    pub seed: u64,
    /// The weak provider sends logprobs (else: samples are its confidence signal).
    pub logprobs: bool,
    /// The model's `confidence_without_logprobs` (used when no samples are drawn).
    pub confidence_without_logprobs: f64,
    /// `generate_max_tokens` of the weak model (token estimates of generation tasks).
    pub generate_max_tokens: u32,
}

/// The policy a replayed job asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PolicyChoice {
    /// `quality=Q`: pilot, plan, calibrated escalation, audit.
    Quality { target: f64 },
    /// A hand-set policy: the router's top `share` strong, weak answers below `threshold`
    /// escalate (no pilot, no audit).
    Fixed { share: f64, threshold: f64 },
}

/// One item of a replayed job.
#[derive(Debug, Clone, Copy)]
pub struct JobRow<'a> {
    pub id: &'a str,
    pub text: &'a str,
    /// The router's score (as the dispatcher computes it).
    pub score: f32,
    /// Replayed quality of each model's answer.
    pub weak_score: f64,
    pub strong_score: f64,
}

/// A replayed job.
#[derive(Debug, Clone)]
pub struct JobInput<'a> {
    pub job_id: String,
    pub task: Task,
    pub rows: Vec<JobRow<'a>>,
    pub policy: PolicyChoice,
    /// The router's weak quality for the task kind.
    pub weak_quality: f64,
    /// Labelled answers of earlier jobs (the team's history).
    pub history: &'a [Labelled],
    /// Extra samples per weak answer when the weak provider has no logprobs.
    pub samples: u8,
    pub audit_share: f64,
}

/// Where the money went.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Spend {
    #[serde(serialize_with = "ser_usd")]
    pub pilot: Decimal,
    #[serde(serialize_with = "ser_usd")]
    pub up_front: Decimal,
    /// Weak calls after the pilot, their extra samples included.
    #[serde(serialize_with = "ser_usd")]
    pub weak: Decimal,
    #[serde(serialize_with = "ser_usd")]
    pub escalations: Decimal,
    #[serde(serialize_with = "ser_usd")]
    pub audit: Decimal,
}

impl Spend {
    pub fn total(&self) -> Decimal {
        self.pilot + self.up_front + self.weak + self.escalations + self.audit
    }
}

fn ser_usd<S: serde::Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&d.normalize().to_string())
}

/// One point of a job's cost-quality frontier (per item, quality as a share of all-strong).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FrontierPoint {
    pub strong_share: f64,
    pub threshold: f64,
    /// Cost as a share of the all-strong cost.
    pub cost: f64,
    pub quality: f64,
}

/// What a replayed job did.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    pub job_id: String,
    pub items: usize,
    pub pilot: usize,
    pub strong_up_front: usize,
    pub escalated: usize,
    pub audited: usize,
    /// Model calls (a request for several samples is one call).
    pub calls: usize,
    #[serde(serialize_with = "ser_usd")]
    pub cost_usd: Decimal,
    #[serde(serialize_with = "ser_usd")]
    pub cost_all_strong_usd: Decimal,
    #[serde(serialize_with = "ser_usd")]
    pub cost_all_weak_usd: Decimal,
    pub spend: Spend,
    /// 1 − cost / all-strong cost.
    pub saved: f64,
    /// Mean replayed score of the final answers, of all-strong and of all-weak.
    pub quality: f64,
    pub quality_all_strong: f64,
    pub quality_all_weak: f64,
    /// quality / quality_all_strong: what the target is about.
    pub quality_vs_all_strong: f64,
    /// The audit's estimate (agreement with the strong model, a conservative proxy); `None`
    /// for a hand-set policy, which has no audit.
    pub audit: Option<AuditEstimate>,
    /// The AUROC of the weak confidence signal against replayed correctness (weak-routed
    /// items), as the simulator's call log would show it.
    pub confidence_auroc: Option<f64>,
    pub plan: Option<QualityPlan>,
    /// The cost-quality frontier of the plan's rule (shares × thresholds), for pictures.
    #[serde(skip)]
    pub frontier: Vec<FrontierPoint>,
    /// Hindsight: the savings of the cheapest frontier point that keeps the target (a
    /// `quality=Q` job's Q), on the items after the pilot, pilot and audit calls left out.
    /// What the plan's family of rules could have saved had it known every answer's score;
    /// the distance to `saved` is what not knowing costs. `None` for a hand-set policy or
    /// when no point keeps the target.
    pub hindsight_saved: Option<f64>,
}

/// A call the simulator answered.
struct Call {
    answer: Answer,
    samples: Vec<String>,
    cost: Decimal,
}

/// The fleet's view of the simulator for one job.
pub struct Twin<'a> {
    pub data: &'a switchyard_sim::Dataset,
    pub sim: SimSetup,
    pub models: &'a Models,
}

impl Twin<'_> {
    /// Asks `model` about `text` (with `samples` extra samples, one request), as a worker
    /// does.
    fn call(&self, task: &Task, model: &str, text: &str, samples: u8) -> Call {
        let messages = prompt::messages_for(task, text);
        let system = messages
            .iter()
            .filter(|m| m.role == "system")
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        let q = Question {
            model,
            text,
            system: &system,
            prompt_chars: messages.iter().map(|m| m.content.chars().count()).sum(),
            max_tokens: Some(prompt::max_tokens_for(task, self.sim.generate_max_tokens)),
        };
        let (cal, seed) = (&self.sim.calibration, self.sim.seed);
        let answer = sample(self.data, cal, seed, &q, 0);
        let extra: Vec<Answer> = (1..=u64::from(samples))
            .map(|i| sample(self.data, cal, seed, &q, i))
            .collect();
        let completion = extra.iter().fold(answer.completion_tokens, |s, a| {
            s.saturating_add(a.completion_tokens)
        });
        let price = if model == self.models.strong {
            &self.models.strong_price
        } else {
            &self.models.weak_price
        };
        Call {
            cost: price.cost(answer.prompt_tokens, completion),
            samples: extra.into_iter().map(|a| a.content).collect(),
            answer,
        }
    }

    /// Judges a call as the worker does: from the logprobs the simulator would send, or
    /// from the agreement of its samples.
    fn judge(&self, task: &Task, call: &Call, with_logprobs: bool) -> (Judgement, bool) {
        let tokens: Option<Vec<TokenLogprob>> = with_logprobs.then(|| {
            switchyard_sim::openai::logprobs(&call.answer, 0)
                .content
                .into_iter()
                .map(|t| TokenLogprob {
                    token: t.token,
                    logprob: t.logprob,
                })
                .collect()
        });
        let fallback = self.sim.confidence_without_logprobs;
        let content = &call.answer.content;
        let mut j = match task {
            Task::Classify { labels, .. } => {
                confidence::judge_label(content, tokens.as_deref(), labels, fallback)
            }
            Task::Summarize { max_words, .. } => confidence::judge_text(
                content,
                tokens.as_deref(),
                Some(max_words.unwrap_or(prompt::DEFAULT_MAX_WORDS)),
                fallback,
            ),
            Task::Generate { .. } | Task::Chat {} => {
                confidence::judge_text(content, tokens.as_deref(), None, fallback)
            }
        };
        if !with_logprobs
            && !j.off_label
            && let Some(a) = sample_agreement(task, content, &call.samples)
        {
            j.confidence = a;
        }
        (j, with_logprobs)
    }

    /// The features of a weak answer, from what the worker stores (the judged answer and
    /// confidence), as the worker and the dispatcher compute them.
    fn features(&self, task: &Task, call: &Call, score: f32) -> (Judgement, AnswerFeatures) {
        let (j, from_logprobs) = self.judge(task, call, self.sim.logprobs);
        let f = AnswerFeatures::of_stored(
            task,
            score,
            &j.answer,
            j.confidence,
            from_logprobs,
            !call.samples.is_empty(),
        );
        (j, f)
    }

    /// A weak answer labelled against the strong one, as a pilot item yields it: the weak
    /// answer's features and how far it fell short (1 − agreement). Also the two calls.
    fn labelled(
        &self,
        task: &Task,
        row: &JobRow<'_>,
        samples: u8,
    ) -> (AnswerFeatures, f64, Call, Call) {
        let w = self.call(task, &self.models.weak, row.text, samples);
        let s = self.call(task, &self.models.strong, row.text, 0);
        let (wj, f) = self.features(task, &w, row.score);
        let (sj, _) = self.judge(task, &s, true);
        let short = 1.0 - agreement(task.kind(), &wj.answer, &sj.answer);
        (f, short, w, s)
    }

    /// Labelled answers of `rows` (the team's history: earlier jobs' pilots and audits).
    pub fn history(&self, task: &Task, rows: &[JobRow<'_>], samples: u8) -> Vec<Labelled> {
        let samples = if self.sim.logprobs { 0 } else { samples };
        rows.iter()
            .map(|r| {
                let (features, short, _, _) = self.labelled(task, r, samples);
                Labelled {
                    features,
                    short,
                    weight: 1.0,
                }
            })
            .collect()
    }

    /// Replays `job`.
    pub fn run(&self, job: &JobInput<'_>) -> JobReport {
        let task = &job.task;
        let kind = task.kind();
        let n = job.rows.len();
        let weak = self.models.weak.as_str();
        let strong = self.models.strong.as_str();
        let samples = if self.sim.logprobs { 0 } else { job.samples };
        let estimator = Estimator::new(task, self.sim.generate_max_tokens);
        let sample_tokens = |t: switchyard_core::estimate::TokenEstimate| {
            let mut t = t;
            t.completion = t.completion.saturating_mul(1 + u32::from(samples));
            t
        };
        // The cost estimates the dispatcher plans with (tokens × prices, before any call).
        // And the weak one without extra samples, as the dispatcher's router plans with.
        let mut no_sample_weak: Vec<Decimal> = Vec::with_capacity(job.rows.len());
        let estimates: Vec<(Decimal, Decimal)> = job
            .rows
            .iter()
            .map(|r| {
                let t = estimator.tokens(r.text);
                no_sample_weak.push(switchyard_core::estimate::cost(t, &self.models.weak_price));
                (
                    switchyard_core::estimate::cost(sample_tokens(t), &self.models.weak_price),
                    switchyard_core::estimate::cost(t, &self.models.strong_price),
                )
            })
            .collect();
        let mut spend = Spend::default();
        let mut calls = 0usize;
        let mut final_scores = vec![0.0; n];
        let mut strong_final = vec![false; n];
        let mut audit_samples: Vec<f64> = Vec::new();
        let mut signal: Vec<(f64, bool)> = Vec::new();
        let mut escalated = 0usize;
        let mut audited = 0usize;
        // Per item after the pilot, what the frontier needs: (score, p or confidence, costs,
        // weak and strong quality, not-an-answer).
        let mut frontier_rows: Vec<FrontierRow> = Vec::new();

        let (plan, rule, cut, audit_fraction, pilot_set): (
            Option<QualityPlan>,
            Option<EscalationRule>,
            Cut,
            f64,
            Vec<bool>,
        ) = match job.policy {
            PolicyChoice::Quality { target } => {
                let mut draws: Vec<f64> = job
                    .rows
                    .iter()
                    .map(|r| audit::pilot_draw(&job.job_id, r.id))
                    .collect();
                // The dispatcher's check, on the same estimates without extra samples.
                let all_weak: Decimal = no_sample_weak.iter().sum();
                let all_strong: Decimal = estimates.iter().map(|(_, s)| *s).sum();
                let asked = if quality::pilot_can_pay(all_weak, all_strong) {
                    quality::pilot_fraction(n, job.history.len(), job.audit_share)
                } else {
                    0.0
                };
                let fraction = quality::exact_pilot_fraction(&mut draws, asked);
                let pilot_set: Vec<bool> = job
                    .rows
                    .iter()
                    .map(|r| audit::in_pilot(&job.job_id, r.id, fraction))
                    .collect();
                let mut pilot = Vec::new();
                for (i, r) in job.rows.iter().enumerate().filter(|(i, _)| pilot_set[*i]) {
                    let (features, short, w, s) = self.labelled(task, r, samples);
                    calls += 2;
                    spend.pilot += w.cost + s.cost;
                    pilot.push(PilotAnswer {
                        item: i,
                        features,
                        short,
                    });
                    final_scores[i] = r.strong_score;
                    strong_final[i] = true;
                }
                let items: Vec<JobItem> = job
                    .rows
                    .iter()
                    .zip(&estimates)
                    .enumerate()
                    .map(|(i, (r, &(w, s)))| JobItem {
                        seq: i as i64,
                        router_score: r.score,
                        weak_usd: w,
                        strong_usd: s,
                        pilot: pilot_set[i],
                    })
                    .collect();
                let plan = quality::plan(&QualityInputs {
                    target,
                    items: &items,
                    pilot: &pilot,
                    history: job.history,
                    weak_quality: job.weak_quality,
                    extra_samples: samples,
                    audit_share: job.audit_share,
                });
                let (rule, cut, af) = (plan.rule.clone(), plan.cut, plan.audit_fraction);
                (Some(plan), Some(rule), cut, af, pilot_set)
            }
            PolicyChoice::Fixed { share, .. } => {
                let mut keyed: Vec<(f32, i64)> = job
                    .rows
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (r.score, i as i64))
                    .collect();
                let cut = top_k_cut(strong_count(share, n), &mut keyed);
                (None, None, cut, 0.0, vec![false; n])
            }
        };
        let threshold = match job.policy {
            PolicyChoice::Fixed { threshold, .. } => threshold,
            PolicyChoice::Quality { .. } => 0.0,
        };
        let model = rule.as_ref().and_then(EscalationModel::of_rule);
        let weigher = plan.as_ref().map(|p| {
            quality::CostWeigher::new(&self.models.strong_price, &estimator, p.mean_strong_usd)
        });
        let sloped = rule.as_ref().is_some_and(|r| r.cost_slope != 0.0);
        // The weight the dispatcher puts on an item's message (only with a slope).
        let weight_of = |text: &str| {
            weigher
                .filter(|_| sloped)
                .map(|c| f64::from(c.weight(task, text)))
        };
        // Where the plan's rule ranks an answer for escalation (its gain per unit of cost,
        // as the plan ranks them; `p` alone without a slope), for the frontier.
        let floor = plan.as_ref().map_or(0.0, |p| p.gain_floor);
        let rank = |p: f64, weight: Option<f64>| match weight {
            _ if p > 1.0 => f64::MAX,
            Some(w) => (p - floor).max(0.0) / w,
            None => p,
        };
        let mut strong_up_front = 0usize;
        for (i, r) in job.rows.iter().enumerate() {
            if pilot_set[i] {
                continue;
            }
            let s_call_cost = || self.call(task, strong, r.text, 0).cost;
            if cut.route(r.score, i as i64) == Route::Strong {
                strong_up_front += 1;
                calls += 1;
                let c = s_call_cost();
                spend.up_front += c;
                final_scores[i] = r.strong_score;
                strong_final[i] = true;
                // The twin may look at the weak answer the fleet never asked for, so the
                // frontier covers every share (not counted in the job's spend).
                let w = self.call(task, weak, r.text, samples);
                let (_, f) = self.features(task, &w, r.score);
                let p = model.map_or(1.0 - f.confidence, |m| m.p_short(&f));
                let p = if f.not_an_answer() { 2.0 } else { p };
                let key = rank(p, weight_of(r.text));
                frontier_rows.push(FrontierRow::of(r, Some(key), w.cost, c));
                continue;
            }
            let w = self.call(task, weak, r.text, samples);
            calls += 1;
            spend.weak += w.cost;
            let (wj, f) = self.features(task, &w, r.score);
            if let Some(correct) = w.answer.correct {
                signal.push((wj.confidence, correct));
            }
            let weight = weight_of(r.text);
            let up = escalation::decide(rule.as_ref(), threshold, &f, weight);
            let strong_cost = s_call_cost();
            let p = model.map_or(1.0 - f.confidence, |m| m.p_short(&f));
            let p = if f.not_an_answer() { 2.0 } else { p };
            frontier_rows.push(FrontierRow::of(
                r,
                Some(rank(p, weight)),
                w.cost,
                strong_cost,
            ));
            let mut policy_answer_agrees_by_definition = false;
            if up {
                escalated += 1;
                calls += 1;
                spend.escalations += strong_cost;
                final_scores[i] = r.strong_score;
                strong_final[i] = true;
                policy_answer_agrees_by_definition = true;
            } else {
                final_scores[i] = r.weak_score;
            }
            if audit::sampled(&job.job_id, r.id, audit_fraction) {
                audited += 1;
                calls += 1;
                let s = self.call(task, strong, r.text, 0);
                spend.audit += s.cost;
                let (sj, _) = self.judge(task, &s, true);
                audit_samples.push(if policy_answer_agrees_by_definition {
                    1.0
                } else {
                    agreement(kind, &wj.answer, &sj.answer)
                });
                // The audit's strong answer becomes the item's final one.
                final_scores[i] = r.strong_score;
                strong_final[i] = true;
            }
        }
        let cost_all_strong: Decimal = job
            .rows
            .iter()
            .map(|r| self.call(task, strong, r.text, 0).cost)
            .sum();
        let cost_all_weak: Decimal = job
            .rows
            .iter()
            .map(|r| self.call(task, weak, r.text, 0).cost)
            .sum();
        let q_strong = job.rows.iter().map(|r| r.strong_score).sum::<f64>();
        let q_weak = job.rows.iter().map(|r| r.weak_score).sum::<f64>();
        let q = final_scores.iter().sum::<f64>();
        let strong_final_n = strong_final.iter().filter(|s| **s).count();
        let cost = spend.total();

        let frontier = frontier(&frontier_rows);
        let hindsight_saved = match job.policy {
            PolicyChoice::Quality { target } => hindsight(&frontier, target),
            PolicyChoice::Fixed { .. } => None,
        };
        let m = n.max(1) as f64;
        JobReport {
            job_id: job.job_id.clone(),
            items: n,
            pilot: pilot_set.iter().filter(|p| **p).count(),
            strong_up_front,
            escalated,
            audited,
            calls,
            cost_usd: cost,
            cost_all_strong_usd: cost_all_strong,
            cost_all_weak_usd: cost_all_weak,
            spend,
            saved: ratio(cost, cost_all_strong).map_or(0.0, |r| 1.0 - r),
            quality: q / m,
            quality_all_strong: q_strong / m,
            quality_all_weak: q_weak / m,
            quality_vs_all_strong: if q_strong > 0.0 { q / q_strong } else { 1.0 },
            audit: matches!(job.policy, PolicyChoice::Quality { .. })
                .then(|| audit::estimate(strong_final_n, n - strong_final_n, &audit_samples)),
            confidence_auroc: escalation::auroc(&signal),
            plan,
            frontier,
            hindsight_saved,
        }
    }
}

/// The savings of the cheapest frontier point whose quality reaches `target`.
fn hindsight(frontier: &[FrontierPoint], target: f64) -> Option<f64> {
    frontier
        .iter()
        .filter(|p| p.quality >= target - 1e-12)
        .map(|p| p.cost)
        .min_by(f64::total_cmp)
        .map(|cost| 1.0 - cost)
}

/// `a / b` as a float (money stays exact until this last division for a report).
pub fn ratio(a: Decimal, b: Decimal) -> Option<f64> {
    use rust_decimal::prelude::ToPrimitive;
    if b.is_zero() {
        return None;
    }
    (a / b).to_f64()
}

/// What the frontier needs of an item after the pilot.
#[derive(Debug, Clone, Copy)]
struct FrontierRow {
    score: f32,
    /// Where the job's rule ranks the weak answer for escalation, higher first: the
    /// probability it falls short, over its cost weight when the rule has a cost slope
    /// (`f64::MAX` for non-answers); `None` if never asked.
    p: Option<f64>,
    weak_cost: f64,
    strong_cost: f64,
    weak: f64,
    strong: f64,
}

impl FrontierRow {
    fn of(r: &JobRow<'_>, p: Option<f64>, weak: Decimal, strong: Decimal) -> Self {
        use rust_decimal::prelude::ToPrimitive;
        Self {
            score: r.score,
            p,
            weak_cost: weak.to_f64().unwrap_or(0.0),
            strong_cost: strong.to_f64().unwrap_or(0.0),
            weak: r.weak_score,
            strong: r.strong_score,
        }
    }
}

/// Replays the items after the pilot under a grid of up-front shares and thresholds of the
/// job's rule (the weak answer of every item is known to the twin), and keeps the points no other point beats on both cost and quality.
/// Cost and quality are shares of the same items' all-strong figures; pilot and audit calls
/// are left out: the frontier compares routing choices.
fn frontier(rows: &[FrontierRow]) -> Vec<FrontierPoint> {
    let all_cost: f64 = rows.iter().map(|r| r.strong_cost).sum();
    let all_q: f64 = rows.iter().map(|r| r.strong).sum();
    if rows.is_empty() || all_cost <= 0.0 || all_q <= 0.0 {
        return Vec::new();
    }
    let fixed_cost: f64 = rows
        .iter()
        .filter(|r| r.p.is_none())
        .map(|r| r.strong_cost)
        .sum();
    let fixed_q: f64 = rows
        .iter()
        .filter(|r| r.p.is_none())
        .map(|r| r.strong)
        .sum();
    let mut asked: Vec<&FrontierRow> = rows.iter().filter(|r| r.p.is_some()).collect();
    asked.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut ps: Vec<f64> = asked.iter().filter_map(|r| r.p).collect();
    ps.sort_by(f64::total_cmp);
    let mut thresholds: Vec<f64> = (0..=40)
        .filter_map(|i| ps.get(ps.len().saturating_sub(1) * i / 40).copied())
        .collect();
    thresholds.push(f64::INFINITY);
    let mut points = Vec::new();
    for s in 0..=20 {
        let share = f64::from(s) / 20.0;
        let k = ((share * asked.len() as f64).round() as usize).min(asked.len());
        for &t in &thresholds {
            let (mut cost, mut q) = (fixed_cost, fixed_q);
            for (rank, r) in asked.iter().enumerate() {
                if rank < k {
                    cost += r.strong_cost;
                    q += r.strong;
                } else if r.p.unwrap_or(0.0) >= t {
                    cost += r.weak_cost + r.strong_cost;
                    q += r.strong;
                } else {
                    cost += r.weak_cost;
                    q += r.weak;
                }
            }
            points.push(FrontierPoint {
                strong_share: share,
                threshold: t.min(1.0),
                cost: cost / all_cost,
                quality: q / all_q,
            });
        }
    }
    pareto(points)
}

/// The points not beaten on both cost and quality, by rising cost.
fn pareto(mut points: Vec<FrontierPoint>) -> Vec<FrontierPoint> {
    points.sort_by(|a, b| {
        a.cost
            .total_cmp(&b.cost)
            .then(b.quality.total_cmp(&a.quality))
    });
    let mut out: Vec<FrontierPoint> = Vec::new();
    for p in points {
        if out.last().is_none_or(|l| p.quality > l.quality + 1e-12) {
            out.push(p);
        }
    }
    out
}

impl JobReport {
    /// The frontier as (cost share, quality share) pairs.
    pub fn frontier_xy(&self) -> Vec<(f64, f64)> {
        self.frontier.iter().map(|p| (p.cost, p.quality)).collect()
    }
}
