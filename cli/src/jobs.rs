//! The job commands: `submit`, `wait`, `status`, `results`, `cancel`, `retry`. Parsing and
//! rendering only; the work is `switchyard_client`'s.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use switchyard_client::quote::TaskArgs;
use switchyard_client::{Client, WaitOutcome, exit, input, new_job, report};
use switchyard_runtime::Settings;

#[derive(clap::Args)]
pub struct SubmitArgs {
    /// JSONL file: one `{"id", "text", "sensitivity"?, "metadata"?}` per line.
    pub file: PathBuf,
    /// What to do with each item (`--task`, `--labels`, `--max-words`, `--instructions`: the
    /// same flags as `quote` and `router explain --file`).
    #[command(flatten)]
    pub task: TaskArgs,
    /// Routing policy: `strong-share=0.3` (exactly that share of items strong),
    /// `threshold=0.6` (router score at or above it goes strong), `budget-usd=25` (best gain
    /// per dollar within the budget) or `quality=0.95` (smallest strong share predicted to
    /// reach 95% of all-strong quality); plus `shadow=0.05` (that share of weak-routed items
    /// also goes strong, to learn from). Comma-separate or repeat.
    #[arg(long, value_parser = switchyard_client::policy_arg::parse, value_delimiter = ',')]
    pub policy: Vec<switchyard_client::policy_arg::PolicyArg>,
    /// Weak answers below this confidence escalate.
    #[arg(long)]
    pub confidence_threshold: Option<f64>,
    /// At most this many escalations per item (0 disables the cascade).
    #[arg(long)]
    pub max_escalations: Option<u8>,
    /// Use this model for a tier: `weak=MODEL` (repeatable).
    #[arg(long = "model", value_parser = switchyard_client::quote::parse_pair)]
    pub models: Vec<(String, String)>,
    #[arg(long)]
    pub team: Option<String>,
    #[arg(long)]
    pub project: Option<String>,
    /// Job id (default: a new ULID).
    #[arg(long)]
    pub job_id: Option<String>,
    /// Re-submitting with the same key creates nothing new (default: the job id).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// The job may take this long (`24h`): its calls may wait in providers' batches.
    #[arg(long, value_parser = crate::args::humantime_duration)]
    pub deadline: Option<Duration>,
    /// Wait for the job to finish (progress bar; exit code as for `wait`).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: stop waiting after this long.
    #[arg(long, value_parser = crate::args::humantime_duration)]
    pub timeout: Option<Duration>,
}

/// `switchyard wait JOB`.
pub async fn wait_for(
    settings: Settings,
    job: &str,
    timeout: Option<Duration>,
) -> anyhow::Result<u8> {
    let client = Client::connect(settings).await?;
    wait(&client, job, timeout, Duration::from_secs(10)).await
}

/// `switchyard status JOB`.
pub async fn status(settings: Settings, job: &str, json: bool) -> anyhow::Result<u8> {
    let client = Client::connect(settings).await?;
    let Some(s) = client.status(job).await? else {
        eprintln!("no job `{job}`");
        return Ok(exit::NOT_FOUND);
    };
    let quality =
        switchyard_store::quality::job_quality(&client.pool, job, &settings_weak_tier(&client))
            .await?;
    if json {
        let mut v = serde_json::to_value(&s)?;
        if let Some(q) = &quality {
            v["quality"] = serde_json::to_value(q)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", report::render_status(&s));
        if let Some(q) = &quality {
            print!("{}", report::render_quality(q));
        }
    }
    Ok(exit::OK)
}

/// `switchyard results JOB`.
pub async fn results(
    settings: Settings,
    job: &str,
    format: report::ResultFormat,
    output: Option<PathBuf>,
) -> anyhow::Result<u8> {
    let client = Client::connect(settings).await?;
    if client.status(job).await?.is_none() {
        eprintln!("no job `{job}`");
        return Ok(exit::NOT_FOUND);
    }
    let weak_tier = settings_weak_tier(&client);
    let n = match output {
        Some(path) => {
            let file = std::fs::File::create(&path)
                .with_context(|| format!("cannot create `{}`", path.display()))?;
            report::export_results(
                &client.pool,
                job,
                format,
                &weak_tier,
                std::io::BufWriter::new(file),
            )
            .await?
        }
        None => {
            report::export_results(
                &client.pool,
                job,
                format,
                &weak_tier,
                std::io::stdout().lock(),
            )
            .await?
        }
    };
    eprintln!("{n} results exported");
    Ok(exit::OK)
}

/// `switchyard cancel JOB`.
pub async fn cancel(settings: Settings, job: &str) -> anyhow::Result<u8> {
    let client = Client::connect(settings).await?;
    match client.cancel(job).await? {
        Some(n) => {
            eprintln!("job `{job}` cancelled: {n} items will not be called");
            Ok(exit::OK)
        }
        None => match client.status(job).await? {
            None => {
                eprintln!("no job `{job}`");
                Ok(exit::NOT_FOUND)
            }
            Some(s) => bail!("job `{job}` is already {}; nothing to cancel", s.job.status),
        },
    }
}

/// `switchyard retry JOB --failed`.
pub async fn retry(settings: Settings, job: &str) -> anyhow::Result<u8> {
    let client = Client::connect(settings).await?;
    let n = client.retry_failed(job).await?;
    eprintln!("{n} failed items of `{job}` re-queued");
    Ok(exit::OK)
}

/// `switchyard submit FILE`.
pub async fn submit(settings: Settings, a: SubmitArgs) -> anyhow::Result<u8> {
    let task = a.task.task()?;
    let items = input::read_items(&a.file)?;
    let mut spec = new_job(task, items);
    if let Some(id) = a.job_id {
        spec.job_id = id;
    }
    spec.idempotency_key = a.idempotency_key;
    spec.team = a.team;
    spec.project = a.project;
    switchyard_client::policy_arg::apply(&a.policy, &mut spec.policy)
        .map_err(anyhow::Error::msg)?;
    spec.policy.cascade.confidence_threshold = a.confidence_threshold;
    spec.policy.cascade.max_escalations = a.max_escalations;
    spec.policy.models = a.models.into_iter().collect();
    if let Some(d) = a.deadline {
        spec = spec.with_deadline(d.as_secs());
    }
    let n = spec.items.as_ref().map_or(0, Vec::len);
    let client = Client::connect(settings).await?;
    let job_id = client.submit(spec).await?;
    eprintln!("submitted job {job_id} ({n} items)");
    println!("{job_id}");
    if a.wait {
        return wait(&client, &job_id, a.timeout, Duration::from_secs(120)).await;
    }
    Ok(exit::OK)
}

async fn wait(
    client: &Client,
    job: &str,
    timeout: Option<Duration>,
    appear_within: Duration,
) -> anyhow::Result<u8> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("[{elapsed_precise}] [{bar:40}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let outcome = client
        .wait(job, timeout, appear_within, |s| {
            bar.set_length(s.job.item_count.unwrap_or(0) as u64);
            bar.set_position(s.finished() as u64);
            bar.set_message(format!(
                "{} · ${} · {} failed",
                s.job.status,
                s.cost_usd.round_dp(4),
                s.failed()
            ));
        })
        .await?;
    bar.finish_and_clear();
    Ok(match outcome {
        WaitOutcome::Finished(s) => {
            eprint!("{}", report::render_status(&s));
            exit::for_job_status(&s.job.status)
        }
        WaitOutcome::TimedOut(_) => {
            eprintln!("timed out waiting for `{job}`; it keeps running (`switchyard wait {job}`)");
            exit::TIMEOUT
        }
        WaitOutcome::NotFound => {
            eprintln!("no job `{job}`");
            exit::NOT_FOUND
        }
    })
}

/// The deployment's weak tier (what a quality job's audit estimate treats as weak-routed).
fn settings_weak_tier(client: &Client) -> String {
    client.settings.dispatcher.weak_tier.clone()
}
