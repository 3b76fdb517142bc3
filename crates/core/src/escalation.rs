//! Escalation after a weak answer: everything known about the answer, combined by one
//! calibrated model instead of a threshold on confidence alone.
//!
//! After the weak model answered, a worker knows the router's score of the item, the
//! answer's confidence (from logprobs, or from the agreement of extra samples when the
//! provider gives no logprobs), and the answer itself: whether it is one of the labels, empty
//! or a refusal, how long it is against its word budget. [`AnswerFeatures`] holds these;
//! [`FEATURES_V1`] lays them out as a vector, and a logistic model over that vector predicts
//! the probability that the answer falls short of the strong model's (fitted per job on its
//! pilot, [`fit`]). An [`EscalationRule`] is that model plus the probability at or above
//! which an answer escalates; it travels on the work item, so the worker's decision
//! ([`decide`]) is a pure function of the rule and the features.
//!
//! Why a logistic model: the inputs are on different scales and differently informative from
//! one provider to the next (a confidence can be near random on one model and sharp on
//! another), so their weights must be measured on the job itself, not assumed; logistic
//! regression gives calibrated probabilities from a few dozen labelled answers, and its
//! weights are small, inspectable data.
//!
//! Answers that are not answers (a label outside the set, an empty answer, a refusal) always
//! escalate when the rule allows escalation at all, as they did under the threshold rule.

use switchyard_proto::{EscalationRule, Task};

use crate::confidence::Judgement;
use crate::prompt::DEFAULT_MAX_WORDS;

/// The feature layout of [`AnswerFeatures::vector`], version 1.
pub const FEATURES_V1: u16 = 1;

/// The same vector under a rule whose threshold rises with the item's cost
/// (`EscalationRule::cost_slope` not 0). A version of its own so that a worker that knows
/// only [`FEATURES_V1`] falls back to the item's confidence threshold instead of reading
/// the rule's threshold flat (which, for a sloped rule, can be above 1: "never").
pub const FEATURES_V2: u16 = 2;

/// The names of the features of [`FEATURES_V1`], in vector order (reports, docs).
pub const FEATURE_NAMES: [&str; FEATURES] = [
    "intercept",
    "router_score",
    "confidence_logit",
    "no_logprobs",
    "not_an_answer",
    "length_log_ratio",
    "sample_agreement",
    "no_samples",
];

/// How many features [`FEATURES_V1`] has (the intercept included).
pub const FEATURES: usize = 8;

/// What is known about one answer when escalation is decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnswerFeatures {
    /// The router's raw score of the item (predicted gain of the strong model).
    pub router_score: f32,
    /// The judged confidence, in [0, 1] (see [`crate::confidence`]).
    pub confidence: f64,
    /// The confidence came from the provider's logprobs (else it is the agreement of
    /// samples, or a configured constant).
    pub from_logprobs: bool,
    /// Classification: the answer is not one of the labels.
    pub off_label: bool,
    /// The answer is empty or a refusal.
    pub empty_or_refusal: bool,
    /// Summaries: words of the answer over the word budget.
    pub length_ratio: Option<f64>,
    /// Mean agreement of extra samples with the answer, when samples were drawn.
    pub sample_agreement: Option<f64>,
}

impl AnswerFeatures {
    /// The features of a judged answer.
    ///
    /// `answer` is the raw answer text; `sample_agreement` the mean agreement of extra
    /// samples with it (see [`crate::samples`]), when any were drawn.
    pub fn of(
        task: &Task,
        router_score: f32,
        judgement: &Judgement,
        from_logprobs: bool,
        answer: &str,
        sample_agreement: Option<f64>,
    ) -> Self {
        let length_ratio = match task {
            Task::Summarize { max_words, .. } => {
                let budget = f64::from(max_words.unwrap_or(DEFAULT_MAX_WORDS).max(1));
                Some(answer.split_whitespace().count() as f64 / budget)
            }
            _ => None,
        };
        Self {
            router_score,
            confidence: judgement.confidence,
            from_logprobs,
            off_label: judgement.off_label,
            empty_or_refusal: is_empty_or_refusal(answer),
            length_ratio,
            sample_agreement,
        }
    }

    /// The features of an answer as it is stored (the judged answer and confidence): what a
    /// worker decides on and what the dispatcher reads back from a pilot, so both see the
    /// same features. `sampled`: the confidence is the agreement of extra samples (a model
    /// without logprobs that drew some).
    pub fn of_stored(
        task: &Task,
        router_score: f32,
        answer: &str,
        confidence: f64,
        from_logprobs: bool,
        sampled: bool,
    ) -> Self {
        let off_label = match task {
            Task::Classify { labels, .. } => {
                crate::confidence::match_label(answer, labels).is_none()
            }
            _ => false,
        };
        let judgement = Judgement {
            answer: answer.to_owned(),
            confidence,
            off_label,
        };
        let samples = (!from_logprobs && sampled).then_some(confidence);
        Self::of(
            task,
            router_score,
            &judgement,
            from_logprobs,
            answer,
            samples,
        )
    }

    /// True when the answer is not an answer at all (off the label set, empty, a refusal).
    pub fn not_an_answer(&self) -> bool {
        self.off_label || self.empty_or_refusal
    }

    /// The feature vector of [`FEATURES_V1`]. Every entry is finite and bounded.
    pub fn vector(&self) -> [f64; FEATURES] {
        let score = f64::from(self.router_score);
        let score = if score.is_finite() {
            score.clamp(-4.0, 4.0)
        } else {
            0.0
        };
        let (logit, no_logprobs) = if self.from_logprobs {
            (logit(self.confidence), 0.0)
        } else {
            (0.0, 1.0)
        };
        let length = self
            .length_ratio
            .filter(|r| r.is_finite())
            .map_or(0.0, |r| r.clamp(0.05, 20.0).ln());
        let (samples, no_samples) = match self.sample_agreement {
            Some(a) if a.is_finite() => (a.clamp(0.0, 1.0), 0.0),
            _ => (0.0, 1.0),
        };
        [
            1.0,
            score,
            logit,
            no_logprobs,
            f64::from(u8::from(self.not_an_answer())),
            length,
            samples,
            no_samples,
        ]
    }
}

/// `ln(p / (1 - p))`, with `p` kept within [1e-4, 1 - 1e-4] so the logit stays in ±9.2.
pub fn logit(p: f64) -> f64 {
    let p = if p.is_nan() {
        0.5
    } else {
        p.clamp(1e-4, 1.0 - 1e-4)
    };
    (p / (1.0 - p)).ln()
}

/// The logistic function.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Empty answers and refusals ("I cannot…", "I'm sorry, but…"): a short answer that opens
/// with one of the usual refusal phrases. A long answer that merely contains such a phrase is
/// not a refusal.
pub fn is_empty_or_refusal(answer: &str) -> bool {
    let a = answer.trim();
    if a.is_empty() {
        return true;
    }
    if a.chars().count() > 300 {
        return false;
    }
    let lower = a.to_lowercase();
    const OPENINGS: [&str; 8] = [
        "i cannot",
        "i can't",
        "i can not",
        "i'm sorry",
        "i am sorry",
        "sorry, i",
        "as an ai",
        "i am unable",
    ];
    OPENINGS.iter().any(|o| lower.starts_with(o))
}

/// A fitted model: the probability that an answer falls short of the strong model's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EscalationModel {
    pub weights: [f64; FEATURES],
}

impl EscalationModel {
    /// A model that predicts `p` for every answer (no feature counts).
    pub fn constant(p: f64) -> Self {
        let mut weights = [0.0; FEATURES];
        weights[0] = logit(p);
        Self { weights }
    }

    /// The predicted probability that the answer falls short.
    pub fn p_short(&self, f: &AnswerFeatures) -> f64 {
        sigmoid(dot(&self.weights, &f.vector()))
    }

    /// The rule that escalates at `threshold`, drawing `samples` extra samples from a model
    /// without logprobs.
    pub fn rule(&self, threshold: f64, samples: u8) -> EscalationRule {
        self.cost_rule(threshold, 0.0, samples)
    }

    /// The rule that escalates when `p ≥ threshold + cost_slope × (w − 1)`, `w` an item's
    /// cost weight (see [`decide`]).
    pub fn cost_rule(&self, threshold: f64, cost_slope: f64, samples: u8) -> EscalationRule {
        EscalationRule {
            features: if cost_slope != 0.0 {
                FEATURES_V2
            } else {
                FEATURES_V1
            },
            weights: self.weights.to_vec(),
            threshold,
            samples,
            cost_slope,
        }
    }

    /// The model of a rule, if its feature layout is one this build knows.
    pub fn of_rule(rule: &EscalationRule) -> Option<Self> {
        if !matches!(rule.features, FEATURES_V1 | FEATURES_V2) || rule.weights.len() != FEATURES {
            return None;
        }
        if rule.weights.iter().any(|w| !w.is_finite()) {
            return None;
        }
        let mut weights = [0.0; FEATURES];
        weights.copy_from_slice(&rule.weights);
        Some(Self { weights })
    }
}

/// The threshold of a record-only rule (anything above 1 never escalates; a finite number,
/// so the rule also travels as JSON).
pub const RECORD_ONLY: f64 = 2.0;

/// A rule that never escalates and only records the answer (the weak attempt of a pilot
/// item, whose strong answer comes from its audit call), drawing `samples` extra samples.
pub fn record_only(samples: u8) -> EscalationRule {
    EscalationModel::constant(0.5).rule(RECORD_ONLY, samples)
}

/// Whether an answer escalates.
///
/// With a rule this build understands: never when its threshold is above 1 (record only);
/// always for an answer that is not an answer; otherwise when the model's probability of
/// falling short is at least the threshold, raised by the rule's `cost_slope` for an item
/// that costs more than the job's mean on the strong tier (`cost_weight`, the item's
/// estimated strong cost over that mean; `None` reads as 1). Without a rule (older
/// dispatchers, policies other than `quality=Q`), or with one of an unknown layout: the
/// answer's confidence below `confidence_threshold`, as before.
pub fn decide(
    rule: Option<&EscalationRule>,
    confidence_threshold: f64,
    f: &AnswerFeatures,
    cost_weight: Option<f64>,
) -> bool {
    match rule.and_then(|r| Some((r, EscalationModel::of_rule(r)?))) {
        Some((r, _)) if is_record_only(r) => false,
        Some(_) if f.not_an_answer() => true,
        Some((r, model)) => model.p_short(f) >= threshold_at(r, cost_weight),
        None => f.confidence < confidence_threshold,
    }
}

/// A rule that only records: a threshold above 1 without a cost slope (a sloped rule's
/// threshold is at the job's mean cost and may exceed 1 where cheaper items still escalate).
fn is_record_only(rule: &EscalationRule) -> bool {
    rule.threshold.is_nan() || (rule.threshold > 1.0 && slope(rule) == 0.0)
}

fn slope(rule: &EscalationRule) -> f64 {
    if rule.cost_slope.is_finite() {
        rule.cost_slope
    } else {
        0.0
    }
}

/// The probability at or above which `rule` escalates an item of `cost_weight`.
pub fn threshold_at(rule: &EscalationRule, cost_weight: Option<f64>) -> f64 {
    let w = cost_weight
        .filter(|w| w.is_finite() && *w > 0.0)
        .unwrap_or(1.0);
    rule.threshold + slope(rule) * (w - 1.0)
}

fn dot(a: &[f64; FEATURES], b: &[f64; FEATURES]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// One labelled answer: its features and how far it fell short, in [0, 1] (1 − its
/// agreement with the strong model's answer on the same item).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Labelled {
    pub features: AnswerFeatures,
    pub short: f64,
    /// How much this row counts (1 for the job's own pilot; less for older history).
    pub weight: f64,
}

/// The L2 penalty of [`fit`] on standardized weights: a standard normal prior on how much
/// one standard deviation of a feature moves the log-odds, mild against a few dozen rows.
pub const L2: f64 = 1.0;

/// Fits the logistic model to labelled answers (soft labels allowed) by penalized
/// iteratively reweighted least squares.
///
/// Features are standardized first, so the penalty treats every feature alike whatever its
/// scale; a feature that does not vary in the rows gets weight 0 (nothing was learned about
/// it, so it must not move a prediction). The intercept is not penalized: with an
/// intercept, the mean prediction over the rows equals their mean label. No rows: the
/// constant model at 0.5.
pub fn fit(rows: &[Labelled]) -> EscalationModel {
    let rows: Vec<(&Labelled, [f64; FEATURES])> = rows
        .iter()
        .filter(|r| r.weight > 0.0 && r.weight.is_finite() && r.short.is_finite())
        .map(|r| (r, r.features.vector()))
        .collect();
    let total: f64 = rows.iter().map(|(r, _)| r.weight).sum();
    if rows.is_empty() || total <= 0.0 {
        return EscalationModel::constant(0.5);
    }
    // Standardize columns 1.. (weighted).
    let mut mean = [0.0; FEATURES];
    let mut sd = [0.0; FEATURES];
    for j in 1..FEATURES {
        mean[j] = rows.iter().map(|(r, x)| r.weight * x[j]).sum::<f64>() / total;
        let var = rows
            .iter()
            .map(|(r, x)| r.weight * (x[j] - mean[j]).powi(2))
            .sum::<f64>()
            / total;
        sd[j] = var.sqrt();
    }
    let z = |x: &[f64; FEATURES]| {
        let mut out = [0.0; FEATURES];
        out[0] = 1.0;
        for j in 1..FEATURES {
            out[j] = if sd[j] > 1e-9 {
                (x[j] - mean[j]) / sd[j]
            } else {
                0.0
            };
        }
        out
    };
    let data: Vec<(f64, f64, [f64; FEATURES])> = rows
        .iter()
        .map(|(r, x)| (r.weight, r.short.clamp(0.0, 1.0), z(x)))
        .collect();
    let ybar = data.iter().map(|(w, y, _)| w * y).sum::<f64>() / total;
    let mut beta = [0.0; FEATURES];
    beta[0] = logit(ybar.clamp(1e-3, 1.0 - 1e-3));
    let objective = |b: &[f64; FEATURES]| -> f64 {
        let mut nll = 0.0;
        for (w, y, x) in &data {
            let eta = dot(b, x);
            // log(1 + e^eta) - y * eta, computed stably.
            let softplus = if eta > 0.0 {
                eta + (-eta).exp().ln_1p()
            } else {
                eta.exp().ln_1p()
            };
            nll += w * (softplus - y * eta);
        }
        nll + 0.5 * L2 * b[1..].iter().map(|v| v * v).sum::<f64>()
    };
    let mut current = objective(&beta);
    for _ in 0..50 {
        let mut grad = [0.0; FEATURES];
        let mut hess = [[0.0; FEATURES]; FEATURES];
        for (w, y, x) in &data {
            let p = sigmoid(dot(&beta, x));
            let g = w * (p - y);
            let h = w * (p * (1.0 - p)).max(1e-9);
            for i in 0..FEATURES {
                grad[i] += g * x[i];
                for j in 0..FEATURES {
                    hess[i][j] += h * x[i] * x[j];
                }
            }
        }
        for i in 1..FEATURES {
            grad[i] += L2 * beta[i];
            hess[i][i] += L2;
        }
        hess[0][0] += 1e-9;
        let Some(step) = solve(hess, grad) else {
            break;
        };
        // Newton step, halved until the objective does not get worse.
        let mut t = 1.0;
        let mut improved = false;
        for _ in 0..30 {
            let mut next = beta;
            for i in 0..FEATURES {
                next[i] -= t * step[i];
            }
            let value = objective(&next);
            if value.is_finite() && value <= current + 1e-12 {
                let gain = current - value;
                beta = next;
                current = value;
                improved = gain > 1e-10 * (1.0 + current.abs());
                break;
            }
            t *= 0.5;
        }
        if !improved {
            break;
        }
    }
    // Back to raw features: eta = b0 + Σ b_j (x_j - m_j) / s_j.
    let mut weights = [0.0; FEATURES];
    weights[0] = beta[0];
    for j in 1..FEATURES {
        if sd[j] > 1e-9 {
            weights[j] = beta[j] / sd[j];
            weights[0] -= beta[j] * mean[j] / sd[j];
        }
    }
    EscalationModel { weights }
}

/// Solves `a x = b` by Gaussian elimination with partial pivoting; `None` when singular.
fn solve(mut a: [[f64; FEATURES]; FEATURES], mut b: [f64; FEATURES]) -> Option<[f64; FEATURES]> {
    for col in 0..FEATURES {
        let pivot = (col..FEATURES).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let pivot_row = a[col];
        for row in col + 1..FEATURES {
            let f = a[row][col] / pivot_row[col];
            if f != 0.0 {
                for (x, p) in a[row][col..].iter_mut().zip(&pivot_row[col..]) {
                    *x -= f * p;
                }
                b[row] -= f * b[col];
            }
        }
    }
    let mut x = [0.0; FEATURES];
    for row in (0..FEATURES).rev() {
        let s: f64 = (row + 1..FEATURES).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// The area under the ROC curve of `scores` for the binary `labels` (ties count half);
/// `None` when either class is empty. How well a signal separates short answers from good
/// ones, for reports.
pub fn auroc(pairs: &[(f64, bool)]) -> Option<f64> {
    let pos = pairs.iter().filter(|p| p.1).count();
    let neg = pairs.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut sorted = pairs.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j < sorted.len() && sorted[j].0 == sorted[i].0 {
            j += 1;
        }
        let avg = (i + 1 + j) as f64 / 2.0;
        rank_sum += avg * sorted[i..j].iter().filter(|p| p.1).count() as f64;
        i = j;
    }
    let (p, n) = (pos as f64, neg as f64);
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn features(score: f32, confidence: f64) -> AnswerFeatures {
        AnswerFeatures {
            router_score: score,
            confidence,
            from_logprobs: true,
            off_label: false,
            empty_or_refusal: false,
            length_ratio: None,
            sample_agreement: None,
        }
    }

    /// A small deterministic generator for test data.
    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (*seed >> 11) as f64 / (1u64 << 53) as f64
    }

    #[test]
    fn without_a_rule_the_threshold_decides_as_before() {
        let f = features(0.3, 0.7);
        assert!(decide(None, 0.8, &f, None));
        assert!(!decide(None, 0.6, &f, None));
        // A rule of an unknown layout is ignored, not guessed at.
        let mut rule = EscalationModel::constant(0.9).rule(0.5, 0);
        rule.features = 99;
        assert!(!decide(Some(&rule), 0.6, &f, None));
    }

    #[test]
    fn a_rule_escalates_on_its_probability_and_always_on_non_answers() {
        let rule = EscalationModel::constant(0.4).rule(0.5, 0);
        assert!(!decide(Some(&rule), 0.99, &features(0.0, 0.1), None));
        let rule = EscalationModel::constant(0.6).rule(0.5, 0);
        assert!(decide(Some(&rule), 0.0, &features(0.0, 0.99), None));
        let low = EscalationModel::constant(0.01).rule(0.5, 0);
        let mut bad = features(0.0, 0.99);
        bad.off_label = true;
        assert!(decide(Some(&low), 0.0, &bad, Some(50.0)));
        bad.off_label = false;
        bad.empty_or_refusal = true;
        assert!(decide(Some(&low), 0.0, &bad, Some(50.0)));
        // Record-only rules never escalate, not even a non-answer.
        assert!(!decide(Some(&record_only(2)), 1.0, &bad, None));
    }

    #[test]
    fn a_costly_item_must_be_likelier_short_to_escalate() {
        // p = 0.6; threshold 0.5 at the mean cost, rising 0.2 per mean cost above it.
        let rule = EscalationModel::constant(0.6).cost_rule(0.5, 0.2, 0);
        let f = features(0.0, 0.9);
        assert!(decide(Some(&rule), 0.0, &f, None));
        assert!(decide(Some(&rule), 0.0, &f, Some(1.0)));
        assert!(decide(Some(&rule), 0.0, &f, Some(0.25)));
        assert!(!decide(Some(&rule), 0.0, &f, Some(1.6)));
        // A weight that is no weight reads as the mean.
        assert!(decide(Some(&rule), 0.0, &f, Some(f64::NAN)));
        assert!(decide(Some(&rule), 0.0, &f, Some(-3.0)));
        // A rule without a slope ignores the weight, as rules did before it.
        let flat = EscalationModel::constant(0.6).rule(0.5, 0);
        assert!(decide(Some(&flat), 0.0, &f, Some(100.0)));
        assert_eq!((flat.features, rule.features), (FEATURES_V1, FEATURES_V2));
        // A sloped threshold above 1 at the mean cost is not "record only": a cheap item
        // still escalates (1.5 + 1.2 × (0.2 − 1) = 0.54), a mean one does not.
        let steep = EscalationModel::constant(0.6).cost_rule(1.5, 1.2, 0);
        assert!(decide(Some(&steep), 0.0, &f, Some(0.2)));
        assert!(!decide(Some(&steep), 0.0, &f, None));
        let mut bad = f;
        bad.off_label = true;
        assert!(decide(Some(&steep), 0.0, &bad, Some(5.0)));
        // A worker that knows only the first layout falls back to the threshold (the version
        // check of `of_rule`, as for any layout it does not know).
        let mut unknown = steep.clone();
        unknown.features = 7;
        assert!(!decide(Some(&unknown), 0.5, &f, Some(0.2)));
    }

    #[test]
    fn refusals_and_empty_answers_are_flagged() {
        assert!(is_empty_or_refusal("  "));
        assert!(is_empty_or_refusal(
            "I'm sorry, but I can't help with that."
        ));
        assert!(is_empty_or_refusal("As an AI language model, I cannot"));
        assert!(!is_empty_or_refusal("B"));
        assert!(!is_empty_or_refusal("The cat sat on the mat."));
        let long = format!("I cannot {}", "believe how long this goes on. ".repeat(20));
        assert!(!is_empty_or_refusal(&long));
    }

    #[test]
    fn features_read_the_answer() {
        let task = Task::Summarize {
            max_words: Some(10),
            instructions: None,
        };
        let j = Judgement {
            answer: "a b c d e".into(),
            confidence: 0.9,
            off_label: false,
        };
        let f = AnswerFeatures::of(&task, 0.2, &j, true, "a b c d e", Some(0.5));
        assert_eq!(f.length_ratio, Some(0.5));
        let v = f.vector();
        assert_eq!(v[0], 1.0);
        assert!((v[2] - logit(0.9)).abs() < 1e-12);
        assert_eq!((v[3], v[6], v[7]), (0.0, 0.5, 0.0));
        assert!((v[5] - 0.5f64.ln()).abs() < 1e-12);
        let g = AnswerFeatures::of(&task, f32::NAN, &j, false, "", None);
        let v = g.vector();
        assert_eq!((v[1], v[2], v[3], v[4], v[7]), (0.0, 0.0, 1.0, 1.0, 1.0));
        assert!(v.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn fitting_learns_which_signal_separates_and_ignores_constant_ones() {
        // Short answers have low confidence; the router score is noise.
        let mut seed = 7;
        let rows: Vec<Labelled> = (0..400)
            .map(|_| {
                let short = lcg(&mut seed) < 0.3;
                let c = if short {
                    0.3 + 0.5 * lcg(&mut seed)
                } else {
                    0.6 + 0.4 * lcg(&mut seed)
                };
                Labelled {
                    features: features(lcg(&mut seed) as f32, c),
                    short: f64::from(u8::from(short)),
                    weight: 1.0,
                }
            })
            .collect();
        let m = fit(&rows);
        assert!(m.weights[2] < -1.0, "{:?}", m.weights);
        assert!(m.weights[1].abs() < 1.0, "{:?}", m.weights);
        // Constant columns (no samples, always logprobs, never off-label) get no weight.
        assert_eq!((m.weights[3], m.weights[4], m.weights[6]), (0.0, 0.0, 0.0));
        let pairs: Vec<(f64, bool)> = rows
            .iter()
            .map(|r| (m.p_short(&r.features), r.short > 0.5))
            .collect();
        assert!(auroc(&pairs).unwrap() > 0.85);
        // With an intercept, the mean prediction matches the mean label.
        let mean_p = rows.iter().map(|r| m.p_short(&r.features)).sum::<f64>() / 400.0;
        let mean_y = rows.iter().map(|r| r.short).sum::<f64>() / 400.0;
        assert!((mean_p - mean_y).abs() < 0.01, "{mean_p} vs {mean_y}");
        // Round trip through the wire form.
        let rule = m.rule(0.4, 0);
        assert_eq!(EscalationModel::of_rule(&rule), Some(m));
    }

    #[test]
    fn no_rows_and_separable_rows_stay_finite() {
        assert_eq!(fit(&[]), EscalationModel::constant(0.5));
        let rows: Vec<Labelled> = (0..20)
            .map(|i| Labelled {
                features: features(0.0, if i < 10 { 0.1 } else { 0.9 }),
                short: if i < 10 { 1.0 } else { 0.0 },
                weight: 1.0,
            })
            .collect();
        let m = fit(&rows);
        assert!(m.weights.iter().all(|w| w.is_finite()));
        assert!(m.p_short(&features(0.0, 0.1)) > 0.8);
        assert!(m.p_short(&features(0.0, 0.9)) < 0.2);
    }

    proptest! {
        #[test]
        fn fitted_models_are_finite_and_probabilities_in_range(
            rows in proptest::collection::vec(
                (-1.0f32..1.0, 0.0f64..=1.0, any::<bool>(), any::<bool>(), 0.0f64..=1.0),
                0..60,
            ),
        ) {
            let rows: Vec<Labelled> = rows.iter().map(|&(s, c, lp, off, y)| Labelled {
                features: AnswerFeatures {
                    router_score: s,
                    confidence: c,
                    from_logprobs: lp,
                    off_label: off,
                    empty_or_refusal: false,
                    length_ratio: None,
                    sample_agreement: if lp { None } else { Some(c) },
                },
                short: y,
                weight: 1.0,
            }).collect();
            let m = fit(&rows);
            prop_assert!(m.weights.iter().all(|w| w.is_finite()));
            for r in &rows {
                let p = m.p_short(&r.features);
                prop_assert!((0.0..=1.0).contains(&p));
            }
        }
    }
}
