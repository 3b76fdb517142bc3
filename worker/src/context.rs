//! What a worker process holds: connections, and per model a client, a limiter and the price
//! version it books with.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use switchyard_core::pricing::Price;
use switchyard_runtime::Settings;
use switchyard_runtime::settings::ModelSettings;
use tokio::sync::Mutex;

use crate::limiter::ModelLimiter;
use crate::llm::Provider;
use crate::llm::anthropic::AnthropicClient;
use crate::llm::http::Endpoint;
use crate::llm::openai::{OpenAiClient, http_client_connecting_within};
use switchyard_runtime::settings::Protocol;

/// A model this worker can call.
#[derive(Debug)]
pub struct ModelRuntime {
    pub name: String,
    pub settings: ModelSettings,
    pub client: Provider,
    pub limiter: ModelLimiter,
    /// Stops calls to this model while its provider is down (see [`crate::breaker`]).
    pub breaker: crate::breaker::CircuitBreaker,
    /// The provider's Batch API, for a model with `batch = true` (see [`crate::batching`]).
    pub batch: Option<crate::llm::batch_api::BatchApi>,
    /// The version in force at start-up (calls are booked with the version in force at their
    /// own time: see [`crate::price_book`]).
    pub price: Price,
    pub price_id: i64,
}

/// Counters of what this process did (tests and metrics read them).
#[derive(Debug, Default)]
pub struct WorkerCounters {
    pub calls: AtomicU64,
    pub answered: AtomicU64,
    pub escalated: AtomicU64,
    pub failed: AtomicU64,
    pub throttled: AtomicU64,
    pub retries: AtomicU64,
    pub redelivered_skipped: AtomicU64,
    pub naked: AtomicU64,
    /// Messages on their last delivery handed back as copies instead of naked (see
    /// `settle::Disposition::GiveBack`).
    pub handed_over: AtomicU64,
    pub committed_batches: AtomicU64,
    /// Waits for an open breaker by items on their last delivery (see `call::Patience`).
    pub breaker_waits: AtomicU64,
}

impl WorkerCounters {
    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// A worker process's shared state (cheap to clone).
#[derive(Clone)]
pub struct Worker {
    pub settings: Arc<Settings>,
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub pool: PgPool,
    /// One connection of its own for the lease renewal (see `lease`): never queued behind
    /// the lanes' commits, and each renewal after an outage tries afresh.
    pub lease_pool: PgPool,
    pub models: Arc<HashMap<String, ModelRuntime>>,
    pub counters: Arc<WorkerCounters>,
    /// Prometheus families (served on `/metrics` when `[metrics] listen` is set).
    pub metrics: Arc<switchyard_runtime::metrics::Metrics>,
    /// Prices, budgets and the holds this process keeps alive.
    pub finance: Arc<crate::budget::Finance>,
    /// This process, in `quota_shares` (its share of each model's fleet quota).
    pub worker_id: String,
    cancelled: Arc<Mutex<HashMap<String, (bool, Instant)>>>,
}

/// How long a job's "not cancelled" answer is trusted before asking Postgres again.
const CANCEL_CHECK_TTL: Duration = Duration::from_millis(500);

impl Worker {
    /// Connects to NATS and Postgres, creates the streams, checks that every configured model
    /// has a price in force (seeding unpriced models from the configuration), and prepares
    /// every model of the served tiers.
    ///
    /// # Errors
    /// Unreachable services, an unknown tier, a model without any price, or a model whose API
    /// key variable is unset.
    pub async fn connect(settings: Settings, tiers: &[String]) -> anyhow::Result<Self> {
        // Before anything else: without a fleet there is nothing to serve, and the reason
        // (no `--config`) deserves a better message than "unknown tier".
        settings.require_fleet()?;
        for t in tiers {
            anyhow::ensure!(
                settings.tiers.contains_key(t),
                "unknown tier `{t}` (configured: {})",
                settings
                    .tiers
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let client = switchyard_runtime::nats::connect(&settings, "switchyard-worker").await?;
        let js = switchyard_runtime::nats::jetstream(client.clone());
        switchyard_runtime::nats::ensure_streams(&js, &settings).await?;
        let pool = switchyard_store::connect_and_migrate_waiting(
            settings.database_url(),
            settings.database.max_connections,
            settings.database.acquire_timeout,
        )
        .await?;
        let lease_pool = switchyard_store::connect_punctual(
            settings.database_url(),
            settings.finance.reservation_lease / 3,
        )?;
        let worker_id = format!("w-{}", uuid::Uuid::now_v7());
        let finance = crate::budget::Finance::load(&pool, &settings, &worker_id).await?;
        // Connections are made within half the shortest model timeout (at most 10 s), so a
        // timeout that strikes is one after the request went out (see `ProviderError`).
        let shortest = settings
            .models
            .values()
            .map(|m| m.timeout)
            .min()
            .unwrap_or(std::time::Duration::from_secs(20));
        let http =
            http_client_connecting_within((shortest / 2).min(std::time::Duration::from_secs(10)))?;
        let mut models = HashMap::new();
        for (name, m) in &settings.models {
            if !tiers.contains(&m.tier) {
                continue;
            }
            let version = finance
                .prices
                .at(name, chrono::Utc::now())
                .with_context(|| format!("model `{name}` has no price in force"))?;
            let price = Price::new(version.input_usd_per_mtok, version.output_usd_per_mtok)
                .with_context(|| format!("model `{name}` has an invalid price"))?;
            let api_key = match (&m.api_key, &m.api_key_env) {
                (Some(k), _) => Some(k.expose_secret().to_owned()),
                (None, Some(var)) => Some(std::env::var(var).with_context(|| {
                    format!("model `{name}`: environment variable `{var}` (api_key_env) is not set")
                })?),
                (None, None) => None,
            };
            let price_id = version.price_id;
            models.insert(
                name.clone(),
                ModelRuntime {
                    name: name.clone(),
                    batch: m.batch.then(|| {
                        // Output files hold a whole batch's answers: read up to a batch's
                        // worth of the largest answers (at most 1 GiB).
                        let limit = settings
                            .worker
                            .max_body_bytes()
                            .saturating_mul(settings.worker.batching.max_lines.get())
                            .min(1 << 30);
                        let endpoint = Endpoint::new(
                            http.clone(),
                            m.base_url.as_str(),
                            api_key.clone(),
                            m.timeout,
                            limit,
                        );
                        use crate::llm::batch_api::BatchApi;
                        match m.protocol {
                            Protocol::Openai => {
                                BatchApi::OpenAi(crate::llm::openai_batch::OpenAiBatchClient::new(
                                    endpoint,
                                    &m.provider,
                                ))
                            }
                            Protocol::Anthropic => BatchApi::Anthropic(
                                crate::llm::anthropic_batch::AnthropicBatchClient::new(
                                    endpoint,
                                    &m.provider,
                                ),
                            ),
                        }
                    }),
                    client: {
                        let endpoint = Endpoint::new(
                            http.clone(),
                            m.base_url.as_str(),
                            api_key,
                            m.timeout,
                            settings.worker.max_body_bytes(),
                        );
                        match m.protocol {
                            Protocol::Openai => Provider::Openai(OpenAiClient::new(endpoint)),
                            Protocol::Anthropic => {
                                Provider::Anthropic(AnthropicClient::new(endpoint))
                            }
                        }
                    },
                    limiter: ModelLimiter::new(
                        name,
                        m.rpm,
                        m.tpm,
                        settings.worker.quota_headroom.get(),
                    ),
                    breaker: crate::breaker::CircuitBreaker::new(settings.worker.breaker.clone()),
                    settings: m.clone(),
                    price,
                    price_id,
                },
            );
        }
        let worker = Self {
            worker_id,
            settings: Arc::new(settings),
            client,
            js,
            pool,
            lease_pool,
            models: Arc::new(models),
            counters: Arc::default(),
            metrics: Arc::new(switchyard_runtime::metrics::Metrics::worker()),
            finance: Arc::new(finance),
            cancelled: Arc::default(),
        };
        // Alive to the fleet before the first claim (see `crate::lease`).
        crate::lease::renew(&worker, crate::lease::lease(&worker))
            .await
            .context("cannot take the worker's lease")?;
        if worker.settings.worker.fleet_quota {
            crate::quota::join(&worker)
                .await
                .context("cannot register for quota sharing")?;
        }
        Ok(worker)
    }

    /// True when the job was cancelled (asks Postgres at most every 500 ms per job).
    pub async fn is_cancelled(&self, job_id: &str) -> bool {
        let mut cache = self.cancelled.lock().await;
        if let Some((c, at)) = cache.get(job_id)
            && (*c || at.elapsed() < CANCEL_CHECK_TTL)
        {
            return *c;
        }
        let ids = [job_id.to_owned()];
        let cancelled = switchyard_store::jobs::cancelled_among(&self.pool, &ids)
            .await
            .map(|v| !v.is_empty())
            .unwrap_or(false);
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(job_id.to_owned(), (cancelled, Instant::now()));
        cancelled
    }
}
