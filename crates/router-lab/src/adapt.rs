//! Adapting a router to the fleet's own outcomes (`switchyard router train --from-db`).
//!
//! Labels come from items answered by both tiers: shadow calls (a random sample of the
//! weak-routed items, `--policy …,shadow=F`) and escalations. The strong answer stands in for
//! the reference (an assumption: the strong model is sometimes wrong too), so an item's label
//! is the agreement of the two answers (`switchyard_core::agreement`): "did the weak model
//! fail here?".
//!
//! That is what one of the router's three heads predicts (weak-fails, see
//! `switchyard_router::model`), so only that head is adapted, with the base router's (the
//! configured one, else the committed default) weights as the prior (`train::fine_tune`):
//! with few labels it stays close to the base, with many it follows the team's traffic. The
//! gain and strong-right heads need to know when the strong model is right, which agreement
//! cannot tell, so they stay as trained on benchmark data. (Adapting all three on agreement
//! labels was measured too: it cost MMLU 0.08 APGR where adapting weak-fails alone costs
//! 0.016, and did no better on team traffic; see crates/router/README.md.)
//!
//! The router only ever sees what it sees in dispatch: the item text and the task kind.
//! Team and task only choose which jobs' items are learned from.
//!
//! Before writing, a fifth of the items (by a hash of their id) is held out and both the base
//! and a router adapted on the other four fifths are scored on it against the same labels
//! (AUC of the score for "the answers disagree"), so the command says whether adapting
//! helped on this traffic, as far as agreement can tell.

use anyhow::bail;
use switchyard_core::escalation::auroc;
use switchyard_router::artifact::{Provenance, RouterArtifact, TrainingSet};
use switchyard_router::model::{LearnedRouter, LinearModel};
use switchyard_router::prior::{self, QualityPrior};
use switchyard_router::{Router, TaskKind};

use crate::data::id_bucket;
use crate::train::{Example, Target, TrainConfig, fine_tune};

/// One labelled item.
#[derive(Debug, Clone)]
pub struct Labelled {
    pub id: String,
    pub text: String,
    pub kind: TaskKind,
    /// Agreement of the weak answer with the strong one, in [0, 1].
    pub agreement: f64,
}

fn examples(rows: &[Labelled]) -> Vec<Example<'_>> {
    rows.iter()
        .map(|r| Example {
            text: &r.text,
            kind: r.kind,
            weak: r.agreement,
            strong: 1.0,
            weight: 1.0,
        })
        .collect()
}

/// AUC of `router`'s score as a detector of disagreement (agreement below ½); `None` when
/// one class is empty.
pub fn disagreement_auc(router: &dyn Router, rows: &[Labelled]) -> Option<f64> {
    let scored: Vec<(f64, bool)> = rows
        .iter()
        .map(|r| (f64::from(router.score(&r.text, r.kind)), r.agreement < 0.5))
        .collect();
    auroc(&scored)
}

/// The training setup of an adaptation: only the weak-fails head (see the module docs),
/// with the base's share of the score; every head when the base has no such head.
fn adapt_config(base: &LinearModel) -> TrainConfig {
    let mut cfg = TrainConfig::default();
    if let Some(h) = base.heads.iter().find(|h| h.target == Target::WeakFails) {
        let (unit_scale, _) = Target::WeakFails.gain_affine();
        cfg.heads = vec![(Target::WeakFails, h.scale / unit_scale)];
    }
    cfg
}

/// `base` with the heads of `cfg` fine-tuned on the examples and the others kept.
fn adapted(
    base: &LinearModel,
    examples: &[Example<'_>],
    cfg: &TrainConfig,
) -> anyhow::Result<LinearModel> {
    let tuned = fine_tune(base, examples, cfg)?;
    let mut model = base.clone();
    for head in tuned.heads {
        match model.heads.iter_mut().find(|h| h.target == head.target) {
            Some(h) => *h = head,
            None => model.heads.push(head),
        }
    }
    Ok(model)
}

/// What adapting did.
#[derive(Debug, Clone)]
pub struct Learned {
    pub artifact: RouterArtifact,
    pub model: LinearModel,
    pub rows: usize,
    /// Held-out AUC (disagreement) of the base and of the router adapted without them.
    pub held_out: Option<(f64, f64)>,
}

/// Adapts `base` to labelled items. `name` and `source` go into the artifact.
///
/// # Errors
/// No items, or training failure.
pub fn adapt(
    base: &RouterArtifact,
    rows: &[Labelled],
    name: &str,
    source: &str,
    command: String,
) -> anyhow::Result<Learned> {
    if rows.is_empty() {
        bail!(
            "no items with both a weak and a strong answer in {source}: submit jobs with \
             `--policy …,shadow=0.1` (or let answers escalate) first"
        );
    }
    let base_model = base.unpack().map_err(anyhow::Error::msg)?;
    let cfg = adapt_config(&base_model);
    let (train_rows, held): (Vec<Labelled>, Vec<Labelled>) =
        rows.iter().cloned().partition(|r| id_bucket(&r.id, 5) != 0);
    let held_out = if train_rows.is_empty() || held.is_empty() {
        None
    } else {
        let partial = adapted(&base_model, &examples(&train_rows), &cfg)?;
        let partial = LearnedRouter::new("partial", &partial);
        let base_router = LearnedRouter::new("base", &base_model);
        match (
            disagreement_auc(&base_router, &held),
            disagreement_auc(&partial, &held),
        ) {
            (Some(b), Some(p)) => Some((b, p)),
            _ => None,
        }
    };
    let model = adapted(&base_model, &examples(rows), &cfg)?;
    // The weak quality of each kind learned here is its agreement with the strong model;
    // kinds absent from the fleet's data keep the base's prior.
    let mut quality: QualityPrior = base.quality.clone();
    quality.extend(prior::from_rows(
        rows.iter().map(|r| (r.kind, r.agreement, 1.0, 1.0)),
    ));
    let provenance = Provenance {
        command,
        sets: vec![TrainingSet {
            file: source.to_owned(),
            weak: "weak tier (agreement with strong)".to_owned(),
            strong: "strong tier".to_owned(),
            rows: rows.len(),
            weight: rows.len() as f64,
        }],
        notes: vec![
            format!("adapted from `{}` ({})", base.name, base.provenance.command),
            "labels: agreement of the weak answer with the strong one (strong taken as right)"
                .to_owned(),
            format!("recipe: {cfg:?}"),
        ],
    };
    let artifact = RouterArtifact::new(name, provenance, &model).with_quality(quality);
    Ok(Learned {
        artifact,
        model,
        rows: rows.len(),
        held_out,
    })
}
