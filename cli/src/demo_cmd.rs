//! `switchyard demo`: its flags, and the report printed.

use std::path::PathBuf;

use switchyard_client::exit;
use switchyard_demo::{self as demo, DemoOptions};
use switchyard_runtime::Settings;

/// `switchyard demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Classification items (the bundled set has 2,457).
    #[arg(long, default_value_t = 2457)]
    pub items: usize,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// The share of all-strong quality each job must keep (`quality=Q`).
    #[arg(long, default_value_t = 0.95)]
    pub quality: f64,
    /// Instead of `--quality`: the share of each job the router sends to the strong
    /// model (a hand-set policy, with --confidence-threshold, default 0.8).
    #[arg(long)]
    pub strong_share: Option<f64>,
    /// Instead of `--quality`: weak answers below this confidence escalate (with
    /// --strong-share, default 0.1).
    #[arg(long)]
    pub confidence_threshold: Option<f64>,
    /// The simulator's confidence AUROC.
    #[arg(long, default_value_t = 0.75)]
    pub auroc: f64,
    /// Where to write each job's frontier picture (SVG).
    #[arg(long, default_value = ".")]
    pub plot_dir: PathBuf,
    /// Also run the jobs with this deadline (`24h`), through the simulator's batch API.
    #[arg(long, value_parser = crate::args::humantime_duration)]
    pub deadline: Option<std::time::Duration>,
}

/// Runs the demo and prints its report; exit 3 when an item failed.
pub async fn run(settings: Settings, a: DemoArgs) -> anyhow::Result<u8> {
    let hand_set = a.strong_share.is_some() || a.confidence_threshold.is_some();
    let defaults = DemoOptions::default();
    let opts = DemoOptions {
        items: a.items,
        strong_share: a.strong_share.unwrap_or(defaults.strong_share),
        confidence_threshold: a
            .confidence_threshold
            .unwrap_or(defaults.confidence_threshold),
        auroc: a.auroc,
        quality: (!hand_set).then_some(a.quality),
        plot_dir: Some(a.plot_dir),
        deadline: a.deadline,
        ..defaults
    };
    let report = demo::run(settings, &opts).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", demo::render_text(&report));
    }
    Ok(if report.total.failed == 0 {
        exit::OK
    } else {
        exit::PARTIAL
    })
}
