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
//!
//! The wire objects are `switchyard_openai`'s. Nothing lives in the process: any number of
//! API servers can run side by side over the same NATS and Postgres.

pub mod auth;
pub mod batches;
pub mod error;
pub mod files;
pub mod keys;
pub mod validate;

use std::sync::Arc;

use async_nats::jetstream;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use sqlx::PgPool;
use switchyard_runtime::Settings;
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
}

impl Default for ApiOptions {
    fn default() -> Self {
        Self {
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            sweep_every: std::time::Duration::from_secs(10),
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
        let js = jetstream::new(nats);
        switchyard_runtime::nats::ensure_streams(&js, settings).await?;
        let bucket = settings.topology().files_bucket();
        let files = js
            .get_object_store(&bucket)
            .await
            .map_err(|e| anyhow::anyhow!("files bucket `{bucket}` missing: {e}"))?;
        Ok(Self {
            pool,
            files,
            options: Arc::new(options),
            owner: format!("api-{}", ulid::Ulid::new()).into(),
        })
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
        Router::new()
            .nest("/v1", v1)
            .route("/healthz", get(|| async { "ok" }))
            .with_state(self)
    }
}

/// Serves until `shutdown` is cancelled.
///
/// # Errors
/// When the listener fails.
pub async fn serve(
    api: Api,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let sweeper = tokio::spawn(validate::sweep(
        api.clone(),
        api.options.sweep_every,
        shutdown.clone(),
    ));
    let served = axum::serve(listener, api.router())
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    sweeper.abort();
    served?;
    Ok(())
}
