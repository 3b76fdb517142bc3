//! `switchyard api`: OpenAI's Batch API in front of the fleet, so a pipeline written for
//! OpenAI's batches (the official SDK, an Airflow operator) gets routing, cascades, budgets and
//! the ledger by changing `base_url` and `api_key`.
//!
//! The flow of a request:
//! 1. [`auth`]: the bearer key names a team; every read and write is that team's.
//! 2. [`files`]: uploads stream into the object store bucket `<PREFIX>_FILES` (a limit of
//!    their own, not the web framework's default), rows in Postgres say whose they are.
//! 3. [`batches`]: a batch is created `validating` at once; its input file is checked in the
//!    background ([`validate`]), line by line as it streams from the object store, and a
//!    file fault fails the batch with each fault's line. A validation whose process died is
//!    taken over by any API process once its lease runs out ([`validate::sweep`]).
//! 4. [`run`]: a batch that passed becomes a `chat` job of the fleet (dispatcher, tiers,
//!    cascade, budgets, ledger); any API process looks at it while it runs (counts, cancel,
//!    expiry) and writes its output and error files when the job stops.
//!
//! The wire objects are `switchyard_openai`'s. Nothing lives in the process: any number of
//! API servers can run side by side over the same NATS and Postgres.

pub mod auth;
pub mod batches;
pub mod error;
pub mod files;
pub mod keys;
pub mod observe;
pub mod retention;
pub mod run;
pub mod tls;
pub mod validate;

use std::sync::Arc;

use async_nats::jetstream;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sqlx::PgPool;
use std::num::NonZeroU32;
use switchyard_runtime::Settings;
use switchyard_runtime::metrics::Metrics;
use switchyard_runtime::settings::ApiSettings;
use tokio_util::sync::CancellationToken;

/// The largest upload by default: OpenAI's limit for a batch input file.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = switchyard_openai::input::MAX_FILE_BYTES;

/// How the API is run.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Uploads above this many bytes answer 413.
    pub max_upload_bytes: u64,
    /// How often the process looks for batch steps whose process died.
    pub sweep_every: std::time::Duration,
    /// How often a running batch is looked at (counts, cancellation, expiry, end).
    pub look_every: std::time::Duration,
    /// The policy of `switchyard:auto` requests in batches whose metadata names none
    /// (`switchyard_policy`), as `switchyard submit --policy` takes it.
    pub default_policy: String,
    /// Teams' own default policies, in place of `default_policy`.
    pub team_policies: std::collections::BTreeMap<String, String>,
    /// Requests per minute one key may make in this process (429 above it).
    pub requests_per_minute_per_key: NonZeroU32,
    /// Uploaded and batch files older than this are deleted; `None`: kept.
    pub file_retention: Option<std::time::Duration>,
}

impl ApiOptions {
    /// The options the `[api]` section of the configuration describes.
    pub fn from_settings(s: &ApiSettings) -> Self {
        Self {
            max_upload_bytes: s.max_upload_bytes,
            look_every: s.look_every,
            default_policy: s.default_policy.clone(),
            team_policies: s.team_policies.clone(),
            requests_per_minute_per_key: s.requests_per_minute_per_key,
            file_retention: s.file_retention,
            ..Self::default()
        }
    }
}

/// The policy of batches that name none: the product's promise.
pub const DEFAULT_POLICY: &str = "quality=0.95";

impl Default for ApiOptions {
    fn default() -> Self {
        Self {
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            sweep_every: std::time::Duration::from_secs(10),
            look_every: std::time::Duration::from_secs(2),
            default_policy: DEFAULT_POLICY.to_owned(),
            team_policies: std::collections::BTreeMap::new(),
            requests_per_minute_per_key: NonZeroU32::new(600).unwrap_or(NonZeroU32::MIN),
            file_retention: None,
        }
    }
}

/// What every handler reaches.
#[derive(Clone)]
pub struct Api {
    pub pool: PgPool,
    pub files: jetstream::object_store::ObjectStore,
    pub options: Arc<ApiOptions>,
    /// This process's name in batch leases.
    pub owner: Arc<str>,
    /// Submits batches' jobs as any client does.
    pub client: switchyard_client::Client,
    pub settings: Arc<Settings>,
    /// Each key's requests per minute in this process.
    pub limits: Arc<DefaultKeyedRateLimiter<String>>,
    pub metrics: Arc<Metrics>,
}

impl Api {
    /// Connects to the deployment's NATS and Postgres (migrating it) and makes sure its
    /// streams and buckets exist.
    ///
    /// # Errors
    /// A dependency that cannot be reached.
    pub async fn connect(settings: &Settings, options: ApiOptions) -> anyhow::Result<Self> {
        let pool = switchyard_store::connect_and_migrate(settings.database_url(), 8).await?;
        let nats = switchyard_runtime::nats::connect(settings, "switchyard-api").await?;
        let js = jetstream::new(nats.clone());
        switchyard_runtime::nats::ensure_streams(&js, settings).await?;
        let bucket = settings.topology().files_bucket();
        let files = js
            .get_object_store(&bucket)
            .await
            .map_err(|e| anyhow::anyhow!("files bucket `{bucket}` missing: {e}"))?;
        batch_policy_default_is_valid(&options.default_policy)?;
        for policy in options.team_policies.values() {
            batch_policy_default_is_valid(policy)?;
        }
        let settings = Arc::new(settings.clone());
        let client = switchyard_client::Client {
            settings: settings.clone(),
            nats,
            js,
            pool: pool.clone(),
            inline_limit: switchyard_client::INLINE_LIMIT,
        };
        let per_minute = options.requests_per_minute_per_key;
        Ok(Self {
            pool,
            files,
            options: Arc::new(options),
            owner: format!("api-{}", ulid::Ulid::new()).into(),
            client,
            settings,
            limits: Arc::new(RateLimiter::keyed(Quota::per_minute(per_minute))),
            metrics: Arc::new(Metrics::api()),
        })
    }

    /// The default policy of `team`'s batches.
    pub fn default_policy_of(&self, team: &str) -> &str {
        self.options
            .team_policies
            .get(team)
            .unwrap_or(&self.options.default_policy)
    }

    /// The routes under `/v1`.
    pub fn router(self) -> Router {
        let v1 = Router::new()
            .route(
                "/files",
                post(files::upload)
                    .get(files::list)
                    // Uploads stream with a limit of their own (`max_upload_bytes`).
                    .layer(DefaultBodyLimit::disable()),
            )
            .route("/files/{id}", get(files::get).delete(files::delete))
            .route("/files/{id}/content", get(files::content))
            .route("/batches", post(batches::create).get(batches::list))
            .route("/batches/{id}", get(batches::get))
            .route("/batches/{id}/cancel", post(batches::cancel));
        let metrics = self.metrics.clone();
        Router::new()
            .nest("/v1", v1)
            .route("/healthz", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn(move |req, next| {
                observe::request(metrics.clone(), req, next)
            }))
            .with_state(self)
    }
}

fn batch_policy_default_is_valid(policy: &str) -> anyhow::Result<()> {
    run::batch_policy(None, policy)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("the API's default batch policy `{policy}`: {e}"))
}

/// Serves plain HTTP until `shutdown` is cancelled.
///
/// # Errors
/// When the listener fails.
pub async fn serve(
    api: Api,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_on(api, listener, shutdown).await
}

/// Serves HTTPS only, with `tls` (see [`tls::acceptor`]), until `shutdown` is cancelled.
///
/// # Errors
/// When the listener fails.
pub async fn serve_tls(
    api: Api,
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tls::TlsListener::new(listener, tls, shutdown.clone());
    serve_on(api, listener, shutdown).await
}

async fn serve_on<L>(api: Api, listener: L, shutdown: CancellationToken) -> anyhow::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let sweeper = tokio::spawn(validate::sweep(
        api.clone(),
        api.options.sweep_every,
        shutdown.clone(),
    ));
    let looks = tokio::spawn(run::looks(
        api.clone(),
        api.options.look_every,
        shutdown.clone(),
    ));
    let retention = tokio::spawn(retention::sweep(api.clone(), shutdown.clone()));
    let served = axum::serve(listener, api.router())
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    sweeper.abort();
    looks.abort();
    retention.abort();
    served?;
    Ok(())
}
