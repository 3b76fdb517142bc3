//! The audit sample of a job and its estimate of the quality the job delivers.
//!
//! A `quality=Q` job promises to keep `Q` of all-strong quality; the audit measures whether
//! it did, while it runs, without gold labels. It extends the shadow sample
//! ([`crate::shadow`]): a uniform, hash-chosen sample of the items the policy left to the
//! weak tier is also sent to the strong tier (attempt `AUDIT_ATTEMPT`), and on each audited
//! item the answer the policy gave is compared with the strong model's
//! ([`crate::agreement`]). Unlike a shadow call, the audit's strong answer becomes the item's
//! final answer (it is the better-informed one, and it is paid for).
//!
//! **What it estimates.** Agreement-quality with the strong model: the mean, over the job's
//! items, of the agreement of each item's final answer with the strong model's answer. All
//! strong scores 1 by definition. It is a *conservative proxy* of quality as a share of
//! all-strong: every disagreement counts as the policy's loss, although the strong model is
//! wrong on some of them (and then the weak answer may be the right one).
//!
//! **How.** The items fall in two groups. Those whose final answer is the strong model's
//! (routed strong, escalated, audited, in the pilot) agree with it by definition (counted 1,
//! exactly). The others (final answer from the weak tier) are estimated from the audited
//! items among the weak-routed ones: for each, the agreement of the answer the policy would
//! have kept (its weak answer, or 1 if it escalated) with the audit's strong answer. Uniform
//! sampling makes the sample mean unbiased for that group; [`estimate`] scales it to the job
//! and gives a 95% interval (Wilson's, with the finite-population correction; bounded
//! agreement in [0, 1] has variance at most m(1 − m), so the interval is conservative for
//! graded agreement too).
//!
//! **Size.** By default the audit's strong calls cost at most 2% of the job's all-strong
//! cost ([`DEFAULT_AUDIT_SHARE`]): [`fraction_for_cap`] turns the cap into a sampling
//! fraction from the job's cost estimates.

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The audit's strong calls cost at most this share of the job's all-strong cost, unless the
/// job says otherwise.
pub const DEFAULT_AUDIT_SHARE: f64 = 0.02;

/// The label every report prints with the estimate.
pub const PROXY_LABEL: &str =
    "agreement with the strong model's answers (a conservative proxy for quality vs all-strong)";

/// z of a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

/// True when the item is in the job's audit sample at `fraction` (uniform, stable across
/// redeliveries, independent of the shadow sample and of the router's score).
pub fn sampled(job_id: &str, item_id: &str, fraction: f64) -> bool {
    draw(b"audit\0", job_id, item_id) < fraction
}

/// True when the item is in the job's pilot at `fraction` (see `crate::quality`): the first
/// slice of a `quality=Q` job, answered by both tiers before the rest is routed. Nested like
/// the audit: what a smaller fraction picks, a larger one picks too.
pub fn in_pilot(job_id: &str, item_id: &str, fraction: f64) -> bool {
    pilot_draw(job_id, item_id) < fraction
}

/// The item's draw for the pilot: in the pilot at `fraction` when below it (see
/// [`crate::quality::exact_pilot_fraction`], which sets the fraction from the job's draws).
pub fn pilot_draw(job_id: &str, item_id: &str) -> f64 {
    draw(b"pilot\0", job_id, item_id)
}

/// A uniform draw in [0, 1) from `sha256(salt, job, item)`.
pub fn draw(salt: &[u8], job_id: &str, item_id: &str) -> f64 {
    let mut h = Sha256::new();
    h.update(salt);
    h.update((job_id.len() as u64).to_le_bytes());
    h.update(job_id.as_bytes());
    h.update(item_id.as_bytes());
    let d = h.finalize();
    let x = u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// The sampling fraction whose audit calls are expected to cost `share` of the job's
/// all-strong cost: the audit samples the weak-routed items, whose strong calls would cost
/// `weak_routed_strong_usd` in all. In [0, 1]; 0 when nothing is weak-routed.
pub fn fraction_for_cap(
    share: f64,
    all_strong_usd: Decimal,
    weak_routed_strong_usd: Decimal,
) -> f64 {
    if share.is_nan() || share <= 0.0 {
        return 0.0;
    }
    let (Some(all), Some(weak)) = (all_strong_usd.to_f64(), weak_routed_strong_usd.to_f64()) else {
        return share.min(1.0);
    };
    if weak <= 0.0 {
        return 0.0;
    }
    if all <= 0.0 {
        return share.min(1.0);
    }
    (share * all / weak).clamp(0.0, 1.0)
}

/// The audit's estimate of a job's agreement-quality with the strong model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AuditEstimate {
    /// Items of the job.
    pub items: usize,
    /// Items whose final answer is the strong model's (agreement 1, known).
    pub strong_final: usize,
    /// Items whose final answer came from the weak tier, unaudited: estimated.
    pub estimated: usize,
    /// Audited items among the weak-routed ones (the sample).
    pub audited: usize,
    /// The estimate and its 95% interval, in [0, 1].
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

impl AuditEstimate {
    /// `0.948 [0.921, 0.969]`.
    pub fn display(&self) -> String {
        format!("{:.3} [{:.3}, {:.3}]", self.estimate, self.low, self.high)
    }
}

/// Estimates the job's agreement-quality.
///
/// - `strong_final`: items whose final answer is the strong model's, audited ones included;
/// - `weak_final`: items whose final answer came from the weak tier and were not audited;
/// - `samples`: per audited weak-routed item, the agreement in [0, 1] of the answer the
///   policy would have kept with the audit's strong answer.
///
/// With no sample the interval is the whole range the unknown items allow.
pub fn estimate(strong_final: usize, weak_final: usize, samples: &[f64]) -> AuditEstimate {
    let n_items = strong_final + weak_final;
    let n = samples.len();
    let (m, lo, hi) = if weak_final == 0 {
        (1.0, 1.0, 1.0)
    } else if n == 0 {
        (0.5, 0.0, 1.0)
    } else {
        let mean = samples.iter().map(|s| s.clamp(0.0, 1.0)).sum::<f64>() / n as f64;
        // The sample is drawn from the weak-final items plus itself (audited items left it).
        let population = (weak_final + n) as f64;
        let fpc = ((population - n as f64) / (population - 1.0).max(1.0)).max(0.0);
        let (lo, hi) = if fpc <= 0.0 {
            (mean, mean)
        } else {
            wilson(mean, n as f64 / fpc)
        };
        (mean, lo, hi)
    };
    let total = n_items.max(1) as f64;
    let scale = |x: f64| (strong_final as f64 + weak_final as f64 * x) / total;
    AuditEstimate {
        items: n_items,
        strong_final,
        estimated: weak_final,
        audited: n,
        estimate: scale(m),
        low: scale(lo),
        high: scale(hi),
    }
}

/// What the audit needs to know about one item of a quality job, as stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ItemView<'a> {
    /// In the pilot (answered by both tiers before the plan).
    pub pilot: bool,
    /// Routed to the strong tier up front (or forced to a tier other than the weak one).
    pub strong_routed: bool,
    /// The routed attempt's answer, and whether it escalated.
    pub first: Option<(&'a str, bool)>,
    /// The audit call's (strong) answer.
    pub audit: Option<&'a str>,
}

/// The audit estimate of a job from its items as stored: pilot, strong-routed, escalated
/// and audited items are strong-final; weak-routed items answered and not escalated nor
/// audited are estimated from the audited ones (the answer the policy gave, or 1 when it
/// escalated, against the audit's answer). Items without an answer yet are left out.
pub fn estimate_job(kind: switchyard_proto::TaskKind, items: &[ItemView<'_>]) -> AuditEstimate {
    let (mut strong_final, mut weak_final) = (0usize, 0usize);
    let mut samples = Vec::new();
    for it in items {
        if it.pilot || it.strong_routed {
            if it.first.is_some() || it.audit.is_some() {
                strong_final += 1;
            }
            continue;
        }
        match (it.first, it.audit) {
            (Some((answer, escalated)), Some(strong)) => {
                samples.push(if escalated {
                    1.0
                } else {
                    crate::agreement::agreement(kind, answer, strong)
                });
                strong_final += 1;
            }
            (Some((_, true)), None) => strong_final += 1,
            (Some((_, false)), None) => weak_final += 1,
            (None, _) => {}
        }
    }
    estimate(strong_final, weak_final, &samples)
}

/// Wilson's 95% score interval for a mean `p` of `n` (effective) observations in [0, 1].
pub fn wilson(p: f64, n: f64) -> (f64, f64) {
    if n.is_nan() || n <= 0.0 {
        return (0.0, 1.0);
    }
    let p = p.clamp(0.0, 1.0);
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_sample_is_uniform_stable_nested_and_apart_from_the_shadow_one() {
        let ids: Vec<String> = (0..20_000).map(|i| format!("item-{i}")).collect();
        let chosen = ids.iter().filter(|i| sampled("job", i, 0.02)).count();
        assert!((340..460).contains(&chosen), "{chosen}");
        assert!(
            ids.iter()
                .all(|i| !sampled("job", i, 0.02) || sampled("job", i, 0.05))
        );
        // Independent of the shadow draw: about 2% of the shadowed items are audited too.
        let both = ids
            .iter()
            .filter(|i| crate::shadow::sampled("job", i, 0.5) && sampled("job", i, 0.02))
            .count();
        assert!((140..260).contains(&both), "{both}");
        let pilot = ids.iter().filter(|i| in_pilot("job", i, 0.1)).count();
        assert!((1_850..2_150).contains(&pilot), "{pilot}");
        assert!(!sampled("job", "x", 0.0) && sampled("job", "x", 1.0));
    }

    #[test]
    fn the_cap_becomes_a_fraction_of_the_weak_routed_items() {
        let d = |x: i64| Decimal::new(x, 2);
        // All strong $10; the weak-routed items would cost $8 strong: 2% of 10 = 0.2 of 8.
        assert!((fraction_for_cap(0.02, d(1000), d(800)) - 0.025).abs() < 1e-12);
        assert_eq!(fraction_for_cap(0.02, d(1000), d(0)), 0.0);
        assert_eq!(fraction_for_cap(0.0, d(1000), d(800)), 0.0);
        assert_eq!(fraction_for_cap(0.5, d(1000), d(100)), 1.0);
    }

    #[test]
    fn the_estimate_scales_the_sample_to_the_job() {
        // 100 items: 30 strong-final, 60 weak-final unaudited, 10 audited (final strong too).
        let samples = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0];
        let e = estimate(40, 60, &samples);
        assert_eq!((e.items, e.audited, e.estimated), (100, 10, 60));
        assert!((e.estimate - (40.0 + 60.0 * 0.8) / 100.0).abs() < 1e-12);
        assert!(e.low < e.estimate && e.estimate < e.high);
        assert!(e.low >= 0.4 && e.high <= 1.0);
        assert!(e.display().starts_with("0.880 ["));
        // Nothing left to the weak tier: exactly 1.
        assert_eq!(estimate(5, 0, &[]).estimate, 1.0);
        // Nothing audited: everything the unknown items allow.
        let e = estimate(50, 50, &[]);
        assert_eq!((e.low, e.high), (0.5, 1.0));
    }

    #[test]
    fn a_job_is_estimated_from_its_stored_answers() {
        use switchyard_proto::TaskKind;
        let v = |pilot, strong_routed, first: Option<(&'static str, bool)>, audit| ItemView {
            pilot,
            strong_routed,
            first,
            audit,
        };
        let items = [
            v(true, false, Some(("A", false)), Some("B")), // pilot: strong-final
            v(false, true, Some(("C", false)), None),      // routed strong
            v(false, false, Some(("A", true)), None),      // escalated
            v(false, false, Some(("A", false)), None),     // weak-final, estimated
            v(false, false, Some(("A", false)), None),     // weak-final, estimated
            v(false, false, Some(("A", false)), Some("A")), // audited, agrees
            v(false, false, Some(("B", false)), Some("A")), // audited, disagrees
            v(false, false, None, None),                   // not answered yet
        ];
        let e = estimate_job(TaskKind::Classify, &items);
        assert_eq!(
            (e.items, e.strong_final, e.estimated, e.audited),
            (7, 5, 2, 2)
        );
        assert!((e.estimate - (5.0 + 2.0 * 0.5) / 7.0).abs() < 1e-12);
    }

    proptest! {
        #[test]
        fn intervals_hold_the_estimate_and_stay_in_range(
            strong in 0usize..500,
            weak in 0usize..500,
            samples in proptest::collection::vec(0.0f64..=1.0, 0..80),
        ) {
            let e = estimate(strong, weak, &samples);
            prop_assert!(0.0 <= e.low && e.low <= e.estimate + 1e-12);
            prop_assert!(e.estimate <= e.high + 1e-12 && e.high <= 1.0);
            // The known strong-final items bound the estimate from below.
            let floor = strong as f64 / (strong + weak).max(1) as f64;
            prop_assert!(e.low >= floor - 1e-12);
        }

        #[test]
        fn wilson_covers_a_binomial_mean(k in 0u32..=50, n in 1u32..=50) {
            let k = k.min(n);
            let p = f64::from(k) / f64::from(n);
            let (lo, hi) = wilson(p, f64::from(n));
            prop_assert!(lo <= p + 1e-12 && p <= hi + 1e-12);
        }
    }
}
