//! The routers every learned router is measured against, as RouteLLM and RouterBench define
//! them: random (averaged over 10 seeds), prompt length, a TF-IDF linear model trained on the
//! evaluation file itself by k-fold cross-fitting, and the oracle (which knows the answers).
//!
//! Random and oracle bound the scale (APGR ≈ 0.5 and ≈ 1); length and TF-IDF are the floor a
//! learned router must clear to be worth anything.

use crate::data::{PairedRow, id_bucket};
use crate::metrics::{CurvePoint, Outcomes, optimal_point, routellm_curve};
use crate::train::{Example, Target, TrainConfig, train_linear};
use switchyard_router::features::FeatureConfig;
use switchyard_router::model::LearnedRouter;
use switchyard_router::rng::SplitMix64;

use switchyard_router::Router;

/// RouteLLM's random router: uniform scores, `iters` repetitions, the curves' points grouped
/// by strong share (rounded to 6 decimals) and their qualities and costs averaged.
pub fn random_curve(o: &Outcomes<'_>, iters: usize, seed: u64) -> Vec<CurvePoint> {
    let mut rng = SplitMix64::new(seed);
    // (rounded strong share) -> (sum of qualities, sum of costs, count), in first-seen order.
    let mut groups: Vec<(f64, f64, f64, usize)> = Vec::new();
    for _ in 0..iters {
        let scores: Vec<f64> = o.weak.iter().map(|_| rng.next_f64()).collect();
        for p in routellm_curve(&scores, o, 10) {
            let key = (p.strong_pct * 1e6).round() / 1e6;
            match groups.iter_mut().find(|g| g.0 == key) {
                Some(g) => {
                    g.1 += p.quality;
                    g.2 += p.cost;
                    g.3 += 1;
                }
                None => groups.push((key, p.quality, p.cost, 1)),
            }
        }
    }
    groups
        .into_iter()
        .map(|(x, q, c, n)| CurvePoint {
            strong_pct: x,
            quality: q / n as f64,
            cost: c / n as f64,
        })
        .collect()
}

/// The oracle as a curve: for strong shares 0, 10, .., 100%, the best possible assignment.
pub fn oracle_curve(o: &Outcomes<'_>) -> Vec<CurvePoint> {
    (0..=100)
        .step_by(10)
        .map(|p| {
            let (quality, cost) = optimal_point(o, f64::from(p) / 100.0);
            CurvePoint {
                strong_pct: f64::from(p),
                quality,
                cost,
            }
        })
        .collect()
}

/// Prompt-length scores, with the reference's tie-break (`len + 1e-9 × row index`).
/// Length is counted in characters, like Python's `len`.
pub fn length_scores(rows: &[PairedRow]) -> Vec<f64> {
    rows.iter()
        .enumerate()
        .map(|(i, r)| r.text.chars().count() as f64 + 1e-9 * i as f64)
        .collect()
}

/// The TF-IDF linear baseline's training setup: word and word-pair TF-IDF, logistic
/// regression on the same target as the learned router, nothing else.
pub fn tfidf_config() -> TrainConfig {
    TrainConfig {
        features: FeatureConfig::WORDS_ONLY,
        heads: vec![(Target::Gain, 1.0)],
        l2: 3e-4,
        l2_dense: 1.0,
        l2_embed: 1.0,
        shared_dense: false,
        max_iter: 200,
    }
}

/// Which of `folds` folds a row falls in: by a hash of its id, so the split is stable and
/// independent of row order.
pub fn fold_of(id: &str, folds: u32) -> u32 {
    // A different hash slice than the demo rule's, so folds do not line up with it.
    id_bucket(&format!("fold:{id}"), folds)
}

/// Out-of-fold scores of the TF-IDF baseline on `rows`: each row is scored by a model
/// trained on the other folds of the same rows (k-fold cross-fitting), so no row is scored
/// by a model that saw it.
pub fn tfidf_crossfit(rows: &[PairedRow], folds: u32) -> Vec<f64> {
    crossfit(rows, folds, &tfidf_config())
}

/// Out-of-fold scores of a linear model trained with `cfg` (see [`tfidf_crossfit`]).
///
/// Folds hold out whole groups ([`crate::data::group_keys`]: subjects in a file of several,
/// rows otherwise), so an in-domain baseline is not credited for recognizing a subject it has
/// seen.
pub fn crossfit(rows: &[PairedRow], folds: u32, cfg: &TrainConfig) -> Vec<f64> {
    let fold: Vec<u32> = crate::data::group_keys(rows)
        .iter()
        .map(|g| fold_of(g, folds))
        .collect();
    let mut scores = vec![0.0; rows.len()];
    for f in 0..folds {
        let train: Vec<Example<'_>> = rows
            .iter()
            .zip(&fold)
            .filter(|(_, k)| **k != f)
            .map(|(r, _)| Example::of(r))
            .collect();
        // With too few rows a fold may have nothing to learn from: it scores 0.
        let Ok(model) = train_linear(&train, cfg) else {
            continue;
        };
        let router = LearnedRouter::new("tfidf", &model);
        for (i, r) in rows.iter().enumerate() {
            if fold[i] == f {
                scores[i] = f64::from(router.score(&r.text, r.kind));
            }
        }
    }
    scores
}

/// Scores rows with any router, tie-broken like the reference (`score + 1e-12 × index`).
pub fn router_scores(router: &dyn Router, rows: &[PairedRow]) -> Vec<f64> {
    rows.iter()
        .enumerate()
        .map(|(i, r)| f64::from(router.score(&r.text, r.kind)) + 1e-12 * i as f64)
        .collect()
}

/// Adds the reference's tie-break to scores computed elsewhere.
pub fn tie_break(scores: &[f64]) -> Vec<f64> {
    scores
        .iter()
        .enumerate()
        .map(|(i, s)| s + 1e-12 * i as f64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_router::TaskKind;

    fn row(i: usize, text: &str, weak: f64, strong: f64) -> PairedRow {
        crate::test_rows::scored(
            i + 1,
            format!("r{i}"),
            TaskKind::Classify,
            text,
            weak,
            strong,
        )
    }

    #[test]
    fn random_is_near_the_diagonal_and_oracle_on_top() {
        let n = 400;
        let mut rng = SplitMix64::new(3);
        let w: Vec<f64> = (0..n).map(|_| f64::from(rng.next_f64() < 0.6)).collect();
        let s: Vec<f64> = (0..n).map(|_| f64::from(rng.next_f64() < 0.8)).collect();
        let (zero, one) = (vec![0.0; n], vec![1.0; n]);
        let o = Outcomes {
            weak: &w,
            strong: &s,
            weak_cost: &zero,
            strong_cost: &one,
        };
        let (wa, sa) = (
            w.iter().sum::<f64>() / n as f64,
            s.iter().sum::<f64>() / n as f64,
        );
        let pts = |c: Vec<CurvePoint>| -> Vec<(f64, f64)> {
            c.iter().map(|p| (p.strong_pct, p.quality)).collect()
        };
        let r = crate::metrics::routellm_metrics(&pts(random_curve(&o, 10, 0)), wa, sa);
        assert!((r.apgr - 0.5).abs() < 0.1, "{r:?}");
        let best = crate::metrics::routellm_metrics(&pts(oracle_curve(&o)), wa, sa);
        assert!(best.apgr > 0.9, "{best:?}");
    }

    #[test]
    fn crossfit_scores_every_row_out_of_fold() {
        // A learnable signal: "hard" rows need the strong model.
        let rows: Vec<PairedRow> = (0..60)
            .map(|i| {
                if i % 2 == 0 {
                    row(i, &format!("hard proof question {i}"), 0.0, 1.0)
                } else {
                    row(i, &format!("easy lookup question {i}"), 1.0, 1.0)
                }
            })
            .collect();
        let mut cfg = tfidf_config();
        cfg.features.bits = 10;
        let s = crossfit(&rows, 5, &cfg);
        let hard: f64 = s.iter().step_by(2).sum::<f64>() / 30.0;
        let easy: f64 = s.iter().skip(1).step_by(2).sum::<f64>() / 30.0;
        assert!(hard > easy, "{hard} <= {easy}");
        let l = length_scores(&rows[..2]);
        assert!(l[1] > l[0] - 1.0);
    }
}
