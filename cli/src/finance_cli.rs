//! `switchyard prices`, `budget`, `ledger` and `purge`: the finance commands. They need
//! Postgres only (no NATS), validate everything before writing, and write nothing when an
//! argument is wrong.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand, ValueEnum};
use rust_decimal::Decimal;
use secrecy::SecretString;
use sqlx::PgPool;
use switchyard_core::tariff::Tariff;
use switchyard_runtime::Settings;
use switchyard_store::budgets::{self, BudgetSpec, WhenExhausted};
use switchyard_store::ledger_reports::{self, Dimension, ReportRequest, Source};
use switchyard_store::money::exact;
use switchyard_store::prices::{self, NewPrice};
use tokio_util::sync::CancellationToken;

use switchyard_client::exit;
use switchyard_finance::format::{self as ledger_format, ReportFormat};
use switchyard_finance::period::{
    parse_age, parse_decimal, parse_fraction, parse_instant, report_period,
};

/// `switchyard prices …`
#[derive(Debug, Subcommand)]
pub enum PricesCommand {
    /// Record a new price version of a model, in force from --effective-from until the next
    /// version. Versions are never changed; past calls keep the version they were booked with.
    Set(PriceSetArgs),
    /// List price versions (all, or those in force at --at).
    List {
        /// Only the versions in force at this time (RFC 3339, a date, or `now`).
        #[arg(long, value_parser = parse_instant)]
        at: Option<DateTime<Utc>>,
        /// Only this model.
        #[arg(long)]
        model: Option<String>,
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
}

/// Arguments of `prices set`.
#[derive(Debug, Args)]
pub struct PriceSetArgs {
    /// The model, as the provider names it.
    pub model: String,
    /// USD per million prompt tokens (a decimal, e.g. 2.5).
    #[arg(long, value_parser = parse_decimal, allow_negative_numbers = true)]
    pub input_per_mtok: Decimal,
    /// USD per million completion tokens.
    #[arg(long, value_parser = parse_decimal, allow_negative_numbers = true)]
    pub output_per_mtok: Decimal,
    /// USD per million prompt tokens served from the provider's cache (default: the input
    /// price).
    #[arg(long, value_parser = parse_decimal, allow_negative_numbers = true)]
    pub cached_input_per_mtok: Option<Decimal>,
    /// USD per million prompt tokens written to the provider's cache for 5 minutes
    /// (Anthropic: 1.25 × input; default: the input price).
    #[arg(long, value_parser = parse_decimal, allow_negative_numbers = true)]
    pub cache_write_per_mtok: Option<Decimal>,
    /// USD per million prompt tokens written to the cache for an hour (Anthropic: 2 × input;
    /// default: the 5-minute price).
    #[arg(long, value_parser = parse_decimal, allow_negative_numbers = true)]
    pub cache_write_1h_per_mtok: Option<Decimal>,
    /// Fraction off for calls through a batch API: 0.5 or 50% (default 0).
    #[arg(long, value_parser = parse_fraction, allow_negative_numbers = true)]
    pub batch_discount: Option<Decimal>,
    /// When the version takes effect: RFC 3339 (2026-12-01T00:00:00Z), a date (UTC midnight)
    /// or `now`.
    #[arg(long, value_parser = parse_instant)]
    pub effective_from: DateTime<Utc>,
    /// Provider label (default: the configured model's; required for a model not configured).
    #[arg(long)]
    pub provider: Option<String>,
}

/// Output of list commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

/// `switchyard budget …`
#[derive(Debug, Subcommand)]
pub enum BudgetCommand {
    /// Set a team's monthly budget (replaces the previous one).
    Set {
        #[arg(long)]
        team: String,
        /// Hard monthly limit, USD: concurrent workers never book past it.
        #[arg(long, value_parser = parse_decimal, allow_negative_numbers = true)]
        monthly: Decimal,
        /// Soft limit, USD: reaching it publishes one warning event per month.
        #[arg(long, value_parser = parse_decimal, allow_negative_numbers = true)]
        soft: Option<Decimal>,
        /// What a call that does not fit does: `downgrade` (strong calls go weak, weak ones
        /// wait) or `wait` (the item waits until the budget has room).
        #[arg(long, value_enum, default_value_t = ExhaustedArg::Downgrade)]
        when_exhausted: ExhaustedArg,
        /// The team has not submitted a job yet (otherwise an unknown team is an error).
        #[arg(long)]
        new_team: bool,
    },
    /// Show budgets this month: spent, held by calls in flight, available, items waiting.
    Show {
        #[arg(long)]
        team: Option<String>,
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
}

/// `--when-exhausted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExhaustedArg {
    Downgrade,
    Wait,
}

/// `switchyard ledger …`
#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Spend grouped by team, project, model, tier, job and day or month, with the
    /// all-strong / all-weak counterfactuals and savings.
    Report(ReportArgs),
    /// Book a reversal entry cancelling ENTRY (the ledger is append-only).
    Correct {
        /// The ledger entry id (`entry_id`).
        entry: i64,
        /// Why (kept on the reversal entry).
        #[arg(long)]
        reason: String,
    },
    /// Serve the read-only finance API (JSON, CSV) and dashboard.
    Serve {
        /// Listen address (default: finance.serve_listen).
        #[arg(long)]
        listen: Option<String>,
        /// Connect as this database URL instead (e.g. the finance role's login).
        #[arg(long, env = "SWITCHYARD_FINANCE_DATABASE_URL", value_parser = parse_secret, hide_env_values = true)]
        database_url: Option<SecretString>,
    },
    /// Create (if needed) a read-only Postgres login for finance that reads the reporting
    /// views only, never prompts or answers.
    GrantFinance {
        /// Role name (a-z, 0-9, _).
        role: String,
        /// Read the role's password from this environment variable.
        #[arg(long)]
        password_env: Option<String>,
    },
    /// Settle in-doubt and estimated entries against a provider's usage evidence: each
    /// entry with evidence is reversed and booked again at the real usage
    /// (`<call_id>:evidence`); calls never billed are reversed to zero; billed calls the
    /// ledger lacks are booked. Idempotent: a second run with the same file changes nothing.
    Reconcile {
        /// The evidence: the simulator's call log (JSONL), or a generic JSONL or CSV usage
        /// report (call_id, model, prompt_tokens, completion_tokens, optional
        /// cached_prompt_tokens, cost_usd, billed, at; see docs/finance.md).
        #[arg(long)]
        usage: PathBuf,
        /// The file is the provider's complete record of the period (e.g. its whole call
        /// log): in-doubt and estimated entries it does not mention were never billed and
        /// are reversed to zero. Without it they stay open.
        #[arg(long)]
        complete: bool,
        /// Say what would be booked; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Measure a month's report at scale in a scratch database (created and dropped).
    Bench {
        /// Ledger rows to load (spread over three months).
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Arguments of `ledger report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Comma-separated: team, project, model, tier, job, and day or month.
    #[arg(long, default_value = "team")]
    pub group_by: String,
    /// Start (inclusive): RFC 3339, a date, a month (2026-11) or `now` (default: the start of
    /// the month of --to).
    #[arg(long, value_parser = parse_instant)]
    pub from: Option<DateTime<Utc>>,
    /// End (exclusive): as --from (default: the end of today, UTC).
    #[arg(long, value_parser = parse_instant)]
    pub to: Option<DateTime<Utc>>,
    /// Only this team.
    #[arg(long)]
    pub team: Option<String>,
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
    /// Read the ledger rows rather than the daily rollup (same figures, slower).
    #[arg(long)]
    pub from_ledger: bool,
    /// Write here instead of stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// `switchyard purge`.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Purge prompts and answers of jobs finished longer ago than this (e.g. 30d; default:
    /// finance.retention).
    #[arg(long, value_parser = parse_age)]
    pub older_than: Option<Duration>,
    /// Count what would be purged, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

fn parse_secret(s: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(s.to_owned()))
}

async fn pool(settings: &Settings) -> anyhow::Result<PgPool> {
    switchyard_store::connect_and_migrate(settings.database_url(), 4).await
}

/// Runs `switchyard prices …`.
///
/// # Errors
/// Bad arguments (nothing written), database errors.
pub async fn prices(settings: Settings, cmd: PricesCommand) -> anyhow::Result<u8> {
    match cmd {
        PricesCommand::Set(a) => {
            let tariff = Tariff::new(
                a.input_per_mtok,
                a.cached_input_per_mtok,
                a.output_per_mtok,
                a.batch_discount.unwrap_or(Decimal::ZERO),
            )
            .and_then(|t| t.with_cache_writes(a.cache_write_per_mtok, a.cache_write_1h_per_mtok))
            .with_context(|| format!("price of `{}` refused", a.model))?;
            let pool = pool(&settings).await?;
            let configured = settings.models.get(&a.model);
            let provider = match (a.provider, configured) {
                (Some(p), _) => p,
                (None, Some(m)) => m.provider.clone(),
                (None, None) => {
                    let priced = prices::priced_models(&pool).await?;
                    if !priced.contains(&a.model) {
                        let known: Vec<&str> = settings.models.keys().map(String::as_str).collect();
                        bail!(
                            "unknown model `{}`: it is not configured (configured: {}) and was \
                             never priced; pass --provider to price a model before configuring it",
                            a.model,
                            known.join(", ")
                        );
                    }
                    let all = prices::all(&pool).await?;
                    all.iter()
                        .rev()
                        .find(|v| v.model == a.model)
                        .map(|v| v.provider.clone())
                        .unwrap_or_else(|| "openai".to_owned())
                }
            };
            let v = prices::set(
                &pool,
                &NewPrice {
                    model: a.model.clone(),
                    provider,
                    tariff,
                    effective_from: a.effective_from,
                },
            )
            .await?;
            eprintln!(
                "price version {} of `{}` recorded: input {} / cached input {} / cache write {} \
                 (1 h {}) / output {} USD per million tokens, batch discount {}, effective from {}",
                v.price_id,
                v.model,
                exact(v.input_usd_per_mtok),
                v.cached_input_usd_per_mtok
                    .map_or_else(|| "(input)".to_owned(), exact),
                v.cache_write_usd_per_mtok
                    .map_or_else(|| "(input)".to_owned(), exact),
                v.cache_write_1h_usd_per_mtok
                    .map_or_else(|| "(5 min)".to_owned(), exact),
                exact(v.output_usd_per_mtok),
                exact(v.batch_discount),
                v.effective_from.to_rfc3339()
            );
            println!("{}", v.price_id);
            Ok(exit::OK)
        }
        PricesCommand::List { at, model, format } => {
            let pool = pool(&settings).await?;
            let mut versions = match at {
                Some(at) => prices::in_force_at(&pool, at).await?,
                None => prices::all(&pool).await?,
            };
            if let Some(m) = &model {
                versions.retain(|v| &v.model == m);
                if versions.is_empty() && !prices::priced_models(&pool).await?.contains(m) {
                    bail!("no price versions for model `{m}`");
                }
            }
            let mut out = std::io::stdout().lock();
            match format {
                ListFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&versions)?)?,
                ListFormat::Table => {
                    let now = Utc::now();
                    let mut rows = vec![vec![
                        "id".to_owned(),
                        "model".to_owned(),
                        "provider".to_owned(),
                        "input/Mtok".to_owned(),
                        "cached/Mtok".to_owned(),
                        "output/Mtok".to_owned(),
                        "batch off".to_owned(),
                        "effective from".to_owned(),
                        "until".to_owned(),
                        String::new(),
                    ]];
                    for v in &versions {
                        rows.push(vec![
                            v.price_id.to_string(),
                            v.model.clone(),
                            v.provider.clone(),
                            exact(v.input_usd_per_mtok),
                            v.cached_input_usd_per_mtok
                                .map_or_else(|| "-".into(), exact),
                            exact(v.output_usd_per_mtok),
                            exact(v.batch_discount),
                            v.effective_from.to_rfc3339(),
                            v.effective_until
                                .map_or_else(|| "-".into(), |u| u.to_rfc3339()),
                            if v.in_force_at(at.unwrap_or(now)) {
                                "in force".into()
                            } else {
                                String::new()
                            },
                        ]);
                    }
                    write!(
                        out,
                        "{}",
                        ledger_format::render_table(&rows, &[0, 3, 4, 5, 6])
                    )?;
                }
            }
            Ok(exit::OK)
        }
    }
}

/// Runs `switchyard budget …`.
///
/// # Errors
/// Bad arguments (nothing written), database errors.
pub async fn budget(settings: Settings, cmd: BudgetCommand) -> anyhow::Result<u8> {
    let pool = pool(&settings).await?;
    match cmd {
        BudgetCommand::Set {
            team,
            monthly,
            soft,
            when_exhausted,
            new_team,
        } => {
            let spec = BudgetSpec {
                team: team.clone(),
                monthly_usd: monthly,
                soft_usd: soft,
                when_exhausted: match when_exhausted {
                    ExhaustedArg::Downgrade => WhenExhausted::Downgrade,
                    ExhaustedArg::Wait => WhenExhausted::Wait,
                },
            };
            budgets::set(&pool, &spec, new_team).await?;
            eprintln!(
                "budget of `{team}`: {} USD a month{}, when exhausted: {}",
                exact(monthly),
                soft.map_or_else(String::new, |s| format!(", soft limit {}", exact(s))),
                spec.when_exhausted.as_str()
            );
            Ok(exit::OK)
        }
        BudgetCommand::Show { team, format } => {
            let rows = budgets::show(&pool, team.as_deref()).await?;
            let mut out = std::io::stdout().lock();
            match format {
                ListFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?,
                ListFormat::Table => {
                    let mut table = vec![
                        [
                            "team",
                            "month",
                            "limit",
                            "soft",
                            "spent",
                            "held",
                            "available",
                            "waiting",
                            "downgraded",
                            "when exhausted",
                            "soft warned",
                        ]
                        .map(str::to_owned)
                        .to_vec(),
                    ];
                    for r in &rows {
                        table.push(vec![
                            r.team.clone(),
                            r.month.format("%Y-%m").to_string(),
                            exact(r.monthly_usd),
                            r.soft_usd.map_or_else(|| "-".into(), exact),
                            exact(r.spent_usd),
                            exact(r.reserved_usd),
                            exact(r.available_usd),
                            r.waiting_items.to_string(),
                            r.downgraded_items.to_string(),
                            r.when_exhausted.clone(),
                            r.soft_warned_at
                                .map_or_else(|| "-".into(), |t| t.to_rfc3339()),
                        ]);
                    }
                    write!(
                        out,
                        "{}",
                        ledger_format::render_table(&table, &[2, 3, 4, 5, 6, 7, 8])
                    )?;
                }
            }
            Ok(exit::OK)
        }
    }
}

/// Runs `switchyard ledger …`.
///
/// # Errors
/// Bad arguments (nothing written), database errors.
pub async fn ledger(
    settings: Settings,
    cmd: LedgerCommand,
    shutdown: CancellationToken,
) -> anyhow::Result<u8> {
    match cmd {
        LedgerCommand::Report(a) => {
            let group_by = Dimension::parse_list(&a.group_by)?;
            let (from, to) = report_period(a.from, a.to)?;
            let pool = pool(&settings).await?;
            let req = ReportRequest {
                group_by,
                from,
                to,
                team: a.team,
            };
            let source = if a.from_ledger {
                Source::Ledger
            } else {
                Source::Auto
            };
            let report = ledger_reports::run(&pool, &req, source).await?;
            match a.output {
                Some(path) => {
                    let file = std::fs::File::create(&path)
                        .with_context(|| format!("cannot create `{}`", path.display()))?;
                    ledger_format::write_report(&report, a.format, std::io::BufWriter::new(file))?;
                }
                None => ledger_format::write_report(&report, a.format, std::io::stdout().lock())?,
            }
            Ok(exit::OK)
        }
        LedgerCommand::Correct { entry, reason } => {
            let pool = pool(&settings).await?;
            let r = switchyard_store::corrections::reverse(&pool, entry, &reason).await?;
            eprintln!(
                "entry {} reverses entry {} ({} USD): {}",
                r.entry_id,
                r.reverses_entry_id,
                exact(r.cost_usd),
                r.reason
            );
            println!("{}", r.entry_id);
            Ok(exit::OK)
        }
        LedgerCommand::Serve {
            listen,
            database_url,
        } => {
            let addr = listen.unwrap_or_else(|| settings.finance.serve_listen.clone());
            let pool = match database_url {
                Some(url) => {
                    use secrecy::ExposeSecret as _;
                    switchyard_store::connect(url.expose_secret(), 4).await?
                }
                None => pool(&settings).await?,
            };
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            eprintln!(
                "finance dashboard on http://{}/ (API under /api)",
                listener.local_addr()?
            );
            switchyard_finance::serve::serve(pool, listener, shutdown).await?;
            Ok(exit::OK)
        }
        LedgerCommand::GrantFinance { role, password_env } => {
            let password = match password_env {
                Some(var) => Some(SecretString::from(std::env::var(&var).with_context(
                    || format!("environment variable `{var}` (--password-env) is not set"),
                )?)),
                None => None,
            };
            let pool = pool(&settings).await?;
            switchyard_store::finance_role::grant(&pool, &role, password.as_ref()).await?;
            eprintln!(
                "role `{role}` reads the `reporting` views of this database (read-only; no \
                 access to prompts or answers)"
            );
            Ok(exit::OK)
        }
        LedgerCommand::Reconcile {
            usage,
            complete,
            dry_run,
            json,
        } => {
            let mut file = switchyard_finance::usage_report::read(&usage)?;
            file.evidence.set_complete(complete);
            let pool = pool(&settings).await?;
            let summary =
                switchyard_store::reconcile::reconcile(&pool, &file.evidence, dry_run).await?;
            if json {
                let mut v = serde_json::to_value(&summary)?;
                v["lines"] = file.lines.into();
                v["lines_without_call_id"] = file.without_call_id.into();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", render_reconcile(&summary, &file));
            }
            Ok(exit::OK)
        }
        LedgerCommand::Bench { rows, json } => {
            let figures = switchyard_lab::ledger_bench::run(settings.database_url(), rows).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&figures)?);
            } else {
                print!("{}", switchyard_lab::ledger_bench::render(&figures));
            }
            Ok(exit::OK)
        }
    }
}

/// The reconciliation summary for a reader.
fn render_reconcile(
    s: &switchyard_store::reconcile::Summary,
    f: &switchyard_finance::usage_report::UsageFile,
) -> String {
    let mut out = String::new();
    if s.dry_run {
        out.push_str("dry run: nothing was written\n");
    }
    let lines = [
        ("evidence lines", f.lines),
        ("  without a call id (ignored)", f.without_call_id),
        ("calls in evidence", s.evidence_calls),
        ("settled (reversed + evidence entry)", s.settled),
        ("reversed to zero (never billed)", s.reversed_to_zero),
        ("booked (missing from the ledger)", s.booked_missing),
        ("unchanged", s.unchanged),
        ("in-doubt/estimated, not in evidence", s.not_in_evidence),
        ("in flight (left alone)", s.in_flight),
        ("model mismatch (left alone)", s.model_mismatch),
        ("cost disagreements", s.cost_disagreements),
    ];
    for (what, n) in lines {
        out.push_str(&format!("{what:<40} {n}\n"));
    }
    out.push_str(&format!("{:<40} {}\n", "usd delta", exact(s.usd_delta)));
    out
}

/// Runs `switchyard purge`.
///
/// # Errors
/// No age given or configured; database errors.
pub async fn purge(settings: Settings, a: PurgeArgs) -> anyhow::Result<u8> {
    let Some(age) = a.older_than.or(settings.finance.retention) else {
        bail!("give --older-than (e.g. 30d) or set finance.retention in the configuration");
    };
    let age = chrono::Duration::from_std(age).context("--older-than is too large")?;
    let cutoff = Utc::now()
        .checked_sub_signed(age)
        .context("--older-than is too large")?;
    let pool = pool(&settings).await?;
    let s = switchyard_store::retention::purge_finished_before(&pool, cutoff, a.dry_run).await?;
    eprintln!(
        "{} {} jobs finished before {}: {} items' prompts and {} answers{}; the ledger is untouched",
        if a.dry_run { "would purge" } else { "purged" },
        s.jobs,
        cutoff.to_rfc3339(),
        s.items,
        s.results,
        if a.dry_run { " (dry run)" } else { "" }
    );
    Ok(exit::OK)
}
