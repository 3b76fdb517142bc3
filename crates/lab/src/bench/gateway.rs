//! `switchyard bench-gateway`: the latency a gateway adds to each model call, and the calls/s
//! it sustains, against calling the model directly.
//!
//! The same requests go to the model simulator three ways:
//!
//! 1. **direct**: HTTP to the simulator;
//! 2. **fleet**: one single-item job per call through the fleet's full path, as separate
//!    `dispatcher` and `worker` processes on a database and stream prefix of their own: the job
//!    published on NATS, admitted, routed and published to its tier by the dispatcher, the
//!    worker's rate-limited HTTP call, the result and ledger row committed in Postgres, the job
//!    marked completed. A call's latency runs from just before `Client::submit` to the receipt
//!    of the job's `<prefix>.events.<job>` progress event, which the worker publishes right
//!    after the transaction that books the result and the ledger row has committed (and the
//!    work message is acked);
//! 3. **litellm**: HTTP to a LiteLLM proxy (started by `scripts/compare-gateways.sh`) whose
//!    model points at the same simulator.
//!
//! Each path runs closed loops of 1, 8 and 32 concurrent callers: a warm-up, then at least
//! `--calls` calls and `--min-time`, at most `--max-time`. The added latency of a path is its
//! percentile minus the direct path's same percentile at the same concurrency; the headline is
//! at concurrency 1, where no call waits for another. The direct and LiteLLM bodies are the one
//! the fleet's worker sends for the item (same model, messages, `max_tokens`, `temperature`,
//! `logprobs`), built with the same functions.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use switchyard_proto::event::JobEvent;
use switchyard_proto::{Item, Routing, Task, codec};
use switchyard_runtime::Settings;
use switchyard_runtime::settings::StorageKind;
use tokio::sync::oneshot;

use super::env::{self, BenchEnv};
use super::procs::{Role, spawn_role, write_config};
use switchyard_client::{Client, new_job};

/// Arguments of `switchyard bench-gateway`.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// The simulator's OpenAI base URL (`http://127.0.0.1:PORT/v1`). Default: a simulator at
    /// zero latency started in this process.
    #[arg(long)]
    pub sim_url: Option<String>,
    /// LiteLLM proxy base URL (`http://127.0.0.1:PORT`); without it the LiteLLM path is skipped.
    #[arg(long)]
    pub litellm_url: Option<String>,
    /// LiteLLM's master key (sent as a bearer token).
    #[arg(long, env = "LITELLM_MASTER_KEY", hide_env_values = true)]
    pub litellm_key: Option<String>,
    /// How that LiteLLM proxy was set up, for the report (e.g. `postgres spend logs`).
    #[arg(long, default_value = "unspecified")]
    pub litellm_setup: String,
    /// Concurrency levels (closed-loop callers).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8, 32])]
    pub concurrency: Vec<usize>,
    /// Measured calls per path and level (at least; see --max-time).
    #[arg(long, default_value_t = 2000)]
    pub calls: usize,
    /// Measure each path and level for at least this long.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub min_time: Duration,
    /// … and at most this long, even if fewer than --calls calls were made.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub max_time: Duration,
    /// Warm-up before each measurement (not counted).
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub warmup: Duration,
    /// The model's quota in the fleet (requests/min): the worker's limiter is in the path,
    /// set high enough not to bind.
    #[arg(long, default_value_t = 600_000)]
    pub fleet_rpm: u32,
    /// Override `[worker] commit_interval` (default: the configuration's, 20ms unless set).
    #[arg(long, value_parser = parse_duration)]
    pub fleet_commit_interval: Option<Duration>,
    /// Dispatcher processes of the fleet.
    #[arg(long, default_value_t = 1)]
    pub dispatchers: usize,
    /// Worker processes of the fleet.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Only these paths (fleet, litellm; direct, the baseline, always runs); repeat or
    /// comma-separate.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration like 5s: {e}"))
}

/// One path at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct Level {
    pub path: String,
    pub concurrency: usize,
    /// Calls answered during the measurement.
    pub calls: usize,
    pub errors: usize,
    pub seconds: f64,
    pub calls_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// This path's p50 minus the direct path's at the same concurrency.
    pub added_p50_ms: Option<f64>,
    pub added_p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Fleet only: where the time went, from the database's timestamps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_stages: Option<FleetStages>,
    /// When the measurement (after the warm-up) started and ended.
    #[serde(skip)]
    window: Option<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)>,
}

/// Medians, each taken separately, of the stages of the measured single-item jobs, from the
/// timestamps Postgres wrote (transaction start times), in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct FleetStages {
    /// Job row admitted → job marked running, which the dispatcher does after routing,
    /// storing and publishing the item.
    pub dispatch_ms: f64,
    /// Job row admitted → the worker's booking transaction starts: dispatch, delivery to the
    /// worker, quota, the HTTP call, and the wait for the commit batch to fill or its
    /// interval to pass. The rest of a call's latency is the client's submission, JetStream's
    /// delivery to the dispatcher, the booking transaction itself, the ack and the event.
    pub admitted_to_booking_ms: f64,
    /// The HTTP call, as the worker timed it (the ledger's `latency_ms`, whole milliseconds).
    pub http_call_ms: f64,
}

/// The goals the gateway comparison is held to (docs/gateway-comparison.md).
#[derive(Debug, Clone, Serialize)]
pub struct Goals {
    /// Fleet's added latency at concurrency 1 over LiteLLM's (p50, p99); goal ≤ 0.1.
    pub added_ratio_p50: Option<f64>,
    pub added_ratio_p99: Option<f64>,
    pub latency_met: Option<bool>,
    /// Per concurrency: fleet calls/s > LiteLLM calls/s.
    pub throughput_met: Vec<(usize, bool)>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayReport {
    pub model: String,
    pub litellm_setup: Option<String>,
    pub levels: Vec<Level>,
    pub goals: Goals,
    /// Single-item jobs the fleet completed (warm-ups included) and ledger rows it booked.
    pub fleet_jobs_completed: Option<u64>,
    pub fleet_ledger_rows: Option<i64>,
    pub fleet_commit_interval_ms: f64,
    pub fleet_dispatchers: usize,
    pub fleet_workers: usize,
    pub cores: usize,
    pub versions: std::collections::BTreeMap<String, String>,
}

/// One call in flight: its latency when it succeeded.
type CallFuture = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<Duration>> + Send>>;

/// Makes call number `i` (the prompt is `i` modulo the prompts).
type Caller = Arc<dyn Fn(usize) -> CallFuture + Send + Sync>;

/// What a measurement run is bounded by.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    calls: usize,
    min_time: Duration,
    max_time: Duration,
}

struct Measured {
    latencies: Vec<Duration>,
    errors: usize,
    elapsed: Duration,
    first_error: Option<String>,
}

/// Runs `call(i)` in `concurrency` closed loops until the bounds say stop; every call in
/// flight then finishes and is counted.
async fn drive(call: Caller, concurrency: usize, bounds: Bounds) -> Measured {
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (call, stop, next, answered) = (
            Arc::clone(&call),
            Arc::clone(&stop),
            Arc::clone(&next),
            Arc::clone(&answered),
        );
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut first_error = None;
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                match call(i).await {
                    Ok(d) => {
                        latencies.push(d);
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                        // A failing path must not spin.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (latencies, errors, first_error)
        });
    }
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let t = started.elapsed();
        if (answered.load(Ordering::Relaxed) >= bounds.calls && t >= bounds.min_time)
            || t >= bounds.max_time
        {
            stop.store(true, Ordering::Relaxed);
            break;
        }
    }
    let mut out = Measured {
        latencies: Vec::new(),
        errors: 0,
        elapsed: Duration::ZERO,
        first_error: None,
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((l, e, first)) => {
                out.latencies.extend(l);
                out.errors += e;
                if out.first_error.is_none() {
                    out.first_error = first;
                }
            }
            Err(e) => {
                out.errors += 1;
                out.first_error
                    .get_or_insert_with(|| format!("caller task: {e}"));
            }
        }
    }
    out.elapsed = started.elapsed();
    out
}

/// The `q` quantile (nearest rank) of sorted latencies, in milliseconds.
fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e3
}

fn level(path: &str, concurrency: usize, m: Measured) -> Level {
    let mut l = m.latencies;
    l.sort_unstable();
    let secs = m.elapsed.as_secs_f64();
    Level {
        path: path.to_owned(),
        concurrency,
        calls: l.len(),
        errors: m.errors,
        seconds: secs,
        calls_per_s: if secs > 0.0 {
            l.len() as f64 / secs
        } else {
            0.0
        },
        p50_ms: quantile_ms(&l, 0.50),
        p90_ms: quantile_ms(&l, 0.90),
        p99_ms: quantile_ms(&l, 0.99),
        max_ms: l.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
        added_p50_ms: None,
        added_p99_ms: None,
        first_error: m.first_error,
        fleet_stages: None,
        window: None,
    }
}

/// Warm-up, then measurement, of one path at one concurrency.
async fn measure(
    path: &str,
    call: Caller,
    concurrency: usize,
    args: &GatewayArgs,
) -> anyhow::Result<Level> {
    let warm = drive(
        Arc::clone(&call),
        concurrency,
        Bounds {
            calls: 0,
            min_time: args.warmup,
            max_time: args.warmup,
        },
    )
    .await;
    anyhow::ensure!(
        !warm.latencies.is_empty(),
        "{path}: no call succeeded during the warm-up: {}",
        warm.first_error.unwrap_or_default()
    );
    let from = chrono::Utc::now();
    let m = drive(
        call,
        concurrency,
        Bounds {
            calls: args.calls,
            min_time: args.min_time,
            max_time: args.max_time,
        },
    )
    .await;
    let mut l = level(path, concurrency, m);
    l.window = Some((from, chrono::Utc::now()));
    eprintln!(
        "gateway: {path:<8} c={concurrency:<3} {:>6} calls {:>4} errors {:>9.1} calls/s  p50 {:.3} ms  p99 {:.3} ms",
        l.calls, l.errors, l.calls_per_s, l.p50_ms, l.p99_ms
    );
    anyhow::ensure!(
        l.calls > 0,
        "{path}: no call succeeded: {}",
        l.first_error.clone().unwrap_or_default()
    );
    Ok(l)
}

/// The bundled MMLU prompts, the items every path sends.
fn prompts() -> anyhow::Result<Arc<Vec<String>>> {
    Ok(Arc::new(super::dispatch::bundled_prompts()?))
}

fn task() -> Task {
    switchyard_demo::mmlu_task()
}

/// The chat-completions bodies the fleet's worker sends for these prompts (see
/// `worker/src/lane.rs` and `worker/src/llm/openai.rs`).
fn bodies(settings: &Settings, model: &str, prompts: &[String]) -> anyhow::Result<Vec<Bytes>> {
    let m = settings
        .models
        .get(model)
        .with_context(|| format!("model `{model}` is not configured"))?;
    let task = task();
    prompts
        .iter()
        .map(|text| {
            let messages: Vec<serde_json::Value> =
                switchyard_core::prompt::messages_for(&task, text)
                    .into_iter()
                    .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
                    .collect();
            let mut body = serde_json::json!({
                "model": model,
                "messages": messages,
                "max_tokens": switchyard_core::prompt::max_tokens_for(&task, m.generate_max_tokens),
                "temperature": 0,
            });
            if m.logprobs {
                body["logprobs"] = serde_json::json!(true);
                body["top_logprobs"] = serde_json::json!(5);
            }
            Ok(Bytes::from(serde_json::to_vec(&body)?))
        })
        .collect()
}

/// A chat-completions caller over HTTP (direct or through LiteLLM): the latency of a call
/// that answered 200 with a choice.
fn http_caller(
    url: String,
    bearer: Option<String>,
    bodies: Arc<Vec<Bytes>>,
) -> anyhow::Result<Caller> {
    let http = switchyard_worker::llm::openai::http_client()?;
    let url: Arc<str> = url.into();
    let auth: Option<Arc<str>> = bearer.map(|k| format!("Bearer {k}").into());
    Ok(Arc::new(move |i: usize| {
        let (http, url, auth) = (http.clone(), Arc::clone(&url), auth.clone());
        let body = bodies[i % bodies.len()].clone();
        Box::pin(async move {
            let mut req = http
                .post(&*url)
                .header("content-type", "application/json")
                .timeout(Duration::from_secs(60))
                .body(body);
            if let Some(a) = auth.as_deref() {
                req = req.header("authorization", a);
            }
            let started = Instant::now();
            let resp = req.send().await?;
            let status = resp.status();
            let bytes = resp.bytes().await?;
            let elapsed = started.elapsed();
            anyhow::ensure!(
                status.is_success(),
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
                    .chars()
                    .take(200)
                    .collect::<String>()
            );
            let v: serde_json::Value = serde_json::from_slice(&bytes)?;
            anyhow::ensure!(
                v["choices"][0]["message"]["content"].is_string(),
                "no choice in the answer"
            );
            Ok(elapsed)
        }) as CallFuture
    }))
}

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<(Instant, String)>>>>;

/// The fleet, as processes, on a database and prefix of its own.
struct FleetUnderTest {
    env: BenchEnv,
    client: Client,
    waiters: Waiters,
    listener: tokio::task::JoinHandle<()>,
    roles: Vec<Role>,
    _dir: tempfile::TempDir,
}

impl FleetUnderTest {
    async fn start(base: &Settings, sim_url: &str, args: &GatewayArgs) -> anyhow::Result<Self> {
        let env = BenchEnv::new(base, StorageKind::File)?;
        match Self::start_in(env, sim_url, args).await {
            Ok(f) => Ok(f),
            Err((env, e)) => {
                env.cleanup().await;
                Err(e)
            }
        }
    }

    async fn start_in(
        mut env: BenchEnv,
        sim_url: &str,
        args: &GatewayArgs,
    ) -> Result<Self, (BenchEnv, anyhow::Error)> {
        let rpm = std::num::NonZeroU32::new(args.fleet_rpm.max(1));
        if let Err(e) = env.settings.point_models_at(sim_url) {
            return Err((env, anyhow::anyhow!("--sim-url `{sim_url}`: {e}")));
        }
        for m in env.settings.models.values_mut() {
            m.rpm = rpm;
        }
        if let Some(ci) = args.fleet_commit_interval {
            env.settings.worker.commit_interval = ci;
        }
        let started = async {
            let client = Client::connect(env.settings.clone()).await?;
            let dir = tempfile::tempdir()?;
            let config = write_config(&env.settings, dir.path())?;
            let mut roles = Vec::new();
            for _ in 0..args.dispatchers.max(1) {
                roles.push(spawn_role(&env.settings, &config, &["dispatcher"])?);
            }
            let tiers = env
                .settings
                .tiers
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(",");
            for _ in 0..args.workers.max(1) {
                roles.push(spawn_role(
                    &env.settings,
                    &config,
                    &["worker", "--tier", &tiers],
                )?);
            }
            let waiters: Waiters = Arc::default();
            // The worker announces each job's progress on `<p>.events.<job>` right after the
            // transaction that books its results and ledger rows commits. (Not the job's
            // `jobs.done` announcement: when the worker answers before the dispatcher has
            // marked the job running, the dispatcher completes the job without one.)
            let mut done = client
                .nats
                .subscribe(format!("{}.events.*", env.settings.nats.prefix))
                .await?;
            let listener = {
                let waiters = Arc::clone(&waiters);
                tokio::spawn(async move {
                    while let Some(msg) = done.next().await {
                        let at = Instant::now();
                        if let Ok(ev) = codec::decode::<JobEvent>(&msg.payload)
                            && ev.kind == "progress"
                            && ev.finished > 0
                        {
                            let tx = waiters
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .remove(&ev.job_id);
                            if let Some(tx) = tx {
                                let _ = tx.send((at, ev.kind));
                            }
                        }
                    }
                })
            };
            anyhow::Ok((client, waiters, listener, roles, dir))
        }
        .await;
        match started {
            Ok((client, waiters, listener, roles, dir)) => Ok(Self {
                env,
                client,
                waiters,
                listener,
                roles,
                _dir: dir,
            }),
            Err(e) => Err((env, e)),
        }
    }

    /// A caller submitting one single-item job per call and waiting for its announcement.
    fn caller(&self, prompts: Arc<Vec<String>>) -> Caller {
        let client = self.client.clone();
        let waiters = Arc::clone(&self.waiters);
        Arc::new(move |i: usize| {
            let (client, waiters) = (client.clone(), Arc::clone(&waiters));
            let text = prompts[i % prompts.len()].clone();
            Box::pin(async move {
                let mut spec = new_job(task(), vec![Item::new("q", text)]);
                spec.policy.routing = Routing::StrongShare { value: 0.0 };
                spec.policy.cascade.max_escalations = Some(0);
                let job_id = spec.job_id.clone();
                let (tx, rx) = oneshot::channel();
                waiters
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(job_id.clone(), tx);
                let started = Instant::now();
                let submitted = client.submit(spec).await;
                let answer = match submitted {
                    Ok(_) => tokio::time::timeout(Duration::from_secs(60), rx).await,
                    Err(e) => {
                        waiters
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&job_id);
                        return Err(e);
                    }
                };
                match answer {
                    Ok(Ok((at, _))) => Ok(at.saturating_duration_since(started)),
                    _ => {
                        waiters
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&job_id);
                        anyhow::bail!("job {job_id}: no result committed within 60 s")
                    }
                }
            }) as CallFuture
        })
    }

    /// Jobs completed and ledger rows booked in this run's database.
    async fn books(&self) -> anyhow::Result<(u64, i64)> {
        let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'completed'")
            .fetch_one(&self.client.pool)
            .await?;
        let ledger: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger")
            .fetch_one(&self.client.pool)
            .await?;
        Ok((u64::try_from(jobs).unwrap_or(0), ledger))
    }

    /// The stages of the jobs admitted between `from` and `to`.
    async fn stages(
        &self,
        (from, to): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>),
    ) -> anyhow::Result<FleetStages> {
        let row: (Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(
            "SELECT \
               percentile_cont(0.5) WITHIN GROUP \
                 (ORDER BY extract(epoch FROM j.dispatched_at - j.created_at)::float8), \
               percentile_cont(0.5) WITHIN GROUP \
                 (ORDER BY extract(epoch FROM r.created_at - j.created_at)::float8), \
               percentile_cont(0.5) WITHIN GROUP (ORDER BY l.latency_ms::float8 / 1000) \
             FROM jobs j \
             JOIN results r ON r.job_id = j.job_id \
             JOIN ledger l ON l.job_id = j.job_id \
             WHERE j.created_at >= $1 AND j.created_at < $2 AND j.status = 'completed'",
        )
        .bind(from)
        .bind(to)
        .fetch_one(&self.client.pool)
        .await?;
        let ms = |x: Option<f64>| x.map_or(f64::NAN, |s| s * 1e3);
        Ok(FleetStages {
            dispatch_ms: ms(row.0),
            admitted_to_booking_ms: ms(row.1),
            http_call_ms: ms(row.2),
        })
    }

    async fn stop(self) {
        self.listener.abort();
        drop(self.roles);
        self.client.pool.close().await;
        self.env.cleanup().await;
    }
}

/// Runs the comparison.
///
/// # Errors
/// When a path cannot be set up or a path answers no call at all.
pub async fn run(settings: &Settings, args: &GatewayArgs) -> anyhow::Result<GatewayReport> {
    let wanted = |p: &str| args.only.is_empty() || args.only.iter().any(|o| o == p);
    let prompts = prompts()?;
    let model = settings
        .tiers
        .get(&settings.dispatcher.weak_tier)
        .map(|t| t.default_model.clone())
        .context("the weak tier has no default model")?;
    let bodies = Arc::new(bodies(settings, &model, &prompts)?);

    let mut local_sim = None;
    let sim_url = match &args.sim_url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => {
            let data = Arc::new(switchyard_demo::bundled_dataset()?);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let sim =
                switchyard_sim::start(listener, data, switchyard_sim::SimConfig::default()).await?;
            let url = sim.base_url();
            local_sim = Some(sim);
            url
        }
    };
    let litellm = match (&args.litellm_url, wanted("litellm")) {
        (Some(u), true) => Some(u.trim_end_matches('/').trim_end_matches("/v1").to_owned()),
        _ => None,
    };
    if let Some(base) = &litellm {
        check_litellm_model(base, args.litellm_key.as_deref(), &model).await?;
    }

    let fleet = if wanted("fleet") {
        Some(FleetUnderTest::start(settings, &sim_url, args).await?)
    } else {
        None
    };
    let result = async {
        let direct = http_caller(
            format!("{sim_url}/chat/completions"),
            None,
            Arc::clone(&bodies),
        )?;
        let through_litellm = match &litellm {
            Some(base) => Some(http_caller(
                format!("{base}/v1/chat/completions"),
                args.litellm_key.clone(),
                Arc::clone(&bodies),
            )?),
            None => None,
        };
        let fleet_call = fleet.as_ref().map(|f| f.caller(Arc::clone(&prompts)));
        if let Some(call) = &fleet_call {
            // The roles are starting (connect, migrate, create consumers): wait for a first
            // job to go through before any clock starts.
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                match call(0).await {
                    Ok(_) => break,
                    Err(e) if Instant::now() < deadline => {
                        tracing::debug!(error = %format!("{e:#}"), "fleet not ready yet");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => return Err(e.context("the fleet did not answer a first job")),
                }
            }
        }
        let mut levels = Vec::new();
        for &c in &args.concurrency {
            let direct_level = measure("direct", Arc::clone(&direct), c, args).await?;
            let mut others = Vec::new();
            if let (Some(call), Some(f)) = (&fleet_call, &fleet) {
                let mut l = measure("fleet", Arc::clone(call), c, args).await?;
                if let Some(w) = l.window {
                    match f.stages(w).await {
                        Ok(s) => l.fleet_stages = Some(s),
                        Err(e) => tracing::warn!(error = %format!("{e:#}"), "no stage breakdown"),
                    }
                }
                others.push(l);
            }
            if let Some(call) = &through_litellm {
                others.push(measure("litellm", Arc::clone(call), c, args).await?);
            }
            for o in &mut others {
                o.added_p50_ms = Some(o.p50_ms - direct_level.p50_ms);
                o.added_p99_ms = Some(o.p99_ms - direct_level.p99_ms);
            }
            levels.push(direct_level);
            levels.extend(others);
        }
        anyhow::Ok(levels)
    }
    .await;
    let books = match &fleet {
        Some(f) => f.books().await.ok(),
        None => None,
    };
    if let Some(f) = fleet {
        f.stop().await;
    }
    if let Some(sim) = local_sim {
        sim.shutdown().await;
    }
    let levels = result?;
    let goals = goals(&levels);
    Ok(GatewayReport {
        model,
        litellm_setup: litellm.as_ref().map(|_| args.litellm_setup.clone()),
        levels,
        goals,
        fleet_jobs_completed: books.map(|b| b.0),
        fleet_ledger_rows: books.map(|b| b.1),
        fleet_commit_interval_ms: args
            .fleet_commit_interval
            .unwrap_or(settings.worker.commit_interval)
            .as_secs_f64()
            * 1e3,
        fleet_dispatchers: args.dispatchers.max(1),
        fleet_workers: args.workers.max(1),
        cores: env::cores(),
        versions: env::versions(settings).await,
    })
}

/// Fails early, with a clear message, when the proxy does not serve the model.
async fn check_litellm_model(base: &str, key: Option<&str>, model: &str) -> anyhow::Result<()> {
    let http = switchyard_worker::llm::openai::http_client()?;
    let mut req = http
        .get(format!("{base}/v1/models"))
        .timeout(Duration::from_secs(10));
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("LiteLLM at {base} does not answer"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    anyhow::ensure!(
        status.is_success(),
        "LiteLLM at {base}: GET /v1/models answered {status}: {}",
        text.chars().take(200).collect::<String>()
    );
    anyhow::ensure!(
        text.contains(&format!("\"{model}\"")),
        "LiteLLM at {base} does not serve model `{model}` (its config must name it)"
    );
    Ok(())
}

fn find<'a>(levels: &'a [Level], path: &str, c: usize) -> Option<&'a Level> {
    levels.iter().find(|l| l.path == path && l.concurrency == c)
}

fn goals(levels: &[Level]) -> Goals {
    let lowest = levels.iter().map(|l| l.concurrency).min().unwrap_or(1);
    let (f, l) = (
        find(levels, "fleet", lowest),
        find(levels, "litellm", lowest),
    );
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let r50 = ratio(
        f.and_then(|x| x.added_p50_ms),
        l.and_then(|x| x.added_p50_ms),
    );
    let r99 = ratio(
        f.and_then(|x| x.added_p99_ms),
        l.and_then(|x| x.added_p99_ms),
    );
    let latency_met = match (r50, r99) {
        (Some(a), Some(b)) => Some(a <= 0.1 && b <= 0.1),
        _ => None,
    };
    let mut cs: Vec<usize> = levels.iter().map(|l| l.concurrency).collect();
    cs.dedup();
    let throughput_met = cs
        .into_iter()
        .filter_map(|c| {
            let (f, l) = (find(levels, "fleet", c)?, find(levels, "litellm", c)?);
            Some((c, f.calls_per_s > l.calls_per_s))
        })
        .collect();
    Goals {
        added_ratio_p50: r50,
        added_ratio_p99: r99,
        latency_met,
        throughput_met,
    }
}

/// The report as text.
pub fn render(r: &GatewayReport) -> String {
    let mut out = format!(
        "model {} on the simulator; fleet: {} dispatcher(s), {} worker(s), commit interval {} ms",
        r.model, r.fleet_dispatchers, r.fleet_workers, r.fleet_commit_interval_ms
    );
    if let Some(s) = &r.litellm_setup {
        out.push_str(&format!("; LiteLLM: {s}"));
    }
    out.push('\n');
    out.push_str(&format!(
        "{:<8} {:>4} {:>7} {:>6} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
        "path",
        "conc",
        "calls",
        "errors",
        "calls/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "+p50 ms",
        "+p99 ms"
    ));
    let opt = |x: Option<f64>| x.map_or("-".to_owned(), |v| format!("{v:.3}"));
    for l in &r.levels {
        out.push_str(&format!(
            "{:<8} {:>4} {:>7} {:>6} {:>9.1} {:>8.3} {:>8.3} {:>8.3} {:>8} {:>8}\n",
            l.path,
            l.concurrency,
            l.calls,
            l.errors,
            l.calls_per_s,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            opt(l.added_p50_ms),
            opt(l.added_p99_ms)
        ));
    }
    for l in &r.levels {
        if let Some(s) = &l.fleet_stages {
            out.push_str(&format!(
                "fleet c={}: p50s from Postgres timestamps: job admitted → dispatched {:.2} ms, → \
                 booking transaction {:.2} ms; HTTP call {:.0} ms\n",
                l.concurrency, s.dispatch_ms, s.admitted_to_booking_ms, s.http_call_ms
            ));
        }
    }
    let g = &r.goals;
    if let (Some(a), Some(b)) = (g.added_ratio_p50, g.added_ratio_p99) {
        out.push_str(&format!(
            "added latency, fleet / LiteLLM, at the lowest concurrency: p50 {a:.2}x, p99 {b:.2}x \
             (goal ≤ 0.10x): {}\n",
            if g.latency_met == Some(true) {
                "met"
            } else {
                "NOT met"
            }
        ));
    }
    if !g.throughput_met.is_empty() {
        let per: Vec<String> = g
            .throughput_met
            .iter()
            .map(|(c, ok)| format!("c={c} {}", if *ok { "yes" } else { "NO" }))
            .collect();
        out.push_str(&format!(
            "fleet sustains more calls/s than LiteLLM: {}\n",
            per.join(", ")
        ));
    }
    if let (Some(j), Some(l)) = (r.fleet_jobs_completed, r.fleet_ledger_rows) {
        out.push_str(&format!(
            "fleet books: {j} single-item jobs completed, {l} ledger rows\n"
        ));
    }
    let versions: Vec<String> = r.versions.iter().map(|(k, v)| format!("{k} {v}")).collect();
    out.push_str(&format!("{} cores; {}\n", r.cores, versions.join(", ")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&v, 0.5), 50.0);
        assert_eq!(quantile_ms(&v, 0.99), 99.0);
        assert_eq!(quantile_ms(&v, 1.0), 100.0);
        assert!(quantile_ms(&[], 0.5).is_nan());
    }

    #[test]
    fn bodies_match_what_the_worker_sends() {
        let settings = Settings::demo();
        let model = "mistralai/Mixtral-8x7B-Instruct-v0.1";
        let b = bodies(&settings, model, &["What is 2+2?".to_owned()]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b[0]).unwrap();
        assert_eq!(v["model"], model);
        assert_eq!(v["messages"][1]["content"], "What is 2+2?");
        assert!(
            v["messages"][0]["content"]
                .as_str()
                .unwrap()
                .ends_with("Labels: A, B, C, D")
        );
        assert_eq!(v["max_tokens"], 4);
        assert_eq!(v["logprobs"], true);
    }

    #[test]
    fn goals_compare_added_latency_and_throughput() {
        let mk = |path: &str, c, cps, p50, p99| Level {
            path: path.to_owned(),
            concurrency: c,
            calls: 100,
            errors: 0,
            seconds: 1.0,
            calls_per_s: cps,
            p50_ms: p50,
            p90_ms: p50,
            p99_ms: p99,
            max_ms: p99,
            added_p50_ms: (path != "direct").then_some(p50 - 1.0),
            added_p99_ms: (path != "direct").then_some(p99 - 2.0),
            first_error: None,
            fleet_stages: None,
            window: None,
        };
        let levels = vec![
            mk("direct", 1, 1000.0, 1.0, 2.0),
            mk("fleet", 1, 500.0, 1.5, 2.5),
            mk("litellm", 1, 200.0, 11.0, 22.0),
            mk("direct", 8, 4000.0, 1.0, 2.0),
            mk("fleet", 8, 900.0, 1.5, 2.5),
            mk("litellm", 8, 1000.0, 11.0, 22.0),
        ];
        let g = goals(&levels);
        assert_eq!(g.added_ratio_p50, Some(0.05));
        assert_eq!(g.added_ratio_p99, Some(0.025));
        assert_eq!(g.latency_met, Some(true));
        assert_eq!(g.throughput_met, vec![(1, true), (8, false)]);
    }
}
