//! `switchyard`: one binary for every role. See `switchyard --help` and README.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use switchyard::finance_cli;
use switchyard_client::{exit, report};
use switchyard_runtime::Settings;
use switchyard_runtime::telemetry::{self, LogFormat};
use tokio_util::sync::CancellationToken;

mod api_cmd;
mod args;
mod demo_cmd;
mod jobs;
mod lab_cmd;
mod services;

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

/// `switchyard config …`.
#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the demo fleet's configuration (the simulator on 127.0.0.1:8089 serving the
    /// bundled data's models), a starting point for running the demo fleet as processes:
    /// `switchyard config demo > fleet.toml`.
    Demo,
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
    Demo(demo_cmd::DemoArgs),
    /// Configuration helpers: `demo` prints the demo fleet's configuration (validate a file
    /// with `--config FILE --check-config`).
    #[command(subcommand)]
    Config(ConfigCmd),
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
    /// Serve OpenAI's Batch API (files and batches under /v1) in front of the fleet.
    Api(api_cmd::ApiArgs),
    /// Keys of the Batch API: `create` (for a team), `list`, `revoke`.
    #[command(subcommand)]
    ApiKey(api_cmd::KeyCommand),
    /// Run the model simulator (an OpenAI-compatible server replaying routing data).
    Sim(switchyard_sim::cli::SimArgs),
    /// Create the database if needed and apply migrations.
    Migrate,
    /// Submit a job from a JSONL items file.
    Submit(jobs::SubmitArgs),
    /// Wait for a job to finish, with a progress bar; the exit code says how it ended.
    Wait {
        job: String,
        /// Give up waiting after this long (e.g. `30m`); the job keeps running.
        #[arg(long, value_parser = args::humantime_duration)]
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
    Chaos(lab_cmd::ChaosArgs),
    /// Measure the fleet against the raw engines (NATS, Postgres, HTTP) in this process.
    Bench(lab_cmd::BenchArgs),
    /// Latency each path adds per model call, and calls/s: direct, the fleet, a LiteLLM proxy
    /// (scripts/compare-gateways.sh; docs/gateway-comparison.md).
    BenchGateway(switchyard_lab::bench::gateway::GatewayArgs),
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
    // Printing the demo configuration needs no configuration of its own.
    if let Some(Command::Config(ConfigCmd::Demo)) = &cli.command {
        print!("{}", switchyard_runtime::settings::DEMO_TOML);
        return Ok(exit::OK);
    }
    // The demo and the benches run the simulator's fleet unless given another; everything
    // else starts from the built-in defaults, which configure no models.
    let without_file: fn() -> Settings = match &cli.command {
        Some(Command::Demo(_) | Command::Bench(_) | Command::BenchGateway(_)) => Settings::demo,
        _ => Settings::default,
    };
    let settings = Settings::load_or(cli.config.as_deref(), without_file)?;
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
        Command::Router(_) | Command::Policy(_) | Command::Config(_) => Ok(exit::OK),
        Command::Quote(args) => {
            switchyard::quote::run(&settings, args).await?;
            Ok(exit::OK)
        }
        Command::Demo(args) => demo_cmd::run(settings, args).await,
        Command::Dispatcher { metrics_listen } => {
            services::dispatcher(settings, metrics_listen, shutdown).await
        }
        Command::Worker {
            tier,
            metrics_listen,
        } => services::worker(settings, tier, metrics_listen, shutdown).await,
        Command::Sim(args) => services::sim(args, shutdown).await,
        Command::Api(args) => api_cmd::serve(settings, args, shutdown).await,
        Command::ApiKey(cmd) => api_cmd::keys(settings, cmd).await,
        Command::Migrate => services::migrate(&settings).await,
        Command::Submit(args) => jobs::submit(settings, args).await,
        Command::Wait { job, timeout } => jobs::wait_for(settings, &job, timeout).await,
        Command::Status { job, json } => jobs::status(settings, &job, json).await,
        Command::Results {
            job,
            format,
            output,
        } => jobs::results(settings, &job, format, output).await,
        Command::Cancel { job } => jobs::cancel(settings, &job).await,
        Command::Retry { job, failed: _ } => jobs::retry(settings, &job).await,
        Command::Chaos(args) => lab_cmd::chaos(args).await,
        Command::Audit(cmd) => switchyard::security_cli::audit(settings, cmd).await,
        Command::Security(cmd) => switchyard::security_cli::security(&settings, cmd),
        Command::Prices(cmd) => finance_cli::prices(settings, cmd).await,
        Command::Budget(cmd) => finance_cli::budget(settings, cmd).await,
        Command::Ledger(cmd) => finance_cli::ledger(settings, cmd, shutdown).await,
        Command::Purge(args) => finance_cli::purge(settings, args).await,
        Command::Bench(args) => lab_cmd::bench(&settings, args).await,
        Command::BenchGateway(args) => lab_cmd::bench_gateway(&settings, args).await,
    }
}
