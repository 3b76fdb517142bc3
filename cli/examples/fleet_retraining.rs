//! What `router train --from-db` gains on a traffic, measured without running a fleet: the
//! fleet's labels are reproduced from the simulator's own answers (what a job with
//! `--policy strong-share=0,shadow=1` would record), two thirds of the rows (by id hash) are
//! learned from, the other third is where the default and the adapted router are compared
//! by APGR against the data's real scores.
//!
//! ```text
//! cargo run --release -p switchyard --example fleet_retraining -- data/demo/classify_mmlu.jsonl
//! cargo run --release -p switchyard --example fleet_retraining -- tests/fixtures/team_tickets.jsonl
//! ```

use std::path::PathBuf;

use anyhow::Context as _;
use switchyard::learn::{Labelled, adapt};
use switchyard_core::agreement::agreement;
use switchyard_router::model::LearnedRouter;
use switchyard_router::{DEFAULT_ARTIFACT, Router, RouterArtifact};
use switchyard_router_lab::data::{Dataset, Filter, id_bucket};
use switchyard_router_lab::eval::{EvalOptions, evaluate_routers};
use switchyard_sim::confidence::Calibration;
use switchyard_sim::replay::{Question, answer};

fn main() -> anyhow::Result<()> {
    let path = PathBuf::from(
        std::env::args()
            .nth(1)
            .context("usage: fleet_retraining FILE")?,
    );
    let data = Dataset::read(&path, None)?;
    let pair = data.infer_pair()?;
    let sim = switchyard_sim::Dataset::load(&[&path])?;
    let rows: Vec<_> = data
        .paired(
            &pair,
            &Filter {
                skip_missing: true,
                ..Filter::default()
            },
        )?
        .into_iter()
        .filter(|r| sim.get(&r.id).is_some())
        .collect();
    let (held_out, learned_from): (Vec<_>, Vec<_>) =
        rows.into_iter().partition(|r| id_bucket(&r.id, 3) == 0);
    let calibration = Calibration::default();
    let said = |id: &str, model: &str| -> String {
        let prompt = sim.get(id).map(|r| r.prompt.clone()).unwrap_or_default();
        let q = Question {
            model,
            text: &prompt,
            system: "",
            prompt_chars: prompt.len(),
            max_tokens: None,
        };
        answer(&sim, &calibration, 0, &q).content
    };
    let labelled: Vec<Labelled> = learned_from
        .iter()
        .map(|r| Labelled {
            id: r.id.clone(),
            text: r.text.clone(),
            kind: r.kind,
            agreement: agreement(r.kind, &said(&r.id, &pair.weak), &said(&r.id, &pair.strong)),
        })
        .collect();
    let base = RouterArtifact::from_json(DEFAULT_ARTIFACT, "<embedded default>")?;
    let learned = adapt(&base, &labelled, "adapted", "replay", "example".into())?;
    let default = base.clone().into_router()?;
    let adapted = LearnedRouter::new("retrained-from-fleet", &learned.model);
    let report = evaluate_routers(
        &held_out,
        &pair,
        &[&default as &dyn Router, &adapted as &dyn Router],
        &EvalOptions::default(),
    );
    println!(
        "{}: learned from {} items ({:.1}% agreement), evaluated on {} held-out items",
        path.display(),
        labelled.len(),
        100.0 * labelled.iter().map(|l| l.agreement).sum::<f64>() / labelled.len().max(1) as f64,
        held_out.len()
    );
    if let Some((b, a)) = learned.held_out {
        println!("agreement AUC on the learned-from fifth: default {b:.3}, adapted {a:.3}");
    }
    print!("{}", report.table());
    Ok(())
}
