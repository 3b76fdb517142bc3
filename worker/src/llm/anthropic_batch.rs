//! Anthropic's Message Batches API as a provider (`POST /messages/batches`,
//! `GET /messages/batches/{id}`, `GET /messages/batches`, `POST /messages/batches/{id}/cancel`,
//! `GET /messages/batches/{id}/results`, `DELETE /messages/batches/{id}`).
//!
//! What differs from OpenAI's Batch API, and why it matters for exactly once:
//! - the requests go in the creation's body (no file to upload), each a Messages API body
//!   under a `custom_id` that must match `^[a-zA-Z0-9_-]{1,64}$` (our call ids, UUIDs, do);
//! - a batch carries **no metadata**, so a batch created but never recorded (its creator
//!   died, or the creation's answer was lost) cannot be found by a tag. It is found by its
//!   results instead: [`AnthropicBatchClient::find_orphan`] lists the batches created since
//!   ours was recorded with as many requests as ours, and a candidate is ours when its
//!   results carry our call ids. A candidate still running cannot be checked yet, so the
//!   answer is then "undecided" and nothing is created until it is decided: a second batch
//!   would answer (and bill) the same items twice;
//! - there is no `n`: a line that draws samples of its answer (a weak model without
//!   logprobs) is `1 + k` identical requests under `{call}` and `{call}_s1` … `_s{k}`
//!   ([`request_custom_id`]), whose results the poller folds back into the line
//!   (`super::anthropic::fold_line`); an orphan is recognised by its count of requests, not
//!   of lines;
//! - `processing_status` is `in_progress`, `canceling` or `ended`; each result is
//!   `succeeded`, `errored`, `canceled` or `expired`;
//! - the results are read from the batch's own path (not from `results_url` as given, so the
//!   key is never sent to an address the configuration did not name), and deleting the batch
//!   deletes them.

use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_core::messages;

use super::anthropic::{ANTHROPIC_VERSION, body_of};
use super::batch_api::{
    LineResult, Lookup, Progress, ProviderBatch, read_lines, request_custom_id,
};
use super::http::{Auth, Endpoint};
use super::{Completion, CompletionRequest, ProviderError};

/// Pages read at most when looking for an orphan (100 batches a page).
pub const MAX_LIST_PAGES: usize = 20;

/// How much earlier than our record a provider's clock may date a batch we created.
pub const CLOCK_SKEW: chrono::Duration = chrono::Duration::minutes(10);

/// A client for one Anthropic endpoint's Message Batches API.
#[derive(Clone, Debug)]
pub struct AnthropicBatchClient {
    endpoint: Endpoint,
    /// The provider's label, for errors.
    name: String,
}

/// A Message Batch as the API returns it (the fields we read).
#[derive(Debug, Clone, Deserialize)]
pub struct MessageBatch {
    pub id: String,
    pub processing_status: String,
    pub request_counts: RequestCounts,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Requests of a batch per state.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RequestCounts {
    #[serde(default)]
    pub processing: u64,
    #[serde(default)]
    pub succeeded: u64,
    #[serde(default)]
    pub errored: u64,
    #[serde(default)]
    pub canceled: u64,
    #[serde(default)]
    pub expired: u64,
}

impl RequestCounts {
    fn total(&self) -> u64 {
        self.processing + self.succeeded + self.errored + self.canceled + self.expired
    }
}

#[derive(Debug, Deserialize)]
struct Page {
    data: Vec<MessageBatch>,
    #[serde(default)]
    has_more: bool,
    last_id: Option<String>,
}

/// One line of a results file. The message is kept as the provider wrote it (its bytes),
/// so that one the message parser can read is not lost to a stricter reading of the whole
/// line (a billed line skipped is called, and billed, again).
#[derive(Debug, Deserialize)]
struct ResultLine {
    custom_id: String,
    result: LineOutcome,
}

/// A line's `result`: `{"type": "succeeded", "message"}`, `{"type": "errored", "error"}`,
/// `canceled` or `expired`.
#[derive(Debug, Deserialize)]
struct LineOutcome {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    error: Option<Value>,
}

/// Whether `id` is a valid `custom_id` for Anthropic.
pub fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl AnthropicBatchClient {
    /// A client for `endpoint` (its key sent in `x-api-key`), called `name` in errors. The
    /// endpoint's body limit bounds what is read of any answer, results included.
    pub fn new(endpoint: Endpoint, name: &str) -> Self {
        Self {
            endpoint: endpoint.with_auth(Auth::ApiKeyHeader),
            name: name.to_owned(),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.endpoint
            .request(method, path)
            .header("anthropic-version", ANTHROPIC_VERSION)
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> Result<T, ProviderError> {
        let bytes = self.endpoint.send(builder, &self.name).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ProviderError::bad_body(self.name.clone(), e.to_string(), bytes.len()))
    }

    /// Creates a batch of `lines` (call id, request). Returns the provider's batch id.
    ///
    /// # Errors
    /// A custom id Anthropic would refuse (refused here, before anything is sent), or what
    /// the provider answered.
    pub async fn create(
        &self,
        lines: &[(String, CompletionRequest)],
    ) -> Result<String, ProviderError> {
        if let Some((bad, _)) = lines
            .iter()
            .find(|(id, r)| !valid_custom_id(&request_custom_id(id, r.requests().max(1) - 1)))
        {
            return Err(ProviderError::Refused {
                model: self.name.clone(),
                status: 400,
                body: format!("call id `{bad}` is not a valid custom_id (^[a-zA-Z0-9_-]{{1,64}}$)"),
            });
        }
        // A line of `n > 1` choices (extra samples of a weak answer: Anthropic has no `n`)
        // is `n` identical requests, as in real time: its own under the call id, then one per
        // sample (`request_custom_id`); the poller folds their results back into the line.
        let requests: Vec<Value> = lines
            .iter()
            .flat_map(|(id, r)| {
                let params = body_of(r);
                (0..r.requests()).map(move |j| {
                    json!({"custom_id": request_custom_id(id, j), "params": params.clone()})
                })
            })
            .collect();
        let body = json!({ "requests": requests });
        let created: MessageBatch = self
            .send(
                self.request(reqwest::Method::POST, "/messages/batches")
                    .json(&body),
            )
            .await?;
        Ok(created.id)
    }

    /// The batch as the provider sees it now.
    ///
    /// # Errors
    /// What the provider answered.
    pub async fn get(&self, id: &str) -> Result<ProviderBatch, ProviderError> {
        let b: MessageBatch = self
            .send(self.request(reqwest::Method::GET, &format!("/messages/batches/{id}")))
            .await?;
        Ok(view(&b))
    }

    /// Asks the provider to cancel a batch.
    ///
    /// # Errors
    /// What the provider answered.
    pub async fn cancel(&self, id: &str) -> Result<(), ProviderError> {
        let path = format!("/messages/batches/{id}/cancel");
        let _: Value = self
            .send(self.request(reqwest::Method::POST, &path))
            .await?;
        Ok(())
    }

    /// Looks for a batch created for our local batch but never recorded: created since
    /// `recorded_at` (less the clock skew), holding `requests` requests (a line of samples is
    /// several), not `known` (recorded for another local batch), and whose results carry one
    /// of `calls`.
    ///
    /// # Errors
    /// What the provider answered.
    pub async fn find_orphan(
        &self,
        recorded_at: chrono::DateTime<chrono::Utc>,
        calls: &[String],
        requests: usize,
        known: &std::collections::HashSet<String>,
    ) -> Result<Lookup, ProviderError> {
        let since = recorded_at - CLOCK_SKEW;
        let mut after: Option<String> = None;
        let mut undecided = None;
        'pages: for _ in 0..MAX_LIST_PAGES {
            let path = match &after {
                Some(a) => format!("/messages/batches?limit=100&after_id={a}"),
                None => "/messages/batches?limit=100".to_owned(),
            };
            let page: Page = self.send(self.request(reqwest::Method::GET, &path)).await?;
            for b in &page.data {
                if b.created_at < since {
                    // Newest first: every further one is older still.
                    break 'pages;
                }
                let same_size = usize::try_from(b.request_counts.total()) == Ok(requests);
                if !same_size || known.contains(&b.id) {
                    continue;
                }
                if b.processing_status != "ended" {
                    undecided.get_or_insert_with(|| b.id.clone());
                    continue;
                }
                let results = self.results(&b.id).await?;
                if results.iter().any(|r| calls.contains(&r.custom_id)) {
                    return Ok(Lookup::Found(view(b)));
                }
            }
            if !page.has_more {
                break;
            }
            match page.last_id {
                Some(last) => after = Some(last),
                None => break,
            }
        }
        Ok(match undecided {
            Some(id) => Lookup::Undecided(format!(
                "batch {id} may be ours and is still running; its results will tell"
            )),
            None => Lookup::Absent,
        })
    }

    /// The results of an ended batch, one per request.
    ///
    /// # Errors
    /// What the provider answered.
    pub async fn results(&self, id: &str) -> Result<Vec<LineResult>, ProviderError> {
        let path = format!("/messages/batches/{id}/results");
        let bytes = self
            .endpoint
            .send(self.request(reqwest::Method::GET, &path), &self.name)
            .await?;
        Ok(read_lines(&bytes, &self.name, id, |l: ResultLine| {
            self.result_of(l)
        }))
    }

    fn result_of(&self, line: ResultLine) -> LineResult {
        let model = self.name.clone();
        let result = match line.result.kind.as_str() {
            "succeeded" => {
                let body = line.result.message.as_deref().map_or("null", |m| m.get());
                messages::parse_message(body.as_bytes(), 0)
                    .map(|p| Completion::from_parsed(p, std::time::Duration::ZERO))
                    .map_err(|e| ProviderError::bad_body(model.clone(), e.to_string(), body.len()))
            }
            "errored" => {
                let error = line
                    .result
                    .error
                    .as_ref()
                    .and_then(|e| e.get("error"))
                    .cloned()
                    .unwrap_or(Value::Null);
                let ty = error.get("type").and_then(Value::as_str).unwrap_or("");
                let body = error.to_string();
                // The request itself was wrong: asking again would not help. Anything else
                // (overloaded, api_error) is worth another call.
                if ty == "invalid_request_error" {
                    Err(ProviderError::Refused {
                        model,
                        status: 400,
                        body,
                    })
                } else {
                    Err(ProviderError::ServerError {
                        model,
                        status: 503,
                        body,
                        retry_after: None,
                    })
                }
            }
            other => Err(ProviderError::ServerError {
                model,
                status: 503,
                body: format!("batch request {other}"),
                retry_after: None,
            }),
        };
        LineResult {
            custom_id: line.custom_id,
            result,
        }
    }

    /// Deletes an ended batch and its results at the provider (after its lines are booked).
    ///
    /// # Errors
    /// What the provider answered.
    pub async fn delete(&self, id: &str) -> Result<(), ProviderError> {
        let path = format!("/messages/batches/{id}");
        let _: Value = self
            .send(self.request(reqwest::Method::DELETE, &path))
            .await?;
        Ok(())
    }
}

/// What the poller needs of a Message Batch.
fn view(b: &MessageBatch) -> ProviderBatch {
    let progress = match b.processing_status.as_str() {
        "ended" => Progress::Ended,
        "canceling" => Progress::Stopping,
        _ => Progress::Running,
    };
    ProviderBatch {
        id: b.id.clone(),
        progress,
        status: b.processing_status.clone(),
        input_file_id: None,
        output_file_id: None,
        error_file_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_are_valid_custom_ids_and_odd_ones_are_not() {
        assert!(valid_custom_id(&uuid::Uuid::now_v7().to_string()));
        assert!(valid_custom_id("a_b-C9"));
        for bad in ["", "a:b", "a b", "é", &"x".repeat(65)] {
            assert!(!valid_custom_id(bad), "{bad:?}");
        }
    }

    fn client() -> AnthropicBatchClient {
        let http = crate::llm::openai::http_client().unwrap();
        let e = Endpoint::new(
            http,
            "http://127.0.0.1:9/v1",
            None,
            std::time::Duration::from_secs(1),
            1 << 20,
        );
        AnthropicBatchClient::new(e, "anthropic")
    }

    #[test]
    fn results_map_to_answers_refusals_and_retries() {
        let c = client();
        let line = |v: Value| serde_json::from_value::<ResultLine>(v).unwrap();
        let ok = c.result_of(line(
            json!({"custom_id": "a", "result": {"type": "succeeded",
            "message": {"id": "msg_1", "type": "message", "role": "assistant",
                "content": [{"type": "text", "text": "B"}], "stop_reason": "end_turn",
                "usage": {"input_tokens": 10, "output_tokens": 1,
                          "cache_read_input_tokens": 4, "cache_creation_input_tokens": 2}}}}),
        ));
        let answer = ok.result.unwrap();
        assert_eq!(answer.content, "B");
        assert_eq!(
            answer.prompt_tokens, 16,
            "input + cache reads + cache writes"
        );
        assert_eq!(answer.cached_prompt_tokens, 4);
        let refused = c.result_of(line(json!({"custom_id": "b", "result": {"type": "errored",
            "error": {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}}})));
        assert!(matches!(refused.result, Err(ProviderError::Refused { .. })));
        for kind in ["expired", "canceled"] {
            let r = c.result_of(line(json!({"custom_id": "c", "result": {"type": kind}})));
            assert!(
                matches!(r.result, Err(ProviderError::ServerError { .. })),
                "{kind}"
            );
        }
        let overloaded = c.result_of(line(json!({"custom_id": "d", "result": {"type": "errored",
            "error": {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}}})));
        assert!(matches!(
            overloaded.result,
            Err(ProviderError::ServerError { .. })
        ));
    }
}
