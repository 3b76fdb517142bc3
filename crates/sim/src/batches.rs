//! OpenAI's Batch API on the simulator, as a provider serves it: `POST /v1/files`
//! (multipart), `GET /v1/files/{id}/content`, `DELETE /v1/files/{id}`, `POST /v1/batches`,
//! `GET /v1/batches/{id}`, `GET /v1/batches` (newest first, `after`, `limit`, with each
//! batch's `metadata`, so a client can find batches it created but did not record) and
//! `POST /v1/batches/{id}/cancel`.
//!
//! A batch waits `batch_delay`, then answers its lines one by one through the same replay,
//! faults and limits as real-time calls; each line is logged as a call whose client tag is
//! `batch:<batch id>` ([`BATCH_TAG_PREFIX`]), so the bill prices it at the batch discount.
//! `batch_expire_after_lines` makes a batch expire after that many lines (the rest come back
//! `batch_expired`); a cancel stops it before its next line (`batch_cancelled`);
//! `batch_creations_lost` carries out the first creations but answers them 503 (a client
//! that died between creating and recording). Output and error files are written when the
//! batch ends, one line per request, as OpenAI writes them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_openai::objects::{
    Batch, BatchStatus, CreateBatch, FileObject, ListPage, PURPOSE_BATCH_OUTPUT, RequestCounts,
};
use switchyard_openai::output::{BATCH_CANCELLED, BATCH_EXPIRED, OutputLine};

use crate::server::{AppState, chat_completions, lock};

/// Now, in Unix seconds, as OpenAI's objects carry it.
fn unix_secs() -> i64 {
    i64::try_from(crate::server::unix_secs()).unwrap_or(i64::MAX)
}

/// The client tag of a batch line's call in the call log: `batch:<batch id>`.
pub const BATCH_TAG_PREFIX: &str = "batch:";

/// Path parameters of a file's or batch's route (`/c/{tag}` routes carry the client's tag).
#[derive(Debug, serde::Deserialize)]
pub(crate) struct One {
    #[allow(dead_code, reason = "the tag only selects the route")]
    tag: Option<String>,
    id: String,
}

/// The Batch API's routes, untagged and under `/c/{tag}` (a client tagged by its base URL,
/// as the chaos run's workers are).
pub(crate) fn routes() -> axum::Router<Arc<AppState>> {
    use axum::routing::{delete as delete_route, get as get_route, post};
    let mut router = axum::Router::new();
    for root in ["", "/c/{tag}"] {
        router = router
            .route(
                &format!("{root}/v1/files"),
                post(upload).layer(axum::extract::DefaultBodyLimit::max(256 * 1024 * 1024)),
            )
            .route(&format!("{root}/v1/files/{{id}}"), delete_route(delete))
            .route(
                &format!("{root}/v1/files/{{id}}/content"),
                get_route(content),
            )
            .route(&format!("{root}/v1/batches"), post(create).get(list))
            .route(&format!("{root}/v1/batches/{{id}}"), get_route(get))
            .route(&format!("{root}/v1/batches/{{id}}/cancel"), post(cancel));
    }
    router
}

/// Files and batches the simulator holds (in memory).
#[derive(Debug, Default)]
pub struct BatchStore {
    files: HashMap<String, (FileObject, Bytes)>,
    batches: BTreeMap<String, Batch>,
    next: u64,
    /// Creations answered 503 so far (see `SimConfig::batch_creations_lost`).
    lost: usize,
    /// This simulator run's mark in its ids, so a restarted simulator never hands out an id
    /// it gave before (as a real provider never does).
    run: String,
}

impl BatchStore {
    /// A fresh id `<prefix>_sim<n><run>`: never repeated, even by a restarted simulator, and
    /// sorting by creation. Anthropic's message batches take theirs here too.
    pub(crate) fn id(&mut self, prefix: &str) -> String {
        self.next += 1;
        if self.run.is_empty() {
            let fresh = uuid::Uuid::now_v7().simple().to_string();
            self.run = fresh[fresh.len() - 8..].to_owned();
        }
        // Zero-padded so ids sort by creation, as lists need.
        format!("{prefix}_sim{:012}{}", self.next, self.run)
    }

    /// True when this creation's answer is to be lost (`SimConfig::batch_creations_lost`,
    /// `limit`): one counter for OpenAI batches and Anthropic message batches alike.
    pub(crate) fn lose_creation(&mut self, limit: usize) -> bool {
        let lose = self.lost < limit;
        self.lost += usize::from(lose);
        lose
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = json!({"error": {"message": message.into(), "type": "invalid_request_error",
                                 "param": null, "code": null}});
    (status, Json(body)).into_response()
}

/// `POST /v1/files`.
pub(crate) async fn upload(State(state): State<Arc<AppState>>, mut form: Multipart) -> Response {
    let (mut purpose, mut file) = (None, None);
    loop {
        match form.next_field().await {
            Ok(Some(field)) => match field.name() {
                Some("purpose") => purpose = field.text().await.ok(),
                Some("file") => {
                    let name = field.file_name().unwrap_or("file.jsonl").to_owned();
                    match field.bytes().await {
                        Ok(b) => file = Some((name, b)),
                        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
                    }
                }
                _ => {}
            },
            Ok(None) => break,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        }
    }
    let (Some(purpose), Some((name, bytes))) = (purpose, file) else {
        return error(StatusCode::BAD_REQUEST, "purpose and file are required");
    };
    let mut store = lock(&state.batch_store);
    let id = store.id("file");
    let object = FileObject::new(id.clone(), bytes.len() as u64, unix_secs(), name, &purpose);
    store.files.insert(id, (object.clone(), bytes));
    Json(object).into_response()
}

/// `GET /v1/files/{id}/content`.
pub(crate) async fn content(
    State(state): State<Arc<AppState>>,
    Path(One { id, .. }): Path<One>,
) -> Response {
    match lock(&state.batch_store).files.get(&id) {
        Some((_, bytes)) => bytes.clone().into_response(),
        None => error(StatusCode::NOT_FOUND, format!("No such file: '{id}'")),
    }
}

/// `DELETE /v1/files/{id}`.
pub(crate) async fn delete(
    State(state): State<Arc<AppState>>,
    Path(One { id, .. }): Path<One>,
) -> Response {
    match lock(&state.batch_store).files.remove(&id) {
        Some(_) => Json(json!({"id": id, "object": "file", "deleted": true})).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("No such file: '{id}'")),
    }
}

/// `POST /v1/batches`.
pub(crate) async fn create(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let req: CreateBatch = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if let Err(e) = req.check() {
        return (StatusCode::BAD_REQUEST, Json(e)).into_response();
    }
    tokio::time::sleep(state.config.batch_create_latency).await;
    let batch = {
        let mut store = lock(&state.batch_store);
        if !store.files.contains_key(&req.input_file_id) {
            return error(
                StatusCode::NOT_FOUND,
                format!("No such file: '{}'", req.input_file_id),
            );
        }
        let id = store.id("batch");
        let now = unix_secs();
        let batch = Batch {
            id: id.clone(),
            object: "batch".to_owned(),
            endpoint: req.endpoint,
            errors: None,
            input_file_id: req.input_file_id,
            completion_window: req.completion_window,
            status: BatchStatus::InProgress,
            output_file_id: None,
            error_file_id: None,
            created_at: now,
            in_progress_at: Some(now),
            expires_at: Some(now + 24 * 3600),
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            expired_at: None,
            cancelling_at: None,
            cancelled_at: None,
            request_counts: RequestCounts::default(),
            metadata: req.metadata,
        };
        store.batches.insert(id, batch.clone());
        let lose = store.lose_creation(state.config.batch_creations_lost);
        (batch, lose)
    };
    let (batch, lose) = batch;
    tokio::spawn(run(state, batch.id.clone()));
    if lose {
        // Created, but the answer is lost on its way.
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the batch was created; this answer was lost".to_owned(),
        );
    }
    Json(batch).into_response()
}

/// `GET /v1/batches/{id}`.
pub(crate) async fn get(
    State(state): State<Arc<AppState>>,
    Path(One { id, .. }): Path<One>,
) -> Response {
    match lock(&state.batch_store).batches.get(&id) {
        Some(b) => Json(b.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("No such batch: '{id}'")),
    }
}

/// `after` and `limit` of a list.
#[derive(Debug, Deserialize)]
pub(crate) struct Page {
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/batches`: newest first.
pub(crate) async fn list(State(state): State<Arc<AppState>>, Query(page): Query<Page>) -> Response {
    let limit = page.limit.unwrap_or(20).clamp(1, 100);
    let store = lock(&state.batch_store);
    let mut rows: Vec<Batch> = store
        .batches
        .values()
        .rev()
        .filter(|b| page.after.as_ref().is_none_or(|a| &b.id < a))
        .take(limit + 1)
        .cloned()
        .collect();
    let more = rows.len() > limit;
    rows.truncate(limit);
    Json(ListPage::new(rows, more, |b: &Batch| &b.id)).into_response()
}

/// `POST /v1/batches/{id}/cancel`.
pub(crate) async fn cancel(
    State(state): State<Arc<AppState>>,
    Path(One { id, .. }): Path<One>,
) -> Response {
    let mut store = lock(&state.batch_store);
    let Some(b) = store.batches.get_mut(&id) else {
        return error(StatusCode::NOT_FOUND, format!("No such batch: '{id}'"));
    };
    if b.status == BatchStatus::InProgress {
        b.status = BatchStatus::Cancelling;
        b.cancelling_at = Some(unix_secs());
    }
    Json(b.clone()).into_response()
}

/// One request line of an input file.
#[derive(Deserialize)]
struct Line {
    custom_id: String,
    body: Value,
}

/// Answers a batch's lines, then writes its files.
async fn run(state: Arc<AppState>, id: String) {
    tokio::time::sleep(state.config.batch_delay).await;
    let input = {
        let store = lock(&state.batch_store);
        store
            .batches
            .get(&id)
            .and_then(|b| store.files.get(&b.input_file_id))
            .map(|(_, bytes)| bytes.clone())
    };
    let Some(input) = input else { return };
    let text = String::from_utf8_lossy(&input).into_owned();
    let lines: Vec<Line> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let total = lines.len() as u64;
    set_counts(&state, &id, total, 0, 0);
    let (mut output, mut errors) = (String::new(), String::new());
    let (mut completed, mut failed) = (0u64, 0u64);
    let mut ending = BatchStatus::Completed;
    for (n, line) in lines.iter().enumerate() {
        let stop = match lock(&state.batch_store).batches.get(&id).map(|b| b.status) {
            Some(BatchStatus::Cancelling) => Some(BatchStatus::Cancelled),
            _ if state
                .config
                .batch_expire_after_lines
                .is_some_and(|after| n >= after) =>
            {
                Some(BatchStatus::Expired)
            }
            _ => None,
        };
        if let Some(end) = stop {
            ending = end;
        }
        let out = if ending == BatchStatus::Completed {
            answer(&state, &id, line).await
        } else {
            let code = if ending == BatchStatus::Expired {
                BATCH_EXPIRED
            } else {
                BATCH_CANCELLED
            };
            OutputLine::not_run(
                format!("batch_req_{n}"),
                line.custom_id.clone(),
                code,
                "not run",
            )
        };
        if out.is_success() {
            completed += 1;
            output.push_str(&out.to_json_line());
            output.push('\n');
        } else {
            failed += 1;
            errors.push_str(&out.to_json_line());
            errors.push('\n');
        }
        set_counts(&state, &id, total, completed, failed);
    }
    let mut store = lock(&state.batch_store);
    let file = |store: &mut BatchStore, text: String, which: &str| -> Option<String> {
        if text.is_empty() {
            return None;
        }
        let file_id = store.id("file");
        let object = FileObject::new(
            file_id.clone(),
            text.len() as u64,
            unix_secs(),
            format!("{id}_{which}.jsonl"),
            PURPOSE_BATCH_OUTPUT,
        );
        store
            .files
            .insert(file_id.clone(), (object, Bytes::from(text)));
        Some(file_id)
    };
    let output_id = file(&mut store, output, "output");
    let error_id = file(&mut store, errors, "error");
    if let Some(b) = store.batches.get_mut(&id) {
        let now = Some(unix_secs());
        b.status = ending;
        b.output_file_id = output_id;
        b.error_file_id = error_id;
        b.finalizing_at = now;
        match ending {
            BatchStatus::Cancelled => b.cancelled_at = now,
            BatchStatus::Expired => b.expired_at = now,
            _ => b.completed_at = now,
        }
    }
}

/// One line answered as a real-time call would be, logged under the batch's tag.
async fn answer(state: &Arc<AppState>, id: &str, line: &Line) -> OutputLine {
    let request_id = format!("req_{}", uuid::Uuid::now_v7().simple());
    let response = chat_completions(
        state.clone(),
        Some(format!("{BATCH_TAG_PREFIX}{id}")),
        // A line's id at the client is its `custom_id` (Switchyard's ledger call id): the log
        // matches the ledger line by line.
        Some(line.custom_id.clone()),
        Bytes::from(line.body.to_string()),
        None,
    )
    .await;
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let out_id = format!("batch_req_{}", uuid::Uuid::now_v7().simple());
    if status == 200 {
        OutputLine::answered(out_id, line.custom_id.clone(), request_id, body)
    } else {
        let error = switchyard_openai::error::ErrorBody::new(
            "server_error",
            body["error"]["message"].as_str().unwrap_or("error"),
        );
        OutputLine::refused(out_id, line.custom_id.clone(), status, request_id, &error)
    }
}

fn set_counts(state: &AppState, id: &str, total: u64, completed: u64, failed: u64) {
    if let Some(b) = lock(&state.batch_store).batches.get_mut(id) {
        b.request_counts = RequestCounts {
            total,
            completed,
            failed,
        };
    }
}
