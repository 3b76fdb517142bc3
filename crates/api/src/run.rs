//! A batch's life after its file passed its checks: it becomes a job, its counts follow the
//! job, and when the job stops its output and error files are written.
//!
//! 1. [`start`]: each request line becomes an item of a `chat` job (the conversation, its
//!    parameters, and the model when the line pins one; see `switchyard_proto::chat`), or,
//!    when the fleet cannot answer it as asked (`stream`, `n > 1`, tools, a routing alias it
//!    does not know, a line over the chat item limit), a refusal that goes to the error file.
//!    The job is submitted like any other, on the key's team, with idempotency key = batch
//!    id: a start taken over after its process died submits nothing twice.
//! 2. [`look`]: any API process, one at a time per batch (a lease in Postgres), looks at a
//!    running batch every `look_every`: its counts from the job's items, a cancellation or an
//!    expiry (the job is cancelled: nothing unstarted is called), and the job's end.
//! 3. [`finalize`]: the input file is read again, in order; each line's outcome comes from
//!    the job's item of the same `custom_id`. Files get deterministic ids, so a finalization
//!    taken over writes the same files again rather than new ones.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_openai::error::ErrorBody;
use switchyard_openai::input::{FileCheck, Request, RequestFault, check_chat};
use switchyard_openai::objects::{BatchError, BatchErrors, PURPOSE_BATCH_OUTPUT};
use switchyard_openai::output::{BATCH_CANCELLED, BATCH_EXPIRED, OutputLine};
use switchyard_proto::chat::{self, ChatItem, ChatMessage};
use switchyard_proto::{InputRef, Item, JobSpec, Policy, Task};
use switchyard_store::api::{self as store, BatchRow, Ending, FileRow, ItemOutcome};
use switchyard_store::jobs::{self, JobRow, status};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

use crate::Api;

/// The routing alias that routes with the batch's policy.
pub const AUTO: &str = "switchyard:auto";
/// The batch `metadata` key that names its policy (`quality=0.9`, `strong-share=0.2`, …, as
/// `switchyard submit --policy` takes it).
pub const POLICY_KEY: &str = "switchyard_policy";
/// The batch `metadata` key that names the project its spend is booked to.
pub const PROJECT_KEY: &str = "switchyard_project";
/// The project of batches that name none.
pub const DEFAULT_PROJECT: &str = "openai-batch";
/// How long one process holds a running batch's look before another may take it.
pub const RUN_LEASE: Duration = Duration::from_secs(120);

/// The policy a batch asks for: its metadata's [`POLICY_KEY`], else `default`.
///
/// # Errors
/// A policy string that does not parse, with what is wrong.
pub fn batch_policy(metadata: Option<&Value>, default: &str) -> Result<Policy, String> {
    let text = metadata
        .and_then(|m| m.get(POLICY_KEY))
        .and_then(Value::as_str)
        .unwrap_or(default);
    let parts = text
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(switchyard_client::policy_arg::parse)
        .collect::<Result<Vec<_>, _>>()?;
    let mut policy = Policy::default();
    switchyard_client::policy_arg::apply(&parts, &mut policy)?;
    Ok(policy)
}

/// One request line as the fleet takes it: an item of the job, or a refusal.
///
/// # Errors
/// The refusal (status code and OpenAI error body) that goes to the error file.
pub fn item_of(request: &Request, max_item_bytes: usize) -> Result<Item, RequestFault> {
    let chat_request = check_chat(&request.body)?;
    if chat::is_alias(&chat_request.model) && chat_request.model != AUTO {
        return Err(RequestFault {
            status_code: 404,
            body: ErrorBody::invalid_request(
                "model",
                format!(
                    "unknown routing alias `{}` (use `{AUTO}`, with a batch metadata `{POLICY_KEY}` \
                     for another policy, or a model name to pin a model)",
                    chat_request.model
                ),
            )
            .with_code("model_not_found"),
        });
    }
    let messages = chat_request
        .messages
        .into_iter()
        .map(|(role, content)| ChatMessage { role, content })
        .collect();
    let text = ChatItem::new(&chat_request.model, messages, chat_request.params).to_text();
    if text.len() > max_item_bytes {
        return Err(RequestFault {
            status_code: 400,
            body: ErrorBody::invalid_request(
                "body",
                format!(
                    "the request is {} bytes as a chat item (limit {max_item_bytes})",
                    text.len()
                ),
            )
            .with_code("request_too_large"),
        });
    }
    Ok(Item::new(request.custom_id.clone(), text))
}

/// The requests of a batch's input file, in order, read a line at a time from the object
/// store (a 200 MB file never sits in memory).
struct Requests {
    reader: BufReader<async_nats::jetstream::object_store::Object>,
    check: FileCheck,
    buf: Vec<u8>,
}

impl Requests {
    async fn open(api: &Api, batch: &BatchRow) -> anyhow::Result<Self> {
        let file = store::file(&api.pool, &batch.team, &batch.input_file_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("input file {} is gone", batch.input_file_id))?;
        let object = api
            .files
            .get(&file.object_name)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", file.object_name))?;
        Ok(Self {
            reader: BufReader::new(object),
            check: FileCheck::new(&batch.endpoint),
            buf: Vec::new(),
        })
    }

    /// The next request; `None` at the end of the file.
    async fn next(&mut self) -> anyhow::Result<Option<Request>> {
        loop {
            self.buf.clear();
            if self.reader.read_until(b'\n', &mut self.buf).await? == 0 {
                return Ok(None);
            }
            let line = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Ok(text) = std::str::from_utf8(line)
                && let Some(request) = self.check.line(text)
            {
                return Ok(Some(request));
            }
        }
    }
}

/// The job of a batch: its id is the batch's.
pub fn job_id_of(batch_id: &str) -> String {
    batch_id.to_owned()
}

/// The idempotency key of a batch's job.
pub fn idempotency_key_of(batch_id: &str) -> String {
    format!("openai-batch:{batch_id}")
}

/// The project a batch's spend is booked to: its metadata's [`PROJECT_KEY`], else
/// [`DEFAULT_PROJECT`].
fn project_of(batch: &BatchRow) -> String {
    batch
        .metadata
        .as_ref()
        .and_then(|m| m.get(PROJECT_KEY))
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_PROJECT)
        .to_owned()
}

/// Turns a batch whose `total` requests passed their checks into a job and marks it
/// `in_progress`.
///
/// # Errors
/// The file cannot be read or the job cannot be submitted: the batch stays `validating`
/// under its lease, and whoever takes it over starts it again (the job's idempotency key is
/// the batch id).
pub async fn start(api: &Api, batch: &BatchRow, total: u64) -> anyhow::Result<()> {
    let max_item_bytes = api.settings.dispatcher.max_chat_item_bytes;
    let total = i64::try_from(total).unwrap_or(i64::MAX);
    let job_id = job_id_of(&batch.batch_id);
    let key = idempotency_key_of(&batch.batch_id);
    let policy = batch_policy(batch.metadata.as_ref(), api.default_policy_of(&batch.team))
        .map_err(|e| anyhow::anyhow!("batch {}: {e}", batch.batch_id))?;
    // A start taken over after the job was submitted only counts the refusals: the job's
    // items are in the inputs bucket already, maybe being read.
    let submitted = jobs::by_idempotency_key(&api.pool, &key).await?.is_some();
    let bucket = api.settings.topology().inputs_bucket();
    let inputs = api
        .client
        .js
        .get_object_store(&bucket)
        .await
        .map_err(|e| anyhow::anyhow!("inputs bucket `{bucket}` missing: {e}"))?;
    // The items stream to the inputs bucket as the file is read, one JSONL line each.
    let (mut sink, mut source) = tokio::io::duplex(64 * 1024);
    let put = (!submitted).then(|| {
        let (inputs, name) = (inputs.clone(), job_id.clone());
        tokio::spawn(async move {
            inputs
                .put(name.as_str(), &mut source)
                .await
                .map(|_| ())
                .map_err(|e| anyhow::anyhow!("cannot store the items of {name}: {e}"))
        })
    });
    let (mut items, mut refused) = (0u64, 0i64);
    let mut requests = Requests::open(api, batch).await?;
    while let Some(r) = requests.next().await? {
        match item_of(&r, max_item_bytes) {
            Ok(item) => {
                items += 1;
                if put.is_some() {
                    let mut line = serde_json::to_vec(&item)?;
                    line.push(b'\n');
                    sink.write_all(&line).await?;
                }
            }
            Err(_) => refused += 1,
        }
    }
    if let Some(put) = put {
        sink.shutdown().await?;
        put.await??;
        if items == 0 {
            let _ = inputs.delete(job_id.as_str()).await;
        } else {
            // The completion window is the job's deadline (its calls may wait in providers'
            // batches). From the batch's own times, so a start taken over submits the same
            // spec; the batch still expires at its `expires_at`.
            let window = (batch.expires_at - batch.created_at).num_seconds();
            let mut spec = JobSpec::new(job_id.clone(), Task::Chat {})
                .with_deadline(u64::try_from(window).unwrap_or(0));
            spec.idempotency_key = Some(key);
            spec.team = Some(batch.team.clone());
            spec.project = Some(project_of(batch));
            spec.policy = policy;
            spec.labels
                .insert("openai_batch".to_owned(), batch.batch_id.clone());
            spec.input = Some(InputRef {
                bucket,
                name: job_id.clone(),
            });
            api.client.submit_uploaded(spec).await?;
        }
    }
    if !store::started(&api.pool, &batch.batch_id, &job_id, total, refused).await? {
        // Cancelled while it was being started: the job must not run either.
        tracing::info!(batch = %batch.batch_id, "batch cancelled while starting; cancelling its job");
        let _ = jobs::cancel(&api.pool, &job_id).await;
    }
    tracing::info!(batch = %batch.batch_id, total, refused, "batch in progress");
    Ok(())
}

/// Looks at running batches whose look is due, one at a time, every `every`, until
/// `shutdown`.
pub async fn looks(api: Api, every: Duration, shutdown: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Bounded per tick, so one process never starves its shutdown.
        for _ in 0..256 {
            match store::claim_due_run(&api.pool, &api.owner, RUN_LEASE).await {
                Ok(Some(batch)) => {
                    if let Err(e) = look(&api, &batch).await {
                        tracing::warn!(batch = %batch.batch_id, error = %format!("{e:#}"), "cannot look at a running batch; its lease will run out");
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for running batches");
                    break;
                }
            }
        }
    }
}

/// One look at a running batch: counts, cancellation, expiry, end.
///
/// # Errors
/// Database or object store failures (the lease runs out and the look is taken again).
pub async fn look(api: &Api, batch: &BatchRow) -> anyhow::Result<()> {
    let next = api.options.look_every;
    let Some(job_id) = batch.job_id.as_deref() else {
        return finalize(api, batch, None, Ending::Completed).await;
    };
    let expired = chrono::Utc::now() >= batch.expires_at;
    if expired && batch.expired_at.is_none() {
        store::expiring(&api.pool, &batch.batch_id).await?;
    }
    let stopping = expired || batch.expired_at.is_some() || batch.status == "cancelling";
    let mut job = jobs::get(&api.pool, job_id).await?;
    if stopping && job.as_ref().is_some_and(|j| !status::is_final(&j.status)) {
        jobs::cancel(&api.pool, job_id).await?;
        job = jobs::get(&api.pool, job_id).await?;
    }
    let Some(job) = job else {
        // Submitted, not yet admitted by a dispatcher (or every line was refused).
        let all_refused = batch.request_failed >= batch.request_total;
        if all_refused {
            return finalize(api, batch, None, Ending::Completed).await;
        }
        if stopping {
            // Nothing of it ran: a cancelled row takes the job's place before any
            // dispatcher admits it (or the dispatcher won, and the next look cancels it).
            store::cancel_unadmitted_job(
                &api.pool,
                job_id,
                &idempotency_key_of(&batch.batch_id),
                &batch.team,
                &project_of(batch),
            )
            .await?;
        }
        store::progressed(&api.pool, &batch.batch_id, 0, 0, next).await?;
        return Ok(());
    };
    if job.status == status::REJECTED {
        return fail(api, batch, &job).await;
    }
    if status::is_final(&job.status) {
        let ending = if batch.expired_at.is_some() || expired {
            Ending::Expired
        } else if batch.status == "cancelling" || batch.cancelling_at.is_some() {
            Ending::Cancelled
        } else {
            Ending::Completed
        };
        return finalize(api, batch, Some(&job), ending).await;
    }
    let states = store::item_states(&api.pool, job_id).await?;
    let n = |s: &str| states.get(s).copied().unwrap_or(0);
    store::progressed(&api.pool, &batch.batch_id, n("done"), n("failed"), next).await?;
    Ok(())
}

/// A batch whose job the dispatcher refused: `failed`, with the reason.
async fn fail(api: &Api, batch: &BatchRow, job: &JobRow) -> anyhow::Result<()> {
    let errors = BatchErrors::new(vec![BatchError {
        code: "job_rejected".to_owned(),
        message: format!(
            "the fleet refused the batch's job: {}",
            job.rejection_reason.as_deref().unwrap_or("no reason given")
        ),
        param: None,
        line: None,
    }]);
    let errors = serde_json::to_value(errors)?;
    count_end(api, Ending::Failed);
    store::finished(
        &api.pool,
        &batch.batch_id,
        Ending::Failed,
        None,
        None,
        0,
        batch.request_total,
        Some(&errors),
    )
    .await?;
    Ok(())
}

/// The status code and error body of an item that failed.
pub fn failure_of(error: &str) -> (u16, ErrorBody) {
    let code = |c: &str| ErrorBody::new("invalid_request_error", error).with_code(c);
    if error.contains("model_not_found") {
        (404, code("model_not_found"))
    } else if error.contains("budget") {
        (402, code("insufficient_quota"))
    } else if error.contains("status 4") || error.contains("HTTP 4") {
        (400, code("provider_rejected"))
    } else {
        (500, ErrorBody::new("server_error", error))
    }
}

/// A request's `chat.completion` as its final call answered it.
pub fn completion_of(o: &ItemOutcome) -> Value {
    let prompt = o.prompt_tokens.unwrap_or(0);
    let completion = o.completion_tokens.unwrap_or(0);
    let id = o
        .provider_response_id
        .clone()
        .unwrap_or_else(|| format!("chatcmpl-{}", o.call_id.as_deref().unwrap_or("")));
    json!({
        "id": id,
        "object": "chat.completion",
        "created": o.answered_at.map_or(0, |t| t.timestamp()),
        "model": o.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": o.answer, "refusal": null},
            "logprobs": null,
            // Rows from before finish reasons were kept say `stop`.
            "finish_reason": o.finish_reason.as_deref().unwrap_or("stop"),
        }],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": o.cached_prompt_tokens.unwrap_or(0)},
        },
    })
}

/// The line of one request whose item the job had.
fn line_of(custom_id: &str, o: Option<ItemOutcome>, ending: Ending) -> OutputLine {
    let id = format!("batch_req_{}", ulid::Ulid::new());
    let Some(o) = o else {
        return stopped_line(id, custom_id, ending);
    };
    let extension = json!({
        "job_id": null,
        "tiers": o.tiers.clone().unwrap_or_default(),
        "cost_usd": o.cost_usd.normalize().to_string(),
    });
    let line = match o.status.as_str() {
        "done" => OutputLine::answered(
            id,
            custom_id.to_owned(),
            o.call_id.clone().unwrap_or_default(),
            completion_of(&o),
        ),
        "failed" => {
            let error = o.error.as_deref().unwrap_or("the request failed");
            let (code, body) = failure_of(error);
            OutputLine::refused(id, custom_id.to_owned(), code, String::new(), &body)
        }
        _ => stopped_line(id, custom_id, ending),
    };
    line.with_switchyard(extension)
}

fn stopped_line(id: String, custom_id: &str, ending: Ending) -> OutputLine {
    match ending {
        Ending::Expired => OutputLine::not_run(
            id,
            custom_id.to_owned(),
            BATCH_EXPIRED,
            "the batch expired before this request ran",
        ),
        _ => OutputLine::not_run(
            id,
            custom_id.to_owned(),
            BATCH_CANCELLED,
            "the batch was cancelled before this request ran",
        ),
    }
}

/// Writes the output and error files of a batch whose job stopped (`job`: `None` when no
/// line became an item) and ends it.
///
/// # Errors
/// Database or object store failures: the lease runs out and another look finalizes again,
/// to the same file ids.
pub async fn finalize(
    api: &Api,
    batch: &BatchRow,
    job: Option<&JobRow>,
    ending: Ending,
) -> anyhow::Result<()> {
    store::finalizing(&api.pool, &batch.batch_id).await?;
    let mut outcomes: HashMap<String, ItemOutcome> = match job {
        Some(j) => store::item_outcomes(&api.pool, &j.job_id)
            .await?
            .into_iter()
            .map(|o| (o.item_id.clone(), o))
            .collect(),
        None => HashMap::new(),
    };
    let max_item_bytes = api.settings.dispatcher.max_chat_item_bytes;
    // Both files stream to the object store as their lines are made.
    let mut output = FileWriter::open(api, batch, "output");
    let mut errors = FileWriter::open(api, batch, "errors");
    let (mut completed, mut failed) = (0i64, 0i64);
    let mut requests = Requests::open(api, batch).await?;
    while let Some(r) = requests.next().await? {
        let line = match item_of(&r, max_item_bytes) {
            Err(fault) => OutputLine::refused(
                format!("batch_req_{}", ulid::Ulid::new()),
                r.custom_id.clone(),
                fault.status_code,
                String::new(),
                &fault.body,
            ),
            Ok(_) => {
                let mut line = line_of(&r.custom_id, outcomes.remove(&r.custom_id), ending);
                if let (Some(ext), Some(j)) = (line.switchyard.as_mut(), job) {
                    ext["job_id"] = json!(j.job_id);
                }
                line
            }
        };
        if line.is_success() {
            completed += 1;
            output.line(&line).await?;
        } else {
            failed += 1;
            errors.line(&line).await?;
        }
    }
    let output_id = output.finish(api, batch).await?;
    let error_id = errors.finish(api, batch).await?;
    store::finished(
        &api.pool,
        &batch.batch_id,
        ending,
        output_id.as_deref(),
        error_id.as_deref(),
        completed,
        failed,
        None,
    )
    .await?;
    count_end(api, ending);
    tracing::info!(batch = %batch.batch_id, completed, failed, ?ending, "batch finalized");
    Ok(())
}

fn count_end(api: &Api, ending: Ending) {
    let status = match ending {
        Ending::Completed => "completed",
        Ending::Cancelled => "cancelled",
        Ending::Expired => "expired",
        Ending::Failed => "failed",
    };
    api.metrics
        .api_batches
        .get_or_create(&switchyard_runtime::metrics::BatchLabels { status })
        .inc();
}

/// One of a batch's files (`output` or `errors`), streamed to the object store under an id
/// derived from the batch's as its lines are written.
struct FileWriter {
    which: &'static str,
    file_id: String,
    sink: Option<tokio::io::DuplexStream>,
    put: tokio::task::JoinHandle<anyhow::Result<()>>,
    bytes: u64,
}

impl FileWriter {
    fn open(api: &Api, batch: &BatchRow, which: &'static str) -> Self {
        let suffix = batch.batch_id.trim_start_matches("batch_");
        let file_id = format!("file-{suffix}-{which}");
        let (sink, mut source) = tokio::io::duplex(64 * 1024);
        let (files, name) = (api.files.clone(), file_id.clone());
        let put = tokio::spawn(async move {
            files
                .put(name.as_str(), &mut source)
                .await
                .map(|_| ())
                .map_err(|e| anyhow::anyhow!("cannot store {name}: {e}"))
        });
        Self {
            which,
            file_id,
            sink: Some(sink),
            put,
            bytes: 0,
        }
    }

    async fn line(&mut self, line: &OutputLine) -> anyhow::Result<()> {
        let mut text = line.to_json_line();
        text.push('\n');
        let Some(sink) = self.sink.as_mut() else {
            anyhow::bail!("{} is already closed", self.file_id);
        };
        if let Err(e) = sink.write_all(text.as_bytes()).await {
            // The upload stopped: its error says why.
            self.sink = None;
            return Err(match (&mut self.put).await {
                Ok(Err(put)) => put,
                _ => e.into(),
            });
        }
        self.bytes += text.len() as u64;
        Ok(())
    }

    /// Ends the upload and records the file; `None` (and nothing kept) when it has no line.
    async fn finish(mut self, api: &Api, batch: &BatchRow) -> anyhow::Result<Option<String>> {
        if let Some(mut sink) = self.sink.take() {
            sink.shutdown().await?;
        }
        (&mut self.put)
            .await
            .map_err(|e| anyhow::anyhow!("the upload of {} stopped: {e}", self.file_id))??;
        if self.bytes == 0 {
            let _ = api.files.delete(&self.file_id).await;
            return Ok(None);
        }
        store::insert_file_once(
            &api.pool,
            &FileRow {
                file_id: self.file_id.clone(),
                team: batch.team.clone(),
                purpose: PURPOSE_BATCH_OUTPUT.to_owned(),
                filename: format!("{}_{}.jsonl", batch.batch_id, self.which),
                bytes: i64::try_from(self.bytes).unwrap_or(i64::MAX),
                object_name: self.file_id.clone(),
                created_at: chrono::Utc::now(),
            },
        )
        .await?;
        Ok(Some(self.file_id))
    }
}
