//! Cross-validation: how well a training recipe does on prompts it has not seen.
//!
//! Rows are split into k folds by a hash of their id. For each fold, a router is trained on
//! the other folds of *all* sets (as the default router is trained on all sets) and scores
//! the held-out fold; every row thus gets an out-of-fold score, and each set is evaluated on
//! its pooled out-of-fold scores beside the baselines, the TF-IDF one cross-fitted on the
//! same folds of that set alone. This is the honest number for a recipe; evaluating the
//! default artifact on the shared files would be in-sample.

use crate::Router;
use crate::baselines::{fold_of, tie_break};
use crate::data::{Pair, PairedRow};
use crate::eval::{EvalOptions, EvalReport, evaluate_scores};
use crate::model::LearnedRouter;
use crate::train::{Recipe, TrainError, train_recipe};

/// One data set in a cross-validation.
#[derive(Debug, Clone)]
pub struct CvSet {
    /// Its name in the report (the file name).
    pub name: String,
    pub pair: Pair,
    pub rows: Vec<PairedRow>,
}

/// The out-of-fold scores of `recipe` on every set (same order as `sets` and their rows).
pub fn out_of_fold_scores(
    sets: &[CvSet],
    recipe: &Recipe,
    folds: u32,
) -> Result<Vec<Vec<f64>>, TrainError> {
    let fold_ids: Vec<Vec<u32>> = sets
        .iter()
        .map(|s| s.rows.iter().map(|r| fold_of(&r.id, folds)).collect())
        .collect();
    let mut scores: Vec<Vec<f64>> = sets.iter().map(|s| vec![0.0; s.rows.len()]).collect();
    for f in 0..folds {
        let train: Vec<Vec<PairedRow>> = sets
            .iter()
            .zip(&fold_ids)
            .map(|(s, ids)| {
                s.rows
                    .iter()
                    .zip(ids)
                    .filter(|(_, k)| **k != f)
                    .map(|(r, _)| r.clone())
                    .collect()
            })
            .collect();
        let slices: Vec<&[PairedRow]> = train.iter().map(Vec::as_slice).collect();
        let router = LearnedRouter::new("cv", &train_recipe(&slices, recipe)?);
        for ((s, ids), out) in sets.iter().zip(&fold_ids).zip(scores.iter_mut()) {
            for ((r, k), o) in s.rows.iter().zip(ids).zip(out.iter_mut()) {
                if *k == f {
                    *o = f64::from(router.score(&r.text, r.kind));
                }
            }
        }
    }
    Ok(scores)
}

/// Cross-validates `recipe` (reported under `name`) on every set.
pub fn crossval(
    sets: &[CvSet],
    recipe: &Recipe,
    folds: u32,
    name: &str,
    opts: &EvalOptions,
) -> Result<Vec<(String, EvalReport)>, TrainError> {
    let scores = out_of_fold_scores(sets, recipe, folds)?;
    let opts = EvalOptions {
        tfidf_folds: folds,
        ..opts.clone()
    };
    Ok(sets
        .iter()
        .zip(scores)
        .map(|(s, sc)| {
            let report = evaluate_scores(
                &s.rows,
                &s.pair,
                &[(name.to_string(), tie_break(&sc))],
                &opts,
            );
            (s.name.clone(), report)
        })
        .collect())
}

/// The cross-validation table (Markdown): per set, APGR, CPT(50%), CPT(80%) of the recipe
/// and the baselines.
pub fn markdown_table(results: &[(String, EvalReport)], name: &str) -> String {
    use crate::eval::{LENGTH, ORACLE, RANDOM, TFIDF};
    let mut out = String::from(
        "| set | rows | router | APGR | CPT(50%) | CPT(80%) |\n|---|---:|---|---:|---:|---:|\n",
    );
    for (set, report) in results {
        for router in [name, TFIDF, LENGTH, RANDOM, ORACLE] {
            if let Some(r) = report.get(router) {
                out.push_str(&format!(
                    "| {set} | {} | {router} | {:.3} | {:.1}% | {:.1}% |\n",
                    report.rows, r.metrics.apgr, r.metrics.cpt50, r.metrics.cpt80
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TaskKind;
    use crate::data::Outcome;

    #[test]
    fn learnable_signal_is_found_out_of_fold() {
        let o = |score| Outcome {
            score,
            prompt_tokens: None,
            completion_tokens: None,
            cost_usd: None,
        };
        let rows: Vec<PairedRow> = (0..120)
            .map(|i| {
                let hard = i % 3 == 0;
                PairedRow {
                    line: i + 1,
                    id: format!("x{i}"),
                    kind: TaskKind::Classify,
                    text: if hard {
                        format!("prove the theorem about eigenvalues {i}")
                    } else {
                        format!("name the capital of country {i}")
                    },
                    weak: o(if hard { 0.0 } else { 1.0 }),
                    strong: o(1.0),
                }
            })
            .collect();
        let sets = [CvSet {
            name: "toy".into(),
            pair: Pair::new("w", "s"),
            rows,
        }];
        let mut recipe = Recipe::default();
        recipe.config.features.bits = 12;
        let res = crossval(
            &sets,
            &recipe,
            5,
            "mine",
            &crate::eval::tests::small_options(),
        )
        .expect("trains");
        let report = &res[0].1;
        let mine = report.get("mine").expect("mine");
        assert!(mine.metrics.apgr > 0.8, "{:?}", mine.metrics);
        let table = markdown_table(&res, "mine");
        assert!(table.contains("| toy | 120 | mine |"), "{table}");
    }
}
