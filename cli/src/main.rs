//! `switchyard`: one binary for every role. See `switchyard --help` and README.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use switchyard::finance_cli;
use switchyard_client::{Client, WaitOutcome, new_job};
use switchyard_client::{exit, input, report};
use switchyard_demo as demo;
use switchyard_proto::Task;
use switchyard_runtime::Settings;
use switchyard_runtime::telemetry::{self, LogFormat};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "LLM routing worker fleet: route every item to the cheapest model that answers it well, and book every cent"
)]
struct Cli {
    /// TOML configuration file (see deploy/switchyard.example.toml). NATS_URL and
    /// DATABASE_URL override what it says.
    #[arg(long, global = true, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the configuration, print it (secrets redacted) and exit.
    #[arg(long, global = true)]
    check_config: bool,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormatArg::Pretty)]
    log_format: LogFormatArg,
    #[command(subcommand)]
    command: Option<Command>,
}

/// `switchyard policy …`.
#[derive(Subcommand)]
enum PolicyCmd {
    /// Replay `--policy quality=Q` on a routing-data file as the fleet would run it
    /// (pilot, plan, escalation with simulated confidence, audit): achieved quality,
    /// savings with every call counted, and the audit's estimate, per job.
    Eval(switchyard_twin::cli::EvalArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Pretty,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole fleet in this process on bundled real data and print a report.
    Demo {
        /// Classification items (the bundled set has 2,457).
        #[arg(long, default_value_t = 2457)]
        items: usize,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
        /// The share of all-strong quality each job must keep (`quality=Q`).
        #[arg(long, default_value_t = 0.95)]
        quality: f64,
        /// Instead of `--quality`: the share of each job the router sends to the strong
        /// model (a hand-set policy, with --confidence-threshold, default 0.8).
        #[arg(long)]
        strong_share: Option<f64>,
        /// Instead of `--quality`: weak answers below this confidence escalate (with
        /// --strong-share, default 0.1).
        #[arg(long)]
        confidence_threshold: Option<f64>,
        /// The simulator's confidence AUROC.
        #[arg(long, default_value_t = 0.75)]
        auroc: f64,
        /// Where to write each job's frontier picture (SVG).
        #[arg(long, default_value = ".")]
        plot_dir: PathBuf,
    },
    /// Run a dispatcher (any number of them may run).
    Dispatcher {
        /// Serve Prometheus `/metrics` on this address (overrides `[metrics] listen`).
        #[arg(long)]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Run a worker for one or more tiers (any number of them may run).
    Worker {
        /// Tier to serve (repeat, or comma-separate, for several).
        #[arg(long, required = true, value_delimiter = ',')]
        tier: Vec<String>,
        /// Serve Prometheus `/metrics` on this address (overrides `[metrics] listen`).
        #[arg(long)]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Run the model simulator (an OpenAI-compatible server replaying routing data).
    Sim(switchyard_sim::cli::SimArgs),
    /// Create the database if needed and apply migrations.
    Migrate,
    /// Submit a job from a JSONL items file.
    Submit(SubmitArgs),
    /// Wait for a job to finish, with a progress bar; the exit code says how it ended.
    Wait {
        job: String,
        /// Give up waiting after this long (e.g. `30m`); the job keeps running.
        #[arg(long, value_parser = humantime_duration)]
        timeout: Option<Duration>,
    },
    /// Show a job's state: items per state and tier, cost so far, rejection reason.
    Status {
        job: String,
        #[arg(long)]
        json: bool,
    },
    /// Export a job's results in input order.
    Results {
        job: String,
        #[arg(long, value_enum, default_value_t = report::ResultFormat::Jsonl)]
        format: report::ResultFormat,
        /// Write here instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Cancel a job: items not yet started are not called.
    Cancel { job: String },
    /// Re-run a job's failed items.
    Retry {
        job: String,
        /// Re-run the items that failed (the only kind of retry there is for now).
        #[arg(long, required = true)]
        failed: bool,
    },
    /// Train, score with, evaluate, explain and audit routers.
    #[command(subcommand)]
    Router(switchyard::router_cmd::RouterCmd),
    /// Before a job runs: its expected cost, strong share and predicted quality.
    Quote(switchyard::quote::QuoteArgs),
    /// Quality policies offline: `eval` replays one on routing data (the fleet's twin).
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Price versions: `set` a new one (effective-dated, never changed), `list` them.
    #[command(subcommand)]
    Prices(finance_cli::PricesCommand),
    /// Team budgets: `set` a monthly limit, `show` spend and holds.
    #[command(subcommand)]
    Budget(finance_cli::BudgetCommand),
    /// The cost ledger: `report`, `correct`, `serve` (finance dashboard), `grant-finance`,
    /// `bench`.
    #[command(subcommand)]
    Ledger(finance_cli::LedgerCommand),
    /// Blank prompts and answers of jobs finished long ago (the ledger is untouched).
    Purge(finance_cli::PurgeArgs),
    /// Audits: `local-only` (did a local_only item reach an external model in a period?).
    #[command(subcommand)]
    Audit(switchyard::security_cli::AuditCommand),
    /// Security helpers: `nats-permissions` (the nats-server users and permissions of
    /// `[security.nats_users]`).
    #[command(subcommand)]
    Security(switchyard::security_cli::SecurityCommand),
    /// Crash, restart and fault the fleet while it runs a job, on a NATS and Postgres of its
    /// own, then prove nothing was lost or paid twice (docs/reliability.md).
    Chaos {
        /// Items of the job.
        #[arg(long, default_value_t = 5000)]
        items: usize,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
        /// Worker processes killed (SIGKILL) during the job.
        #[arg(long, default_value_t = 6)]
        kills: usize,
        /// Seed of the schedule and the simulator's faults (default: the clock).
        #[arg(long)]
        seed: Option<u64>,
        /// Fail when the job has not finished by then.
        #[arg(long, value_parser = humantime_duration, default_value = "240s")]
        timeout: Duration,
        /// Keep the run's folder (logs, data) even when it passes.
        #[arg(long)]
        keep: bool,
    },
    /// Measure the fleet against the raw engines (NATS, Postgres, HTTP) in this process.
    Bench {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Repetitions per figure (medians are reported).
        #[arg(long, default_value_t = 3)]
        repetitions: usize,
        /// Only these benches (dispatch, end_to_end, overhead, quota, memory); repeat or
        /// comma-separate. `quota` runs its two scenarios, `quota_steady` or `quota_scaling`
        /// one of them.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Items of the dispatch bench's job.
        #[arg(long, default_value_t = 100_000)]
        dispatch_items: usize,
        /// Items of the end-to-end bench's job.
        #[arg(long, default_value_t = 20_000)]
        end_to_end_items: usize,
        /// Items of the memory bench's job.
        #[arg(long, default_value_t = 1_000_000)]
        memory_items: usize,
        /// Measurement window of the quota bench's steady scenario (the scaling scenario
        /// runs 1.5 times as long: three phases of half of it).
        #[arg(long, value_parser = humantime_duration, default_value = "120s")]
        quota_window: Duration,
    },
    /// Latency each path adds per model call, and calls/s: direct, the fleet, a LiteLLM proxy
    /// (scripts/compare-gateways.sh; docs/gateway-comparison.md).
    BenchGateway(switchyard_lab::bench::gateway::GatewayArgs),
}

#[derive(clap::Args)]
struct SubmitArgs {
    /// JSONL file: one `{"id", "text", "sensitivity"?, "metadata"?}` per line.
    file: PathBuf,
    /// What to do with each item.
    #[arg(long, value_enum)]
    task: TaskArg,
    /// Labels for `--task classify` (comma-separated).
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Word budget for `--task summarize`.
    #[arg(long)]
    max_words: Option<u32>,
    /// Instructions for the model (replaces the task's default).
    #[arg(long)]
    instructions: Option<String>,
    /// Routing policy: `strong-share=0.3` (exactly that share of items strong),
    /// `threshold=0.6` (router score at or above it goes strong), `budget-usd=25` (best gain
    /// per dollar within the budget) or `quality=0.95` (smallest strong share predicted to
    /// reach 95% of all-strong quality); plus `shadow=0.05` (that share of weak-routed items
    /// also goes strong, to learn from). Comma-separate or repeat.
    #[arg(long, value_parser = switchyard_client::policy_arg::parse, value_delimiter = ',')]
    policy: Vec<switchyard_client::policy_arg::PolicyArg>,
    /// Weak answers below this confidence escalate.
    #[arg(long)]
    confidence_threshold: Option<f64>,
    /// At most this many escalations per item (0 disables the cascade).
    #[arg(long)]
    max_escalations: Option<u8>,
    /// Use this model for a tier: `weak=MODEL` (repeatable).
    #[arg(long = "model", value_parser = parse_pair)]
    models: Vec<(String, String)>,
    #[arg(long)]
    team: Option<String>,
    #[arg(long)]
    project: Option<String>,
    /// Job id (default: a new ULID).
    #[arg(long)]
    job_id: Option<String>,
    /// Re-submitting with the same key creates nothing new (default: the job id).
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Wait for the job to finish (progress bar; exit code as for `wait`).
    #[arg(long)]
    wait: bool,
    /// With --wait: stop waiting after this long.
    #[arg(long, value_parser = humantime_duration)]
    timeout: Option<Duration>,
}

#[derive(Clone, Copy, ValueEnum)]
enum TaskArg {
    Classify,
    Summarize,
    Generate,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 90s or 30m: {e}"))
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(a, b)| (a.trim().to_owned(), b.trim().to_owned()))
        .ok_or_else(|| format!("`{s}`: expected TIER=MODEL"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match cli.log_format {
        LogFormatArg::Pretty => LogFormat::Pretty,
        LogFormatArg::Json => LogFormat::Json,
    };
    telemetry::init(format, "info,sqlx=warn,async_nats=warn");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::ERROR)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    // Router commands load the configuration only when they need it (the offline ones
    // need no configuration or services).
    if let Some(Command::Router(cmd)) = cli.command {
        return switchyard::router_cmd::run(cmd, cli.config.as_deref()).await;
    }
    // The offline twin needs no configuration or services either.
    if let Some(Command::Policy(PolicyCmd::Eval(args))) = &cli.command {
        let args = args.clone();
        tokio::task::spawn_blocking(move || switchyard_twin::cli::run_and_print(&args)).await??;
        return Ok(exit::OK);
    }
    let settings = Settings::load(cli.config.as_deref())?;
    if cli.check_config {
        print!("{}", settings.to_redacted_toml());
        eprintln!("configuration is valid");
        return Ok(exit::OK);
    }
    let Some(command) = cli.command else {
        use clap::CommandFactory as _;
        Cli::command().print_help()?;
        return Ok(2);
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(switchyard_runtime::shutdown::cancel_on_signal(
        shutdown.clone(),
    ));
    match command {
        Command::Router(_) | Command::Policy(_) => Ok(exit::OK),
        Command::Quote(args) => {
            switchyard::quote::run(&settings, args).await?;
            Ok(exit::OK)
        }
        Command::Demo {
            items,
            json,
            quality,
            strong_share,
            confidence_threshold,
            auroc,
            plot_dir,
        } => {
            let hand_set = strong_share.is_some() || confidence_threshold.is_some();
            let defaults = demo::DemoOptions::default();
            let opts = demo::DemoOptions {
                items,
                strong_share: strong_share.unwrap_or(defaults.strong_share),
                confidence_threshold: confidence_threshold.unwrap_or(defaults.confidence_threshold),
                auroc,
                quality: (!hand_set).then_some(quality),
                plot_dir: Some(plot_dir),
                ..defaults
            };
            let report = demo::run(settings, &opts).await?;
            if json {
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
        Command::Dispatcher { metrics_listen } => {
            let mut settings = settings;
            if metrics_listen.is_some() {
                settings.metrics.listen = metrics_listen;
            }
            switchyard_dispatcher::run(settings, shutdown).await?;
            Ok(exit::OK)
        }
        Command::Worker {
            tier,
            metrics_listen,
        } => {
            let mut settings = settings;
            if metrics_listen.is_some() {
                settings.metrics.listen = metrics_listen;
            }
            switchyard_worker::run(settings, tier, shutdown).await?;
            Ok(exit::OK)
        }
        Command::Sim(args) => {
            let bundled = switchyard_demo::bundled_dataset().ok();
            switchyard_sim::cli::run_with_fallback(args, bundled, shutdown).await?;
            Ok(exit::OK)
        }
        Command::Migrate => {
            switchyard_store::connect_and_migrate(settings.database_url(), 2).await?;
            eprintln!("database is up to date");
            Ok(exit::OK)
        }
        Command::Submit(args) => submit(settings, args).await,
        Command::Wait { job, timeout } => {
            let client = Client::connect(settings).await?;
            wait(&client, &job, timeout, Duration::from_secs(10)).await
        }
        Command::Status { job, json } => {
            let client = Client::connect(settings).await?;
            match client.status(&job).await? {
                None => {
                    eprintln!("no job `{job}`");
                    Ok(exit::NOT_FOUND)
                }
                Some(s) => {
                    let quality = switchyard_store::quality::job_quality(
                        &client.pool,
                        &job,
                        &settings_weak_tier(&client),
                    )
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
            }
        }
        Command::Results {
            job,
            format,
            output,
        } => {
            let client = Client::connect(settings).await?;
            if client.status(&job).await?.is_none() {
                eprintln!("no job `{job}`");
                return Ok(exit::NOT_FOUND);
            }
            let n = match output {
                Some(path) => {
                    let file = std::fs::File::create(&path)
                        .with_context(|| format!("cannot create `{}`", path.display()))?;
                    report::export_results(
                        &client.pool,
                        &job,
                        format,
                        &settings_weak_tier(&client),
                        std::io::BufWriter::new(file),
                    )
                    .await?
                }
                None => {
                    report::export_results(
                        &client.pool,
                        &job,
                        format,
                        &settings_weak_tier(&client),
                        std::io::stdout().lock(),
                    )
                    .await?
                }
            };
            eprintln!("{n} results exported");
            Ok(exit::OK)
        }
        Command::Cancel { job } => {
            let client = Client::connect(settings).await?;
            match client.cancel(&job).await? {
                Some(n) => {
                    eprintln!("job `{job}` cancelled: {n} items will not be called");
                    Ok(exit::OK)
                }
                None => match client.status(&job).await? {
                    None => {
                        eprintln!("no job `{job}`");
                        Ok(exit::NOT_FOUND)
                    }
                    Some(s) => bail!("job `{job}` is already {}; nothing to cancel", s.job.status),
                },
            }
        }
        Command::Retry { job, failed: _ } => {
            let client = Client::connect(settings).await?;
            let n = client.retry_failed(&job).await?;
            eprintln!("{n} failed items of `{job}` re-queued");
            Ok(exit::OK)
        }
        Command::Chaos {
            items,
            json,
            kills,
            seed,
            timeout,
            keep,
        } => {
            let opts = switchyard_lab::chaos::ChaosOptions {
                items,
                worker_kills: kills,
                seed,
                timeout,
                keep,
            };
            let report = switchyard_lab::chaos::run(&opts).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", switchyard_lab::chaos::render(&report));
            }
            Ok(if report.passed { exit::OK } else { exit::ERROR })
        }
        Command::Audit(cmd) => switchyard::security_cli::audit(settings, cmd).await,
        Command::Security(cmd) => switchyard::security_cli::security(&settings, cmd),
        Command::Prices(cmd) => finance_cli::prices(settings, cmd).await,
        Command::Budget(cmd) => finance_cli::budget(settings, cmd).await,
        Command::Ledger(cmd) => finance_cli::ledger(settings, cmd, shutdown).await,
        Command::Purge(args) => finance_cli::purge(settings, args).await,
        Command::Bench {
            json,
            repetitions,
            only,
            dispatch_items,
            end_to_end_items,
            memory_items,
            quota_window,
        } => {
            let opts = switchyard_lab::bench::BenchOptions {
                repetitions,
                only,
                dispatch_items,
                end_to_end_items,
                memory_items,
                quota_window,
            };
            let report = switchyard_lab::bench::run(&settings, &opts).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", switchyard_lab::bench::render(&report));
            }
            Ok(exit::OK)
        }
        Command::BenchGateway(args) => {
            let report = switchyard_lab::bench::gateway::run(&settings, &args).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", switchyard_lab::bench::gateway::render(&report));
            }
            Ok(exit::OK)
        }
    }
}

async fn submit(settings: Settings, a: SubmitArgs) -> anyhow::Result<u8> {
    let task = match a.task {
        TaskArg::Classify => {
            if a.labels.is_empty() {
                bail!("--task classify needs --labels a,b,c");
            }
            Task::Classify {
                labels: a.labels,
                instructions: a.instructions,
            }
        }
        TaskArg::Summarize => Task::Summarize {
            max_words: a.max_words,
            instructions: a.instructions,
        },
        TaskArg::Generate => Task::Generate {
            instructions: a.instructions,
        },
    };
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
