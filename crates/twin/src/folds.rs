//! Held-out router scores by group folds: every row is scored by a router that never saw its
//! group (its MMLU subject, or the row itself where a file has one task).
//!
//! The default recipe (`switchyard_router_lab::train::Recipe::default()`) is trained once per
//! fold on the other folds of the evaluated file plus any extra training files, with the
//! weak/strong quality prior measured on the same rows, as `router train` builds the default
//! router. A group goes to fold `sha256(group) mod K`, so the split is stable and whole
//! subjects are held out together.

use switchyard_router::Router;
use switchyard_router::model::LearnedRouter;
use switchyard_router_lab::data::{PairedRow, id_bucket};
use switchyard_router_lab::prior;
use switchyard_router_lab::train::{Recipe, train_recipe};

use crate::data::EvalSet;

/// The fold of a group.
pub fn fold_of(group: &str, folds: u32) -> u32 {
    id_bucket(group, folds)
}

/// Out-of-fold scores for every row of `set` (same order), and per fold the weak quality the
/// fold's router knows for the set's task kind.
///
/// # Errors
/// When a fold has nothing to train on.
pub fn out_of_fold(
    set: &EvalSet,
    extra: &[&[PairedRow]],
    folds: u32,
) -> anyhow::Result<(Vec<f32>, Vec<Option<f64>>)> {
    let recipe = Recipe::default();
    let mut scores = vec![0.0f32; set.rows.len()];
    let mut weak_quality = Vec::with_capacity(folds as usize);
    for f in 0..folds {
        let train: Vec<PairedRow> = set
            .rows
            .iter()
            .filter(|r| fold_of(&r.group, folds) != f)
            .map(|r| r.paired.clone())
            .collect();
        let mut sets: Vec<&[PairedRow]> = vec![&train];
        sets.extend_from_slice(extra);
        let model = train_recipe(&sets, &recipe)
            .map_err(|e| anyhow::anyhow!("training fold {f} of {}: {e}", set.name))?;
        let router = LearnedRouter::new(format!("fold-{f}"), &model)
            .with_quality(&prior::measure(&sets, recipe.balance));
        weak_quality.push(router.weak_quality(set.kind));
        for (row, out) in set.rows.iter().zip(scores.iter_mut()) {
            if fold_of(&row.group, folds) == f {
                *out = router.score(&row.paired.text, row.paired.kind);
            }
        }
    }
    Ok((scores, weak_quality))
}
