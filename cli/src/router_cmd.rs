//! `switchyard router …`: the offline commands of `switchyard_router_lab::cli` (train, score,
//! eval, crossval) and the ones that need the fleet's configuration or database:
//! `train --from-db`, `explain`, `audit`, and the cascade replay `cascade`.

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Subcommand;
use switchyard_router_lab::cli::RouterCommand;
use switchyard_runtime::Settings;

use crate::cascade_cmd::CascadeArgs;
use switchyard_client::exit;
use switchyard_client::explain;
use switchyard_client::quote::{self, JobArgs};

/// The `router` subcommands.
#[derive(Debug, Subcommand)]
pub enum RouterCmd {
    #[command(flatten)]
    Offline(RouterCommand),
    /// Why an item went where it went: `explain JOB ITEM`, or `explain --file ITEMS.jsonl
    /// --item ID --task … --policy …` for a row of a file, routed as `quote` routes it.
    Explain(ExplainArgs),
    /// Fairness of a job's routing across groups of an item metadata key.
    Audit(AuditArgs),
    /// Routing plus escalation in replay (every attempt paid) against pure routing.
    Cascade(CascadeArgs),
}

/// `router explain`.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The job (with ITEM).
    #[arg(conflicts_with = "file", requires = "item")]
    pub job: Option<String>,
    /// The item of the job.
    pub item: Option<String>,
    /// Explain a row of this items file instead of a stored job.
    #[arg(long, requires = "item_id")]
    pub file: Option<PathBuf>,
    /// With --file: the item's id.
    #[arg(long = "item", value_name = "ID")]
    pub item_id: Option<String>,
    #[command(flatten)]
    pub job_args: JobArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `router audit`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    pub job: String,
    /// The item metadata key to group by (a language, a customer segment…).
    #[arg(long = "by", value_name = "LABEL")]
    pub by: String,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Runs a router subcommand; returns the exit code.
///
/// # Errors
/// What the command failed on.
pub async fn run(cmd: RouterCmd, config: Option<&Path>) -> anyhow::Result<u8> {
    match cmd {
        RouterCmd::Offline(RouterCommand::Train(a)) if a.from_db => {
            let settings = Settings::load(config)?;
            crate::learn::run(&settings, &a).await?;
            Ok(exit::OK)
        }
        RouterCmd::Offline(c) => {
            tokio::task::spawn_blocking(move || switchyard_router_lab::cli::run(c)).await??;
            Ok(exit::OK)
        }
        RouterCmd::Cascade(a) => {
            tokio::task::spawn_blocking(move || crate::cascade_cmd::run(&a)).await??;
            Ok(exit::OK)
        }
        RouterCmd::Explain(a) => explain(config, a).await,
        RouterCmd::Audit(a) => audit(config, a).await,
    }
}

async fn explain(config: Option<&Path>, a: ExplainArgs) -> anyhow::Result<u8> {
    let settings = Settings::load(config)?;
    let explanation = match (&a.file, &a.job, &a.item) {
        (Some(file), _, _) => {
            let id = a.item_id.clone().unwrap_or_default();
            let items = switchyard_client::input::read_items(file)?;
            let Some(index) = items.iter().position(|i| i.item_id == id) else {
                eprintln!("no item {id:?} in `{}`", file.display());
                return Ok(exit::NOT_FOUND);
            };
            let q = quote::compute(&settings, items, &a.job_args).await?;
            explain::from_quote(&q, index)
        }
        (None, Some(job), Some(item)) => {
            let pool = switchyard_store::connect_and_migrate(settings.database_url(), 2).await?;
            match switchyard_store::routing::explain(&pool, job, item).await? {
                Some(e) => explain::from_job(&e),
                None => {
                    eprintln!("no item {item:?} in job `{job}`");
                    return Ok(exit::NOT_FOUND);
                }
            }
        }
        _ => bail!("give JOB ITEM, or --file ITEMS.jsonl --item ID --task … --policy …"),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&explanation)?);
    } else {
        print!("{}", explain::render(&explanation));
    }
    Ok(exit::OK)
}

async fn audit(config: Option<&Path>, a: AuditArgs) -> anyhow::Result<u8> {
    let settings = Settings::load(config)?;
    let pool = switchyard_store::connect_and_migrate(settings.database_url(), 2).await?;
    let Some(job) = switchyard_store::jobs::get(&pool, &a.job).await? else {
        eprintln!("no job `{}`", a.job);
        return Ok(exit::NOT_FOUND);
    };
    let Some(kind) = job
        .task_kind
        .as_deref()
        .and_then(|k| k.parse::<switchyard_proto::TaskKind>().ok())
    else {
        bail!("job `{}` has no task (was it rejected?)", a.job);
    };
    let ds = &settings.dispatcher;
    let items = switchyard_store::routing::audit_items(
        &pool,
        &a.job,
        &a.by,
        &ds.weak_tier,
        &ds.strong_tier,
    )
    .await?;
    let report = crate::audit::audit(&a.job, &a.by, &items, kind, &ds.weak_tier, &ds.strong_tier);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", crate::audit::render(&report));
    }
    Ok(exit::OK)
}
