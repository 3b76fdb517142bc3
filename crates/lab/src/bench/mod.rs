//! `switchyard bench`: the fleet measured against the raw engines it is built on, in one
//! process, against the same NATS and Postgres servers, several repetitions each, medians.
//! Every figure is reported with the baseline measured in the same run and the ratio; no
//! figure is a wall-clock constant compared with a number measured elsewhere.
//!
//! - [`dispatch`]: a 100k-item job from JetStream to items published on tier subjects and
//!   recorded in Postgres, against raw windowed publishing with `Nats-Msg-Id` plus the same
//!   batched insert.
//! - [`end_to_end`]: items/s from submit to final results and ledger rows committed, with the
//!   simulator at zero latency, against a raw pipeline (publish, pull in batches, one HTTP
//!   call per item to the same simulator, batched insert, ack after commit).
//!
//! - [`quota`]: worker processes sharing a 600 requests/min quota the simulator enforces,
//!   four throughout (`quota`) and two, then six, then three (`quota_scaling`): throughput
//!   as a share of the quota, and the share of calls answered 429, every run printed.
//! - [`memory`]: the dispatcher's peak RSS on a 1,000,000-item job from the object store.
//! - [`overhead`]: CPU µs per item in dispatcher + worker (separate processes), the model
//!   call excluded.
//!
//! Each run uses a database and a stream prefix of its own, removed afterwards.

pub mod dispatch;
pub mod end_to_end;
pub mod env;
pub mod gateway;
pub mod memory;
pub mod overhead;
pub mod procs;
pub mod quota;

use std::collections::BTreeMap;

use serde::Serialize;
use switchyard_runtime::Settings;

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// The fleet's median.
    pub value: f64,
    /// The baseline's median (None where a figure has no baseline).
    pub baseline: Option<f64>,
    /// value / baseline.
    pub ratio: Option<f64>,
    pub unit: &'static str,
    /// What the goal is, for the reader.
    pub goal: &'static str,
    /// Every repetition: (fleet, baseline).
    pub runs: Vec<(f64, Option<f64>)>,
}

impl Figure {
    /// Builds a figure from repetitions, taking medians.
    pub fn from_runs(
        runs: Vec<(f64, Option<f64>)>,
        unit: &'static str,
        goal: &'static str,
    ) -> Self {
        let value = median(runs.iter().map(|r| r.0).collect());
        let base: Vec<f64> = runs.iter().filter_map(|r| r.1).collect();
        let baseline = (!base.is_empty()).then(|| median(base));
        Self {
            value,
            baseline,
            ratio: baseline.map(|b| value / b),
            unit,
            goal,
            runs,
        }
    }
}

/// The median (mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Options of `switchyard bench`.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub repetitions: usize,
    pub dispatch_items: usize,
    pub end_to_end_items: usize,
    pub memory_items: usize,
    /// Measurement window of the quota bench's steady scenario (the scaling scenario runs
    /// three phases of half of it).
    pub quota_window: std::time::Duration,
    /// Only these figures (all when empty).
    pub only: Vec<String>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            repetitions: 3,
            dispatch_items: 100_000,
            end_to_end_items: 20_000,
            memory_items: 1_000_000,
            quota_window: std::time::Duration::from_secs(120),
            only: Vec::new(),
        }
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub figures: BTreeMap<String, Figure>,
    pub versions: BTreeMap<String, String>,
    pub cores: usize,
}

/// Runs the selected benches.
///
/// # Errors
/// When a service is unreachable or a run fails.
pub async fn run(settings: &Settings, opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    let wanted = |name: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == name);
    let mut figures = BTreeMap::new();
    if wanted("dispatch") {
        figures.insert("dispatch".to_owned(), dispatch::run(settings, opts).await?);
    }
    if wanted("end_to_end") {
        figures.insert(
            "end_to_end".to_owned(),
            end_to_end::run(settings, opts).await?,
        );
    }
    if wanted("overhead") {
        figures.insert("overhead".to_owned(), overhead::run(settings, opts).await?);
    }
    let scenarios: Vec<quota::Scenario> = [quota::Scenario::Steady, quota::Scenario::Scaling]
        .into_iter()
        .filter(|s| wanted("quota") || wanted(&format!("quota_{}", s.name())))
        .collect();
    if !scenarios.is_empty() {
        let q = quota::run(settings, opts, &scenarios).await?;
        figures.extend(q.figures);
    }
    if wanted("memory") {
        figures.insert("memory".to_owned(), memory::run(settings, opts).await?);
    }
    Ok(BenchReport {
        figures,
        versions: env::versions(settings).await,
        cores: env::cores(),
    })
}

/// The report as text: each figure's median, then every run when there are several.
pub fn render(r: &BenchReport) -> String {
    let mut out = format!(
        "{:<18} {:>20} {:>20} {:>7}  goal\n",
        "figure", "fleet", "baseline", "ratio"
    );
    for (name, f) in &r.figures {
        out.push_str(&format!(
            "{name:<18} {:>10} {:<9} {:>10} {:<9} {:>7}  {}\n",
            number(f.value),
            f.unit,
            f.baseline.map_or("-".to_owned(), number),
            if f.baseline.is_some() { f.unit } else { "" },
            f.ratio.map_or("-".to_owned(), |x| format!("{x:.3}x")),
            f.goal
        ));
        if f.runs.len() > 1 {
            let runs: Vec<String> = f
                .runs
                .iter()
                .map(|(v, b)| match b {
                    Some(b) if *b != 0.0 => format!("{} ({:.3}x)", number(*v), v / b),
                    _ => number(*v),
                })
                .collect();
            out.push_str(&format!("{:<18} runs: {}\n", "", runs.join(", ")));
        }
    }
    let versions: Vec<String> = r.versions.iter().map(|(k, v)| format!("{k} {v}")).collect();
    out.push_str(&format!("{} cores; {}\n", r.cores, versions.join(", ")));
    out
}

/// A figure with as many decimals as its size needs (429 shares are fractions of a percent).
fn number(v: f64) -> String {
    if v.abs() < 10.0 {
        format!("{v:.2}")
    } else if v.abs() < 1000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}
