//! Anthropic's Message Batches API on the simulator, as Anthropic serves it
//! (`anthropic-version: 2023-06-01`; `x-api-key` is accepted and ignored, as on
//! `/v1/messages`): `POST /v1/messages/batches`, `GET /v1/messages/batches` (newest first,
//! `limit`, `before_id`, `after_id`), `GET /v1/messages/batches/{id}`,
//! `POST /v1/messages/batches/{id}/cancel`, `GET /v1/messages/batches/{id}/results` (JSONL,
//! once the batch has ended) and `DELETE /v1/messages/batches/{id}`, each also under
//! `/c/{tag}`. So a client of Anthropic's batches can be run end to end at no cost, against
//! the same answers, faults, limits and bill as its real-time calls.
//!
//! A batch waits `batch_delay`, then answers its requests one by one exactly as
//! `POST /v1/messages` answers a call (`params` → [`crate::anthropic::to_chat`] → the chat
//! replay, faults and limits → [`crate::anthropic::from_chat`]). Each is logged as a call
//! whose client tag is `batch:<msgbatch id>` ([`BATCH_TAG_PREFIX`]) and whose client request
//! id is its `custom_id`, so the bill prices it at the batch discount as it does OpenAI batch
//! lines, and bills an errored request only when the real-time path would. As Anthropic does,
//! `params` are checked when the request is run (an invalid one comes back `errored`), the
//! batch itself when it is created. `batch_expire_after_lines` makes the rest of a batch
//! `expired`; a cancel makes the requests not yet run `canceled`.
//!
//! Ids come from the OpenAI [`crate::batches::BatchStore`]'s scheme (this run's mark, so a
//! restarted simulator never repeats one, and sorting by creation), and
//! `batch_creations_lost` counts OpenAI batch and message batch creations together: the
//! first N creations of either kind are carried out but answered 503.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::batches::BATCH_TAG_PREFIX;
use crate::server::{AppState, lock};

/// Requests a batch may hold.
pub const MAX_REQUESTS: usize = 100_000;

/// Bytes a batch's creation body may have (256 MB).
pub const MAX_BATCH_BYTES: usize = 256 * 1024 * 1024;

/// Lifetime of a batch: `expires_at` is this long after `created_at`.
const LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Batches a list page holds unless `limit` says otherwise, and at most.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 1000;

/// The routes, untagged and under `/c/{tag}`.
pub(crate) fn routes() -> Router<Arc<AppState>> {
    let mut router = Router::new();
    for root in ["", "/c/{tag}"] {
        let batches = format!("{root}/v1/messages/batches");
        router = router
            .route(&batches, post(create).get(list))
            .route(&format!("{batches}/{{id}}"), get(retrieve).delete(delete))
            .route(&format!("{batches}/{{id}}/cancel"), post(cancel))
            .route(&format!("{batches}/{{id}}/results"), get(results));
    }
    router
}

// ---------------------------------------------------------------------------------------
// Wire structs

/// `POST /v1/messages/batches` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateMessageBatch {
    pub requests: Vec<BatchRequest>,
}

/// One request of a batch: a Messages API request body under the client's id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchRequest {
    pub custom_id: String,
    pub params: Value,
}

/// Where a batch is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessingStatus {
    InProgress,
    Canceling,
    Ended,
}

impl ProcessingStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "in_progress",
            Self::Canceling => "canceling",
            Self::Ended => "ended",
        }
    }
}

/// How many requests are in each state; `processing` falls as results come in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRequestCounts {
    pub processing: u64,
    pub succeeded: u64,
    pub errored: u64,
    pub canceled: u64,
    pub expired: u64,
}

/// The batch object. Times are RFC 3339 UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageBatch {
    pub id: String,
    /// Always `message_batch`.
    #[serde(rename = "type")]
    pub kind: String,
    pub processing_status: ProcessingStatus,
    pub request_counts: MessageRequestCounts,
    pub ended_at: Option<String>,
    pub created_at: String,
    pub expires_at: String,
    pub archived_at: Option<String>,
    pub cancel_initiated_at: Option<String>,
    /// Set (to this server's absolute URL) once the batch has ended.
    pub results_url: Option<String>,
}

/// One line of a batch's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchResult {
    pub custom_id: String,
    pub result: ResultBody,
}

/// What became of one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResultBody {
    /// `message` is the Messages API answer.
    Succeeded {
        message: Value,
    },
    Errored {
        error: ApiError,
    },
    Canceled,
    Expired,
}

/// Anthropic's error body: `{"type": "error", "error": {"type": .., "message": ..}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Always `error`.
    #[serde(rename = "type")]
    pub kind: String,
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// `invalid_request_error`, `not_found_error`, `request_too_large`, `api_error`, ...
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        Self {
            kind: "error".to_owned(),
            error: ErrorDetail {
                kind: kind.to_owned(),
                message: message.into(),
            },
        }
    }
}

/// A page of `GET /v1/messages/batches`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageBatchPage {
    pub data: Vec<MessageBatch>,
    pub has_more: bool,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
}

/// The answer to `DELETE /v1/messages/batches/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageBatchDeleted {
    pub id: String,
    /// Always `message_batch_deleted`.
    #[serde(rename = "type")]
    pub kind: String,
}

// ---------------------------------------------------------------------------------------
// State

/// Message batches the simulator holds (in memory), by id (so by creation).
#[derive(Debug, Default)]
pub struct MessageBatchStore {
    batches: BTreeMap<String, Held>,
}

/// One batch: its object, its requests and the results so far (in input order).
#[derive(Debug)]
struct Held {
    batch: MessageBatch,
    requests: Arc<[BatchRequest]>,
    results: Vec<BatchResult>,
}

impl Held {
    fn new(id: String, requests: Vec<BatchRequest>) -> Self {
        let now = SystemTime::now();
        let batch = MessageBatch {
            id,
            kind: "message_batch".to_owned(),
            processing_status: ProcessingStatus::InProgress,
            request_counts: MessageRequestCounts {
                processing: requests.len() as u64,
                ..MessageRequestCounts::default()
            },
            ended_at: None,
            created_at: rfc3339(now),
            expires_at: rfc3339(now + LIFETIME),
            archived_at: None,
            cancel_initiated_at: None,
            results_url: None,
        };
        Self {
            batch,
            results: Vec::with_capacity(requests.len()),
            requests: requests.into(),
        }
    }

    /// The batch object as served to a client at `origin` (`http://host[/c/tag]`).
    fn view(&self, origin: &str) -> MessageBatch {
        let mut batch = self.batch.clone();
        if batch.processing_status == ProcessingStatus::Ended {
            batch.results_url = Some(format!("{origin}/v1/messages/batches/{}/results", batch.id));
        }
        batch
    }

    fn ended(&self) -> bool {
        self.batch.processing_status == ProcessingStatus::Ended
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

// ---------------------------------------------------------------------------------------
// Handlers

/// Path parameters of a collection route.
#[derive(Debug, Deserialize)]
pub(crate) struct Tagged {
    tag: Option<String>,
}

/// Path parameters of a batch's route.
#[derive(Debug, Deserialize)]
pub(crate) struct One {
    tag: Option<String>,
    id: String,
}

fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    (status, Json(ApiError::new(kind, message))).into_response()
}

fn invalid(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

fn not_found(id: &str) -> Response {
    let message = format!("No message batch with id '{id}'.");
    error(StatusCode::NOT_FOUND, "not_found_error", message)
}

/// `http://<host>[/c/<tag>]`: the root a client that reached us at `Host` (or, lacking one,
/// at our own address) uses, under the tag it used.
fn origin(state: &AppState, headers: &HeaderMap, tag: Option<&str>) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map_or_else(|| state.addr.to_string(), str::to_owned);
    match tag {
        Some(tag) => format!("http://{host}/c/{tag}"),
        None => format!("http://{host}"),
    }
}

/// `POST /v1/messages/batches`.
pub(crate) async fn create(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let bytes = match axum::body::to_bytes(body, MAX_BATCH_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            let message = format!("a message batch is at most {MAX_BATCH_BYTES} bytes: {e}");
            return error(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large", message);
        }
    };
    let request: CreateMessageBatch = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => return invalid(format!("invalid request body: {e}")),
    };
    if let Err(message) = check(&request.requests) {
        return invalid(message);
    }
    tokio::time::sleep(state.config.batch_create_latency).await;
    let (id, lose) = {
        let mut ids = lock(&state.batch_store);
        let lose = ids.lose_creation(state.config.batch_creations_lost);
        (ids.id("msgbatch"), lose)
    };
    let held = Held::new(id.clone(), request.requests);
    let batch = held.view("");
    lock(&state.message_batches)
        .batches
        .insert(id.clone(), held);
    tokio::spawn(run(state, id));
    if lose {
        // Created, but the answer is lost on its way.
        let message = "the message batch was created; this answer was lost";
        return error(StatusCode::SERVICE_UNAVAILABLE, "api_error", message);
    }
    Json(batch).into_response()
}

/// What Anthropic checks when a batch is created: 1..=100,000 requests, each `custom_id`
/// matching `^[a-zA-Z0-9_-]{1,64}$` and unique, each `params` an object (its contents are
/// checked when it runs).
///
/// # Errors
/// A message naming the first request at fault (`requests.<index>.<field>`).
pub fn check(requests: &[BatchRequest]) -> Result<(), String> {
    if requests.is_empty() {
        return Err("requests: a message batch needs at least 1 request".to_owned());
    }
    if requests.len() > MAX_REQUESTS {
        return Err(format!(
            "requests: a message batch holds at most {MAX_REQUESTS} requests, not {}",
            requests.len()
        ));
    }
    let mut seen = HashMap::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        let id = &r.custom_id;
        if !valid_custom_id(id) {
            return Err(format!(
                "requests.{i}.custom_id: {id:?} does not match ^[a-zA-Z0-9_-]{{1,64}}$"
            ));
        }
        if let Some(first) = seen.insert(id.as_str(), i) {
            return Err(format!(
                "requests.{i}.custom_id: {id:?} is not unique within the batch \
                 (requests.{first} has it too)"
            ));
        }
        if !r.params.is_object() {
            return Err(format!(
                "requests.{i}.params ({id:?}): must be a Messages API request object"
            ));
        }
    }
    Ok(())
}

/// `^[a-zA-Z0-9_-]{1,64}$`.
fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `GET /v1/messages/batches/{id}`.
pub(crate) async fn retrieve(
    State(state): State<Arc<AppState>>,
    Path(at): Path<One>,
    headers: HeaderMap,
) -> Response {
    let origin = origin(&state, &headers, at.tag.as_deref());
    match lock(&state.message_batches).batches.get(&at.id) {
        Some(held) => Json(held.view(&origin)).into_response(),
        None => not_found(&at.id),
    }
}

/// `limit`, `before_id` and `after_id` of a list.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    limit: Option<usize>,
    before_id: Option<String>,
    after_id: Option<String>,
}

/// `GET /v1/messages/batches`: newest first. `after_id` gives the page after that batch
/// (older ones: page forward with `after_id = last_id`), `before_id` the page before it
/// (newer ones, still newest first); `has_more` says whether more lie that way.
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Path(at): Path<Tagged>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(q)) => q,
        Err(e) => return invalid(e.body_text()),
    };
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return invalid(format!("limit: must be 1 to {MAX_LIMIT}, not {limit}"));
    }
    if query.before_id.is_some() && query.after_id.is_some() {
        return invalid("before_id and after_id cannot both be given");
    }
    let origin = origin(&state, &headers, at.tag.as_deref());
    let store = lock(&state.message_batches);
    let (rows, has_more) = page(&store.batches, &query, limit);
    let data: Vec<MessageBatch> = rows.iter().map(|h| h.view(&origin)).collect();
    Json(MessageBatchPage {
        first_id: data.first().map(|b| b.id.clone()),
        last_id: data.last().map(|b| b.id.clone()),
        data,
        has_more,
    })
    .into_response()
}

/// The batches of one page, newest first, and whether more lie beyond it (older ones for
/// `after_id` or no cursor, newer ones for `before_id`).
fn page<'a>(
    batches: &'a BTreeMap<String, Held>,
    query: &ListQuery,
    limit: usize,
) -> (Vec<&'a Held>, bool) {
    let (mut rows, newer): (Vec<&Held>, bool) = match (&query.after_id, &query.before_id) {
        (Some(after), _) => (
            batches
                .range::<str, _>((Bound::Unbounded, Bound::Excluded(after.as_str())))
                .rev()
                .map(|(_, h)| h)
                .take(limit + 1)
                .collect(),
            false,
        ),
        (None, Some(before)) => (
            batches
                .range::<str, _>((Bound::Excluded(before.as_str()), Bound::Unbounded))
                .map(|(_, h)| h)
                .take(limit + 1)
                .collect(),
            true,
        ),
        (None, None) => (batches.values().rev().take(limit + 1).collect(), false),
    };
    let more = rows.len() > limit;
    rows.truncate(limit);
    if newer {
        rows.reverse();
    }
    (rows, more)
}

/// `POST /v1/messages/batches/{id}/cancel`: an in-progress batch becomes `canceling`; any
/// other is answered as it is.
pub(crate) async fn cancel(
    State(state): State<Arc<AppState>>,
    Path(at): Path<One>,
    headers: HeaderMap,
) -> Response {
    let origin = origin(&state, &headers, at.tag.as_deref());
    let mut store = lock(&state.message_batches);
    let Some(held) = store.batches.get_mut(&at.id) else {
        return not_found(&at.id);
    };
    if held.batch.processing_status == ProcessingStatus::InProgress {
        held.batch.processing_status = ProcessingStatus::Canceling;
        held.batch.cancel_initiated_at = Some(rfc3339(SystemTime::now()));
    }
    Json(held.view(&origin)).into_response()
}

/// `GET /v1/messages/batches/{id}/results`: one JSON line per request, in input order, once
/// the batch has ended.
pub(crate) async fn results(State(state): State<Arc<AppState>>, Path(at): Path<One>) -> Response {
    let store = lock(&state.message_batches);
    let Some(held) = store.batches.get(&at.id) else {
        return not_found(&at.id);
    };
    if !held.ended() {
        return invalid(format!(
            "Message batch {} has not ended yet (processing_status: {}); its results can be \
             read once it has ended.",
            at.id,
            held.batch.processing_status.as_str()
        ));
    }
    let mut text = String::new();
    for line in &held.results {
        text.push_str(&serde_json::to_string(line).unwrap_or_default());
        text.push('\n');
    }
    ([(header::CONTENT_TYPE, "application/x-jsonl")], text).into_response()
}

/// `DELETE /v1/messages/batches/{id}`: only an ended batch.
pub(crate) async fn delete(State(state): State<Arc<AppState>>, Path(at): Path<One>) -> Response {
    let mut store = lock(&state.message_batches);
    let Some(held) = store.batches.get(&at.id) else {
        return not_found(&at.id);
    };
    if !held.ended() {
        return invalid(format!(
            "Message batch {} cannot be deleted while it is {}: cancel it and wait until it \
             has ended.",
            at.id,
            held.batch.processing_status.as_str()
        ));
    }
    store.batches.remove(&at.id);
    Json(MessageBatchDeleted {
        id: at.id,
        kind: "message_batch_deleted".to_owned(),
    })
    .into_response()
}

// ---------------------------------------------------------------------------------------
// Processing

/// Answers a batch's requests one by one after `batch_delay`, then ends it.
async fn run(state: Arc<AppState>, id: String) {
    tokio::time::sleep(state.config.batch_delay).await;
    let requests = lock(&state.message_batches)
        .batches
        .get(&id)
        .map(|h| Arc::clone(&h.requests));
    let Some(requests) = requests else { return };
    // Once the batch stops (cancelled or expired), every request left ends the same way.
    let mut stopped = None;
    for (n, request) in requests.iter().enumerate() {
        stopped = stopped.or_else(|| stop_before(&state, &id, n));
        let result = match &stopped {
            Some(end) => end.clone(),
            None => answer(&state, &id, request).await,
        };
        record(&state, &id, &request.custom_id, result);
    }
    if let Some(held) = lock(&state.message_batches).batches.get_mut(&id) {
        held.batch.processing_status = ProcessingStatus::Ended;
        held.batch.ended_at = Some(rfc3339(SystemTime::now()));
    }
}

/// `canceled` once a cancel has come in, `expired` from request `n` on when
/// `batch_expire_after_lines` says so; `None` to run request `n`.
fn stop_before(state: &AppState, id: &str, n: usize) -> Option<ResultBody> {
    let canceling = lock(&state.message_batches)
        .batches
        .get(id)
        .is_some_and(|h| h.batch.processing_status == ProcessingStatus::Canceling);
    if canceling {
        Some(ResultBody::Canceled)
    } else if state
        .config
        .batch_expire_after_lines
        .is_some_and(|after| n >= after)
    {
        Some(ResultBody::Expired)
    } else {
        None
    }
}

/// Keeps one request's result and counts it.
fn record(state: &AppState, id: &str, custom_id: &str, result: ResultBody) {
    let mut store = lock(&state.message_batches);
    let Some(held) = store.batches.get_mut(id) else {
        return;
    };
    let counts = &mut held.batch.request_counts;
    counts.processing = counts.processing.saturating_sub(1);
    match result {
        ResultBody::Succeeded { .. } => counts.succeeded += 1,
        ResultBody::Errored { .. } => counts.errored += 1,
        ResultBody::Canceled => counts.canceled += 1,
        ResultBody::Expired => counts.expired += 1,
    }
    held.results.push(BatchResult {
        custom_id: custom_id.to_owned(),
        result,
    });
}

/// One request answered as `POST /v1/messages` would answer it, logged under the batch's tag
/// with its `custom_id` as the client request id.
async fn answer(state: &Arc<AppState>, id: &str, request: &BatchRequest) -> ResultBody {
    let response = crate::server::messages(
        Arc::clone(state),
        Some(format!("{BATCH_TAG_PREFIX}{id}")),
        Some(request.custom_id.clone()),
        Some(id.to_owned()),
        Bytes::from(request.params.to_string()),
    )
    .await;
    let status = response.status();
    match axum::body::to_bytes(response.into_body(), usize::MAX).await {
        Ok(bytes) => outcome(status, serde_json::from_slice(&bytes).ok()),
        Err(e) => errored("api_error", format!("the answer broke off: {e}")),
    }
}

/// The result of a Messages answer: a Message is `succeeded`; an error is `errored`, as
/// `api_error` for 429 and 5xx and `invalid_request_error` for other 4xx.
fn outcome(status: StatusCode, body: Option<Value>) -> ResultBody {
    if status.is_success() {
        return match body {
            Some(message) if message["type"] == "message" => ResultBody::Succeeded { message },
            _ => errored("api_error", "the model's answer was malformed"),
        };
    }
    let kind = if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        "api_error"
    } else {
        "invalid_request_error"
    };
    let message = body
        .as_ref()
        .and_then(|b| b["error"]["message"].as_str())
        .map_or_else(|| format!("the request failed ({status})"), str::to_owned);
    errored(kind, message)
}

fn errored(kind: &str, message: impl Into<String>) -> ResultBody {
    ResultBody::Errored {
        error: ApiError::new(kind, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(id: &str) -> BatchRequest {
        BatchRequest {
            custom_id: id.to_owned(),
            params: json!({"model": "m", "max_tokens": 1, "messages": []}),
        }
    }

    #[test]
    fn a_batch_is_checked_as_anthropic_checks_it() {
        assert!(check(&[request("a-1_B"), request(&"x".repeat(64))]).is_ok());
        assert!(check(&[]).unwrap_err().contains("at least 1"));
        let bad = check(&[request("ok"), request("no/slash")]).unwrap_err();
        assert!(
            bad.contains("requests.1.custom_id") && bad.contains("no/slash"),
            "{bad}"
        );
        assert!(check(&[request(&"x".repeat(65))]).is_err());
        assert!(check(&[request("")]).is_err());
        let twice = check(&[request("a"), request("b"), request("a")]).unwrap_err();
        assert!(twice.contains("requests.2.custom_id") && twice.contains("not unique"));
        let mut odd = request("c");
        odd.params = json!("text");
        assert!(check(&[odd]).unwrap_err().contains("requests.0.params"));
    }

    #[test]
    fn results_take_anthropics_shapes() {
        let ok = outcome(
            StatusCode::OK,
            Some(json!({"type": "message", "id": "msg_1"})),
        );
        assert_eq!(
            serde_json::to_value(BatchResult {
                custom_id: "a".to_owned(),
                result: ok,
            })
            .unwrap(),
            json!({"custom_id": "a", "result": {"type": "succeeded",
                   "message": {"type": "message", "id": "msg_1"}}})
        );
        let refused = outcome(
            StatusCode::BAD_REQUEST,
            Some(
                json!({"type": "error", "error": {"type": "invalid_request_error",
                        "message": "`max_tokens` is required"}}),
            ),
        );
        assert_eq!(
            serde_json::to_value(refused).unwrap(),
            json!({"type": "errored", "error": {"type": "error", "error":
                   {"type": "invalid_request_error", "message": "`max_tokens` is required"}}})
        );
        for status in [StatusCode::TOO_MANY_REQUESTS, StatusCode::BAD_GATEWAY] {
            let ResultBody::Errored { error } = outcome(status, None) else {
                panic!("an error is errored");
            };
            assert_eq!(error.error.kind, "api_error");
        }
        assert_eq!(
            serde_json::to_value(ResultBody::Canceled).unwrap(),
            json!({"type": "canceled"})
        );
        assert_eq!(
            serde_json::to_value(ResultBody::Expired).unwrap(),
            json!({"type": "expired"})
        );
    }

    #[test]
    fn pages_walk_newest_first_both_ways() {
        let batches: BTreeMap<String, Held> = (1..=5)
            .map(|i| {
                let id = format!("msgbatch_{i}");
                (id.clone(), Held::new(id, vec![request("a")]))
            })
            .collect();
        let ids = |query: ListQuery, limit| {
            let (rows, more) = page(&batches, &query, limit);
            let ids: Vec<String> = rows.iter().map(|h| h.batch.id.clone()).collect();
            (ids, more)
        };
        let id = |i: u8| format!("msgbatch_{i}");
        assert_eq!(
            ids(ListQuery::default(), 2),
            (vec![id(5), id(4)], true),
            "newest first"
        );
        let after = |a: &str| ListQuery {
            after_id: Some(a.to_owned()),
            ..ListQuery::default()
        };
        assert_eq!(ids(after(&id(4)), 2), (vec![id(3), id(2)], true));
        assert_eq!(ids(after(&id(2)), 2), (vec![id(1)], false));
        let before = ListQuery {
            before_id: Some(id(2)),
            ..ListQuery::default()
        };
        assert_eq!(ids(before, 2), (vec![id(4), id(3)], true));
    }
}
