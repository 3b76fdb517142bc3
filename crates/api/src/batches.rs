//! `/v1/batches`: create (answers `validating` at once; the file is checked in the
//! background, see [`crate::validate`]), get, list (newest first, `after` and `limit`) and
//! cancel.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use switchyard_openai::COMPLETION_WINDOW;
use switchyard_openai::objects::{
    Batch, BatchErrors, BatchStatus, CreateBatch, ListPage, PURPOSE_BATCH, RequestCounts,
};
use switchyard_store::api::{self as store, BatchRow, NewBatch};

use crate::Api;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::files::Page;

/// The completion window, as a duration.
pub const WINDOW: Duration = Duration::from_secs(24 * 3600);
/// How long a process holds a batch's validation before another may take it over.
pub const VALIDATION_LEASE: Duration = Duration::from_secs(300);
/// A batch list page: 20 by default, at most 100 (OpenAI's figures).
pub const DEFAULT_PAGE: i64 = 20;
pub const MAX_PAGE: i64 = 100;

/// A stored batch as OpenAI describes it.
pub fn object(b: &BatchRow) -> Batch {
    let ts = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.timestamp());
    Batch {
        id: b.batch_id.clone(),
        object: "batch".to_owned(),
        endpoint: b.endpoint.clone(),
        errors: b
            .errors
            .as_ref()
            .and_then(|e| serde_json::from_value::<BatchErrors>(e.clone()).ok()),
        input_file_id: b.input_file_id.clone(),
        completion_window: b.completion_window.clone(),
        status: b.status.parse().unwrap_or(BatchStatus::Failed),
        output_file_id: b.output_file_id.clone(),
        error_file_id: b.error_file_id.clone(),
        created_at: b.created_at.timestamp(),
        in_progress_at: ts(b.in_progress_at),
        expires_at: Some(b.expires_at.timestamp()),
        finalizing_at: ts(b.finalizing_at),
        completed_at: ts(b.completed_at),
        failed_at: ts(b.failed_at),
        expired_at: ts(b.expired_at),
        cancelling_at: ts(b.cancelling_at),
        cancelled_at: ts(b.cancelled_at),
        request_counts: RequestCounts {
            total: u64::try_from(b.request_total).unwrap_or(0),
            completed: u64::try_from(b.request_completed).unwrap_or(0),
            failed: u64::try_from(b.request_failed).unwrap_or(0),
        },
        metadata: b
            .metadata
            .as_ref()
            .and_then(|m| serde_json::from_value(m.clone()).ok()),
    }
}

/// `POST /v1/batches`. The body is read by hand so a malformed one answers in OpenAI's
/// shape rather than the web framework's.
pub async fn create(
    State(api): State<Api>,
    caller: Caller,
    body: Bytes,
) -> Result<Json<Batch>, ApiError> {
    let req: CreateBatch = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad("body", format!("not a batch creation request: {e}")))?;
    req.check()?;
    let metadata = req
        .metadata
        .as_ref()
        .map(|m| serde_json::to_value(m).unwrap_or_default());
    crate::run::batch_policy(metadata.as_ref(), api.default_policy_of(&caller.team)).map_err(
        |e| {
            ApiError::bad(
                &format!("metadata.{}", crate::run::POLICY_KEY),
                format!("not a policy: {e}"),
            )
        },
    )?;
    let file = store::file(&api.pool, &caller.team, &req.input_file_id)
        .await?
        .ok_or_else(|| ApiError::not_found("file", &req.input_file_id))?;
    if file.purpose != PURPOSE_BATCH {
        return Err(ApiError::bad(
            "input_file_id",
            format!(
                "file {} has purpose `{}`; a batch reads a file uploaded with purpose `batch`",
                file.file_id, file.purpose
            ),
        ));
    }
    let batch_id = format!("batch_{}", ulid::Ulid::new());
    let row = store::insert_batch(
        &api.pool,
        &NewBatch {
            batch_id: &batch_id,
            team: &caller.team,
            key_id: &caller.key_id,
            input_file_id: &file.file_id,
            endpoint: &req.endpoint,
            completion_window: COMPLETION_WINDOW,
            metadata,
            window: WINDOW,
        },
        &api.owner,
        VALIDATION_LEASE,
    )
    .await?;
    tokio::spawn(crate::validate::run(api.clone(), row.clone()));
    Ok(Json(object(&row)))
}

/// `GET /v1/batches/{id}`.
pub async fn get(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Batch>, ApiError> {
    let b = store::batch(&api.pool, &caller.team, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("batch", &id))?;
    Ok(Json(object(&b)))
}

/// `GET /v1/batches`: newest first.
pub async fn list(
    State(api): State<Api>,
    caller: Caller,
    Query(page): Query<Page>,
) -> Result<Json<ListPage<Batch>>, ApiError> {
    let limit = page.size(DEFAULT_PAGE, MAX_PAGE)?;
    let (rows, more) =
        store::list_batches(&api.pool, &caller.team, page.after.as_deref(), limit).await?;
    let data = rows.iter().map(object).collect();
    Ok(Json(ListPage::new(data, more, |b: &Batch| &b.id)))
}

/// `POST /v1/batches/{id}/cancel`: a batch still validating is cancelled at once; one that
/// has ended answers as it is.
pub async fn cancel(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Batch>, ApiError> {
    let b = store::cancel_batch(&api.pool, &caller.team, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("batch", &id))?;
    Ok(Json(object(&b)))
}
