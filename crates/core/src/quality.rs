//! Planning a `quality=Q` job: the up-front strong share and the escalation rule, chosen
//! together, from calibration measured on the job itself (its pilot) and, where present,
//! the team's history.
//!
//! A batch job is not latency-bound, so a quality job runs in two steps (pilot, then route):
//!
//! 1. **Pilot.** A uniform, hash-chosen slice of the job ([`pilot_fraction`],
//!    [`crate::audit::in_pilot`]) is answered by both tiers: the weak model (its answer only
//!    recorded) and the strong model (an audit call, whose answer is the item's final one).
//!    Each pilot item yields one labelled answer: what was known after the weak answer
//!    ([`AnswerFeatures`]) and how far it fell short of the strong answer (1 − agreement).
//! 2. **Plan** ([`plan`]). A logistic model is fitted to those labels (and the team's
//!    history): the probability `p` that a weak answer falls short, given the router's
//!    score, the confidence, the answer checks and the samples' agreement
//!    ([`crate::escalation`]). Every pair (up-front strong share, escalation threshold) is
//!    then evaluated on the pilot items, which are a uniform sample of the job: its cost
//!    (every call counted: pilot, samples, escalations, the audit) and the quality it
//!    leaves on the table. The cheapest pair whose quality, with a margin for the pilot's
//!    sampling error, reaches the target is the plan; the rest of the job is routed by it.
//!
//! **From disagreement to quality.** Without gold labels the pilot measures disagreement
//! with the strong model, not quality. Disagreement overstates the loss: the strong model is
//! wrong too, sometimes where the weak one is right. The plan models the expected quality
//! gain of the strong model on an item as linear in `p`, `gain = ρ (p − p₀)`:
//! - `p₀`, the disagreement that remains where the weak answer is surest (the strong
//!   model's own errors and noise), is measured: the disagreement rate of the labelled
//!   answers in the lowest fifth of `p`, at the lower end of its 95% interval (a lower
//!   `p₀` spreads the gain more evenly, which escalates more: the cautious side);
//! - `ρ` scales the gains so that, over the job, they add up to [`GAIN_PER_DISAGREEMENT`]
//!   times the disagreement measured on the pilot: the share of a disagreement that is the
//!   weak model's loss. Disagreement bounds the gap (for right-or-wrong answers, the gap is at
//!   most the disagreement), and it is measured on the job; the share is a prior.
//!
//! So the pilot says *where* the weak model falls short and how well the signals see it
//! (measured, not assumed: a confidence that is near random gets a weight near zero and the
//! plan escalates more), and *how much*: the gap follows the job's disagreement. An earlier
//! version took the size of the gap from the router's predicted gain instead; on jobs of
//! groups the router never saw that prediction hardly moves (0.09–0.11 on held-out MMLU
//! subjects whose true gaps are 0.03–0.18; 0.09 on news, whose gap is 0.26), while the true
//! gap stays near half the disagreement (0.38–0.46 on MMLU folds and news, 0.45–0.6 on
//! GSM8K). Where the job's share differs from the prior, the plan is off with it: the audit
//! reports what was delivered (see [`crate::audit`]).

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::Serialize;
use switchyard_proto::EscalationRule;

use crate::calibrate::strong_quality;
use crate::escalation::{self, AnswerFeatures, EscalationModel, Labelled};
use crate::policy::Cut;

/// The pilot is at least this many items (all of a smaller job): enough labels to weigh a
/// few signals.
pub const MIN_PILOT: usize = 40;

/// The pilot is at least this share of a large job. Why 8% and not less: a plan is only as
/// steady as the pilot it is fitted to. Over 30 draws of held-out MMLU subject folds
/// (975-4,109 items) at confidence AUROC 0.75, 3% kept the target in 27 (worst 93.1%), 6% in
/// 29, 8% in 30 (worst 95.6%), for 1.9 points of savings (37.4% → 35.5%); on the demo's MMLU
/// job the savings of 12 draws spread over 20-51% at 3% and 26-41% at 8%, around the same
/// mean (docs/quality.md, *Pilot size*).
pub const PILOT_SHARE: f64 = 0.08;

/// The pilot is at most this many items (unless [`MIN_PILOT`] or half the job asks more):
/// a thousand labelled answers pin the escalation model and the margin down; a larger share
/// of a very large job would buy little and cost a strong call each.
pub const MAX_PILOT: usize = 1_000;

/// A job with at least this many labelled answers of history needs only the audit share of
/// pilot.
pub const HISTORY_ENOUGH: usize = 400;

/// The plan's quality must reach the target by this many standard errors (one-sided 97.5%)
/// of its predicted gap: the pilot's estimate of it and the job's own draw around it.
///
/// `quality=Q` promises each job, not the average job: with 1.28 (one-sided 90%) the jobs
/// where the gain model is about right and the margin binds (a few hundred items, a
/// 40-item pilot: GSM8K-like) missed in about one draw of ten, as that bound allows (510
/// draws of held-out jobs, with and without logprobs: 7 missed, worst 89.4%; on the
/// untouched GSM8K slice 2 of 10 at AUROC 0.75); with 1.96, 3 of 510 (worst 93.6%) for 2-6
/// points of savings (docs/quality.md, *A margin for each job*).
pub const MARGIN_Z: f64 = 1.96;

/// The share of a measured disagreement with the strong model that is the weak model's
/// loss (the gain of escalating it), a prior: the strong model is right on three of four
/// disagreements. Labels of the team's own traffic could measure it per task kind; the
/// fleet has no gold labels today (see `docs/quality.md`). Higher is the cautious side.
pub const GAIN_PER_DISAGREEMENT: f64 = 0.5;

/// One item the policy decides, before any call: its router score and cost estimates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobItem {
    /// Input position (breaks ties of the up-front cut).
    pub seq: i64,
    pub router_score: f32,
    /// Estimated cost on the weak tier, its extra samples included (none with logprobs).
    pub weak_usd: Decimal,
    /// Estimated cost on the strong tier.
    pub strong_usd: Decimal,
    /// In the pilot (answered by both tiers before the plan).
    pub pilot: bool,
}

/// A pilot item's weak answer, labelled against its strong answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PilotAnswer {
    /// Index into the job's items.
    pub item: usize,
    pub features: AnswerFeatures,
    /// 1 − agreement of the weak answer with the strong one, in [0, 1].
    pub short: f64,
}

/// Everything the plan is made from.
#[derive(Debug, Clone, Copy)]
pub struct QualityInputs<'a> {
    /// The share of all-strong quality to keep, in (0, 1].
    pub target: f64,
    pub items: &'a [JobItem],
    pub pilot: &'a [PilotAnswer],
    /// Labelled answers of the team's earlier jobs (same task kind and models).
    pub history: &'a [Labelled],
    /// The weak model's expected quality on the task kind (the router's).
    pub weak_quality: f64,
    /// Extra samples per weak answer (a model without logprobs), carried by the rule.
    pub extra_samples: u8,
    /// The audit's cap, as a share of the all-strong cost.
    pub audit_share: f64,
}

/// The plan of a quality job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QualityPlan {
    pub target: f64,
    /// Items decided by the policy; of them in the pilot; routed strong up front; the
    /// escalation rate predicted among the weak-routed ones.
    pub items: usize,
    pub pilot: usize,
    pub strong_up_front: usize,
    pub predicted_escalation_rate: f64,
    /// Predicted quality as a share of all-strong: the estimate and the lower bound the
    /// target was checked against.
    pub predicted_quality: f64,
    pub predicted_quality_low: f64,
    /// The router's predicted all-strong and all-weak mean quality.
    pub all_strong_quality: f64,
    pub all_weak_quality: f64,
    /// Expected cost with every call counted (pilot, audit, samples, escalations), and the
    /// all-strong and all-weak costs of the same items.
    #[serde(serialize_with = "ser_usd")]
    pub expected_usd: Decimal,
    #[serde(serialize_with = "ser_usd")]
    pub all_strong_usd: Decimal,
    #[serde(serialize_with = "ser_usd")]
    pub all_weak_usd: Decimal,
    /// The audit's sampling fraction among the weak-routed items after the pilot.
    pub audit_fraction: f64,
    /// The gain model: `gain = scale × (p − floor)`.
    pub gain_scale: f64,
    pub gain_floor: f64,
    /// Disagreement measured on the pilot, and how well the model separates short answers
    /// there (AUROC of `p` against disagreement, in sample; `None` when one class is empty).
    pub pilot_disagreement: f64,
    pub signal_auroc: Option<f64>,
    /// Labelled rows of history used.
    pub history: usize,
    /// The escalation rule the weak-routed items carry.
    pub rule: EscalationRule,
    /// The job's mean estimated strong cost an item, in USD: an item's `cost_weight` is its
    /// own over this ([`cost_weight`]).
    pub mean_strong_usd: f64,
    /// For workers that do not know rules yet: the confidence threshold that escalates as
    /// many of the pilot's weak-routed answers as the rule does.
    pub fallback_threshold: f64,
    /// Items with a router score above `.0`, or equal with `seq ≤ .1`, go strong up front.
    #[serde(skip)]
    pub cut: Cut,
}

fn ser_usd<S: serde::Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&d.normalize().to_string())
}

/// The share of a job's items to pilot: at least [`MIN_PILOT`] items and [`PILOT_SHARE`]
/// (that share at most [`MAX_PILOT`] items), at most half the job; with enough history,
/// only the audit share (the history calibrates, the pilot checks).
pub fn pilot_fraction(items: usize, history_rows: usize, audit_share: f64) -> f64 {
    if items == 0 {
        return 0.0;
    }
    let n = items as f64;
    if history_rows >= HISTORY_ENOUGH {
        return audit_share.max(10.0 / n).clamp(0.0, 0.5);
    }
    let wanted = (MIN_PILOT as f64).max((PILOT_SHARE * n).min(MAX_PILOT as f64));
    (wanted / n).min(0.5)
}

/// Whether a pilot can pay for itself: only when the weak tier is estimated cheaper than
/// the strong one over the job's items (`all_weak_usd`, `all_strong_usd`: the router's cost
/// estimates, extra samples left out). A weak model that costs as much as the strong one or
/// more (a misconfigured pair, or one like RouterArena's claude-3-haiku against the cheaper
/// and better gemini-2.0-flash) can save nothing, so a quality job sends everything strong
/// without paying for a pilot and its weak answers. Unknown prices (both estimates zero)
/// pilot as before.
pub fn pilot_can_pay(all_weak_usd: Decimal, all_strong_usd: Decimal) -> bool {
    all_weak_usd.is_zero() || all_weak_usd < all_strong_usd
}

/// `fraction` made exact for a job whose items drew `draws` ([`crate::audit::pilot_draw`],
/// in any order; reordered here): the cutoff below which exactly `round(fraction × n)` of the
/// `n` draws fall, halfway between the last one in and the first one out. Stored as the
/// job's pilot fraction, it picks the same items with [`crate::audit::in_pilot`] wherever
/// it is read. Why: drawing each item with probability `fraction` gives a pilot of a
/// binomial size around the one asked for; a 975-item job asking for 40 items drew 31, and
/// a plan from a pilot that small missed its target (90.4% at a 95% target). With exact
/// pilots the held-out suites kept 95% in more draws at the same savings (docs/quality.md).
pub fn exact_pilot_fraction(draws: &mut [f64], fraction: f64) -> f64 {
    let n = draws.len();
    let k = (fraction.clamp(0.0, 1.0) * n as f64).round() as usize;
    if k == 0 {
        return 0.0;
    }
    if k >= n {
        return 1.0;
    }
    let (below, kth, _) = draws.select_nth_unstable_by(k, f64::total_cmp);
    let last_in = below.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (last_in + *kth) / 2.0
}

/// One pilot row prepared for the search.
#[derive(Debug, Clone, Copy)]
struct Row {
    score: f32,
    seq: i64,
    p: f64,
    forced: bool,
    gain: f64,
    /// The item's estimated strong cost over the job's mean ([`cost_weight`]).
    w: f64,
    /// Where it ranks for escalation: its expected gain per unit of strong cost under the
    /// gain model, `(p − floor) / w`, 0 below the floor (ties broken by `p`).
    key: f64,
}

impl Row {
    /// Escalation order: most gain per dollar first, then the likeliest short.
    fn before(&self, other: &Row) -> std::cmp::Ordering {
        other
            .key
            .total_cmp(&self.key)
            .then(other.p.total_cmp(&self.p))
    }
}

/// How the dispatcher weighs an item's strong cost for its rule's `cost_slope`, from its
/// text alone, so that a message published again (a resumed dispatch, the stuck-item sweep)
/// carries the same weight as the first, and the twin computes what the fleet sends: the
/// strong tier's estimated cost of the item (its estimated prompt tokens at the input price,
/// plus the task's completion budget at the output price) over the job's mean.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct CostWeigher {
    pub usd_per_prompt_token: f64,
    /// The completion budget's cost, the same for every item of the job.
    pub fixed_usd: f64,
    /// The job's mean estimated strong cost an item ([`QualityPlan::mean_strong_usd`]).
    pub mean_usd: f64,
}

impl CostWeigher {
    /// The weigher of a job whose strong tier costs `strong` and whose items are estimated
    /// by `estimator`, with `mean_usd` the plan's mean.
    pub fn new(
        strong: &crate::pricing::Price,
        estimator: &crate::estimate::Estimator,
        mean_usd: f64,
    ) -> Self {
        let per_mtok = |d: Decimal| usd(d) / 1e6;
        Self {
            usd_per_prompt_token: per_mtok(strong.input_usd_per_mtok),
            fixed_usd: per_mtok(strong.output_usd_per_mtok)
                * f64::from(estimator.tokens("").completion),
            mean_usd,
        }
    }

    /// The cost weight of an item of `task` whose text is `text` (1 when nothing is known).
    pub fn weight(&self, task: &switchyard_proto::Task, text: &str) -> f32 {
        let prompt = crate::estimate::Estimator::new(task, 0).tokens(text).prompt;
        let usd = self.usd_per_prompt_token * f64::from(prompt) + self.fixed_usd;
        weight_or_one(usd / self.mean_usd) as f32
    }
}

/// An item's estimated strong-tier cost over the job's mean one (1 when either is unknown):
/// what its work message carries for its rule's `cost_slope`.
pub fn cost_weight(strong_usd: Decimal, mean_strong_usd: f64) -> f64 {
    weight_or_one(usd(strong_usd) / mean_strong_usd)
}

/// A cost weight, or 1 (the mean item) when it is no weight (a cost or a mean unknown).
fn weight_or_one(w: f64) -> f64 {
    if w.is_finite() && w > 0.0 { w } else { 1.0 }
}

/// Plans the job: fits the escalation model, measures the gain model and searches the
/// cheapest (up-front share, threshold) whose quality reaches the target with its margin.
///
/// Weak answers are escalated in order of their expected gain per dollar, `(p − floor) / w`
/// (`w` the item's strong cost over the job's mean), not of `p` alone: the target is on
/// quality summed over items and the price of an escalation is the item's strong call, so
/// among answers equally likely short, a short prompt is the cheaper quality to buy back.
/// On the held-out suites this saved 10-17 points more on MMLU jobs (long and short
/// questions mixed) and kept the target as often (docs/quality.md, *Cost-aware escalation*).
///
/// Only with logprobs. A weak model without them is judged by the agreement of a few
/// samples, a coarse `p` (a handful of levels), and ranked by cost there the plan kept the
/// target less often: held-out MMLU at AUROC 0.75, 15 of 20 draws (20 of 20 by `p`), GSM8K
/// 12 of 15 (13). Neither the prompt's length as a feature of the model (16 of 20) nor
/// ranking by cost only where the samples separate beyond chance (17 of 20) recovered it;
/// the cause is not established. Ranked by `p` alone there, as before.
pub fn plan(inputs: &QualityInputs<'_>) -> QualityPlan {
    plan_ranked(inputs, inputs.extra_samples == 0)
}

/// [`plan`], escalating by gain per dollar (`by_cost`) or by `p` alone.
fn plan_ranked(inputs: &QualityInputs<'_>, by_cost: bool) -> QualityPlan {
    let items = inputs.items;
    let n = items.len();
    let target = inputs.target.clamp(0.0, 1.0);
    let qw = inputs.weak_quality.clamp(0.0, 1.0);

    // The model, from the pilot and the history.
    let mut labelled: Vec<Labelled> = inputs
        .pilot
        .iter()
        .map(|a| Labelled {
            features: a.features,
            short: a.short,
            weight: 1.0,
        })
        .collect();
    labelled.extend_from_slice(inputs.history);
    let model = escalation::fit(&labelled);

    // The router's view of the job: predicted all-strong quality and gain per item.
    let gains: Vec<f64> = items
        .iter()
        .map(|i| strong_quality(qw, i.router_score) - qw)
        .collect();
    let mean_gain = gains.iter().sum::<f64>() / n.max(1) as f64;
    let all_strong_quality = qw + mean_gain;

    // The gain model over the pilot's answers.
    let ps: Vec<f64> = inputs
        .pilot
        .iter()
        .map(|a| model.p_short(&a.features))
        .collect();
    let pilot_disagreement = mean(inputs.pilot.iter().map(|a| a.short));
    let floor = disagreement_floor(&model, &labelled);
    let excess = mean(ps.iter().map(|p| p - floor));
    let budget_gain = GAIN_PER_DISAGREEMENT * pilot_disagreement;
    let (scale, use_router) = if excess > 1e-3 {
        (budget_gain / excess, false)
    } else {
        // The labels show nothing to separate: the router's gains stand alone.
        (0.0, true)
    };
    let mean_strong_usd = mean(items.iter().map(|i| usd(i.strong_usd)));
    let rows: Vec<Row> = inputs
        .pilot
        .iter()
        .zip(&ps)
        .filter_map(|(a, &p)| {
            let item = items.get(a.item)?;
            let w = cost_weight(item.strong_usd, mean_strong_usd);
            Some(Row {
                score: item.router_score,
                seq: item.seq,
                p,
                forced: a.features.not_an_answer(),
                gain: if use_router {
                    gains[a.item]
                } else {
                    scale * (p - floor)
                },
                w,
                key: if by_cost { (p - floor).max(0.0) / w } else { p },
            })
        })
        .collect();
    let signal_auroc = escalation::auroc(
        &inputs
            .pilot
            .iter()
            .zip(&ps)
            .map(|(a, &p)| (p, a.short >= 0.5))
            .collect::<Vec<_>>(),
    );

    // The items after the pilot, ranked by router score for the up-front share.
    let mut rest: Vec<&JobItem> = items.iter().filter(|i| !i.pilot).collect();
    rest.sort_by(|a, b| {
        b.router_score
            .total_cmp(&a.router_score)
            .then(a.seq.cmp(&b.seq))
    });
    let pilot_usd: f64 = items
        .iter()
        .filter(|i| i.pilot)
        .map(|i| usd(i.weak_usd) + usd(i.strong_usd))
        .sum();
    let all_strong_usd: Decimal = items.iter().map(|i| i.strong_usd).sum();
    let all_weak_usd: Decimal = items.iter().map(|i| i.weak_usd).sum();
    let total_quality = all_strong_quality * n as f64;
    let allowed_gap = (1.0 - target) * total_quality;
    let n_rest = rest.len();
    let m = rows.len().max(1) as f64;

    let mut best: Option<Candidate> = None;
    // Nothing measured (every pilot item failed, no history): nothing can be promised about
    // weak answers, so the rest goes strong (the audit will show it).
    let informed = !rows.is_empty();
    let step = (n_rest / 200).max(1);
    let mut k: usize = 0;
    // Suffix sums of the rest's costs by rank: the strong cost of the top k, the weak cost
    // and strong cost of the others.
    let mut strong_top = vec![0.0; n_rest + 1];
    let mut weak_suffix = vec![0.0; n_rest + 1];
    let mut strong_suffix = vec![0.0; n_rest + 1];
    for (i, it) in rest.iter().enumerate() {
        strong_top[i + 1] = strong_top[i] + usd(it.strong_usd);
    }
    for i in (0..n_rest).rev() {
        weak_suffix[i] = weak_suffix[i + 1] + usd(rest[i].weak_usd);
        strong_suffix[i] = strong_suffix[i + 1] + usd(rest[i].strong_usd);
    }
    loop {
        let cut = match k.checked_sub(1).and_then(|i| rest.get(i)) {
            None => Cut::Nothing,
            Some(it) => Cut::Rank {
                score_cut: it.router_score,
                last_seq: it.seq,
            },
        };
        // Pilot rows that this cut leaves weak, most likely short first (non-answers always
        // escalate, so they lead).
        let mut weak_rows: Vec<&Row> = rows
            .iter()
            .filter(|r| cut.route(r.score, r.seq) == crate::policy::Route::Weak)
            .collect();
        weak_rows.sort_by(|a, b| b.forced.cmp(&a.forced).then(a.before(b)));
        let forced = weak_rows.iter().filter(|r| r.forced).count();
        // The strong cost of escalating the first `e` rows, as a share of escalating all:
        // the escalated items are not the average item once cost ranks them.
        let weak_w: f64 = weak_rows.iter().map(|r| r.w).sum();
        let mut escalated_w: f64 = weak_rows[..forced].iter().map(|r| r.w).sum();
        let up_front_usd = strong_top[k];
        let weak_usd = weak_suffix[k];
        let strong_if_escalated = strong_suffix[k];
        let audit_fraction = crate::audit::fraction_for_cap(
            inputs.audit_share,
            all_strong_usd,
            Decimal::try_from(strong_if_escalated).unwrap_or(Decimal::ZERO),
        );
        // Gap contributions of the rows left weak: the non-answers escalate whatever the
        // threshold; then one more row at a time, most likely short first.
        let mut gap_sum: f64 = weak_rows[forced..].iter().map(|r| r.gain).sum();
        let mut gap_sq: f64 = weak_rows[forced..].iter().map(|r| r.gain * r.gain).sum();
        // The rows' disagreement probabilities, for the spread of the job's own outcome.
        let mut p_sum: f64 = weak_rows[forced..]
            .iter()
            .map(|r| r.p.clamp(0.0, 1.0))
            .sum();
        for e in forced..=weak_rows.len() {
            if e > forced {
                let r = weak_rows[e - 1];
                gap_sum -= r.gain;
                gap_sq -= r.gain * r.gain;
                p_sum -= r.p.clamp(0.0, 1.0);
                escalated_w += r.w;
            }
            let escalation_rate = if weak_rows.is_empty() {
                0.0
            } else {
                e as f64 / weak_rows.len() as f64
            };
            // (Every weight is positive, so `weak_w` is 0 only with no weak rows.)
            let escalated_cost_share = if weak_w > 0.0 {
                (escalated_w / weak_w).clamp(0.0, 1.0)
            } else {
                0.0
            };
            // Per item after the pilot, the mean gap over the pilot rows (rows routed strong
            // or escalated contribute 0), and its standard error.
            let mean_gap = gap_sum / m;
            let var = (gap_sq / m - mean_gap * mean_gap).max(0.0);
            let se = (var / m).sqrt();
            let gap = n_rest as f64 * mean_gap;
            let gap_high = gap_bound(n_rest as f64, m, mean_gap, se, p_sum);
            let cost = pilot_usd
                + up_front_usd
                + weak_usd
                + (escalated_cost_share + audit_fraction) * strong_if_escalated;
            if informed && gap_high <= allowed_gap + 1e-12 {
                if best.as_ref().is_none_or(|b| cost < b.cost - 1e-12) {
                    best = Some(Candidate {
                        cost,
                        k,
                        cut,
                        threshold: threshold_between(&weak_rows, e, forced, floor, by_cost),
                        escalation_rate,
                        gap,
                        gap_high,
                        audit_fraction,
                    });
                }
                // At this share, escalating more only costs more.
                break;
            }
        }
        if k == n_rest {
            break;
        }
        k = (k + step).min(n_rest);
    }
    let best = best.unwrap_or(Candidate {
        cost: pilot_usd + strong_top[n_rest],
        k: n_rest,
        cut: rest.last().map_or(Cut::Nothing, |it| Cut::Rank {
            score_cut: it.router_score,
            last_seq: it.seq,
        }),
        threshold: (escalation::RECORD_ONLY, 0.0),
        escalation_rate: 0.0,
        gap: 0.0,
        gap_high: 0.0,
        audit_fraction: 0.0,
    });
    let ratio = |gap: f64| {
        if total_quality > 0.0 {
            1.0 - gap / total_quality
        } else {
            1.0
        }
    };
    QualityPlan {
        target,
        items: n,
        pilot: items.iter().filter(|i| i.pilot).count(),
        strong_up_front: best.k,
        predicted_escalation_rate: best.escalation_rate,
        predicted_quality: ratio(best.gap),
        predicted_quality_low: ratio(best.gap_high),
        all_strong_quality,
        all_weak_quality: qw,
        expected_usd: Decimal::try_from(best.cost)
            .unwrap_or(Decimal::ZERO)
            .round_dp(9),
        all_strong_usd,
        all_weak_usd,
        audit_fraction: best.audit_fraction,
        gain_scale: scale,
        gain_floor: floor,
        pilot_disagreement,
        signal_auroc,
        history: inputs.history.len(),
        fallback_threshold: fallback_threshold(inputs, &best.cut, best.escalation_rate),
        rule: model.cost_rule(best.threshold.0, best.threshold.1, inputs.extra_samples),
        mean_strong_usd,
        cut: best.cut,
    }
}

/// The confidence below which the same share of the pilot's weak-routed answers escalates
/// as the rule escalates (0 when none does).
fn fallback_threshold(inputs: &QualityInputs<'_>, cut: &Cut, rate: f64) -> f64 {
    let mut confidences: Vec<f64> = inputs
        .pilot
        .iter()
        .filter(|a| {
            inputs
                .items
                .get(a.item)
                .is_some_and(|it| cut.route(it.router_score, it.seq) == crate::policy::Route::Weak)
        })
        .map(|a| a.features.confidence)
        .collect();
    if confidences.is_empty() || rate <= 0.0 {
        return 0.0;
    }
    confidences.sort_by(f64::total_cmp);
    let k = ((rate * confidences.len() as f64).round() as usize).min(confidences.len());
    match k {
        0 => 0.0,
        k if k == confidences.len() => 1.0 + 1e-9,
        k => (confidences[k - 1] + confidences[k]) / 2.0,
    }
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    cost: f64,
    k: usize,
    cut: Cut,
    /// The rule's threshold and cost slope.
    threshold: (f64, f64),
    escalation_rate: f64,
    gap: f64,
    gap_high: f64,
    audit_fraction: f64,
}

/// The rule's threshold and cost slope that escalate the first `e` of `rows` (sorted by
/// [`Row::before`], the `forced` non-answers first): halfway between the last escalated and
/// the first kept, in gain per unit of cost (`p ≥ floor + t × w`, so threshold `floor + t`
/// and slope `t`). Where that boundary falls among rows below the floor (ranked by `p`
/// alone), or when nothing or everything escalates, the slope is 0 and `p` alone decides.
fn threshold_between(
    rows: &[&Row],
    e: usize,
    forced: usize,
    floor: f64,
    by_cost: bool,
) -> (f64, f64) {
    let scored = &rows[forced..];
    let taken = e - forced;
    let max_p = scored.iter().map(|r| r.p).fold(f64::NEG_INFINITY, f64::max);
    if scored.is_empty() || taken == 0 {
        // Escalate nothing that answers: above every p seen (and any p at all when no
        // pilot row was left weak).
        if scored.is_empty() {
            return (escalation::RECORD_ONLY, 0.0);
        }
        return (((max_p + 1.0) / 2.0).min(1.0), 0.0);
    }
    if taken >= scored.len() {
        let min_p = scored.iter().map(|r| r.p).fold(f64::INFINITY, f64::min);
        return (min_p / 2.0, 0.0);
    }
    let (last_in, first_out) = (scored[taken - 1], scored[taken]);
    if !by_cost {
        return ((last_in.p + first_out.p) / 2.0, 0.0);
    }
    if last_in.key <= 0.0 {
        // The boundary is among rows at or below the floor, ranked by `p`.
        return ((last_in.p + first_out.p) / 2.0, 0.0);
    }
    if first_out.key <= 0.0 {
        // Every row above the floor escalates, none below.
        return (floor, 0.0);
    }
    let t = (last_in.key + first_out.key) / 2.0;
    (floor + t, t)
}

/// The disagreement that remains where the weak answer is surest: the weighted share short
/// among the labelled rows in the lowest fifth of `p`, at the lower end of its 95% interval.
fn disagreement_floor(model: &EscalationModel, rows: &[Labelled]) -> f64 {
    if rows.is_empty() {
        return 0.0;
    }
    let mut scored: Vec<(f64, &Labelled)> = rows
        .iter()
        .map(|r| (model.p_short(&r.features), r))
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: f64 = rows.iter().map(|r| r.weight).sum();
    let mut taken = 0.0;
    let mut short = 0.0;
    let mut count = 0.0;
    for (_, r) in &scored {
        if taken >= total / 5.0 {
            break;
        }
        taken += r.weight;
        short += r.weight * r.short.clamp(0.0, 1.0);
        count += 1.0;
    }
    if taken <= 0.0 {
        return 0.0;
    }
    crate::audit::wilson(short / taken, count).0
}

/// The predicted gap of the `n_rest` items after the pilot, at its margin: `mean_gap` an item
/// (from `m` pilot rows, standard error `se`) and `p_kept_sum`, the sum of `p` over the pilot
/// rows kept weak.
///
/// The margin covers two errors: the pilot's estimate of the expected gap (`se`, scaled to
/// the rest), and the rest's own draw around that expectation, since the target is on this
/// job's quality, not on its expectation. For right-or-wrong answers the loss of an answer
/// kept weak is nonzero only where the two answers differ, so its variance is at most `p`:
/// the realized gap's variance is at most the sum of `p` over the kept answers. It matters for
/// small jobs: without it 7 of 130 draws of the held-out suite missed the target, every one a
/// job of 122-330 items; with it 2 (docs/quality.md, *Margin*).
fn gap_bound(n_rest: f64, m: f64, mean_gap: f64, se: f64, p_kept_sum: f64) -> f64 {
    let realized_var = n_rest * (p_kept_sum.max(0.0) / m.max(1.0));
    n_rest * mean_gap + MARGIN_Z * (n_rest * n_rest * se * se + realized_var).sqrt()
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { 0.0 } else { s / n as f64 }
}

fn usd(d: Decimal) -> f64 {
    d.to_f64().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A deterministic generator for test data.
    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (*seed >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A job of `n` items where the weak model fails on 30% of them; its confidence is
    /// `informative` about that (or noise). Strong costs 10, weak 1 (cents).
    fn job(n: usize, informative: bool, seed: u64) -> (Vec<JobItem>, Vec<PilotAnswer>) {
        let mut s = seed;
        let mut items = Vec::new();
        let mut pilot = Vec::new();
        for i in 0..n {
            let fails = lcg(&mut s) < 0.3;
            let score = (lcg(&mut s) * 0.3 + if fails { 0.1 } else { 0.0 }) as f32;
            let in_pilot = i % 10 == 0;
            items.push(JobItem {
                seq: i as i64,
                router_score: score,
                weak_usd: Decimal::new(1, 2),
                strong_usd: Decimal::new(10, 2),
                pilot: in_pilot,
            });
            if in_pilot {
                let c = if informative {
                    if fails {
                        0.3 + 0.4 * lcg(&mut s)
                    } else {
                        0.6 + 0.4 * lcg(&mut s)
                    }
                } else {
                    lcg(&mut s)
                };
                pilot.push(PilotAnswer {
                    item: i,
                    features: AnswerFeatures {
                        router_score: score,
                        confidence: c,
                        from_logprobs: true,
                        off_label: false,
                        empty_or_refusal: false,
                        length_ratio: None,
                        sample_agreement: None,
                    },
                    short: f64::from(u8::from(fails)),
                });
            }
        }
        (items, pilot)
    }

    fn inputs<'a>(
        items: &'a [JobItem],
        pilot: &'a [PilotAnswer],
        target: f64,
    ) -> QualityInputs<'a> {
        QualityInputs {
            target,
            items,
            pilot,
            history: &[],
            weak_quality: 0.7,
            extra_samples: 0,
            audit_share: 0.02,
        }
    }

    #[test]
    fn escalations_buy_the_cheapest_quality_first() {
        // Half the items' prompts are long: their strong call costs 18 cents, the others' 2
        // (every tenth item is in the pilot, so alternate by tens).
        let (mut items, pilot) = job(3_000, true, 3);
        for it in &mut items {
            it.strong_usd = Decimal::new(if (it.seq / 10) % 2 == 0 { 18 } else { 2 }, 2);
        }
        let by_cost = plan_ranked(&inputs(&items, &pilot, 0.95), true);
        let by_p = plan_ranked(&inputs(&items, &pilot, 0.95), false);
        for p in [&by_cost, &by_p] {
            assert!(p.predicted_quality_low >= 0.95 - 1e-9, "{p:?}");
        }
        assert_eq!(by_p.rule.cost_slope, 0.0);
        assert!(by_cost.rule.cost_slope > 0.0, "{by_cost:?}");
        assert!(
            by_cost.expected_usd < by_p.expected_usd,
            "{} vs {}",
            by_cost.expected_usd,
            by_p.expected_usd
        );
        // The same answer escalates on a short prompt and stays weak on a long one.
        let mean = by_cost.mean_strong_usd;
        assert!((mean - 0.10).abs() < 1e-9, "{mean}");
        let (cheap, dear) = (
            cost_weight(Decimal::new(2, 2), mean),
            cost_weight(Decimal::new(18, 2), mean),
        );
        let at = |w: f64| escalation::threshold_at(&by_cost.rule, Some(w));
        assert!(at(cheap) < at(dear), "{} vs {}", at(cheap), at(dear));
    }

    /// The rule the plan ships escalates, among the pilot's weak-routed answers, exactly the
    /// ones the plan counted as escalated, at any target and however skewed the costs (a
    /// sloped rule's threshold at the mean cost may exceed 1).
    #[test]
    fn the_shipped_rule_escalates_what_the_plan_counted() {
        for (cheap, dear) in [(2, 18), (1, 30), (10, 10)] {
            for target in [0.85, 0.9, 0.95] {
                for seed in 1..=5 {
                    let (mut items, pilot) = job(2_000, true, seed);
                    for it in &mut items {
                        let c = if (it.seq / 10) % 2 == 0 { dear } else { cheap };
                        it.strong_usd = Decimal::new(c, 2);
                    }
                    let p = plan(&inputs(&items, &pilot, target));
                    let weak: Vec<&PilotAnswer> = pilot
                        .iter()
                        .filter(|a| {
                            let it = &items[a.item];
                            p.cut.route(it.router_score, it.seq) == crate::policy::Route::Weak
                        })
                        .collect();
                    let escalated = weak
                        .iter()
                        .filter(|a| {
                            let w = cost_weight(items[a.item].strong_usd, p.mean_strong_usd);
                            escalation::decide(Some(&p.rule), 0.0, &a.features, Some(w))
                        })
                        .count();
                    let counted = (p.predicted_escalation_rate * weak.len() as f64).round();
                    assert_eq!(
                        escalated as f64, counted,
                        "costs {cheap}/{dear}, target {target}, seed {seed}: {:?}",
                        p.rule
                    );
                }
            }
        }
    }

    #[test]
    fn an_item_s_cost_weight_is_its_strong_estimate_over_the_mean() {
        let task = switchyard_proto::Task::Classify {
            labels: vec!["A".into(), "B".into()],
            instructions: None,
        };
        let price = crate::pricing::Price::new(Decimal::from(10), Decimal::from(30)).unwrap();
        let est = crate::estimate::Estimator::new(&task, 512);
        let short = crate::estimate::cost(est.tokens("x"), &price);
        let long = crate::estimate::cost(est.tokens(&"y".repeat(4_000)), &price);
        let mean = (usd(short) + usd(long)) / 2.0;
        let weigher = CostWeigher::new(&price, &est, mean);
        let (ws, wl) = (
            weigher.weight(&task, "x"),
            weigher.weight(&task, &"y".repeat(4_000)),
        );
        assert!(
            (f64::from(ws) - cost_weight(short, mean)).abs() < 1e-6,
            "{ws}"
        );
        assert!(
            (f64::from(wl) - cost_weight(long, mean)).abs() < 1e-6,
            "{wl}"
        );
        assert!((f64::from(ws + wl) - 2.0).abs() < 1e-6);
        // Nothing known about the mean: every item weighs 1.
        assert_eq!(CostWeigher::new(&price, &est, 0.0).weight(&task, "x"), 1.0);
    }

    #[test]
    fn a_measured_signal_buys_savings_a_useless_one_does_not() {
        let (items, good) = job(3_000, true, 1);
        let (_, noise) = job(3_000, false, 1);
        let sharp = plan(&inputs(&items, &good, 0.95));
        let blind = plan(&inputs(&items, &noise, 0.95));
        for p in [&sharp, &blind] {
            assert!(p.predicted_quality_low >= 0.95 - 1e-9, "{p:?}");
            assert!(p.expected_usd <= p.all_strong_usd, "{p:?}");
            assert_eq!(p.pilot, 300);
            assert!(
                matches!(
                    p.rule.features,
                    escalation::FEATURES_V1 | escalation::FEATURES_V2
                ),
                "{p:?}"
            );
        }
        assert!(
            sharp.expected_usd < blind.expected_usd,
            "{sharp:?} vs {blind:?}"
        );
        // The confidence was measured to matter, and got a weight.
        assert!(sharp.rule.weights[2] < -0.5, "{:?}", sharp.rule.weights);
        assert!(sharp.signal_auroc.unwrap() > 0.8);
    }

    #[test]
    fn the_margin_covers_the_job_s_own_draw_as_well_as_the_pilot_s_estimate() {
        // 100 items after the pilot, 40 pilot rows whose kept answers' `p` add up to 10, an
        // expected gap of 0.02 an item: even a pilot estimate without spread (se = 0) leaves
        // the job's own draw, z × √(100 × 10 / 40) = 5z score points.
        let own_draw = gap_bound(100.0, 40.0, 0.02, 0.0, 10.0);
        assert!(
            (own_draw - (2.0 + 5.0 * MARGIN_Z)).abs() < 1e-9,
            "{own_draw}"
        );
        // Nothing kept weak: only the pilot's error, as before.
        let pilot_only = gap_bound(100.0, 40.0, 0.02, 0.01, 0.0);
        assert!((pilot_only - 100.0 * (0.02 + MARGIN_Z * 0.01)).abs() < 1e-9);
        // Both: added in quadrature.
        let both = gap_bound(100.0, 40.0, 0.02, 0.01, 10.0);
        assert!((both - (2.0 + MARGIN_Z * (1.0f64 + 25.0).sqrt())).abs() < 1e-9);
        // Relative to the job, the own draw's share shrinks as the job grows (√n against n).
        let share = |n: f64| (gap_bound(n, 40.0, 0.02, 0.0, 10.0) - n * 0.02) / n;
        assert!(share(100.0) > 3.0 * share(10_000.0));
    }

    #[test]
    fn the_gap_follows_the_measured_disagreement_not_the_routers_prediction() {
        // The router predicts a gain of 0.01 everywhere; the pilot shows the weak answer
        // short on about 30% of the items, with a confidence that sees it.
        let (mut items, pilot) = job(3_000, true, 7);
        for it in &mut items {
            it.router_score = 0.01;
        }
        let p = plan(&inputs(&items, &pilot, 0.95));
        assert!((p.pilot_disagreement - 0.3).abs() < 0.1, "{p:?}");
        // Half of that disagreement is gap to close, far more than 5% of quality: the
        // plan escalates a large share of the weak answers (a router-sized gap of 0.01
        // would need none).
        assert!(p.predicted_escalation_rate > 0.15, "{p:?}");
        assert!(p.predicted_quality_low >= 0.95 - 1e-9, "{p:?}");
    }

    #[test]
    fn a_higher_target_costs_more() {
        let (items, pilot) = job(2_000, true, 3);
        let lo = plan(&inputs(&items, &pilot, 0.90));
        let hi = plan(&inputs(&items, &pilot, 0.99));
        assert!(lo.expected_usd <= hi.expected_usd);
        assert!(hi.predicted_quality_low >= 0.99 - 1e-9);
    }

    #[test]
    fn without_any_label_the_rest_goes_strong() {
        let (items, _) = job(200, true, 5);
        let p = plan(&inputs(&items, &[], 0.95));
        assert_eq!(p.strong_up_front, items.iter().filter(|i| !i.pilot).count());
        assert!((p.predicted_quality - 1.0).abs() < 1e-9);
    }

    #[test]
    fn an_exact_pilot_has_the_size_asked_for() {
        for n in [1usize, 7, 40, 122, 975, 5_000] {
            let ids: Vec<String> = (0..n).map(|i| format!("item-{i}")).collect();
            let mut draws: Vec<f64> = ids
                .iter()
                .map(|i| crate::audit::pilot_draw("job", i))
                .collect();
            let asked = pilot_fraction(n, 0, 0.02);
            let exact = exact_pilot_fraction(&mut draws, asked);
            let chosen = ids
                .iter()
                .filter(|i| crate::audit::in_pilot("job", i, exact))
                .count();
            assert_eq!(chosen, (asked * n as f64).round() as usize, "n = {n}");
        }
        let mut none: Vec<f64> = Vec::new();
        assert_eq!(exact_pilot_fraction(&mut none, 0.5), 0.0);
        assert_eq!(exact_pilot_fraction(&mut [0.3, 0.7], 1.0), 1.0);
        assert_eq!(exact_pilot_fraction(&mut [0.3, 0.7], 0.0), 0.0);
    }

    #[test]
    fn the_pilot_is_at_least_forty_items_and_at_most_half() {
        assert_eq!(pilot_fraction(0, 0, 0.02), 0.0);
        let usd = |s: &str| s.parse::<Decimal>().unwrap();
        assert!(pilot_can_pay(usd("0.2"), usd("3.4")));
        assert!(!pilot_can_pay(usd("3.4"), usd("3.4")), "nothing to save");
        assert!(!pilot_can_pay(usd("0.099"), usd("0.027")), "weak dearer");
        assert!(
            pilot_can_pay(Decimal::ZERO, Decimal::ZERO),
            "unknown prices"
        );
        assert!((pilot_fraction(2_500, 0, 0.02) - 0.08).abs() < 1e-12);
        // 8% of a very large job would be 8,000 items: a thousand is enough.
        assert!((pilot_fraction(100_000, 0, 0.02) - 0.01).abs() < 1e-12);
        assert!((pilot_fraction(400, 0, 0.02) - 0.1).abs() < 1e-12);
        assert_eq!(pilot_fraction(50, 0, 0.02), 0.5);
        // With enough history, only the audit's share.
        assert!((pilot_fraction(10_000, 500, 0.02) - 0.02).abs() < 1e-12);
    }

    proptest! {
        #[test]
        fn plans_reach_their_target_or_send_the_rest_strong(
            n in 20usize..400,
            seed in 0u64..1_000,
            target in 0.8f64..=1.0,
            informative in any::<bool>(),
        ) {
            let (items, pilot) = job(n, informative, seed);
            let p = plan(&inputs(&items, &pilot, target));
            let rest = items.iter().filter(|i| !i.pilot).count();
            prop_assert!(p.predicted_quality_low >= target - 1e-9 || p.strong_up_front == rest);
            prop_assert!(p.strong_up_front <= rest);
            prop_assert!((0.0..=1.0).contains(&p.predicted_escalation_rate));
            prop_assert!((0.0..=1.0).contains(&p.audit_fraction));
            prop_assert!(p.rule.weights.iter().all(|w| w.is_finite()));
            prop_assert!(p.rule.threshold.is_finite());
        }
    }
}
