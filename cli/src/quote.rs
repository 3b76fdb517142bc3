//! `switchyard quote ITEMS.jsonl --task … --policy …`: parses, calls
//! [`switchyard_client::quote`] and renders.

use std::path::PathBuf;

use switchyard_client::quote::{JobArgs, compute, render, report};
use switchyard_runtime::Settings;

/// `switchyard quote`.
#[derive(Debug, Clone, clap::Args)]
pub struct QuoteArgs {
    /// JSONL file: one `{"id", "text", "sensitivity"?, "metadata"?}` per line.
    pub file: PathBuf,
    #[command(flatten)]
    pub job: JobArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Runs `switchyard quote`.
///
/// # Errors
/// A bad file, flags or configuration; a policy the job cannot meet.
pub async fn run(settings: &Settings, a: QuoteArgs) -> anyhow::Result<()> {
    // A quote prices the configured fleet; without one it would price nothing.
    settings.require_fleet()?;
    let items = switchyard_client::input::read_items(&a.file)?;
    let q = compute(settings, items, &a.job).await?;
    let r = report(&q);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", render(&r, &q.plan));
    }
    Ok(())
}
