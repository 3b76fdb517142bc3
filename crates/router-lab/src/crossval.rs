//! Cross-validation: how well a training recipe does on prompts it has not seen.
//!
//! Every row gets an out-of-fold score from a router trained (on all sets at once, as the
//! default router is) without it, under one of three splits:
//! - [`Split::Groups`] (the default): k folds of whole groups, a group being a subject or
//!   benchmark in a file of several (MMLU, RouterArena) and a row elsewhere, so a held-out
//!   subject was never seen in any form. Real traffic carries no subject, and a router that
//!   only recognizes subjects it was trained on scores well on random folds and poorly on it.
//! - [`Split::Sources`]: each file is scored by a router trained on the other files only
//!   (a benchmark, or a news source, it has never seen).
//! - [`Split::Ids`]: k folds by row id (the old protocol; optimistic where subjects repeat).
//!
//! Each set is then evaluated on its pooled out-of-fold scores beside the baselines (the
//! in-domain TF-IDF one cross-fitted on the same groups of that set alone), and the
//! calibration of the predicted gain and weak quality is measured in deciles.

use crate::baselines::{fold_of, tie_break};
use crate::data::{Pair, PairedRow, group_keys};
use crate::eval::{EvalOptions, EvalReport, evaluate_scores};
use crate::train::{Recipe, TrainError, train_recipe};
use switchyard_router::Estimate;
use switchyard_router::Router;
use switchyard_router::model::LearnedRouter;

/// One data set in a cross-validation.
#[derive(Debug, Clone)]
pub struct CvSet {
    /// Its name in the report (the file name).
    pub name: String,
    pub pair: Pair,
    pub rows: Vec<PairedRow>,
}

/// How rows are held out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Split {
    /// k folds of whole subjects / benchmarks (rows where a file has one task).
    #[default]
    Groups,
    /// Each file scored by a router trained on the other files.
    Sources,
    /// k folds by row id.
    Ids,
}

/// Per set, per row, the fold it is held out in.
fn assign(sets: &[CvSet], split: Split, folds: u32) -> Vec<Vec<u32>> {
    sets.iter()
        .enumerate()
        .map(|(i, s)| match split {
            Split::Groups => group_keys(&s.rows)
                .iter()
                .map(|g| fold_of(g, folds))
                .collect(),
            Split::Sources => vec![i as u32; s.rows.len()],
            Split::Ids => s.rows.iter().map(|r| fold_of(&r.id, folds)).collect(),
        })
        .collect()
}

/// The out-of-fold estimates of `recipe` on every set (same order as `sets` and their rows).
pub fn out_of_fold(
    sets: &[CvSet],
    recipe: &Recipe,
    split: Split,
    folds: u32,
) -> Result<Vec<Vec<Estimate>>, TrainError> {
    let fold_ids = assign(sets, split, folds);
    let rounds = match split {
        Split::Sources => sets.len() as u32,
        _ => folds,
    };
    let blank = Estimate {
        gain: 0.0,
        weak: None,
    };
    let mut out: Vec<Vec<Estimate>> = sets.iter().map(|s| vec![blank; s.rows.len()]).collect();
    for f in 0..rounds {
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
        for ((s, ids), est) in sets.iter().zip(&fold_ids).zip(out.iter_mut()) {
            for ((r, k), e) in s.rows.iter().zip(ids).zip(est.iter_mut()) {
                if *k == f {
                    *e = router.estimate(&r.text, r.kind);
                }
            }
        }
    }
    Ok(out)
}

/// The out-of-fold scores (gain estimates) of `recipe` under id folds.
pub fn out_of_fold_scores(
    sets: &[CvSet],
    recipe: &Recipe,
    folds: u32,
) -> Result<Vec<Vec<f64>>, TrainError> {
    Ok(out_of_fold(sets, recipe, Split::Ids, folds)?
        .into_iter()
        .map(|v| v.into_iter().map(|e| e.gain).collect())
        .collect())
}

/// One set's result: the evaluation of every recipe and the first recipe's calibration.
#[derive(Debug, Clone)]
pub struct SetResult {
    pub name: String,
    pub report: EvalReport,
    pub calibration: Calibration,
}

/// Cross-validates each `(name, recipe)` on every set; the first recipe's estimates are
/// also checked for calibration.
pub fn crossval(
    sets: &[CvSet],
    recipes: &[(String, Recipe)],
    split: Split,
    folds: u32,
    opts: &EvalOptions,
) -> Result<Vec<SetResult>, TrainError> {
    let mut per_recipe = Vec::new();
    for (_, recipe) in recipes {
        per_recipe.push(out_of_fold(sets, recipe, split, folds)?);
    }
    let opts = EvalOptions {
        tfidf_folds: folds,
        ..opts.clone()
    };
    Ok(sets
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let scored: Vec<(String, Vec<f64>)> = recipes
                .iter()
                .zip(&per_recipe)
                .map(|((name, _), est)| {
                    let g: Vec<f64> = est[i].iter().map(|e| e.gain).collect();
                    (name.clone(), tie_break(&g))
                })
                .collect();
            let report = evaluate_scores(&s.rows, &s.pair, &scored, &opts);
            let calibration = per_recipe
                .first()
                .map(|est| calibration(&s.rows, &est[i]))
                .unwrap_or_default();
            SetResult {
                name: s.name.clone(),
                report,
                calibration,
            }
        })
        .collect())
}

/// One decile of a reliability table: mean predicted and mean realised value.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Bin {
    pub rows: usize,
    pub predicted: f64,
    pub realised: f64,
}

/// Reliability of the predicted gain (strong − weak) and weak quality, in deciles of the
/// prediction.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Calibration {
    pub gain: Vec<Bin>,
    pub weak: Vec<Bin>,
}

impl Calibration {
    /// Row-weighted mean absolute gap between predicted and realised gain.
    pub fn gain_error(&self) -> f64 {
        weighted_gap(&self.gain)
    }

    /// Row-weighted mean absolute gap between predicted and realised weak quality.
    pub fn weak_error(&self) -> f64 {
        weighted_gap(&self.weak)
    }
}

fn weighted_gap(bins: &[Bin]) -> f64 {
    let n: usize = bins.iter().map(|b| b.rows).sum();
    bins.iter()
        .map(|b| b.rows as f64 * (b.predicted - b.realised).abs())
        .sum::<f64>()
        / n.max(1) as f64
}

/// Deciles of `(predicted, realised)` pairs, sorted by prediction.
fn deciles(mut pairs: Vec<(f64, f64)>) -> Vec<Bin> {
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = pairs.len();
    (0..10)
        .filter_map(|d| {
            let part = &pairs[d * n / 10..(d + 1) * n / 10];
            (!part.is_empty()).then(|| Bin {
                rows: part.len(),
                predicted: part.iter().map(|p| p.0).sum::<f64>() / part.len() as f64,
                realised: part.iter().map(|p| p.1).sum::<f64>() / part.len() as f64,
            })
        })
        .collect()
}

/// The reliability of out-of-fold estimates on one set.
pub fn calibration(rows: &[PairedRow], est: &[Estimate]) -> Calibration {
    Calibration {
        gain: deciles(
            rows.iter()
                .zip(est)
                .map(|(r, e)| (e.gain, r.gain()))
                .collect(),
        ),
        weak: deciles(
            rows.iter()
                .zip(est)
                .filter_map(|(r, e)| Some((e.weak?, r.weak.score)))
                .collect(),
        ),
    }
}

/// The cross-validation table (Markdown): per set, APGR, CPT(50%), CPT(80%) of each recipe
/// and the baselines.
pub fn markdown_table(results: &[SetResult], names: &[String]) -> String {
    use crate::eval::{LENGTH, ORACLE, RANDOM, TFIDF};
    let mut out = String::from(
        "| set | rows | router | APGR | CPT(50%) | CPT(80%) |\n|---|---:|---|---:|---:|---:|\n",
    );
    for res in results {
        let routers = names
            .iter()
            .map(String::as_str)
            .chain([TFIDF, LENGTH, RANDOM, ORACLE]);
        for router in routers {
            if let Some(r) = res.report.get(router) {
                out.push_str(&format!(
                    "| {} | {} | {router} | {:.3} | {:.1}% | {:.1}% |\n",
                    res.name, res.report.rows, r.metrics.apgr, r.metrics.cpt50, r.metrics.cpt80
                ));
            }
        }
    }
    out
}

/// The calibration table (Markdown): per set, the deciles of predicted vs realised gain and
/// weak quality.
pub fn calibration_table(results: &[SetResult]) -> String {
    let mut out = String::from(
        "| set | | d1 | d2 | d3 | d4 | d5 | d6 | d7 | d8 | d9 | d10 | mean abs gap |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---:|\n",
    );
    for res in results {
        for (what, bins, gap) in [
            ("gain", &res.calibration.gain, res.calibration.gain_error()),
            ("weak", &res.calibration.weak, res.calibration.weak_error()),
        ] {
            let cells: Vec<String> = bins
                .iter()
                .map(|b| format!("{:+.2}/{:+.2}", b.predicted, b.realised))
                .collect();
            out.push_str(&format!(
                "| {} | {what} predicted/realised | {} | {gap:.3} |\n",
                res.name,
                cells.join(" | ")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Outcome;
    use switchyard_router::TaskKind;

    fn o(score: f64) -> Outcome {
        Outcome {
            score,
            prompt_tokens: None,
            completion_tokens: None,
            cost_usd: None,
        }
    }

    fn toy_rows() -> Vec<PairedRow> {
        (0..120)
            .map(|i| {
                let hard = i % 3 == 0;
                PairedRow {
                    line: i + 1,
                    id: format!("x{i}"),
                    kind: TaskKind::Classify,
                    task: format!("toy/subject{}", i % 5),
                    text: if hard {
                        format!("prove the theorem about eigenvalues {i}")
                    } else {
                        format!("name the capital of country {i}")
                    },
                    weak: o(if hard { 0.0 } else { 1.0 }),
                    strong: o(1.0),
                }
            })
            .collect()
    }

    #[test]
    fn learnable_signal_is_found_out_of_fold_and_calibrated() {
        let sets = [CvSet {
            name: "toy".into(),
            pair: Pair::new("w", "s"),
            rows: toy_rows(),
        }];
        let mut recipe = Recipe::default();
        recipe.config.features.bits = 12;
        let names = vec!["mine".to_string()];
        let res = crossval(
            &sets,
            &[("mine".into(), recipe)],
            Split::Groups,
            3,
            &crate::eval::tests::small_options(),
        )
        .expect("trains");
        let mine = res[0].report.get("mine").expect("mine");
        assert!(mine.metrics.apgr > 0.8, "{:?}", mine.metrics);
        let table = markdown_table(&res, &names);
        assert!(table.contains("| toy | 120 | mine |"), "{table}");
        // Hard rows gain 1, easy rows 0: the top decile must predict and realise more gain
        // than the bottom one.
        let cal = &res[0].calibration;
        assert_eq!(cal.gain.len(), 10);
        let (lo, hi) = (cal.gain[0], cal.gain[9]);
        assert!(
            hi.predicted > lo.predicted && hi.realised > lo.realised,
            "{cal:?}"
        );
        assert!(calibration_table(&res).contains("| toy | gain predicted/realised |"));
    }

    #[test]
    fn group_folds_hold_out_whole_subjects_and_sources_whole_files() {
        let rows = toy_rows();
        let sets = [
            CvSet {
                name: "a".into(),
                pair: Pair::new("w", "s"),
                rows: rows.clone(),
            },
            CvSet {
                name: "b".into(),
                pair: Pair::new("w", "s"),
                rows: rows[..10].to_vec(),
            },
        ];
        let groups = assign(&sets, Split::Groups, 3);
        for (r, f) in sets[0].rows.iter().zip(&groups[0]) {
            let same_subject = sets[0]
                .rows
                .iter()
                .zip(&groups[0])
                .filter(|(o, _)| o.task == r.task);
            assert!(same_subject.into_iter().all(|(_, g)| g == f));
        }
        let sources = assign(&sets, Split::Sources, 3);
        assert!(sources[0].iter().all(|&f| f == 0));
        assert!(sources[1].iter().all(|&f| f == 1));
    }
}
