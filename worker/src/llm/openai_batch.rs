//! OpenAI's Batch API as a provider (`POST /files`, `POST /batches`, `GET /batches/{id}`,
//! `GET /batches`, `POST /batches/{id}/cancel`, `GET /files/{id}/content`,
//! `DELETE /files/{id}`): the client the deadline-tolerant path will send a tier's items
//! through at the batch price. The wire objects are `switchyard_openai`'s, shared with the
//! Batch API the fleet itself serves.
//!
//! What makes a crash at any step recoverable is the caller's order (record the local batch,
//! upload, create with `metadata` naming the local batch, record the provider ids); this
//! client gives it the pieces, including [`OpenAiBatchClient::find_by_metadata`], which finds
//! a batch that was created but never recorded.

use std::time::Duration;

use serde_json::json;
use serde_json::value::RawValue;
use switchyard_openai::objects::{Batch, BatchStatus, FileObject, ListPage};

use super::batch_api::{LineResult, Progress, ProviderBatch, read_lines};
use super::http::Endpoint;
use super::openai::{body_of, parse_completion};
use super::{CompletionRequest, ProviderError};

/// A line of a provider's output or error file, read for what booking it needs: the
/// `custom_id`, the status and the body as the provider wrote it (its bytes, so a lone
/// surrogate in an answer reaches the completion parser, which keeps it, instead of failing
/// the line), and an error of any shape. The `id`s and `request_id` our own files always
/// carry ([`switchyard_openai::output::OutputLine`]) are not required: a billed line
/// skipped for a missing id would be called, and billed, again.
#[derive(Debug, serde::Deserialize)]
struct ResultLine {
    custom_id: String,
    #[serde(default)]
    response: Option<ResultResponse>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Debug, serde::Deserialize)]
struct ResultResponse {
    status_code: u16,
    #[serde(default)]
    body: Option<Box<RawValue>>,
}

/// A line's `error`: `{"code", "message"}` as OpenAI writes it, or whatever else a
/// compatible provider sends (a string), as text.
struct LineError {
    code: String,
    message: String,
}

impl From<serde_json::Value> for LineError {
    fn from(v: serde_json::Value) -> Self {
        let text = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        match (text("code"), text("message"), v.as_str()) {
            (_, _, Some(s)) => Self {
                code: "error".to_owned(),
                message: s.to_owned(),
            },
            (code, message, None) => Self {
                code: code.unwrap_or_else(|| "error".to_owned()),
                message: message.unwrap_or_else(|| v.to_string()),
            },
        }
    }
}

/// Pages read at most when looking for a batch by its metadata (100 batches a page).
pub const MAX_LIST_PAGES: usize = 20;

/// A client for one OpenAI-compatible provider's Batch API.
#[derive(Clone, Debug)]
pub struct OpenAiBatchClient {
    endpoint: Endpoint,
    /// The provider's label, for errors.
    name: String,
}

impl OpenAiBatchClient {
    /// A client for `endpoint`, called `name` in errors.
    /// The endpoint's body limit bounds what is read of any answer, output files included.
    pub fn new(endpoint: Endpoint, name: &str) -> Self {
        Self {
            endpoint,
            name: name.to_owned(),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.endpoint.request(method, path)
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> Result<T, ProviderError> {
        let bytes = self.endpoint.send(builder, &self.name).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ProviderError::bad_body(self.name.clone(), e.to_string(), bytes.len()))
    }

    /// The JSONL line of one request: `custom_id` and the chat completion body.
    pub fn line(custom_id: &str, request: &CompletionRequest) -> String {
        json!({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
               "body": body_of(request)})
        .to_string()
    }

    /// Uploads an input file (`purpose=batch`).
    ///
    /// # Errors
    /// What the provider answered, as for any call.
    pub async fn upload(
        &self,
        filename: &str,
        jsonl: Vec<u8>,
    ) -> Result<FileObject, ProviderError> {
        let form = reqwest::multipart::Form::new()
            .text("purpose", "batch")
            .part(
                "file",
                reqwest::multipart::Part::bytes(jsonl).file_name(filename.to_owned()),
            );
        self.send(
            self.request(reqwest::Method::POST, "/files")
                .multipart(form),
        )
        .await
    }

    /// Creates a batch of `input_file_id` whose `metadata` names the local batch.
    ///
    /// # Errors
    /// What the provider answered.
    pub async fn create(
        &self,
        input_file_id: &str,
        metadata: &std::collections::BTreeMap<String, String>,
    ) -> Result<Batch, ProviderError> {
        let body = json!({"input_file_id": input_file_id, "endpoint": "/v1/chat/completions",
                          "completion_window": "24h", "metadata": metadata});
        self.send(self.request(reqwest::Method::POST, "/batches").json(&body))
            .await
    }

    /// The batch as the provider sees it now.
    ///
    /// # Errors
    /// What the provider answered.
    pub async fn get(&self, batch_id: &str) -> Result<Batch, ProviderError> {
        self.send(self.request(reqwest::Method::GET, &format!("/batches/{batch_id}")))
            .await
    }

    /// Asks the provider to cancel a batch.
    ///
    /// # Errors
    /// What the provider answered.
    pub async fn cancel(&self, batch_id: &str) -> Result<Batch, ProviderError> {
        let path = format!("/batches/{batch_id}/cancel");
        self.send(self.request(reqwest::Method::POST, &path)).await
    }

    /// The newest batch whose metadata has `key = value` (a batch created but never
    /// recorded), reading at most [`MAX_LIST_PAGES`] pages.
    ///
    /// # Errors
    /// What the provider answered.
    pub async fn find_by_metadata(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Option<Batch>, ProviderError> {
        let mut after: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let path = match &after {
                Some(a) => format!("/batches?limit=100&after={a}"),
                None => "/batches?limit=100".to_owned(),
            };
            let page: ListPage<Batch> =
                self.send(self.request(reqwest::Method::GET, &path)).await?;
            if let Some(found) = page.data.iter().find(|b| {
                b.metadata
                    .as_ref()
                    .and_then(|m| m.get(key))
                    .is_some_and(|v| v == value)
            }) {
                return Ok(Some(found.clone()));
            }
            if !page.has_more {
                return Ok(None);
            }
            after = page.last_id;
        }
        Ok(None)
    }

    /// Reads an output or error file, one result per line. Lines that are not output lines
    /// are skipped (logged); the caller retries their requests.
    ///
    /// # Errors
    /// What the provider answered.
    pub async fn results(&self, file_id: &str) -> Result<Vec<LineResult>, ProviderError> {
        let path = format!("/files/{file_id}/content");
        let bytes = self
            .endpoint
            .send(self.request(reqwest::Method::GET, &path), &self.name)
            .await?;
        Ok(read_lines(&bytes, &self.name, file_id, |l: ResultLine| {
            self.result_of(l)
        }))
    }

    fn result_of(&self, line: ResultLine) -> LineResult {
        let model = self.name.clone();
        let result = match (line.response, line.error.map(LineError::from)) {
            (Some(r), _) if (200..300).contains(&r.status_code) => {
                let body = r.body.as_deref().map_or("null", RawValue::get);
                parse_completion(&model, body.as_bytes(), 0, Duration::ZERO)
            }
            (Some(r), _) => {
                let body = r.body.as_deref().map_or("", RawValue::get).to_owned();
                Err(if r.status_code >= 500 || r.status_code == 429 {
                    ProviderError::ServerError {
                        model,
                        status: r.status_code,
                        body,
                        retry_after: None,
                    }
                } else {
                    ProviderError::Refused {
                        model,
                        status: r.status_code,
                        body,
                    }
                })
            }
            (None, Some(e)) => Err(ProviderError::ServerError {
                model,
                status: 503,
                body: format!("{}: {}", e.code, e.message),
                retry_after: None,
            }),
            (None, None) => Err(ProviderError::bad_body(
                model,
                "an output line with neither a response nor an error",
                0,
            )),
        };
        LineResult {
            custom_id: line.custom_id,
            result,
        }
    }

    /// Deletes a file at the provider (after its lines are booked).
    ///
    /// # Errors
    /// What the provider answered.
    pub async fn delete_file(&self, file_id: &str) -> Result<(), ProviderError> {
        let _: serde_json::Value = self
            .send(self.request(reqwest::Method::DELETE, &format!("/files/{file_id}")))
            .await?;
        Ok(())
    }
}

/// What the poller needs of an OpenAI batch.
pub fn view(b: &Batch) -> ProviderBatch {
    let progress = match b.status {
        BatchStatus::Completed
        | BatchStatus::Expired
        | BatchStatus::Cancelled
        | BatchStatus::Failed => Progress::Ended,
        BatchStatus::Cancelling => Progress::Stopping,
        _ => Progress::Running,
    };
    ProviderBatch {
        id: b.id.clone(),
        progress,
        status: format!("{:?}", b.status).to_lowercase(),
        input_file_id: Some(b.input_file_id.clone()),
        output_file_id: b.output_file_id.clone(),
        error_file_id: b.error_file_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

    use super::*;

    fn client() -> OpenAiBatchClient {
        let endpoint = Endpoint::new(
            super::super::openai::http_client().unwrap(),
            "http://127.0.0.1:9/v1",
            None,
            Duration::from_secs(1),
            1 << 20,
        );
        OpenAiBatchClient::new(endpoint, "p")
    }

    #[test]
    fn lines_of_other_providers_are_read_for_what_booking_needs() {
        let file = [
            // No `id`, no `request_id`: still the answer it is.
            r#"{"custom_id":"a","response":{"status_code":200,"body":{"choices":[{"message":{"content":"A"}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}}}"#,
            // A lone surrogate in the answer: kept, as the real-time path keeps it.
            r#"{"custom_id":"b","response":{"status_code":200,"body":{"choices":[{"message":{"content":"x\ud800y"}}],"usage":{"prompt_tokens":3,"completion_tokens":2}}}}"#,
            // An error as a plain string.
            r#"{"custom_id":"c","response":null,"error":"rate limited"}"#,
            // Not a line at all: skipped (its request goes back).
            "garbage",
        ]
        .join("\n");
        let c = client();
        let lines = read_lines(file.as_bytes(), "p", "f", |l: ResultLine| c.result_of(l));
        assert_eq!(lines.len(), 3);
        let a = lines[0].result.as_ref().unwrap();
        assert_eq!((a.content.as_str(), a.prompt_tokens), ("A", 3));
        let b = lines[1].result.as_ref().unwrap();
        assert!(b.raw_content.is_some(), "{b:?}");
        assert_eq!(b.completion_tokens, 2);
        match &lines[2].result {
            Err(ProviderError::ServerError { body, .. }) => {
                assert!(body.contains("rate limited"), "{body}");
            }
            other => panic!("expected a server error, got {other:?}"),
        }
    }
}
