//! `/v1/files`: uploads (multipart, `purpose=batch`), their metadata, their bytes, deletion
//! and listing. The bytes stream into the object store as they arrive, so an upload of
//! 200 MB never sits in memory; past `max_upload_bytes` the upload is cut off with 413 and
//! what was stored of it removed.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::body::Body;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt as _;
use serde::Deserialize;
use switchyard_openai::objects::{Deleted, FileObject, ListPage, PURPOSE_BATCH};
use switchyard_store::api::{self as store, FileRow};
use tokio_util::io::{ReaderStream, StreamReader};

use crate::Api;
use crate::auth::Caller;
use crate::error::ApiError;

/// The most files one list page holds (OpenAI's own maximum).
pub const MAX_PAGE: i64 = 10_000;

/// A stored file as OpenAI describes it.
pub fn object(f: &FileRow) -> FileObject {
    FileObject::new(
        f.file_id.clone(),
        u64::try_from(f.bytes).unwrap_or(0),
        f.created_at.timestamp(),
        f.filename.clone(),
        &f.purpose,
    )
}

/// Streams `field` into the object store as `name`, cut off past `limit` bytes.
async fn put_limited(
    api: &Api,
    name: &str,
    field: axum::extract::multipart::Field<'_>,
) -> Result<u64, ApiError> {
    let limit = api.options.max_upload_bytes;
    let over = Arc::new(AtomicBool::new(false));
    let flag = over.clone();
    let mut seen: u64 = 0;
    let stream = field
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        .and_then(move |chunk| {
            seen += chunk.len() as u64;
            let result = if seen > limit {
                flag.store(true, Ordering::Relaxed);
                Err(io::Error::other("upload over the limit"))
            } else {
                Ok(chunk)
            };
            std::future::ready(result)
        });
    let mut reader = StreamReader::new(Box::pin(stream));
    match api.files.put(name, &mut reader).await {
        Ok(info) => Ok(info.size as u64),
        Err(e) => {
            // Whatever part was stored goes; a put that failed early stored nothing.
            let _ = api.files.delete(name).await;
            if over.load(Ordering::Relaxed) {
                Err(ApiError::too_large(limit))
            } else {
                Err(ApiError::bad(
                    "file",
                    format!("the upload broke off before its end: {e}"),
                ))
            }
        }
    }
}

/// The longest `purpose` read: the ones OpenAI knows are a few words.
const MAX_PURPOSE_BYTES: usize = 64;

/// Reads a form's `purpose`, refusing one over [`MAX_PURPOSE_BYTES`] as it streams in (the
/// upload limit guards the file part only: an unbounded text part would take the server's
/// memory).
async fn read_purpose(mut field: axum::extract::multipart::Field<'_>) -> Result<String, ApiError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|e| ApiError::bad("purpose", format!("unreadable purpose: {e}")))?
    {
        if bytes.len() + chunk.len() > MAX_PURPOSE_BYTES {
            return Err(ApiError::bad(
                "purpose",
                format!("purpose is longer than {MAX_PURPOSE_BYTES} bytes"),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes)
        .map(|s| s.trim().to_owned())
        .map_err(|_| ApiError::bad("purpose", "purpose is not UTF-8 text"))
}

/// `POST /v1/files`.
pub async fn upload(
    State(api): State<Api>,
    caller: Caller,
    mut form: Multipart,
) -> Result<Json<FileObject>, ApiError> {
    let file_id = format!("file-{}", ulid::Ulid::new());
    let mut purpose: Option<String> = None;
    let mut stored: Option<(String, u64)> = None;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| ApiError::bad("file", format!("not a readable multipart form: {e}")))?
    {
        match field.name() {
            Some("purpose") => match read_purpose(field).await {
                Ok(p) => purpose = Some(p),
                Err(e) => {
                    // A file part read before it goes with the refused form.
                    if stored.is_some() {
                        let _ = api.files.delete(&file_id).await;
                    }
                    return Err(e);
                }
            },
            Some("file") if stored.is_none() => {
                let filename = field
                    .file_name()
                    .map_or_else(|| "upload.jsonl".to_owned(), str::to_owned);
                let bytes = put_limited(&api, &file_id, field).await?;
                stored = Some((filename, bytes));
            }
            Some("file") => {
                let _ = api.files.delete(&file_id).await;
                return Err(ApiError::bad("file", "one file per upload"));
            }
            _ => {}
        }
    }
    let Some((filename, bytes)) = stored else {
        return Err(ApiError::bad("file", "the form has no `file` part"));
    };
    if purpose.as_deref() != Some(PURPOSE_BATCH) {
        let _ = api.files.delete(&file_id).await;
        return Err(ApiError::bad(
            "purpose",
            format!(
                "purpose {} is not supported: this API accepts files for batches (`purpose=batch`)",
                purpose.map_or_else(|| "(none)".to_owned(), |p| format!("`{p}`"))
            ),
        ));
    }
    let row = store::insert_file(
        &api.pool,
        &FileRow {
            file_id: file_id.clone(),
            team: caller.team,
            purpose: PURPOSE_BATCH.to_owned(),
            filename,
            bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
            object_name: file_id.clone(),
            created_at: chrono::Utc::now(),
        },
    )
    .await;
    match row {
        Ok(row) => {
            api.metrics.api_upload_bytes.inc_by(bytes);
            Ok(Json(object(&row)))
        }
        Err(e) => {
            let _ = api.files.delete(&file_id).await;
            Err(e.into())
        }
    }
}

async fn found(api: &Api, caller: &Caller, id: &str) -> Result<FileRow, ApiError> {
    store::file(&api.pool, &caller.team, id)
        .await?
        .ok_or_else(|| ApiError::not_found("file", id))
}

/// `GET /v1/files/{id}`.
pub async fn get(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<FileObject>, ApiError> {
    Ok(Json(object(&found(&api, &caller, &id).await?)))
}

/// `GET /v1/files/{id}/content`: the bytes, streamed from the object store.
pub async fn content(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let f = found(&api, &caller, &id).await?;
    let object = api
        .files
        .get(&f.object_name)
        .await
        .map_err(|e| ApiError::internal("cannot read the file's bytes", &e))?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(ReaderStream::new(object)),
    )
        .into_response())
}

/// `DELETE /v1/files/{id}`.
pub async fn delete(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    let f = store::delete_file(&api.pool, &caller.team, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("file", &id))?;
    if let Err(e) = api.files.delete(&f.object_name).await {
        // The row says deleted, so nobody reads it again; the bytes are only garbage.
        tracing::warn!(file = %f.file_id, error = %e, "cannot delete a file's bytes");
    }
    Ok(Json(Deleted {
        id,
        object: "file".to_owned(),
        deleted: true,
    }))
}

/// `GET /v1/files?purpose=…`.
#[derive(Debug, Deserialize)]
pub struct PurposeFilter {
    pub purpose: Option<String>,
}

/// `after` and `limit`, as every list takes them.
#[derive(Debug, Deserialize)]
pub struct Page {
    pub after: Option<String>,
    pub limit: Option<i64>,
}

impl Page {
    /// The page's size: `default` when absent, 1 to `max`.
    ///
    /// # Errors
    /// 400 naming `limit`.
    pub fn size(&self, default: i64, max: i64) -> Result<i64, ApiError> {
        match self.limit {
            None => Ok(default),
            Some(n) if (1..=max).contains(&n) => Ok(n),
            Some(n) => Err(ApiError::bad(
                "limit",
                format!("limit {n} is out of range: 1 to {max}"),
            )),
        }
    }
}

/// `GET /v1/files`: newest first.
pub async fn list(
    State(api): State<Api>,
    caller: Caller,
    Query(page): Query<Page>,
    Query(filter): Query<PurposeFilter>,
) -> Result<Json<ListPage<FileObject>>, ApiError> {
    let limit = page.size(MAX_PAGE, MAX_PAGE)?;
    let (rows, more) = store::list_files(
        &api.pool,
        &caller.team,
        filter.purpose.as_deref(),
        page.after.as_deref(),
        limit,
    )
    .await?;
    let data = rows.iter().map(object).collect();
    Ok(Json(ListPage::new(data, more, |f: &FileObject| &f.id)))
}
