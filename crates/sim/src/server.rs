//! The HTTP server: OpenAI-compatible routes plus a small control surface for tests.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/chat/completions` | answer a chat completion (see [`crate::replay`]) |
//! | `POST /c/<tag>/v1/chat/completions` | the same, the call logged and counted in flight under client `tag` |
//! | `POST /v1/files`, `GET /v1/files/{id}/content`, `DELETE /v1/files/{id}`, `POST`/`GET /v1/batches`, `GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel` | OpenAI's Batch API, lines answered like calls and billed at the batch discount (see [`crate::batches`]) |
//! | `POST /v1/messages`, `POST /c/<tag>/v1/messages` | Anthropic's Messages API, answered the same way, with prompt caching (see [`crate::anthropic`]) |
//! | `POST`/`GET /v1/messages/batches`, `GET`/`DELETE /v1/messages/batches/{id}`, `POST …/{id}/cancel`, `GET …/{id}/results` (also under `/c/<tag>`) | Anthropic's Message Batches API, requests answered like `/v1/messages` calls and billed at the batch discount (see [`crate::message_batches`]) |
//! | `GET /v1/models` | the dataset's model names |
//! | `GET /sim/calls` | the call log as a JSON array |
//! | `GET`/`PUT /sim/faults` | read or replace the [`Faults`] at run time |
//! | `GET`/`PUT /sim/prices` | read or replace the prices the bill uses (model → [`ModelPrice`]) |
//! | `GET /v1/bill` | the exact bill of the call log at those prices ([`crate::bill`]) |
//! | `GET /healthz` | 200 when serving |
//!
//! A chat call goes through: parse (400 if malformed) → decide the answer → scripted faults →
//! rpm/tpm limits → random faults → latency → log → (hang, for a timeout fault) → respond.
//! The call is logged *before* a timeout hang so the log is complete even though the client
//! gives up first. Body-level faults (a broken connection, a trickling, truncated or odd body)
//! replace the normal response at the end.
//!
//! Calls in flight are counted per client tag ([`SimHandle::in_flight`]), so a chaos test can
//! say how many calls a process had open when it was killed.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::bill::{Bill, ModelPrice};
use crate::call_log::{CallLog, CallRecord};
use crate::confidence::Calibration;
use crate::config::SimConfig;
use crate::dataset::Dataset;
use crate::error::SimError;
use crate::faults::{Fault, Faults, OddAnswer};
use crate::hashing::SplitMix64;
use crate::openai::{ChatRequest, ChatResponse, ErrorBody, ModelList};
use crate::rate_limit::RateLimiter;
use crate::replay::{self, Question};

/// Request bodies up to this size are accepted (long articles fit easily).
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// How long [`SimHandle::shutdown`] waits for the server task before aborting it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A simulator on a free loopback port replaying one MMLU question answered by Mixtral
/// (right, 20 prompt tokens, 1 completion token): what the batch APIs' tests of the simulator
/// and of the worker's batch clients need, in one place.
///
/// # Errors
/// As [`start`], or when no loopback port is free.
pub async fn start_one_question(config: SimConfig) -> Result<SimHandle, SimError> {
    const ROW: &str = r#"{"id": "q1", "task": "mmlu/x", "prompt": "Pick one.\nA. a\nB. b\nAnswer:", "choices": ["a", "b"], "models": {"mistralai/Mixtral-8x7B-Instruct-v0.1": {"score": 1.0, "prompt_tokens": 20, "completion_tokens": 1}}}"#;
    let data = Arc::new(Dataset::from_jsonl_str("mmlu.jsonl", ROW)?);
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(SimError::Listener)?;
    start(listener, data, config).await
}

/// Starts serving on `listener` in a background task and returns at once.
pub async fn start(
    listener: TcpListener,
    dataset: Arc<Dataset>,
    config: SimConfig,
) -> Result<SimHandle, SimError> {
    let addr = listener.local_addr().map_err(SimError::Listener)?;
    let log = match &config.call_log_path {
        Some(path) => CallLog::with_file(path)?,
        None => CallLog::default(),
    };
    let stop = CancellationToken::new();
    let state = Arc::new(AppState {
        calibration: Calibration::new(config.auroc, config.confidence_bias),
        faults: Mutex::new(config.faults.clone()),
        limiter: Mutex::new(RateLimiter::new(config.rpm_limit, config.tpm_limit)),
        rng: Mutex::new(SplitMix64::new(config.seed)),
        in_flight: Mutex::new(HashMap::new()),
        log,
        prices: Mutex::new(BTreeMap::new()),
        cache: Mutex::new(std::collections::HashSet::new()),
        samples_drawn: Mutex::new(HashMap::new()),
        batch_store: Mutex::new(crate::batches::BatchStore::default()),
        message_batches: Mutex::new(crate::message_batches::MessageBatchStore::default()),
        addr: loopback(addr),
        dataset,
        config,
        stop: stop.clone(),
    });

    let app = routes(Arc::clone(&state));
    let shutdown = stop.clone().cancelled_owned();
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(%error, "model simulator stopped serving");
        }
    });
    Ok(SimHandle {
        addr,
        state,
        stop,
        task: Some(task),
    })
}

/// A running simulator. Dropping it stops the server (without waiting); call
/// [`SimHandle::shutdown`] to stop and wait.
#[derive(Debug)]
pub struct SimHandle {
    addr: SocketAddr,
    state: Arc<AppState>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl SimHandle {
    /// The OpenAI base URL, e.g. `http://127.0.0.1:8089/v1` (loopback if bound to any address).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", loopback(self.addr))
    }

    /// The OpenAI base URL under client tag `tag` (`http://…/c/<tag>/v1`): calls through it
    /// are logged with `client = tag` and counted by [`SimHandle::in_flight`].
    pub fn base_url_for(&self, tag: &str) -> String {
        let base = self.base_url();
        let root = base.trim_end_matches("/v1");
        format!("{root}/c/{tag}/v1")
    }

    /// Calls of client `tag` being served right now (received, not yet answered in full).
    pub fn in_flight(&self, tag: &str) -> u64 {
        lock(&self.state.in_flight).get(tag).copied().unwrap_or(0)
    }

    /// Calls of every client being served right now.
    pub fn in_flight_total(&self) -> u64 {
        lock(&self.state.in_flight).values().sum()
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The rows this simulator replays.
    pub fn dataset(&self) -> Arc<Dataset> {
        Arc::clone(&self.state.dataset)
    }

    /// A copy of the call log so far.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.state.log.snapshot()
    }

    /// Replaces the faults; pending `fail_next`/`rate_limit_next` counts are replaced too.
    pub fn set_faults(&self, faults: Faults) {
        *self.state.faults() = faults;
    }

    /// The faults in force (with scripted counts as consumed so far).
    pub fn faults(&self) -> Faults {
        self.state.faults().clone()
    }

    /// Stops accepting calls, cuts short latency and hangs in progress, and waits for the
    /// server task to finish.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
                tracing::warn!("model simulator did not stop in time; aborting it");
                abort.abort();
            }
        }
    }
}

/// `addr`, with loopback for an unspecified (any) address: where a local client reaches it.
fn loopback(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(Ipv4Addr::LOCALHOST.into());
    }
    addr
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Everything the handlers share.
#[derive(Debug)]
pub(crate) struct AppState {
    /// `(model, system text)` written to the Anthropic prompt cache so far.
    cache: Mutex<std::collections::HashSet<(String, String)>>,
    /// Requests at a temperature above 0 seen so far on the Anthropic route, per call (a
    /// hash of its client request id, model and prompt): the next one's sample (Anthropic has
    /// no `seed` and no `n`, see [`messages`]).
    samples_drawn: Mutex<HashMap<u64, u64>>,
    /// Files and batches of the batch API.
    pub(crate) batch_store: Mutex<crate::batches::BatchStore>,
    /// Anthropic's message batches (ids and lost creations come from `batch_store`).
    pub(crate) message_batches: Mutex<crate::message_batches::MessageBatchStore>,
    /// Where the server listens (loopback if bound to any address), for URLs it hands out
    /// when a request names no `Host`.
    pub(crate) addr: SocketAddr,
    dataset: Arc<Dataset>,
    pub(crate) config: SimConfig,
    calibration: Calibration,
    faults: Mutex<Faults>,
    limiter: Mutex<RateLimiter>,
    rng: Mutex<SplitMix64>,
    /// Calls being served, per client tag (`""` for untagged routes).
    in_flight: Mutex<HashMap<String, u64>>,
    log: CallLog,
    /// What the provider charges, for `GET /v1/bill`.
    prices: Mutex<BTreeMap<String, ModelPrice>>,
    stop: CancellationToken,
}

/// Counts one call in flight for its client while alive (a dropped handler, e.g. when the
/// client hangs up, counts as finished).
struct InFlight {
    state: Arc<AppState>,
    tag: String,
}

impl InFlight {
    fn new(state: &Arc<AppState>, tag: &str) -> Self {
        *lock(&state.in_flight).entry(tag.to_owned()).or_insert(0) += 1;
        Self {
            state: Arc::clone(state),
            tag: tag.to_owned(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(n) = lock(&self.state.in_flight).get_mut(&self.tag) {
            *n = n.saturating_sub(1);
        }
    }
}

impl AppState {
    fn faults(&self) -> MutexGuard<'_, Faults> {
        lock(&self.faults)
    }

    /// Decides whether a call of `tokens` tokens to `model` is faulted, and how long a
    /// timeout would hang (or a trickling body take).
    fn decide_fault(&self, model: &str, tokens: u32) -> (Option<Fault>, Duration, Duration) {
        let (scripted, faults) = {
            let mut faults = self.faults();
            (faults.take_scripted(), faults.clone())
        };
        if scripted.is_some() {
            return (scripted, faults.hang, faults.trickle);
        }
        if let Err(limited) = lock(&self.limiter).admit(model, tokens, Instant::now()) {
            return (Some(limited), faults.hang, faults.trickle);
        }
        let (error_roll, timeout_roll, body_roll) = {
            let mut rng = lock(&self.rng);
            (rng.next_f64(), rng.next_f64(), rng.next_f64())
        };
        let fault = faults
            .roll(error_roll, timeout_roll)
            .or_else(|| faults.roll_body(body_roll));
        (fault, faults.hang, faults.trickle)
    }

    /// This call's latency: `latency ± uniform(jitter)`, never negative.
    fn latency(&self) -> Duration {
        let (base, jitter) = (self.config.latency, self.config.latency_jitter);
        if jitter.is_zero() {
            return base;
        }
        let offset = jitter.as_secs_f64() * (2.0 * lock(&self.rng).next_f64() - 1.0);
        Duration::from_secs_f64((base.as_secs_f64() + offset).max(0.0))
    }

    /// Sleeps for `duration`, or less if the server is shutting down.
    async fn pause(&self, duration: Duration) {
        if duration.is_zero() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(duration) => {}
            () = self.stop.cancelled() => {}
        }
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(untagged_chat))
        .route("/c/{tag}/v1/chat/completions", post(tagged_chat))
        .route("/v1/messages", post(untagged_messages))
        .merge(crate::batches::routes())
        .route("/c/{tag}/v1/messages", post(tagged_messages))
        .merge(crate::message_batches::routes())
        .route("/v1/models", get(list_models))
        .route("/c/{tag}/v1/models", get(list_models))
        .route("/sim/calls", get(list_calls))
        .route("/sim/faults", get(get_faults).put(put_faults))
        .route("/sim/prices", get(get_prices).put(put_prices))
        .route("/v1/bill", get(get_bill))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn untagged_chat(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    chat_completions(state, None, request_id(&headers), body, None).await
}

async fn tagged_chat(
    State(state): State<Arc<AppState>>,
    Path(tag): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    chat_completions(state, Some(tag), request_id(&headers), body, None).await
}

async fn untagged_messages(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let id = request_id(&headers);
    messages(state, None, id.clone(), id, body).await
}

async fn tagged_messages(
    State(state): State<Arc<AppState>>,
    Path(tag): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let id = request_id(&headers);
    messages(state, Some(tag), id.clone(), id, body).await
}

/// Anthropic's Messages API: the request answered as its chat completion, the answer (or
/// error) rewritten in Anthropic's shape. Bodies a fault broke on purpose go out as they are.
/// A request of a message batch is answered here too ([`crate::message_batches`]).
///
/// `sample_key` names the call whose repeated requests are its samples: the client request
/// id in real time (a call's requests share it), the batch's id in a message batch (where
/// each request has a `custom_id` of its own, and a call's requests are identical requests
/// of one batch).
pub(crate) async fn messages(
    state: Arc<AppState>,
    client: Option<String>,
    client_request_id: Option<String>,
    sample_key: Option<String>,
    body: Bytes,
) -> Response {
    let (mut chat, cached) = match crate::anthropic::to_chat(&body) {
        Ok(c) => c,
        Err(message) => {
            let e = serde_json::json!({"type": "error",
                "error": {"type": "invalid_request_error", "message": message}});
            return (StatusCode::BAD_REQUEST, Json(e)).into_response();
        }
    };
    // Anthropic has neither `seed` nor `n`: a client that wants several samples of one
    // answer asks again at a temperature above 0, and a real model answers differently each
    // time. Here the k-th such request of one call (its client request id and prompt) is
    // answered with sample k, as OpenAI's `seed = k` would be: the first is the replayed
    // answer, the others repeat it as often as its confidence says. In a message batch a
    // call's requests are identical requests of the batch: the k-th is sample k.
    if chat["temperature"].as_f64().is_some_and(|t| t > 0.0) {
        // A hash of the call, not its text: the map lives as long as the server.
        let key = crate::hashing::stable_hash(&[
            sample_key.as_deref().unwrap_or_default().as_bytes(),
            chat["model"].as_str().unwrap_or_default().as_bytes(),
            chat["messages"].to_string().as_bytes(),
        ]);
        let mut drawn = lock(&state.samples_drawn);
        let k = drawn.entry(key).or_insert(0);
        chat["seed"] = serde_json::json!(*k);
        *k += 1;
    }
    // Written the first time a model sees the marked system text, read afterwards.
    let cache = cached.map(|(text, hour)| {
        let model = chat["model"].as_str().unwrap_or_default().to_owned();
        let tokens = u32::try_from(text.len().div_ceil(4)).unwrap_or(u32::MAX);
        if lock(&state.cache).insert((model, text)) {
            (tokens, hour, 0)
        } else {
            (0, hour, tokens)
        }
    });
    let chat_body = Bytes::from(chat.to_string());
    let response =
        chat_completions(state.clone(), client, client_request_id, chat_body, cache).await;
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        // The answer's connection breaks mid-body (the reset fault): so does this one's,
        // after its `200` (a call the log bills, as a provider does).
        return broken_after(Bytes::from_static(b"{\"id\":\"msg_"));
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    let status = parts.status;
    let rewritten = if status.is_success() {
        crate::anthropic::from_chat(&value, cache.unwrap_or((0, false, 0)))
    } else {
        crate::anthropic::error_from_chat(status.as_u16(), &value)
    };
    let mut out = (status, Json(rewritten)).into_response();
    for (name, v) in &parts.headers {
        if name != header::CONTENT_LENGTH && name != header::CONTENT_TYPE {
            out.headers_mut().insert(name.clone(), v.clone());
        }
    }
    out
}

/// The client's id of the request (`X-Client-Request-Id`), as OpenAI logs it.
fn request_id(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get("x-client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Prompt tokens a call read from or wrote to the prompt cache (the Anthropic route):
/// `(written, written for an hour, read)`, before they are capped at the prompt.
pub(crate) type CacheUse = (u32, bool, u32);

/// The cache use capped at a `prompt` of that many tokens: the cache never holds more than
/// the prompt. The Anthropic answer and the call log both use this.
pub(crate) fn capped(cache: CacheUse, prompt: u32) -> CacheUse {
    let (written, hour, read) = cache;
    let written = written.min(prompt);
    (written, hour, read.min(prompt - written))
}

pub(crate) async fn chat_completions(
    state: Arc<AppState>,
    client: Option<String>,
    client_request_id: Option<String>,
    body: Bytes,
    cache: Option<CacheUse>,
) -> Response {
    let _in_flight = InFlight::new(&state, client.as_deref().unwrap_or_default());
    let request = match ChatRequest::parse(&body) {
        Ok(request) => request,
        Err(message) => {
            let mut call = CallRecord::new(model_hint(&body), 400);
            call.client = client;
            call.client_request_id = client_request_id;
            state.log.record(call);
            let error = ErrorBody::new(message, "invalid_request_error", "invalid_request");
            return error_response(StatusCode::BAD_REQUEST, error, None);
        }
    };

    let (text, system) = (request.last_user_text(), request.system_text());
    let question = Question {
        model: &request.model,
        text: &text,
        system: &system,
        prompt_chars: request.prompt_chars(),
        max_tokens: request.max_tokens(),
    };
    let answers: Vec<replay::Answer> = request
        .sample_indices()
        .into_iter()
        .map(|i| {
            replay::sample(
                &state.dataset,
                &state.calibration,
                state.config.seed,
                &question,
                i,
            )
        })
        .collect();
    let answer = &answers[0];
    let completion_tokens = answers
        .iter()
        .fold(0u32, |sum, a| sum.saturating_add(a.completion_tokens));
    let tokens = answer.prompt_tokens.saturating_add(completion_tokens);
    let (fault, hang, trickle) = state.decide_fault(&request.model, tokens);
    // A batch line has no connection to break, hold open or trickle down: connection faults
    // do not apply to it (what is written to its output file is served, and billed).
    let batch_line = client
        .as_deref()
        .is_some_and(|c| c.starts_with(crate::batches::BATCH_TAG_PREFIX));
    let fault = fault
        .filter(|f| !(batch_line && matches!(f, Fault::Timeout | Fault::Reset | Fault::Trickle)));

    let mut call = CallRecord::new(request.model.clone(), fault.map_or(200, |f| f.status()));
    call.record_id.clone_from(&answer.record_id);
    call.fault = fault.map(|f| f.name().to_owned());
    call.client = client;
    call.client_request_id = client_request_id;

    // Every fault but a timeout answers an error instead of the answer.
    let failure = fault.and_then(|f| Some((f, f.error()?)));
    if let Some((fault, (message, kind, code))) = failure {
        if matches!(fault, Fault::RandomError { .. } | Fault::Status { .. }) {
            // A provider's server errors take time; its gateway's 429s do not.
            state.pause(state.latency()).await;
        }
        state.log.record(call);
        let status =
            StatusCode::from_u16(fault.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let error = ErrorBody::new(message, kind, code);
        return error_response(status, error, fault.retry_after_secs());
    }

    state.pause(state.latency()).await;
    let faults_now = state.faults().clone();
    let pool_roll = lock(&state.rng).next_u64();
    let response_id = match faults_now.response_id_pool {
        0 => format!("chatcmpl-{}", Uuid::now_v7().simple()),
        pool => format!("chatcmpl-{}", pool_roll % u64::from(pool)),
    };
    // Only an answer the client can use is matched with its books.
    if fault.is_none_or(|f| f.answers()) {
        call.response_id = Some(response_id.clone());
    }
    call.answer = Some(answer.content.clone());
    call.correct = answer.correct;
    call.score = answer.score;
    call.confidence = Some(answer.confidence);
    call.prompt_tokens = answer.prompt_tokens;
    if let Some(cache) = cache {
        let (written, hour, read) = capped(cache, answer.prompt_tokens);
        call.cache_write_tokens = written;
        call.cache_write_1h_tokens = if hour { written } else { 0 };
        call.cached_prompt_tokens = read;
    }
    call.completion_tokens = completion_tokens;
    call.choices = u32::try_from(answers.len()).unwrap_or(u32::MAX);
    if fault == Some(Fault::Odd(OddAnswer::Huge)) {
        // Billed for what it generated.
        let extra = u32::try_from(faults_now.huge_answer_bytes.div_ceil(4)).unwrap_or(u32::MAX);
        call.completion_tokens = call.completion_tokens.saturating_add(extra);
    }
    state.log.record(call);

    if fault == Some(Fault::Timeout) {
        state.pause(hang).await;
    }
    // In the no-logprobs mode the provider never sends them, asked or not.
    let top_logprobs = (state.config.logprobs && request.logprobs.unwrap_or(false))
        .then(|| request.top_logprobs.unwrap_or(0));
    let response = ChatResponse::with_choices(
        response_id,
        unix_secs(),
        request.model.clone(),
        &answers,
        top_logprobs,
    );
    match fault {
        Some(Fault::Reset) => broken_body(&response),
        Some(Fault::MalformedJson) => malformed_body(&response),
        Some(Fault::NoUsage) => edited_body(&response, |v| {
            if let Some(o) = v.as_object_mut() {
                o.remove("usage");
            }
        }),
        Some(Fault::EmptyChoices) => edited_body(&response, |v| {
            v["choices"] = serde_json::Value::Array(Vec::new());
        }),
        Some(Fault::Trickle) => trickling_body(&response, trickle),
        Some(Fault::Odd(kind)) => odd_body(response, kind, faults_now.huge_answer_bytes),
        _ => Json(response).into_response(),
    }
}

/// A complete `200` body that is odd in the way `kind` says.
fn odd_body(mut response: ChatResponse, kind: OddAnswer, huge_bytes: usize) -> Response {
    // Private-use characters mark where the lone surrogate goes: serde_json writes them as
    // they are, and cannot write a lone surrogate itself.
    const MARK: &str = "\u{e000}\u{e001}";
    let Some(choice) = response.choices.first_mut() else {
        return Json(response).into_response();
    };
    let content = &mut choice.message.content;
    match kind {
        OddAnswer::ControlChars => content.push_str("\u{0}\u{1}\u{7}\u{1b}[0m\u{0}"),
        OddAnswer::LoneSurrogate => content.push_str(MARK),
        OddAnswer::Empty => content.clear(),
        OddAnswer::Huge => {
            content.push_str(&"x".repeat(huge_bytes));
            // It generated them, so it bills them (see the call record) and says so in its
            // usage, as a provider does.
            let extra = u32::try_from(huge_bytes.div_ceil(4)).unwrap_or(u32::MAX);
            let u = &mut response.usage;
            u.completion_tokens = u.completion_tokens.saturating_add(extra);
            u.total_tokens = u.prompt_tokens.saturating_add(u.completion_tokens);
        }
        OddAnswer::OddUsage | OddAnswer::OddShapes => {}
    }
    let mut value = serde_json::to_value(&response).unwrap_or_default();
    match kind {
        OddAnswer::OddUsage => {
            value["usage"] = serde_json::json!({
                "prompt_tokens": -5, "completion_tokens": "7", "total_tokens": 1.5
            });
        }
        OddAnswer::OddShapes => {
            value["id"] = serde_json::json!(12345);
            let text = value["choices"][0]["message"]["content"].clone();
            value["choices"][0]["message"]["content"] =
                serde_json::json!([{"type": "text", "text": text}]);
        }
        _ => {}
    }
    let mut text = serde_json::to_string(&value).unwrap_or_default();
    if kind == OddAnswer::LoneSurrogate {
        text = text.replace(MARK, "\\ud800");
    }
    json_response(text)
}

fn json_response(body: impl Into<axum::body::Body>) -> Response {
    let mut response = Response::new(body.into());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The status line and the first bytes of the body, then the connection breaks. The break
/// comes a moment after the first bytes, so the client has read the `200` (a break in the
/// same write would be seen as a connection that failed before any answer).
fn broken_body(response: &ChatResponse) -> Response {
    let bytes = serde_json::to_vec(response).unwrap_or_default();
    broken_after(Bytes::copy_from_slice(&bytes[..bytes.len().min(16)]))
}

/// A `200` that sends `head`, then breaks its connection.
fn broken_after(head: Bytes) -> Response {
    use futures::StreamExt as _;
    let first = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(head) });
    let then_break = futures::stream::once(async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset (simulated)",
        ))
    });
    json_response(axum::body::Body::from_stream(first.chain(then_break)))
}

/// 200 with the JSON cut in the middle.
fn malformed_body(response: &ChatResponse) -> Response {
    let mut bytes = serde_json::to_vec(response).unwrap_or_default();
    bytes.truncate(bytes.len() / 2);
    json_response(bytes)
}

/// 200 with the JSON body edited by `edit`.
fn edited_body(response: &ChatResponse, edit: impl FnOnce(&mut serde_json::Value)) -> Response {
    let mut value = serde_json::to_value(response).unwrap_or_default();
    edit(&mut value);
    json_response(serde_json::to_vec(&value).unwrap_or_default())
}

/// The correct body in 20 pieces spread over `total`.
fn trickling_body(response: &ChatResponse, total: Duration) -> Response {
    const PIECES: usize = 20;
    let bytes = Bytes::from(serde_json::to_vec(response).unwrap_or_default());
    let piece = bytes.len().div_ceil(PIECES).max(1);
    let pause = total / PIECES as u32;
    let stream = futures::stream::unfold(0usize, move |at| {
        let bytes = bytes.clone();
        async move {
            if at >= bytes.len() {
                return None;
            }
            if at > 0 {
                tokio::time::sleep(pause).await;
            }
            let end = (at + piece).min(bytes.len());
            Some((Ok::<_, std::io::Error>(bytes.slice(at..end)), end))
        }
    });
    json_response(axum::body::Body::from_stream(stream))
}

async fn list_models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList::new(state.dataset.models()))
}

async fn list_calls(State(state): State<Arc<AppState>>) -> Json<Vec<CallRecord>> {
    Json(state.log.snapshot())
}

async fn get_prices(State(state): State<Arc<AppState>>) -> Json<BTreeMap<String, ModelPrice>> {
    Json(lock(&state.prices).clone())
}

async fn put_prices(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    match serde_json::from_slice::<BTreeMap<String, ModelPrice>>(&body) {
        Ok(prices) => {
            *lock(&state.prices) = prices.clone();
            Json(prices).into_response()
        }
        Err(error) => {
            let message = format!(
                "invalid prices (expected {{\"model\": {{\"input_usd_per_mtok\": \"0.15\", \
                 \"output_usd_per_mtok\": \"0.6\"}}}}): {error}"
            );
            let error = ErrorBody::new(message, "invalid_request_error", "invalid_request");
            error_response(StatusCode::BAD_REQUEST, error, None)
        }
    }
}

async fn get_bill(State(state): State<Arc<AppState>>) -> Json<Bill> {
    let prices = lock(&state.prices).clone();
    Json(crate::bill::bill(&state.log.snapshot(), &prices))
}

async fn get_faults(State(state): State<Arc<AppState>>) -> Json<Faults> {
    Json(state.faults().clone())
}

async fn put_faults(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body) {
        Ok(faults) => {
            *state.faults() = faults.clone();
            tracing::info!(?faults, "faults replaced");
            Json(faults).into_response()
        }
        Err(error) => {
            let message = format!("invalid faults: {error}");
            let error = ErrorBody::new(message, "invalid_request_error", "invalid_request");
            error_response(StatusCode::BAD_REQUEST, error, None)
        }
    }
}

async fn not_found() -> Response {
    let error = ErrorBody::new("Unknown route.", "invalid_request_error", "not_found");
    error_response(StatusCode::NOT_FOUND, error, None)
}

fn error_response(status: StatusCode, body: ErrorBody, retry_after: Option<u32>) -> Response {
    let mut response = (status, Json(body)).into_response();
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// The `model` of a body that failed validation, if it has one, for the call log.
fn model_hint(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("model")?.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub(crate) fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
