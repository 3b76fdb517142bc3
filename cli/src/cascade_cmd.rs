//! `switchyard router cascade --data FILE`: routing plus escalation in replay, every attempt
//! paid (RouterBench's accounting), against pure routing.
//!
//! The weak model's confidence on each row is the one the simulator would report
//! (`switchyard_sim::replay`: calibrated to `--auroc` with `--bias`, a pure function of the
//! row, the model and `--seed`), so the replay shows what the fleet's cascade does on the
//! simulator, at every confidence threshold at once. The metrics are in
//! `switchyard_router_lab::cascade`.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use switchyard_router_lab::baselines::{router_scores, tie_break};
use switchyard_router_lab::cascade::{CascadeRow, evaluate};
use switchyard_router_lab::cli::FilterArgs;
use switchyard_router_lab::crossval::{CvSet, out_of_fold_scores};
use switchyard_router_lab::data::{Dataset, Pair};
use switchyard_router_lab::eval::call_cost;
use switchyard_router_lab::train::Recipe;
use switchyard_sim::confidence::{Calibration, DEFAULT_AUROC, DEFAULT_BIAS};
use switchyard_sim::replay::{Question, answer};

/// `router cascade`.
#[derive(Debug, Clone, clap::Args)]
pub struct CascadeArgs {
    /// Routing data file (JSONL, both models' results per row).
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// A router artifact (default: the committed default router).
    #[arg(long, value_name = "ROUTER", conflicts_with = "folds")]
    pub router: Option<PathBuf>,
    /// Instead of a trained artifact, score every row out of sample: the default recipe
    /// trained on the other K folds (by id hash) of this file. Use it on rows the router was
    /// trained on (every shared file but the demo rows), where its scores would be in-sample.
    #[arg(long, value_name = "K")]
    pub folds: Option<u32>,
    /// The weak model (inferred from the file when absent, with --strong).
    #[arg(long, requires = "strong")]
    pub weak: Option<String>,
    #[arg(long, requires = "weak")]
    pub strong: Option<String>,
    /// Confidence thresholds to compare with pure routing (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0.5,0.6,0.7,0.75,0.8,0.85,0.9,0.95"
    )]
    pub thresholds: Vec<f64>,
    /// AUROC of the simulated confidence against correctness.
    #[arg(long, default_value_t = DEFAULT_AUROC)]
    pub auroc: f64,
    /// Logit offset of the simulated confidence (how sure of itself the model sounds).
    #[arg(long, default_value_t = DEFAULT_BIAS)]
    pub bias: f64,
    /// Seed of the confidence noise (the simulator's `--seed`).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub rows: FilterArgs,
}

/// Runs `switchyard router cascade`.
///
/// # Errors
/// Unreadable data, unknown models, an unloadable router.
pub fn run(a: &CascadeArgs) -> anyhow::Result<()> {
    for t in &a.thresholds {
        if !(0.0..=1.0).contains(t) {
            bail!("--thresholds: {t} is outside [0, 1]");
        }
    }
    let data = Dataset::read(&a.data, None)?;
    let pair = match (&a.weak, &a.strong) {
        (Some(w), Some(s)) => Pair::new(w, s),
        _ => data.infer_pair()?,
    };
    let rows = data.paired(&pair, &a.rows.filter())?;
    let sim = switchyard_sim::Dataset::load(&[&a.data])
        .with_context(|| format!("cannot replay {}", a.data.display()))?;
    let (scores, router_name) = match a.folds {
        Some(k) => {
            if k < 2 {
                bail!("--folds must be at least 2");
            }
            let set = CvSet {
                name: a.data.display().to_string(),
                pair: pair.clone(),
                rows: rows.clone(),
            };
            let oof = out_of_fold_scores(&[set], &Recipe::default(), k)?;
            let scores = oof.into_iter().next().unwrap_or_default();
            (
                tie_break(&scores),
                format!("default recipe, {k}-fold out-of-sample"),
            )
        }
        None => {
            let router = switchyard_router::configured_router(a.router.as_deref())?;
            (
                router_scores(router.as_ref(), &rows),
                router.name().to_owned(),
            )
        }
    };
    let calibration = Calibration::new(a.auroc, a.bias);
    let priced = rows.iter().all(|r| {
        call_cost(&pair.weak, &r.weak).is_some() && call_cost(&pair.strong, &r.strong).is_some()
    });
    let mut replay = Vec::with_capacity(rows.len());
    let mut unknown = 0usize;
    for (r, score) in rows.iter().zip(scores) {
        let Some(record) = sim.get(&r.id) else {
            unknown += 1;
            continue;
        };
        let q = Question {
            model: &pair.weak,
            text: &record.prompt,
            system: "",
            prompt_chars: record.prompt.chars().count(),
            max_tokens: None,
        };
        let confidence = answer(&sim, &calibration, a.seed, &q).confidence;
        let (weak_cost, strong_cost) = if priced {
            (
                call_cost(&pair.weak, &r.weak).unwrap_or(0.0),
                call_cost(&pair.strong, &r.strong).unwrap_or(0.0),
            )
        } else {
            (0.0, 1.0)
        };
        replay.push(CascadeRow {
            weak: r.weak.score,
            strong: r.strong.score,
            weak_cost,
            strong_cost,
            confidence,
            score,
        });
    }
    let report = evaluate(&replay, &a.thresholds);
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["pair"] = serde_json::json!([pair.weak, pair.strong]);
        v["auroc"] = serde_json::json!(a.auroc);
        v["cost_unit"] = serde_json::json!(if priced { "usd" } else { "strong_calls" });
        println!("{v}");
    } else {
        println!(
            "{} ({pair}), router {router_name}, confidence AUROC {} bias {}{}",
            a.data.display(),
            a.auroc,
            a.bias,
            if priced {
                ""
            } else {
                " (a model has no price: cost in strong calls)"
            }
        );
        if unknown > 0 {
            println!("({unknown} rows not replayable: duplicate prompts in the file)");
        }
        print!("{}", report.table());
    }
    Ok(())
}
