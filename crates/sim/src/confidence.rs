//! How confident a simulated model says it is, calibrated to a chosen AUROC.
//!
//! A router that escalates on low confidence is only as good as the confidence signal, so the
//! simulator must let us dial how informative that signal is. Confidence is derived **only**
//! from whether the replayed answer is correct, plus noise that is a pure function of
//! `(seed, item, model)`:
//!
//! ```text
//! logit = z + d * (correct - 0.5) + bias        z ~ N(0, 1)
//! confidence = sigmoid(logit)
//! ```
//!
//! Right and wrong answers then have logits `N(bias + d/2, 1)` and `N(bias - d/2, 1)`, and the
//! probability that a random right answer outranks a random wrong one (the AUROC) is
//! `Phi(d / sqrt(2))`; hence `d = sqrt(2) * Phi^-1(auroc)`. The sigmoid is monotone, so it does
//! not change the AUROC.
//!
//! The bias only moves all confidences up or down. Real chat models are mostly confident, even
//! when wrong, so the default is [`DEFAULT_BIAS`] = 2.0: at AUROC 0.75 right answers average
//! a confidence of about 0.89 and wrong ones about 0.78 (at AUROC 0.9: 0.93 and 0.71), and a
//! confidence threshold of 0.8 catches 45% of wrong answers while flagging 14% of right ones.
//! The `default_bias_looks_like_real_models` test pins these figures.

/// The AUROC of confidence against correctness when none is configured.
pub const DEFAULT_AUROC: f64 = 0.75;

/// The logit offset shared by all answers when none is configured; see the module docs.
pub const DEFAULT_BIAS: f64 = 2.0;

/// Turns correctness and a noise draw into a confidence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// Distance `d` between the mean logits of right and wrong answers.
    separation: f64,
    bias: f64,
}

impl Calibration {
    /// A calibration whose AUROC is `auroc` (clamped to `[0.001, 0.999]`, since 0 and 1
    /// would need infinite separation) and whose logits are shifted by `bias`.
    pub fn new(auroc: f64, bias: f64) -> Self {
        let auroc = if auroc.is_nan() {
            DEFAULT_AUROC
        } else {
            auroc.clamp(0.001, 0.999)
        };
        Self {
            separation: std::f64::consts::SQRT_2 * probit(auroc),
            bias: if bias.is_finite() { bias } else { DEFAULT_BIAS },
        }
    }

    /// The confidence for an answer whose correctness is `correct` (`None`: unknown, noise
    /// only) and whose standard normal noise draw is `z`. Always in `(0, 1)`.
    pub fn confidence(&self, z: f64, correct: Option<bool>) -> f64 {
        let signal = match correct {
            Some(true) => 0.5,
            Some(false) => -0.5,
            None => 0.0,
        };
        sigmoid(z + self.separation * signal + self.bias).clamp(1e-12, 1.0 - 1e-12)
    }
}

impl Default for Calibration {
    fn default() -> Self {
        Self::new(DEFAULT_AUROC, DEFAULT_BIAS)
    }
}

/// The AUROC of `score` as a predictor of `label`: the probability that a random positive
/// scores above a random negative, ties counting 1/2 (the Mann-Whitney U statistic).
/// `None` if either class is empty.
pub fn auroc(pairs: &[(f64, bool)]) -> Option<f64> {
    let positives = pairs.iter().filter(|(_, label)| *label).count();
    let negatives = pairs.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut sorted: Vec<(f64, bool)> = pairs.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));

    // Sum of the (1-based, tie-averaged) ranks of the positives.
    let mut positive_rank_sum = 0.0;
    let mut start = 0;
    while start < sorted.len() {
        let mut end = start;
        while end < sorted.len() && sorted[end].0.total_cmp(&sorted[start].0).is_eq() {
            end += 1;
        }
        let average_rank = (start + 1 + end) as f64 / 2.0;
        let tied_positives = sorted[start..end].iter().filter(|(_, l)| *l).count();
        positive_rank_sum += average_rank * tied_positives as f64;
        start = end;
    }
    let (p, n) = (positives as f64, negatives as f64);
    Some((positive_rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The standard normal quantile `Phi^-1(p)` for `p` in `(0, 1)`, by Acklam's rational
/// approximation (relative error below 1.2e-9, plenty for calibration).
pub fn probit(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const LOW: f64 = 0.024_25;

    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - LOW {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hashing::{mix, standard_normal};

    #[test]
    fn probit_matches_known_quantiles() {
        assert!(probit(0.5).abs() < 1e-9);
        assert!((probit(0.75) - 0.674_489_750_196_081_7).abs() < 1e-8);
        assert!((probit(0.975) - 1.959_963_984_540_054).abs() < 1e-8);
        assert!((probit(0.01) + 2.326_347_874_040_841).abs() < 1e-8);
    }

    #[test]
    fn auroc_counts_ties_as_half() {
        assert_eq!(auroc(&[(0.9, true), (0.1, false)]), Some(1.0));
        assert_eq!(auroc(&[(0.1, true), (0.9, false)]), Some(0.0));
        assert_eq!(auroc(&[(0.5, true), (0.5, false)]), Some(0.5));
        assert_eq!(
            auroc(&[(0.9, true), (0.5, true), (0.5, false), (0.1, false)]),
            Some(0.875)
        );
        assert_eq!(auroc(&[(0.9, true)]), None);
        assert_eq!(auroc(&[]), None);
    }

    /// Mean confidence of right and wrong answers over many noise draws.
    fn mean_confidences(calibration: Calibration) -> (f64, f64) {
        let n = 20_000;
        let mean = |correct| {
            (0..n)
                .map(|i: u64| calibration.confidence(standard_normal(mix(i)), Some(correct)))
                .sum::<f64>()
                / n as f64
        };
        (mean(true), mean(false))
    }

    #[test]
    fn default_bias_looks_like_real_models() {
        let (right, wrong) = mean_confidences(Calibration::default());
        assert!((right - 0.89).abs() < 0.01, "right answers: {right}");
        assert!((wrong - 0.78).abs() < 0.01, "wrong answers: {wrong}");
        let (right, wrong) = mean_confidences(Calibration::new(0.9, DEFAULT_BIAS));
        assert!((right - 0.93).abs() < 0.01, "right answers at 0.9: {right}");
        assert!((wrong - 0.71).abs() < 0.01, "wrong answers at 0.9: {wrong}");
    }

    #[test]
    fn unknown_correctness_is_noise_around_the_bias() {
        let c = Calibration::default();
        assert!((c.confidence(0.0, None) - sigmoid(DEFAULT_BIAS)).abs() < 1e-12);
        assert!(c.confidence(0.0, Some(true)) > c.confidence(0.0, None));
        assert!(c.confidence(0.0, Some(false)) < c.confidence(0.0, None));
        assert!(c.confidence(-40.0, Some(false)) > 0.0);
    }
}
