//! Job-level calibration: from the items a policy decides to one [`Cut`], with the job's
//! expected cost and predicted quality.
//!
//! A batch job's items are all scored before any is sent, so every policy is applied to the
//! job's own scores rather than to a global threshold:
//!
//! - `threshold=t`: strong iff the (rule-shifted) score is at least `t`;
//! - `strong-share=p`: exactly `round(p × n)` items strong, the highest scores;
//! - `quality=q`: the smallest strong share whose predicted quality reaches `q` times the
//!   predicted quality of sending every item strong;
//! - `budget-usd=B`: strong calls go to the items with the best predicted gain per extra
//!   dollar, as many as keep the job's expected cost within `B`.
//!
//! **Predictions.** The router's score estimates the strong model's quality gain over the
//! weak one on an item; the router also knows the weak model's mean quality on the task kind
//! (measured on its training data, [`JobFacts::weak_quality`]). An item's predicted quality
//! is that level on the weak tier, and the level plus its gain (clamped to [0, 1]) on the
//! strong tier. Costs are estimates of tokens × the price of each tier's model
//! ([`crate::estimate`]); money stays `Decimal`, only the ranking key of a budget is a float.
//!
//! **Keys and cuts.** Each item gets a key ([`key_of`]): its shifted score, or for a budget
//! its shifted score per extra dollar. Every policy ends as a rank or threshold cut over the
//! keys, so the dispatcher stores one cut per job, assigns tiers in one statement, and
//! `router explain` can show each item's key next to the cut it was compared with. Ties are
//! broken by input order, so a plan is exact and reproducible.
//!
//! A budget that the job cannot meet even with every decided item on the weak tier (plus the
//! items pinned or forced elsewhere) is an error, not a silent overrun.

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::Serialize;
use switchyard_proto::Routing;

use crate::policy::{Cut, Route, by_rank, strong_count, top_k_cut};

/// One item the policy decides (not pinned by its sensitivity, not forced by a rule).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Input position: breaks ties.
    pub seq: i64,
    /// The router's score after rule shifts: what ranks items.
    pub score: f32,
    /// The router's own score: the predicted quality gain of the strong model.
    pub gain: f32,
    /// Estimated extra cost of the strong model over the weak one for this item.
    pub extra_usd: Decimal,
}

/// What the plan needs to know about the job besides its candidates.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct JobFacts {
    /// Estimated cost of every candidate on the weak tier.
    pub weak_usd: Decimal,
    /// Estimated cost of the items pinned or forced to a tier (they are not candidates).
    pub fixed_usd: Decimal,
    /// Items pinned or forced, and the sum of their predicted qualities.
    pub fixed_items: usize,
    pub fixed_quality: f64,
    /// The weak model's expected quality on this task kind.
    pub weak_quality: f64,
}

/// What a cut is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// The router's score after rule shifts.
    Score,
    /// The shifted score per extra dollar of the strong model (budgets).
    GainPerDollar,
}

/// A job's routing plan: the cut, and what it is expected to cost and deliver.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The policy as given (`strong_share=0.2`, `budget_usd=10`, …).
    pub policy: String,
    pub key: KeyKind,
    #[serde(skip)]
    pub cut: Cut,
    /// The key of the last item sent strong (rank cuts) or the threshold; `None`: nothing
    /// strong.
    pub cut_key: Option<f32>,
    /// Items the policy decided, and how many of them it sent strong.
    pub decided: usize,
    pub strong: usize,
    /// Items pinned or forced by rules.
    pub fixed: usize,
    /// Expected cost of the whole job without escalations, and with every decided item weak
    /// or strong.
    #[serde(serialize_with = "ser_usd")]
    pub expected_usd: Decimal,
    #[serde(serialize_with = "ser_usd")]
    pub all_weak_usd: Decimal,
    #[serde(serialize_with = "ser_usd")]
    pub all_strong_usd: Decimal,
    /// Mean predicted quality of the job's items, and the same with every decided item weak
    /// or strong.
    pub predicted_quality: f64,
    pub all_weak_quality: f64,
    pub all_strong_quality: f64,
}

fn ser_usd<S: serde::Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&d.normalize().to_string())
}

impl Plan {
    /// Share of the decided items sent strong.
    pub fn strong_share(&self) -> f64 {
        if self.decided == 0 {
            0.0
        } else {
            self.strong as f64 / self.decided as f64
        }
    }

    /// Predicted quality as a fraction of all-strong.
    pub fn quality_vs_all_strong(&self) -> f64 {
        if self.all_strong_quality > 0.0 {
            self.predicted_quality / self.all_strong_quality
        } else {
            1.0
        }
    }
}

/// A policy the job cannot meet.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "budget_usd {budget} is below the job's expected cost with every item on the weak \
         tier (${minimum})"
    )]
    BudgetTooSmall { budget: Decimal, minimum: Decimal },
}

/// The policy in words, as `--policy` spells it.
pub fn describe(routing: &Routing) -> String {
    match routing {
        Routing::Threshold { value } => format!("threshold={value}"),
        Routing::StrongShare { value } => format!("strong-share={value}"),
        Routing::BudgetUsd { value } => format!("budget-usd={}", value.normalize()),
        Routing::Quality { value } => format!("quality={value}"),
    }
}

/// What the cut of `routing` is compared with.
pub fn key_kind(routing: &Routing) -> KeyKind {
    match routing {
        Routing::BudgetUsd { .. } => KeyKind::GainPerDollar,
        _ => KeyKind::Score,
    }
}

/// The key of an item under `routing`: its shifted score, or for a budget its shifted score
/// per extra dollar (`f32::MAX` for a positive score when the strong model costs no more;
/// the score itself, never above 0, when it predicts no gain).
pub fn key_of(routing: &Routing, score: f32, extra_usd: Decimal) -> f32 {
    match key_kind(routing) {
        KeyKind::Score => score,
        KeyKind::GainPerDollar => {
            if score <= 0.0 {
                return score.min(0.0);
            }
            match extra_usd.to_f64() {
                Some(extra) if extra > 0.0 => {
                    let k = f64::from(score) / extra;
                    if k.is_finite() { k as f32 } else { f32::MAX }
                }
                _ => f32::MAX,
            }
        }
    }
}

/// Predicted quality of an item on the strong tier: the weak level plus its gain, in [0, 1].
pub fn strong_quality(weak_quality: f64, gain: f32) -> f64 {
    (weak_quality + f64::from(gain)).clamp(0.0, 1.0)
}

/// Computes the plan of `routing` for the decided items (any order; reordered in place).
///
/// # Errors
/// [`PlanError::BudgetTooSmall`] when even the all-weak job costs more than the budget.
pub fn plan(
    routing: &Routing,
    candidates: &mut [Candidate],
    facts: &JobFacts,
) -> Result<Plan, PlanError> {
    let qw = facts.weak_quality;
    let kind = key_kind(routing);
    let key = |c: &Candidate| key_of(routing, c.score, c.extra_usd);
    let rank = |a: &Candidate, b: &Candidate| by_rank(&(key(a), a.seq), &(key(b), b.seq));
    let cut = match routing {
        Routing::Threshold { value } => Cut::AtLeast(*value as f32),
        Routing::StrongShare { value } => {
            let mut keyed: Vec<(f32, i64)> = candidates.iter().map(|c| (key(c), c.seq)).collect();
            top_k_cut(strong_count(*value, keyed.len()), &mut keyed)
        }
        Routing::Quality { value } => {
            candidates.sort_unstable_by(rank);
            let gain = |c: &Candidate| strong_quality(qw, c.gain) - qw;
            let base = facts.fixed_quality + qw * candidates.len() as f64;
            let all: f64 = base + candidates.iter().map(gain).sum::<f64>();
            let target = value.clamp(0.0, 1.0) * all;
            let mut reached = base;
            let mut k = 0;
            // Smallest k: stop as soon as the target is reached (1e-6: scores are f32).
            while reached < target - 1e-6 && k < candidates.len() {
                reached += gain(&candidates[k]);
                k += 1;
            }
            rank_cut(candidates, k, key)
        }
        Routing::BudgetUsd { value } => {
            let minimum = facts.fixed_usd + facts.weak_usd;
            if minimum > *value {
                return Err(PlanError::BudgetTooSmall {
                    budget: value.normalize(),
                    minimum: minimum.normalize(),
                });
            }
            candidates.sort_unstable_by(rank);
            let mut left = *value - minimum;
            let mut k = 0;
            // The best gain per dollar first, while the next one fits: a prefix of the
            // ranking, so the plan is one cut ("gain per dollar at least …").
            for c in candidates.iter() {
                if key(c) <= 0.0 || c.extra_usd.max(Decimal::ZERO) > left {
                    break;
                }
                left -= c.extra_usd.max(Decimal::ZERO);
                k += 1;
            }
            rank_cut(candidates, k, key)
        }
    };
    Ok(summarize(routing, kind, cut, candidates, facts))
}

/// The cut after the first `k` of `sorted` (sorted by rank).
fn rank_cut(sorted: &[Candidate], k: usize, key: impl Fn(&Candidate) -> f32) -> Cut {
    match k.checked_sub(1).and_then(|i| sorted.get(i)) {
        None => Cut::Nothing,
        Some(c) => Cut::Rank {
            score_cut: key(c),
            last_seq: c.seq,
        },
    }
}

fn summarize(
    routing: &Routing,
    kind: KeyKind,
    cut: Cut,
    candidates: &[Candidate],
    facts: &JobFacts,
) -> Plan {
    let qw = facts.weak_quality;
    let mut strong = 0;
    let mut extra = Decimal::ZERO;
    let mut all_extra = Decimal::ZERO;
    let mut quality = facts.fixed_quality;
    let mut all_strong_q = facts.fixed_quality;
    for c in candidates {
        let qs = strong_quality(qw, c.gain);
        all_extra += c.extra_usd;
        all_strong_q += qs;
        if cut.route(key_of(routing, c.score, c.extra_usd), c.seq) == Route::Strong {
            strong += 1;
            extra += c.extra_usd;
            quality += qs;
        } else {
            quality += qw;
        }
    }
    let n = (facts.fixed_items + candidates.len()).max(1) as f64;
    let base = facts.fixed_usd + facts.weak_usd;
    Plan {
        policy: describe(routing),
        key: kind,
        cut,
        cut_key: cut.score_cut(),
        decided: candidates.len(),
        strong,
        fixed: facts.fixed_items,
        expected_usd: base + extra,
        all_weak_usd: base,
        all_strong_usd: base + all_extra,
        predicted_quality: quality / n,
        all_weak_quality: (facts.fixed_quality + qw * candidates.len() as f64) / n,
        all_strong_quality: all_strong_q / n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn usd(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn cands(specs: &[(f32, &str)]) -> Vec<Candidate> {
        specs
            .iter()
            .enumerate()
            .map(|(i, &(score, extra))| Candidate {
                seq: i as i64,
                score,
                gain: score,
                extra_usd: usd(extra),
            })
            .collect()
    }

    fn strong_seqs(p: &Plan, routing: &Routing, c: &[Candidate]) -> Vec<i64> {
        let mut v: Vec<i64> = c
            .iter()
            .filter(|x| p.cut.route(key_of(routing, x.score, x.extra_usd), x.seq) == Route::Strong)
            .map(|x| x.seq)
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn budget_buys_the_best_gain_per_dollar_and_stays_within() {
        // gain per dollar: 0.5/0.5 = 1, 0.4/0.2 = 2, 0.3/0.1 = 3, -0.1 (no gain), 0.2/0.5 = 0.4
        let routing = Routing::BudgetUsd { value: usd("2.0") };
        let mut c = cands(&[
            (0.5, "0.5"),
            (0.4, "0.2"),
            (0.3, "0.1"),
            (-0.1, "0.1"),
            (0.2, "0.5"),
        ]);
        let facts = JobFacts {
            weak_usd: usd("1.0"),
            weak_quality: 0.5,
            ..JobFacts::default()
        };
        let p = plan(&routing, &mut c, &facts).unwrap();
        // 1.0 weak + 0.1 + 0.2 = 1.3; + 0.5 (seq 0, ratio 1) = 1.8 ≤ 2; + 0.5 (ratio 0.4) > 2.
        assert_eq!(strong_seqs(&p, &routing, &c), vec![0, 1, 2]);
        assert_eq!(p.expected_usd, usd("1.8"));
        assert!(p.expected_usd <= usd("2.0"));
        assert_eq!(p.key, KeyKind::GainPerDollar);
        assert_eq!(p.cut_key, Some(1.0));
    }

    #[test]
    fn a_budget_below_the_all_weak_cost_is_an_error() {
        let routing = Routing::BudgetUsd { value: usd("0.5") };
        let mut c = cands(&[(0.5, "1")]);
        let facts = JobFacts {
            weak_usd: usd("0.4"),
            fixed_usd: usd("0.2"),
            ..JobFacts::default()
        };
        let e = plan(&routing, &mut c, &facts).unwrap_err();
        assert_eq!(
            e,
            PlanError::BudgetTooSmall {
                budget: usd("0.5"),
                minimum: usd("0.6")
            }
        );
        assert!(e.to_string().contains("$0.6"), "{e}");
    }

    #[test]
    fn quality_takes_the_smallest_share_that_reaches_the_target() {
        // weak 0.5; gains 0.4, 0.3, 0.2, 0.1 → all strong = (0.9+0.8+0.7+0.6)/4 = 0.75.
        let routing = Routing::Quality { value: 0.9 };
        let mut c = cands(&[(0.1, "1"), (0.4, "1"), (0.2, "1"), (0.3, "1")]);
        let facts = JobFacts {
            weak_quality: 0.5,
            ..JobFacts::default()
        };
        let p = plan(&routing, &mut c, &facts).unwrap();
        // Target 0.675 × 4 = 2.7: base 2.0, +0.4 = 2.4, +0.3 = 2.7 → two items.
        assert_eq!(p.strong, 2);
        assert_eq!(strong_seqs(&p, &routing, &c), vec![1, 3]);
        assert!((p.all_strong_quality - 0.75).abs() < 1e-6);
        assert!(p.quality_vs_all_strong() >= 0.9 - 1e-6);
        // Quality 1 needs every item with a positive gain.
        let p = plan(&Routing::Quality { value: 1.0 }, &mut c, &facts).unwrap();
        assert_eq!(p.strong, 4);
    }

    #[test]
    fn share_and_threshold_report_cost_and_quality() {
        let mut c = cands(&[(0.1, "1"), (0.4, "2"), (0.2, "3")]);
        let facts = JobFacts {
            weak_usd: usd("0.3"),
            weak_quality: 0.6,
            ..JobFacts::default()
        };
        let p = plan(&Routing::StrongShare { value: 0.34 }, &mut c, &facts).unwrap();
        assert_eq!(p.strong, 1);
        assert_eq!(p.expected_usd, usd("2.3"));
        assert_eq!(p.all_strong_usd, usd("6.3"));
        assert!((p.predicted_quality - (0.6 * 2.0 + 1.0) / 3.0).abs() < 1e-9);
        let p = plan(&Routing::Threshold { value: 0.15 }, &mut c, &facts).unwrap();
        assert_eq!(p.strong, 2);
        assert_eq!(p.cut_key, Some(0.15));
    }

    proptest! {
        #[test]
        fn budget_plans_never_exceed_the_budget(
            items in proptest::collection::vec((-50i32..100, 0u32..5000), 0..200),
            budget_cents in 0u32..20_000,
            weak_cents in 0u32..5_000,
        ) {
            let mut c: Vec<Candidate> = items.iter().enumerate().map(|(i, &(s, e))| Candidate {
                seq: i as i64,
                score: s as f32 / 100.0,
                gain: s as f32 / 100.0,
                extra_usd: Decimal::new(i64::from(e), 4),
            }).collect();
            let facts = JobFacts {
                weak_usd: Decimal::new(i64::from(weak_cents), 2),
                weak_quality: 0.5,
                ..JobFacts::default()
            };
            let budget = Decimal::new(i64::from(budget_cents), 2);
            let routing = Routing::BudgetUsd { value: budget };
            match plan(&routing, &mut c, &facts) {
                Ok(p) => {
                    prop_assert!(p.expected_usd <= budget);
                    // Recomputed from the cut, item by item.
                    let spent: Decimal = facts.weak_usd + c.iter()
                        .filter(|x| p.cut.route(key_of(&routing, x.score, x.extra_usd), x.seq) == Route::Strong)
                        .map(|x| x.extra_usd).sum::<Decimal>();
                    prop_assert_eq!(spent, p.expected_usd);
                }
                Err(PlanError::BudgetTooSmall { .. }) => prop_assert!(facts.weak_usd > budget),
            }
        }

        #[test]
        fn quality_plans_reach_the_target_with_the_fewest_items(
            gains in proptest::collection::vec(-30i32..60, 1..100),
            q in 0.5f64..=1.0,
        ) {
            let mut c: Vec<Candidate> = gains.iter().enumerate().map(|(i, &g)| Candidate {
                seq: i as i64, score: g as f32 / 100.0, gain: g as f32 / 100.0, extra_usd: Decimal::ONE,
            }).collect();
            let facts = JobFacts { weak_quality: 0.55, ..JobFacts::default() };
            let p = plan(&Routing::Quality { value: q }, &mut c, &facts).unwrap();
            prop_assert!(p.predicted_quality >= q * p.all_strong_quality - 1e-6);
            if p.strong > 0 {
                // One item fewer (the last one taken) would miss the target.
                let mut g: Vec<f64> = c.iter().map(|x| strong_quality(0.55, x.gain) - 0.55).collect();
                g.sort_by(|a, b| b.total_cmp(a));
                let n = c.len() as f64;
                let fewer = (0.55 * n + g[..p.strong - 1].iter().sum::<f64>()) / n;
                prop_assert!(fewer < q * p.all_strong_quality + 1e-6);
            }
        }
    }
}
