//! `switchyard chaos`: crashes, restarts and provider faults, and proof that they lose
//! nothing and pay nothing twice.
//!
//! The run owns everything it breaks: a nats-server and a PostgreSQL of its own
//! ([`services`], free ports, data in a temporary folder), the fleet as real child processes
//! of this executable ([`procs`]: two dispatchers, two workers per tier) and the model
//! simulator in this process (its call log is the provider's side of the books). It submits
//! one job (5,000 items by default, through the object store) and, as the job progresses:
//!
//! 1. kills (SIGKILL) the dispatcher holding the job while it is being dispatched, and starts
//!    a second one (then the first again);
//! 2. kills a random worker at random points of progress and restarts it a moment later,
//!    logging how many of its calls the simulator had in flight; and once stops a worker with
//!    SIGTERM mid-job (a rolling restart: it drains for its grace period, gives back what it
//!    could not finish, must exit 0) and starts it again;
//! 3. kills and restarts nats-server once, and restarts PostgreSQL once (`-m immediate`);
//! 4. lets the simulator fail a steady share of calls (5xx, hangs past the timeout, broken
//!    connections, truncated or odd bodies);
//! 5. publishes answered attempts again, past the duplicate window ([`redeliver`]): none may
//!    be called again;
//! 6. just before PostgreSQL restarts, starts a second team's job against a hard budget far
//!    below its cost, so that the race for its last dollars crosses the restart and the
//!    worker kills ([`budget_race`]): nothing may be booked past the limit;
//! 7. runs a third job with a deadline through the simulator's Batch API, whose batches
//!    expire half-done ([`provider_batch`]): every batch line billed must be booked once.
//!
//! When the job is finished it stops the fleet with SIGTERM and joins the simulator's call
//! log with the ledger ([`verify`]). It passes when no item is lost, none has two final
//! results, no answered call is booked twice, no `local_only` item was booked off its local
//! tier, the job completed, the budgeted team spent nothing past its limit (before and after
//! reconciliation), no process exited on its own and every process exited 0 on SIGTERM.

pub mod budget_race;
pub mod provider_batch;
pub mod redeliver;
pub mod verify;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use secrecy::SecretString;
use serde::Serialize;
use switchyard_proto::{Cascade, Item, Policy, Routing};
use switchyard_runtime::Settings;
use switchyard_runtime::settings::StorageKind;
use switchyard_sim::{Faults, SimConfig, SimHandle};

use switchyard_client::Client;
use switchyard_router::rng::SplitMix64;
use switchyard_testkit::postgres::Postgres;
use switchyard_testkit::procs::Role;
use switchyard_testkit::server::NatsServer;
use verify::Accounting;

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// Items of the job (at least 5,000 for a run that counts).
    pub items: usize,
    /// Worker kills spread over the job.
    pub worker_kills: usize,
    /// Seed of the schedule and the simulator's faults (default: the clock).
    pub seed: Option<u64>,
    /// Give up (and fail) when the job has not finished by then.
    pub timeout: Duration,
    /// Keep the temporary folder (logs, data) even when the run passes.
    pub keep: bool,
}

impl Default for ChaosOptions {
    fn default() -> Self {
        Self {
            items: 5000,
            worker_kills: 6,
            seed: None,
            timeout: Duration::from_secs(240),
            keep: false,
        }
    }
}

/// One process killed on purpose.
#[derive(Debug, Clone, Serialize)]
pub struct Kill {
    /// Seconds since the run started.
    pub at_s: f64,
    pub process: String,
    /// The process's calls the simulator was serving at that moment.
    pub calls_in_flight: u64,
    /// Items finished when it happened.
    pub progress: String,
}

/// The report (`--json` prints it as one object).
#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    /// The books: items, results, calls and ledger rows (see [`verify::Accounting`]).
    #[serde(flatten)]
    pub books: Accounting,
    /// In-doubt and estimated entries settled against the simulator's call log (and billed
    /// calls the ledger lacked, booked from it).
    pub reconciled_calls: u64,
    /// The ledger's total after reconciliation, exact.
    pub ledger_usd: String,
    /// The simulator's bill at the fleet's prices, exact.
    pub bill_usd: String,
    /// `0` when the ledger equals the bill to the last unit.
    pub ledger_minus_bill_usd: String,
    /// Answered attempts published again past the duplicate window (see [`redeliver`]).
    pub redelivered_done: usize,
    /// Calls made for those after they were published again (must be 0).
    pub done_work_called_again: i64,
    pub faults_injected: u64,
    pub elapsed_s: f64,
    /// The job's final status (`completed` when every item has an answer).
    pub job_status: String,
    pub passed: bool,
    /// The budgeted team's race across the PostgreSQL restart.
    pub budget_race: budget_race::BudgetRace,
    /// The job with a deadline, through provider batches that expire half-done.
    pub provider_batch: provider_batch::ProviderBatchRun,
    /// Faults by kind: the simulator's, kills, restarts.
    pub faults: BTreeMap<String, u64>,
    pub kills: Vec<Kill>,
    /// Processes that exited on their own during the run (each was restarted).
    pub unexpected_exits: Vec<String>,
    /// Calls each worker made after nats-server came back (a lane that stopped pulling after
    /// the restart would show 0 here).
    pub worker_calls_after_nats_restart: BTreeMap<String, u64>,
    /// Exit codes of the fleet's processes when stopped with SIGTERM at the end.
    pub sigterm_exit_codes: BTreeMap<String, Option<i32>>,
    /// Exit codes of the workers stopped with SIGTERM mid-job (a rolling restart), in order.
    pub rolled_exit_codes: Vec<(String, Option<i32>)>,
    pub seed: u64,
    /// Where logs and data were kept (only when kept).
    pub kept_dir: Option<String>,
}

/// Something to break, when progress reaches `at` (a fraction of the items).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Event {
    KillWorker,
    /// A worker stopped with SIGTERM and started again (a rolling restart).
    RollWorker,
    RestartNats,
    RestartPostgres,
    /// Answered attempts published again past the duplicate window.
    RedeliverDone,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn log(started: Instant, msg: &str) {
    eprintln!("chaos [{:6.1}s] {msg}", started.elapsed().as_secs_f64());
}

/// The settings every process of the run shares (models point at the simulator; workers get
/// their own client tag in [`worker_settings`]).
fn base_settings(nats: &NatsServer, pg: &Postgres, sim: &SimHandle) -> anyhow::Result<Settings> {
    let mut s = Settings::demo();
    s.nats.url = nats.url.clone();
    s.nats.prefix = "chaos".to_owned();
    s.nats.storage = StorageKind::File;
    s.database.url = SecretString::from(pg.url("switchyard"));
    s.database.max_connections = 6;
    s.dispatcher.ack_wait = Duration::from_secs(10);
    s.dispatcher.max_deliver = 10;
    s.dispatcher.shutdown_grace = Duration::from_secs(5);
    s.worker.concurrency = switchyard_runtime::settings::count(8);
    s.worker.fetch_batch = switchyard_runtime::settings::count(8);
    s.worker.ack_wait = Duration::from_secs(6);
    s.worker.max_deliver = 10;
    s.worker.retry_delay = Duration::from_millis(300);
    s.worker.shutdown_grace = Duration::from_secs(5);
    // A killed worker's calls are taken over (and booked in doubt) after its lease.
    s.finance.reservation_lease = Duration::from_secs(6);
    s.point_models_at(&sim.base_url())?;
    for m in s.models.values_mut() {
        m.timeout = Duration::from_secs(2);
        m.max_retries = 3;
    }
    provider_batch::tune(&mut s);
    Ok(s)
}

fn worker_settings(base: &Settings, sim: &SimHandle, tag: &str) -> anyhow::Result<Settings> {
    let mut s = base.clone();
    s.point_models_at(&sim.base_url_for(tag))?;
    Ok(s)
}

fn write_config(dir: &Path, name: &str, settings: &Settings) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, settings.to_redacted_toml())?;
    Ok(path)
}

/// The simulator's steady faults: about 5% of calls misbehave in some way.
fn provider_faults() -> Faults {
    Faults {
        error_rate: 0.02,
        timeout_rate: 0.004,
        hang: Duration::from_secs(4),
        reset_rate: 0.004,
        malformed_rate: 0.004,
        no_usage_rate: 0.004,
        empty_choices_rate: 0.004,
        trickle_rate: 0.004,
        trickle: Duration::from_millis(600),
        // Odd but complete answers (NUL, lone surrogates, empty, odd usage and shapes, a big
        // body under the worker's answer limit), and response ids repeated from a small pool:
        // each is billed and must be booked once.
        odd_rate: 0.004,
        huge_answer_bytes: 256 * 1024,
        response_id_pool: 64,
        ..Faults::default()
    }
}

/// `n` MMLU items from the bundled data (cycled, with distinct ids), one in 20 `local_only`.
fn chaos_items(n: usize) -> anyhow::Result<Vec<Item>> {
    let data = switchyard_demo::bundled_dataset()?;
    let records: Vec<_> = data.records().filter(|r| r.choices.is_some()).collect();
    anyhow::ensure!(!records.is_empty(), "the bundled data has no MMLU items");
    Ok((0..n)
        .map(|i| {
            let r = records[i % records.len()];
            let mut item = Item::new(format!("{}#{}", r.id, i / records.len()), &r.prompt);
            if i % 20 == 7 {
                item.sensitivity = Some("local_only".to_owned());
            }
            item
        })
        .collect())
}

struct Progress {
    finished: i64,
    items: i64,
    status: String,
}

async fn progress(client: &Client, job_id: &str) -> Option<Progress> {
    let (finished, items): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status IN ('done', 'failed', 'cancelled')), count(*) \
         FROM items WHERE job_id = $1",
    )
    .bind(job_id)
    .fetch_one(&client.pool)
    .await
    .ok()?;
    let status: String = sqlx::query_scalar("SELECT status FROM jobs WHERE job_id = $1")
        .bind(job_id)
        .fetch_optional(&client.pool)
        .await
        .ok()??;
    Some(Progress {
        finished,
        items,
        status,
    })
}

/// Answered attempts the run publishes again past the duplicate window.
const REDELIVERED_DONE: i64 = 200;

/// The run's moving parts.
struct Run {
    started: Instant,
    sim: SimHandle,
    nats: NatsServer,
    pg: Postgres,
    dispatchers: Vec<Role>,
    workers: Vec<Role>,
    kills: Vec<Kill>,
    rolled: Vec<(String, Option<i32>)>,
    faults: BTreeMap<String, u64>,
    unexpected_exits: Vec<String>,
    last_progress: String,
    /// When nats-server came back (Unix ms).
    nats_back_at_ms: Option<u64>,
}

impl Run {
    fn note(&self, msg: &str) {
        log(self.started, msg);
    }

    /// Notes `what` was done, with where the job stood.
    fn note_fault(&self, what: &str) {
        self.note(&format!("{what} ({})", self.last_progress));
    }

    fn count(&mut self, fault: &str) {
        *self.faults.entry(fault.to_owned()).or_default() += 1;
    }

    /// Restarts any process that exited by itself (and records it: it should not happen).
    fn supervise(&mut self) {
        let mut exits = Vec::new();
        for role in self.dispatchers.iter_mut().chain(self.workers.iter_mut()) {
            if let Some(status) = role.exited() {
                exits.push(format!(
                    "{} ({}) exited: {status}",
                    role.name, role.describe
                ));
                let _ = role.start();
            }
        }
        for e in exits {
            self.note(&format!("{e}; restarted"));
            self.unexpected_exits.push(e);
        }
    }

    async fn kill_worker(&mut self, rng: &mut SplitMix64) {
        let i = rng.below(self.workers.len());
        let tag = self.workers[i].name.clone();
        let in_flight = self.sim.in_flight(&tag);
        let describe = format!("worker {tag} ({})", self.workers[i].describe);
        self.workers[i].kill9();
        self.note_fault(&format!("kill -9 {describe}: {in_flight} calls in flight"));
        self.kills.push(Kill {
            at_s: self.started.elapsed().as_secs_f64(),
            process: describe,
            calls_in_flight: in_flight,
            progress: self.last_progress.clone(),
        });
        self.count("worker_kill");
        tokio::time::sleep(Duration::from_secs_f64(rng.range(0.3, 2.0))).await;
        if let Err(e) = self.workers[i].start() {
            self.note(&format!("cannot restart worker {tag}: {e:#}"));
        }
    }

    /// Stops a random worker with SIGTERM, as a rolling restart does, waits for it to exit
    /// (its grace period and its drain) and starts it again.
    async fn roll_worker(&mut self, rng: &mut SplitMix64) {
        let i = rng.below(self.workers.len());
        let tag = self.workers[i].name.clone();
        let in_flight = self.sim.in_flight(&tag);
        let describe = format!("worker {tag} ({})", self.workers[i].describe);
        let code = self.workers[i].terminate(Duration::from_secs(30)).await;
        self.note_fault(&format!(
            "SIGTERM {describe} (a rolling restart): {in_flight} calls in flight, exited {code:?}"
        ));
        self.rolled.push((tag.clone(), code));
        self.count("worker_sigterm");
        if let Err(e) = self.workers[i].start() {
            self.note(&format!("cannot restart worker {tag}: {e:#}"));
        }
    }

    async fn restart_nats(&mut self) -> anyhow::Result<()> {
        self.note_fault("kill -9 nats-server, then start it again");
        self.nats.restart().await?;
        self.count("nats_restart");
        self.nats_back_at_ms = Some(unix_ms());
        self.note("nats-server is back");
        Ok(())
    }

    async fn restart_postgres(&mut self) -> anyhow::Result<()> {
        self.note_fault("restart PostgreSQL (-m immediate)");
        self.pg.restart().await?;
        self.count("postgres_restart");
        self.note("PostgreSQL is back");
        Ok(())
    }
}

/// Runs the whole scenario and returns its report.
///
/// # Errors
/// When the run's own services or processes cannot be set up (a failed invariant is a
/// report with `passed: false`, not an error).
pub async fn run(opts: &ChaosOptions) -> anyhow::Result<ChaosReport> {
    let started = Instant::now();
    let seed = opts.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut rng = SplitMix64::new(seed);
    let dir = tempfile::Builder::new()
        .prefix("switchyard-chaos-")
        .tempdir()
        .context("cannot create a temporary folder")?;
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    log(
        started,
        &format!(
            "seed {seed}, {} items, logs in {}",
            opts.items,
            logs.display()
        ),
    );

    let nats = NatsServer::start(dir.path()).await?;
    let pg = Postgres::start(dir.path()).await?;
    log(
        started,
        &format!(
            "nats-server on :{} and PostgreSQL on :{} (data in {})",
            nats.port,
            pg.port,
            dir.path().display()
        ),
    );
    let data = Arc::new(switchyard_demo::bundled_dataset()?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim = switchyard_sim::start(
        listener,
        data,
        SimConfig {
            latency: Duration::from_millis(200),
            latency_jitter: Duration::from_millis(100),
            seed,
            faults: provider_faults(),
            batch_delay: Duration::from_secs(1),
            batch_expire_after_lines: Some(provider_batch::EXPIRE_AFTER),
            ..SimConfig::default()
        },
    )
    .await?;

    let settings = base_settings(&nats, &pg, &sim)?;
    settings.validate()?;
    let client = Client::connect(settings.clone())
        .await
        .context("cannot set up the run's streams and database")?;
    budget_race::set_budget(&client).await?;
    provider_batch::set_prices(&client, &settings).await?;
    let env = vec![
        ("NATS_URL".to_owned(), settings.nats.url.clone()),
        (
            "DATABASE_URL".to_owned(),
            settings.database_url().to_owned(),
        ),
        (
            "RUST_LOG".to_owned(),
            "info,sqlx=warn,async_nats=warn".to_owned(),
        ),
    ];
    let dispatcher_config = write_config(dir.path(), "dispatcher", &settings)?;
    let dispatchers = (0..2)
        .map(|i| {
            Role::new(
                &format!("d{i}"),
                "dispatcher",
                &["dispatcher"],
                dispatcher_config.clone(),
                Some(&logs),
                env.clone(),
            )
        })
        .collect::<Vec<_>>();
    let mut workers = Vec::new();
    for (i, tiers) in ["weak", "weak", "strong,local", "strong,local"]
        .iter()
        .enumerate()
    {
        let tag = format!("w{i}");
        let config = write_config(dir.path(), &tag, &worker_settings(&settings, &sim, &tag)?)?;
        workers.push(Role::new(
            &tag,
            tiers,
            &["worker", "--tier", tiers],
            config,
            Some(&logs),
            env.clone(),
        ));
    }
    let mut run = Run {
        started,
        sim,
        nats,
        pg,
        dispatchers,
        workers,
        kills: Vec::new(),
        rolled: Vec::new(),
        faults: BTreeMap::new(),
        unexpected_exits: Vec::new(),
        last_progress: "0 items finished".to_owned(),
        nats_back_at_ms: None,
    };
    run.dispatchers[0].start()?;
    for w in &mut run.workers {
        w.start()?;
    }

    // The job.
    let task = switchyard_demo::mmlu_task();
    let mut spec = switchyard_client::new_job(task.clone(), chaos_items(opts.items)?);
    spec.team = Some("chaos".to_owned());
    spec.project = Some("reliability".to_owned());
    spec.policy = Policy {
        routing: Routing::StrongShare { value: 0.1 },
        cascade: Cascade {
            confidence_threshold: Some(0.8),
            max_escalations: Some(1),
        },
        ..Policy::default()
    };
    let job_id = client.submit(spec).await?;
    run.note(&format!(
        "job {job_id} submitted ({} items) to dispatcher d0",
        opts.items
    ));
    let mut nightly_items = chaos_items(provider_batch::ITEMS)?;
    for item in &mut nightly_items {
        item.sensitivity = None;
    }
    let nightly = match provider_batch::start(&client, task.clone(), nightly_items).await {
        Ok(id) => {
            run.note(&format!(
                "job {id} submitted ({} items, a day's deadline: through provider batches \
                 that expire after {} lines)",
                provider_batch::ITEMS,
                provider_batch::EXPIRE_AFTER
            ));
            Ok(id)
        }
        Err(e) => Err(format!("the job with a deadline could not start: {e:#}")),
    };

    // 1. The dispatcher dies while it holds the job; d1 joins, then d0 comes back.
    let deadline = started + opts.timeout;
    loop {
        match progress(&client, &job_id).await {
            Some(p) if p.status != "ingesting" || p.items > 0 => {
                run.last_progress = format!("job {} with {} items stored", p.status, p.items);
                break;
            }
            _ if Instant::now() > deadline => break,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    run.dispatchers[0].kill9();
    run.note_fault("kill -9 dispatcher d0 while it dispatches");
    run.kills.push(Kill {
        at_s: started.elapsed().as_secs_f64(),
        process: "dispatcher d0".to_owned(),
        calls_in_flight: 0,
        progress: run.last_progress.clone(),
    });
    run.count("dispatcher_kill");
    run.dispatchers[1].start()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    run.dispatchers[0].start()?;

    // 2-3. Breakage as the job progresses.
    let mut events: Vec<(f64, Event)> = (0..opts.worker_kills)
        .map(|_| (rng.range(0.05, 0.9), Event::KillWorker))
        .collect();
    events.push((rng.range(0.1, 0.8), Event::RollWorker));
    events.push((rng.range(0.25, 0.45), Event::RestartNats));
    events.push((rng.range(0.55, 0.75), Event::RestartPostgres));
    events.push((rng.range(0.4, 0.6), Event::RedeliverDone));
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut next = 0;
    let mut final_status = String::new();
    let mut again = redeliver::Redelivered::default();
    let mut race: Option<(String, i64)> = None;
    let mut race_not_started = "the race never started (PostgreSQL was not restarted)".to_owned();
    while Instant::now() < deadline {
        run.supervise();
        if let Some(p) = progress(&client, &job_id).await {
            run.last_progress = format!("{}/{} items finished", p.finished, p.items);
            if switchyard_store::jobs::status::is_final(&p.status) {
                final_status = p.status;
                break;
            }
            let fraction = if p.items > 0 && p.status == "running" {
                p.finished as f64 / p.items as f64
            } else {
                0.0
            };
            if let Some((at, event)) = events.get(next).copied()
                && fraction >= at
            {
                next += 1;
                match event {
                    Event::KillWorker => run.kill_worker(&mut rng).await,
                    Event::RollWorker => run.roll_worker(&mut rng).await,
                    Event::RestartNats => run.restart_nats().await?,
                    Event::RestartPostgres => {
                        let mut items = chaos_items(budget_race::ITEMS)?;
                        for item in &mut items {
                            item.sensitivity = None;
                        }
                        // No huge answers while the race runs: one is billed past its
                        // `max_tokens`, so it spends more than any hold and ends the race
                        // at once (the race is then over, not checked to the cent); the
                        // main job meets them before (they are back once the race is read).
                        run.sim.set_faults(Faults {
                            odd_huge: false,
                            ..run.sim.faults()
                        });
                        // A submit that fails is noted and fails the race, not the run:
                        // the restart and the rest of the checks still happen.
                        match budget_race::start(
                            &client,
                            task.clone(),
                            items,
                            Duration::from_secs(20),
                        )
                        .await
                        {
                            Ok((id, holds)) => {
                                run.note(&format!(
                                    "team {} submitted job {id} ({} items, all strong) against \
                                     its {} USD hard budget; {holds} holds live",
                                    budget_race::TEAM,
                                    budget_race::ITEMS,
                                    budget_race::LIMIT_USD
                                ));
                                race = Some((id, holds));
                            }
                            Err(e) => {
                                race_not_started = format!("the race could not start: {e:#}");
                                run.note(&race_not_started);
                            }
                        }
                        run.restart_postgres().await?;
                    }
                    Event::RedeliverDone => {
                        // A fault here (NATS or Postgres restarting) is noted, not fatal:
                        // the copies that went out are still checked.
                        match redeliver::publish_done_again(
                            &client,
                            &job_id,
                            &task,
                            REDELIVERED_DONE,
                        )
                        .await
                        {
                            Ok(published) => again = published,
                            Err(e) => again.stopped = Some(format!("{e:#}")),
                        }
                        run.note(&format!(
                            "published {} answered attempts again, past the duplicate window \
                             ({}){}",
                            again.attempts.len(),
                            run.last_progress,
                            again
                                .stopped
                                .as_deref()
                                .map(|e| format!("; stopped early: {e}"))
                                .unwrap_or_default()
                        ));
                        run.count("done_work_redelivered");
                    }
                }
                continue;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if final_status.is_empty() {
        run.note(&format!(
            "the job did not finish within {:?} ({})",
            opts.timeout, run.last_progress
        ));
        final_status = progress(&client, &job_id)
            .await
            .map_or_else(|| "unknown".to_owned(), |p| p.status);
    } else {
        run.note(&format!("job {final_status} ({})", run.last_progress));
    }

    // The budget race must be quiet (each of its items answered or parked, no hold left)
    // before the fleet stops: its books are read while nothing moves.
    let mut race_books = match &race {
        Some((id, holds)) => {
            let quiet = budget_race::wait_quiet(
                &client,
                id,
                budget_race::ITEMS as i64,
                Duration::from_secs(60),
            )
            .await;
            let books = budget_race::books(&client, id, *holds, quiet).await?;
            run.sim.set_faults(provider_faults());
            books
        }
        None => budget_race::BudgetRace::not_started(race_not_started),
    };
    run.note(&format!(
        "budget race: {} USD spent of {}, {} answered, {} waiting, {} in doubt{}",
        race_books.spent_usd,
        race_books.limit_usd,
        race_books.answered,
        race_books.waiting,
        race_books.in_doubt_calls,
        if race_books.holds() {
            String::new()
        } else {
            format!("; {}", race_books.problems.join("; "))
        }
    ));

    // The job with a deadline: its batches still running are waited for (bounded).
    if let Ok(id) = &nightly
        && !provider_batch::wait_final(&client, id, Duration::from_secs(120)).await
    {
        run.note(&format!(
            "the job with a deadline {id} did not finish in time"
        ));
    }

    // Stop the fleet the way an orchestrator does, then do the books.
    let mut sigterm_exit_codes = BTreeMap::new();
    for role in run.dispatchers.iter_mut().chain(run.workers.iter_mut()) {
        let code = role.terminate(Duration::from_secs(30)).await;
        sigterm_exit_codes.insert(role.name.clone(), code);
    }
    let calls = run.sim.calls();
    for c in &calls {
        if let Some(f) = &c.fault {
            *run.faults.entry(format!("provider_{f}")).or_default() += 1;
        }
    }
    let mut worker_calls_after_nats_restart: BTreeMap<String, u64> =
        run.workers.iter().map(|w| (w.name.clone(), 0)).collect();
    if let Some(back) = run.nats_back_at_ms {
        for c in calls.iter().filter(|c| c.unix_ms > back) {
            if let Some(n) = c
                .client
                .as_ref()
                .and_then(|t| worker_calls_after_nats_restart.get_mut(t))
            {
                *n += 1;
            }
        }
    }
    let local_tiers: Vec<String> = settings
        .tiers
        .iter()
        .filter(|(_, t)| t.local)
        .map(|(n, _)| n.clone())
        .collect();
    // Every job of the run calls the one simulator: the ledger side of the join is theirs.
    let ledger_jobs: Vec<String> = std::iter::once(job_id.clone())
        .chain(race.iter().map(|(id, _)| id.clone()))
        .chain(nightly.iter().cloned())
        .collect();
    let nightly_books = match &nightly {
        Ok(id) => provider_batch::books(&client, id, &calls).await?,
        Err(why) => provider_batch::ProviderBatchRun::not_started(why.clone()),
    };
    let books = verify::account(&client.pool, &job_id, &ledger_jobs, &calls, &local_tiers).await?;
    // The finance side: settle what was booked in doubt against the provider's call log,
    // then the ledger must equal the provider's bill exactly.
    let prices: BTreeMap<String, switchyard_sim::ModelPrice> = settings
        .models
        .keys()
        .filter_map(|m| {
            settings.price_of(m).map(|p| {
                (
                    m.clone(),
                    switchyard_sim::ModelPrice {
                        input_usd_per_mtok: p.input_usd_per_mtok,
                        output_usd_per_mtok: p.output_usd_per_mtok,
                        batch_discount: if settings.models.get(m).is_some_and(|x| x.batch) {
                            provider_batch::BATCH_DISCOUNT
                        } else {
                            rust_decimal::Decimal::ZERO
                        },
                        ..Default::default()
                    },
                )
            })
        })
        .collect();
    let bill = verify::reconcile_and_bill(&client.pool, &calls, &prices).await?;
    if race.is_some() {
        let beyond = budget_race::billed_past_max_tokens(
            &client,
            &calls,
            &prices,
            u32::try_from(provider_faults().huge_answer_bytes.div_ceil(4)).unwrap_or(u32::MAX),
        )
        .await?;
        budget_race::check_spend(&client, &mut race_books, beyond).await?;
    }
    let done_work_called_again = redeliver::booked_again(&client, &job_id, &again).await?;
    if done_work_called_again > 0 {
        run.note(&format!(
            "{done_work_called_again} calls were made again for answered attempts published again"
        ));
    }
    if !bill.balances() {
        run.note(&format!(
            "the ledger ({} USD) does not equal the bill ({} USD); unpriced models: {:?}; \
             by model: {:?}",
            bill.ledger_usd, bill.bill_usd, bill.unpriced_models, bill.mismatches
        ));
    }
    client.pool.close().await;
    // After reconciliation the ledger must equal the provider's bill to the last unit. (Its
    // first runs found the ledger short by exactly 65,536 completion tokens of one model: the
    // simulator billed its huge odd answer's tokens but left them out of the answer's usage.
    // A provider bills what its usage says; the simulator now does the same.)
    let passed = books.holds()
        && final_status == "completed"
        && books.items == opts.items as i64
        && done_work_called_again == 0
        && bill.balances()
        && race_books.holds()
        && nightly_books.holds()
        && run.unexpected_exits.is_empty()
        && sigterm_exit_codes.values().all(|c| *c == Some(0))
        && run.rolled.iter().all(|(_, c)| *c == Some(0));
    let kept_dir = if opts.keep || !passed {
        let path = dir.keep();
        eprintln!("chaos: logs and data kept in {}", path.display());
        Some(path.display().to_string())
    } else {
        None
    };
    let report = ChaosReport {
        books,
        reconciled_calls: bill.reconciled_calls,
        ledger_usd: bill.ledger_usd,
        bill_usd: bill.bill_usd,
        ledger_minus_bill_usd: bill.ledger_minus_bill_usd,
        redelivered_done: again.attempts.len(),
        done_work_called_again,
        faults_injected: run.faults.values().sum(),
        elapsed_s: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        job_status: final_status,
        passed,
        budget_race: race_books,
        provider_batch: nightly_books,
        faults: run.faults.clone(),
        kills: run.kills.clone(),
        unexpected_exits: run.unexpected_exits.clone(),
        worker_calls_after_nats_restart,
        sigterm_exit_codes,
        rolled_exit_codes: run.rolled.clone(),
        seed,
        kept_dir,
    };
    run.sim.shutdown().await;
    drop(run.pg);
    drop(run.nats);
    Ok(report)
}

/// The report as text.
pub fn render(r: &ChaosReport) -> String {
    let mut out = format!(
        "{} in {:.1}s: {} items, {} with one final result, {} lost, {} duplicated, {} failed\n\
         calls: {} billed by the simulator, {} ledger rows, {} double charged, {} unbooked, \
         {} in doubt (in flight in killed workers), {} duplicates, {} retried after a \
         redelivery\n\
         books: {} entries reconciled against the call log; ledger {} USD, bill {} USD, \
         ledger - bill {} USD\n\
         done work delivered again: {} attempts, {} called again\n\
         budget race across the PostgreSQL restart: limit {} USD, spent {} USD ({} after \
         reconciliation), overspend {} USD ({} USD billed past max_tokens), {} holds live at \
         the restart, {} answered, {} waiting, {} in doubt\n\
         faults injected: {}\n",
        if r.passed { "PASSED" } else { "FAILED" },
        r.elapsed_s,
        r.books.items,
        r.books.final_results,
        r.books.lost,
        r.books.duplicated_results,
        r.books.failed_items,
        r.books.sim_calls,
        r.books.ledger_rows,
        r.books.double_charged,
        r.books.unbooked_calls,
        r.books.in_doubt_calls,
        r.books.duplicate_calls,
        r.books.retry_calls,
        r.reconciled_calls,
        r.ledger_usd,
        r.bill_usd,
        r.ledger_minus_bill_usd,
        r.redelivered_done,
        r.done_work_called_again,
        r.budget_race.limit_usd,
        r.budget_race.spent_usd,
        r.budget_race.spent_after_reconcile_usd,
        r.budget_race.overspend_usd,
        r.budget_race.billed_past_max_tokens_usd,
        r.budget_race.holds_at_restart,
        r.budget_race.answered,
        r.budget_race.waiting,
        r.budget_race.in_doubt_calls,
        r.faults_injected,
    );
    for p in &r.budget_race.problems {
        out.push_str(&format!("  budget race: {p}\n"));
    }
    let pb = &r.provider_batch;
    out.push_str(&format!(
        "job with a deadline: {} ({} of {} items done), {} provider batches, {} lines \
         booked, {} sent back (expired), {} open; {} batch lines billed, {} ledger batch rows\n",
        pb.job_status,
        pb.done,
        pb.items,
        pb.batches,
        pb.lines_booked,
        pb.lines_returned,
        pb.lines_open,
        pb.lines_billed,
        pb.batch_ledger_rows
    ));
    for p in &pb.problems {
        out.push_str(&format!("  job with a deadline: {p}\n"));
    }
    for (k, v) in &r.faults {
        out.push_str(&format!("  {k}: {v}\n"));
    }
    for k in &r.kills {
        out.push_str(&format!(
            "  kill at {:.1}s: {} with {} calls in flight ({})\n",
            k.at_s, k.process, k.calls_in_flight, k.progress
        ));
    }
    for (worker, code) in &r.rolled_exit_codes {
        out.push_str(&format!(
            "  rolling restart: {worker} exited {code:?} on SIGTERM mid-job\n"
        ));
    }
    for e in &r.unexpected_exits {
        out.push_str(&format!("  unexpected exit: {e}\n"));
    }
    out
}
