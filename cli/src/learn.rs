//! `switchyard router train --from-db [--team T] [--task KIND]`: a router that learns from
//! the fleet's own outcomes. Reads the items answered by both tiers from the database,
//! labels them by agreement, and adapts the base router with
//! [`switchyard_router_lab::adapt`] (which says why only one head is adapted).

use std::path::Path;

use anyhow::Context as _;
use sqlx::PgPool;
use switchyard_core::agreement::agreement;
use switchyard_proto::TaskKind;
use switchyard_router::DEFAULT_ARTIFACT;
use switchyard_router::artifact::RouterArtifact;
pub use switchyard_router_lab::adapt::{Labelled, Learned, adapt};
use switchyard_router_lab::cli::TrainArgs;
use switchyard_runtime::Settings;
use switchyard_store::routing::AnswerPair;

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
    use switchyard_router::Router;
    use switchyard_router::model::LearnedRouter;

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
