//! `switchyard router train --from-db [--team T] [--task KIND]`: a router that learns from
//! the fleet's own outcomes.
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

use std::path::Path;

use anyhow::{Context as _, bail};
use sqlx::PgPool;
use switchyard_core::agreement::agreement;
use switchyard_proto::TaskKind;
use switchyard_router::artifact::{Provenance, RouterArtifact, TrainingSet};
use switchyard_router::model::{LearnedRouter, LinearModel};
use switchyard_router::prior::{self, QualityPrior};
use switchyard_router::{DEFAULT_ARTIFACT, Router};
use switchyard_router_lab::cli::TrainArgs;
use switchyard_router_lab::data::id_bucket;
use switchyard_router_lab::train::{Example, Target, TrainConfig, fine_tune};
use switchyard_runtime::Settings;
use switchyard_store::routing::AnswerPair;

/// One labelled item.
#[derive(Debug, Clone)]
pub struct Labelled {
    pub id: String,
    pub text: String,
    pub kind: TaskKind,
    /// Agreement of the weak answer with the strong one, in [0, 1].
    pub agreement: f64,
}

/// The items of `pairs` with their labels (rows of an unknown task kind are skipped).
pub fn label(pairs: &[AnswerPair]) -> Vec<Labelled> {
    pairs
        .iter()
        .filter_map(|p| {
            let kind: TaskKind = p.task_kind.parse().ok()?;
            Some(Labelled {
                id: format!("{}:{}", p.job_id, p.item_id),
                text: p.text.clone(),
                kind,
                agreement: agreement(kind, &p.weak_answer, &p.strong_answer),
            })
        })
        .collect()
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
    let mut scored: Vec<(f64, bool)> = rows
        .iter()
        .map(|r| (f64::from(router.score(&r.text, r.kind)), r.agreement < 0.5))
        .collect();
    let pos = scored.iter().filter(|x| x.1).count();
    let neg = scored.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < scored.len() {
        let mut j = i;
        while j < scored.len() && scored[j].0 == scored[i].0 {
            j += 1;
        }
        let avg = (i + 1 + j) as f64 / 2.0;
        rank_sum += avg * scored[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    let (p, n) = (pos as f64, neg as f64);
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
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

/// The base artifact: `--base`, else the configured router, else the committed default.
///
/// # Errors
/// An artifact that cannot be read.
pub fn base_artifact(settings: &Settings, base: Option<&Path>) -> anyhow::Result<RouterArtifact> {
    let path = base
        .map(Path::to_path_buf)
        .or_else(|| settings.dispatcher.router.as_ref().map(Into::into));
    Ok(match path {
        Some(p) => RouterArtifact::load(&p)?,
        None => RouterArtifact::from_json(DEFAULT_ARTIFACT, "<embedded default>")?,
    })
}

/// Reads the labelled items of a deployment.
///
/// # Errors
/// Database errors.
pub async fn labelled_from_db(
    pool: &PgPool,
    settings: &Settings,
    team: Option<&str>,
    task: Option<TaskKind>,
    limit: i64,
) -> anyhow::Result<Vec<Labelled>> {
    let ds = &settings.dispatcher;
    let pairs = switchyard_store::routing::answer_pairs(
        pool,
        team,
        task.map(TaskKind::as_str),
        &ds.weak_tier,
        &ds.strong_tier,
        limit,
    )
    .await
    .context("cannot read answered items")?;
    Ok(label(&pairs))
}

/// Runs `switchyard router train --from-db`.
///
/// # Errors
/// Database errors, no labelled items, an unwritable output.
pub async fn run(settings: &Settings, a: &TrainArgs) -> anyhow::Result<()> {
    let pool = switchyard_store::connect_and_migrate(settings.database_url(), 2).await?;
    let rows = labelled_from_db(&pool, settings, a.team.as_deref(), a.task, a.limit).await?;
    let base = base_artifact(settings, a.base.as_deref())?;
    let mut source = "db".to_owned();
    let mut command = "switchyard router train --from-db".to_owned();
    if let Some(t) = &a.team {
        source.push_str(&format!(" team={t}"));
        command.push_str(&format!(" --team {t}"));
    }
    if let Some(k) = a.task {
        source.push_str(&format!(" task={k}"));
        command.push_str(&format!(" --task {k}"));
    }
    let out_name = a
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    command.push_str(&format!(" --name {} --out {out_name}", a.name));
    let learned = adapt(&base, &rows, &a.name, &source, command)?;
    learned
        .artifact
        .save(&a.out)
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    let shadow_note = match learned.held_out {
        Some((b, p)) => format!(
            "; held-out fifth, AUC of the score for disagreement: base {b:.3}, adapted {p:.3}"
        ),
        None => String::new(),
    };
    eprintln!(
        "adapted `{}` on {} items from the fleet ({source}){shadow_note} -> {}",
        base.name,
        learned.rows,
        a.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_agreement_and_adapting_moves_towards_them() {
        let mk = |i: usize, text: &str, w: &str| AnswerPair {
            job_id: "j".into(),
            item_id: format!("{i}"),
            team: "t".into(),
            task_kind: "classify".into(),
            text: text.into(),
            weak_answer: w.into(),
            weak_confidence: 0.9,
            strong_answer: "A".into(),
            strong_confidence: 0.9,
            shadowed: true,
        };
        let mut pairs = Vec::new();
        for i in 0..60 {
            pairs.push(mk(i, &format!("zorblax invoice dispute case {i}"), "B"));
            pairs.push(mk(1000 + i, &format!("password reset please {i}"), "A"));
        }
        let rows = label(&pairs);
        assert_eq!(rows.len(), 120);
        assert_eq!(rows[0].agreement, 0.0);
        assert_eq!(rows[1].agreement, 1.0);
        let base = RouterArtifact::from_json(DEFAULT_ARTIFACT, "d").unwrap();
        let learned = adapt(&base, &rows, "adapted", "test", "cmd".into()).unwrap();
        let r = LearnedRouter::new("a", &learned.model);
        let hard = r.score("zorblax invoice dispute case 999", TaskKind::Classify);
        let easy = r.score("password reset please 999", TaskKind::Classify);
        assert!(hard > easy + 0.2, "{hard} vs {easy}");
        let (b, p) = learned.held_out.unwrap();
        assert!(p > b, "held-out AUC: base {b}, adapted {p}");
        assert!(learned.artifact.quality["classify"].weak < 0.6);
        assert!(adapt(&base, &[], "x", "empty db", "c".into()).is_err());
    }
}
