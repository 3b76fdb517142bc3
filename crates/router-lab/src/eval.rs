//! Evaluating routers on a data file: APGR, CPT(20/50/80%) and AIQ for the routers under
//! test beside the random, oracle, prompt-length and TF-IDF baselines, as RouteLLM and
//! RouterBench report them.
//!
//! AIQ needs a cost per call. Where the data records one (`cost_usd`), it is used; otherwise
//! the cost is tokens × the public list prices in [`price_per_million`] (the price table in
//! the README of the routing data, which is not part of this repository); for a model without
//! a price, the cost axis falls back to "strong calls" (weak = 0, strong = 1 per item) and
//! the report says so.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::baselines::{
    crossfit, length_scores, oracle_curve, random_curve, router_scores, tfidf_config,
};
use crate::data::{Outcome, Pair, PairedRow};
use crate::metrics::{CurvePoint, Outcomes, RouteMetrics, aiq, routellm_curve, routellm_metrics};
use crate::train::TrainConfig;
use switchyard_router::Router;

/// Public list prices, USD per million input / output tokens (see the data README; the small
/// summarizers' prices are assumptions made there).
pub fn price_per_million(model: &str) -> Option<(f64, f64)> {
    let name = model.rsplit('/').next().unwrap_or(model);
    Some(match name {
        "gpt-4-1106-preview" => (10.0, 30.0),
        "gpt-4-0314" => (30.0, 60.0),
        "gpt-3.5-turbo-1106" => (1.0, 2.0),
        "gpt-3.5-turbo" => (1.5, 2.0),
        "Mixtral-8x7B-Instruct-v0.1" => (0.6, 0.6),
        "Mistral-7B-Instruct-v0.1" => (0.2, 0.2),
        "Llama-2-70b-chat" => (0.9, 0.9),
        "claude-2.1" | "claude-1" => (8.0, 24.0),
        "claude-instant-1" => (0.8, 2.4),
        "claude-3-haiku-20240307" => (0.25, 1.25),
        "gemini-2.0-flash-001" => (0.10, 0.40),
        "text-davinci-002" => (20.0, 20.0),
        "T0pp" => (0.3, 0.3),
        "BRIO" | "BART-large-cnn" => (0.1, 0.1),
        _ => return None,
    })
}

/// The cost of one call in USD, if it can be known.
pub fn call_cost(model: &str, o: &Outcome) -> Option<f64> {
    if let Some(c) = o.cost_usd {
        return Some(c);
    }
    let (pin, pout) = price_per_million(model)?;
    Some((o.prompt_tokens? * pin + o.completion_tokens? * pout) / 1e6)
}

/// What the cost axis of AIQ and the plots is measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CostUnit {
    /// US dollars per item.
    Usd,
    /// Strong calls per item (when a model has no price).
    StrongCalls,
}

/// One router's results.
#[derive(Debug, Clone, Serialize)]
pub struct RouterResult {
    pub name: String,
    #[serde(flatten)]
    pub metrics: RouteMetrics,
    #[serde(rename = "AIQ")]
    pub aiq: f64,
    /// The points the metrics were computed from.
    #[serde(skip)]
    pub curve: Vec<CurvePoint>,
}

/// The evaluation of several routers on one set of rows.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub rows: usize,
    pub pair: (String, String),
    pub weak_quality: f64,
    pub strong_quality: f64,
    pub cost_unit: CostUnit,
    pub results: Vec<RouterResult>,
}

/// What to compute beside the routers under test.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Folds for the cross-fitted TF-IDF baseline (0 = skip it).
    pub tfidf_folds: u32,
    /// How the TF-IDF baseline is trained.
    pub tfidf: TrainConfig,
    /// Repetitions of the random router.
    pub random_iters: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            tfidf_folds: 5,
            tfidf: tfidf_config(),
            random_iters: 10,
        }
    }
}

/// Names of the baselines in reports.
pub const RANDOM: &str = "random";
pub const ORACLE: &str = "oracle";
pub const LENGTH: &str = "prompt_length";
pub const TFIDF: &str = "tfidf_linear";

/// Evaluates routers on `rows`: each router is scored here (exactly the scores the
/// dispatcher would compute), tie-broken by row order like the reference.
pub fn evaluate_routers(
    rows: &[PairedRow],
    pair: &Pair,
    routers: &[&dyn Router],
    opts: &EvalOptions,
) -> EvalReport {
    let scored: Vec<(String, Vec<f64>)> = routers
        .iter()
        .map(|r| (r.name().to_string(), router_scores(*r, rows)))
        .collect();
    evaluate_scores(rows, pair, &scored, opts)
}

/// Evaluates per-item scores (already tie-broken) computed elsewhere, e.g. out-of-fold
/// scores of a cross-validation, beside the baselines.
pub fn evaluate_scores(
    rows: &[PairedRow],
    pair: &Pair,
    scored: &[(String, Vec<f64>)],
    opts: &EvalOptions,
) -> EvalReport {
    let weak: Vec<f64> = rows.iter().map(|r| r.weak.score).collect();
    let strong: Vec<f64> = rows.iter().map(|r| r.strong.score).collect();
    let usd: Option<(Vec<f64>, Vec<f64>)> = rows
        .iter()
        .map(|r| {
            Some((
                call_cost(&pair.weak, &r.weak)?,
                call_cost(&pair.strong, &r.strong)?,
            ))
        })
        .collect::<Option<Vec<_>>>()
        .map(|v| v.into_iter().unzip());
    let (cost_unit, (weak_cost, strong_cost)) = match usd {
        Some(c) => (CostUnit::Usd, c),
        None => (
            CostUnit::StrongCalls,
            (vec![0.0; rows.len()], vec![1.0; rows.len()]),
        ),
    };
    let o = Outcomes {
        weak: &weak,
        strong: &strong,
        weak_cost: &weak_cost,
        strong_cost: &strong_cost,
    };
    let n = rows.len().max(1) as f64;
    let (wa, sa) = (weak.iter().sum::<f64>() / n, strong.iter().sum::<f64>() / n);

    let mut curves: Vec<(String, Vec<CurvePoint>)> = vec![
        (RANDOM.into(), random_curve(&o, opts.random_iters, 0)),
        (ORACLE.into(), oracle_curve(&o)),
        (LENGTH.into(), routellm_curve(&length_scores(rows), &o, 10)),
    ];
    if opts.tfidf_folds > 1 {
        let s = crate::baselines::tie_break(&crossfit(rows, opts.tfidf_folds, &opts.tfidf));
        curves.push((TFIDF.into(), routellm_curve(&s, &o, 10)));
    }
    for (name, s) in scored {
        curves.push((name.clone(), routellm_curve(s, &o, 10)));
    }
    let cost_points: Vec<Vec<(f64, f64)>> = curves
        .iter()
        .map(|(_, c)| c.iter().map(|p| (p.cost, p.quality)).collect())
        .collect();
    let aiqs = aiq(&cost_points);
    let results = curves
        .into_iter()
        .zip(aiqs)
        .map(|((name, curve), aiq)| {
            let pts: Vec<(f64, f64)> = curve.iter().map(|p| (p.strong_pct, p.quality)).collect();
            RouterResult {
                name,
                metrics: routellm_metrics(&pts, wa, sa),
                aiq,
                curve,
            }
        })
        .collect();
    EvalReport {
        rows: rows.len(),
        pair: (pair.weak.clone(), pair.strong.clone()),
        weak_quality: wa,
        strong_quality: sa,
        cost_unit,
        results,
    }
}

impl EvalReport {
    /// The `--json` form: one object keyed by router name.
    pub fn to_json(&self) -> serde_json::Value {
        let map: BTreeMap<&str, serde_json::Value> = self
            .results
            .iter()
            .map(|r| {
                let v = serde_json::json!({
                    "APGR": r.metrics.apgr,
                    "CPT(20%)": r.metrics.cpt20,
                    "CPT(50%)": r.metrics.cpt50,
                    "CPT(80%)": r.metrics.cpt80,
                    "AIQ": r.aiq,
                    "AUC": r.metrics.auc,
                });
                (r.name.as_str(), v)
            })
            .collect();
        serde_json::json!(map)
    }

    /// A table for people.
    pub fn table(&self) -> String {
        let mut out = format!(
            "rows={} weak={} ({:.3}) strong={} ({:.3}) cost={}\n",
            self.rows,
            self.pair.0,
            self.weak_quality,
            self.pair.1,
            self.strong_quality,
            match self.cost_unit {
                CostUnit::Usd => "USD (list prices)",
                CostUnit::StrongCalls => "strong calls (a model has no price)",
            }
        );
        let width = self
            .results
            .iter()
            .map(|r| r.name.len())
            .max()
            .unwrap_or(6)
            .max(6);
        out.push_str(&format!(
            "{:<width$}  {:>6}  {:>8}  {:>8}  {:>8}  {:>6}\n",
            "router", "APGR", "CPT(20%)", "CPT(50%)", "CPT(80%)", "AIQ"
        ));
        for r in &self.results {
            out.push_str(&format!(
                "{:<width$}  {:>6.4}  {:>7.2}%  {:>7.2}%  {:>7.2}%  {:>6.4}\n",
                r.name, r.metrics.apgr, r.metrics.cpt20, r.metrics.cpt50, r.metrics.cpt80, r.aiq
            ));
        }
        out
    }

    /// A router's result by name.
    pub fn get(&self, name: &str) -> Option<&RouterResult> {
        self.results.iter().find(|r| r.name == name)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use switchyard_router::LengthRouter;
    use switchyard_router::TaskKind;

    fn rows() -> Vec<PairedRow> {
        (0..40)
            .map(|i| {
                let o = |score| Outcome {
                    score,
                    prompt_tokens: Some(100.0),
                    completion_tokens: Some(10.0),
                    cost_usd: None,
                };
                let long = i % 3 == 0;
                PairedRow {
                    line: i + 1,
                    id: format!("r{i}"),
                    kind: TaskKind::Generate,
                    task: "t".into(),
                    text: if long {
                        "x".repeat(200 + i)
                    } else {
                        "y".repeat(10 + i)
                    },
                    weak: o(if long { 0.0 } else { 1.0 }),
                    strong: o(1.0),
                }
            })
            .collect()
    }

    /// Options with a small hash space, so debug-build tests stay fast.
    pub(crate) fn small_options() -> EvalOptions {
        let mut o = EvalOptions::default();
        o.tfidf.features.bits = 10;
        o
    }

    #[test]
    fn report_has_every_router_and_a_json_object_keyed_by_name() {
        let rows = rows();
        let pair = Pair::new("mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview");
        let length = LengthRouter;
        let report = evaluate_routers(&rows, &pair, &[&length], &small_options());
        assert_eq!(report.cost_unit, CostUnit::Usd);
        let names: Vec<&str> = report.results.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, [RANDOM, ORACLE, LENGTH, TFIDF, "length"]);
        // Length is a perfect router here.
        let l = report.get("length").expect("length");
        assert!(l.metrics.apgr > 0.8, "{:?}", l.metrics);
        assert!(l.aiq >= report.get(RANDOM).expect("random").aiq);
        let json = report.to_json();
        for key in ["APGR", "CPT(20%)", "CPT(50%)", "CPT(80%)", "AIQ"] {
            assert!(json["length"][key].is_number(), "{key}");
        }
        let table = report.table();
        assert!(table.contains("prompt_length") && table.contains("USD"));
    }

    #[test]
    fn unpriced_models_fall_back_to_strong_calls() {
        let rows = rows();
        let report = evaluate_scores(
            &rows,
            &Pair::new("a", "b"),
            &[],
            &EvalOptions {
                tfidf_folds: 0,
                random_iters: 2,
                ..small_options()
            },
        );
        assert_eq!(report.cost_unit, CostUnit::StrongCalls);
        assert_eq!(report.results.len(), 3);
    }
}
