//! The dispatcher: turns submitted jobs into routed work.
//!
//! For each job message on `<prefix>.jobs.submit` (durable pull consumer `dispatcher`, shared
//! by every dispatcher process):
//!
//! 1. [`intake`]: decode and validate the spec; a bad job is rejected with a reason stored
//!    on the job, dead-lettered, and its message terminated (never redelivered forever).
//! 2. Admission: the job row is inserted, idempotent on the job id and idempotency key. A
//!    re-submission with the same content creates nothing new; a crashed dispatch resumes.
//! 3. [`ingest`] (pass 1): items are streamed from the message or the object store
//!    ([`source`]), validated and scored, and the job's policy is planned over them. Nothing
//!    is stored yet, so a bad item rejects the job with nothing of it stored or published.
//!    Memory stays small in the job's size: the policy's candidates, each item's score and
//!    a hash of its id (52 bytes an item).
//! 4. Route planning (`switchyard_core::route`, shared with `switchyard quote`): sensitivity pins, then routing rules (force a tier or shift the score), then
//!    the job's policy turns its own scores into one cut (exact strong share, threshold,
//!    budget or quality target; `switchyard_core::calibrate`). Why each item went where it
//!    went is stored with it.
//! 5. [`emit`] (pass 2): the items are read again, each stored once with its final tier, a
//!    chunk at a time, and each stored chunk is published ([`publisher`]) while the next is
//!    stored: every item to its tier with `Nats-Msg-Id` = its attempt key, many publish-acks
//!    in flight at once; with a `shadow` policy, a sample of the weak-routed items is
//!    published to the strong tier as well (shadow calls).
//! 6. Only then is the job message acked ([`consumer`]).
//!
//! Beside the consumer, [`sweeper`] finishes the jobs nobody else will: left `ingesting`,
//! `dispatching` or `running` with no live owner and no progress for `[dispatcher]
//! stuck_after`. [`job_lock`] keeps one owner per job at a time.
//!
//! A `quality=Q` job is dispatched in two stages ([`pilot`]): a pilot slice first (answered
//! by both tiers), then, once its answers are in, the rest by the plan made from them.
//!
//! A job's team comes from the subject it was submitted on ([`identity`]); [`team_api`]
//! answers a team's status and results requests over NATS.

pub mod consumer;
pub mod dispatch;
pub mod emit;
pub mod identity;
pub mod ingest;
pub mod intake;
pub mod job_lock;
pub mod pilot;
pub mod publisher;
pub mod source;
pub mod sweeper;
pub mod team_api;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::PgPool;
use switchyard_core::rules::RuleSet;
use switchyard_router::Router;
use switchyard_runtime::Settings;
use switchyard_runtime::metrics::{self, JobLabels, Metrics};
use tokio_util::sync::CancellationToken;

/// Everything a dispatcher works with.
#[derive(Clone)]
pub struct Dispatcher {
    pub settings: Arc<Settings>,
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub pool: PgPool,
    pub router: Arc<dyn Router>,
    /// The configuration's routing rules, compiled.
    pub rules: Arc<RuleSet>,
    pub counters: Arc<DispatcherCounters>,
    /// Prometheus families (served on `/metrics` when `[metrics] listen` is set).
    pub metrics: Arc<Metrics>,
}

/// What the dispatcher has done since it started (tests and metrics read these).
#[derive(Debug, Default)]
pub struct DispatcherCounters {
    pub jobs_accepted: AtomicU64,
    pub jobs_rejected: AtomicU64,
    pub jobs_duplicate: AtomicU64,
    pub items_published: AtomicU64,
}

impl Dispatcher {
    /// Counts a job's fate in the metrics.
    pub(crate) fn job_outcome(&self, outcome: &'static str) {
        self.metrics
            .jobs
            .get_or_create(&JobLabels { outcome })
            .inc();
    }
}

impl DispatcherCounters {
    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

impl Dispatcher {
    /// Connects to NATS and Postgres (migrating it), creates the streams, loads the router.
    ///
    /// # Errors
    /// When a dependency is unreachable or the configured router cannot be loaded.
    pub async fn connect(settings: Settings) -> anyhow::Result<Self> {
        // Routing to tiers nobody configured would only fail item by item, later.
        settings.require_fleet()?;
        let router = switchyard_router::configured_router(
            settings
                .dispatcher
                .router
                .as_deref()
                .map(std::path::Path::new),
        )?;
        let rules = Arc::new(settings.routing_rules()?);
        let client = switchyard_runtime::nats::connect(&settings, "switchyard-dispatcher").await?;
        let js = switchyard_runtime::nats::jetstream(client.clone());
        switchyard_runtime::nats::ensure_streams(&js, &settings).await?;
        let pool = switchyard_store::connect_and_migrate_waiting(
            settings.database_url(),
            settings.database.max_connections,
            settings.database.acquire_timeout,
        )
        .await?;
        Ok(Self {
            settings: Arc::new(settings),
            client,
            js,
            pool,
            router,
            rules,
            counters: Arc::default(),
            metrics: Arc::new(Metrics::dispatcher()),
        })
    }
}

/// Runs a dispatcher until `shutdown` is cancelled.
///
/// # Errors
/// When start-up fails or the consumer cannot be created; per-job failures are handled
/// (nak'ed or dead-lettered) and never end the loop.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let dispatcher = Dispatcher::connect(settings).await?;
    if let Some(addr) = dispatcher.settings.metrics.listen {
        metrics::serve(addr, dispatcher.metrics.clone(), shutdown.clone()).await?;
    }
    let t = dispatcher.settings.topology();
    metrics::watch_consumer(
        dispatcher.js.clone(),
        t.jobs_stream(),
        t.dispatcher_consumer(),
        dispatcher.metrics.clone(),
        metrics::LAG_PERIOD,
        shutdown.clone(),
    );
    // The team API (status and results over NATS, per team) and the stuck-job sweep run
    // beside the job consumer.
    let api = tokio::spawn(team_api::run(dispatcher.clone(), shutdown.clone()));
    let sweeper = tokio::spawn(sweeper::run(dispatcher.clone(), shutdown.clone()));
    let result = consumer::run(dispatcher, shutdown.clone()).await;
    shutdown.cancel();
    if let Ok(Err(e)) = api.await {
        tracing::warn!(error = %format!("{e:#}"), "team API stopped");
    }
    let _ = sweeper.await;
    result
}
