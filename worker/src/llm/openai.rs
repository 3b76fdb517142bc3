//! OpenAI-compatible chat completions over HTTP (`POST {base_url}/chat/completions`).
//!
//! The API key comes from the model's settings (inline or an environment variable) and is
//! sent as a bearer token; it is never logged. Responses are parsed leniently (unknown fields
//! ignored) but a body without a choice is an error. A body without `usage` is accepted with
//! token counts estimated as characters / 4 (the call was made and is likely billed).

use std::time::{Duration, Instant};

use serde_json::json;
use switchyard_core::completion;

use super::http::Endpoint;
use super::{Completion, CompletionRequest, LlmClient, ProviderError};

/// A client for one OpenAI-compatible endpoint.
#[derive(Clone, Debug)]
pub struct OpenAiClient {
    endpoint: Endpoint,
}

/// The header that carries our call id to the provider (OpenAI echoes it in its logs; any
/// server that logs request headers lets finance match its usage to the ledger).
pub const CLIENT_REQUEST_ID: &str = "x-client-request-id";

impl OpenAiClient {
    /// A client for `endpoint` (`POST /chat/completions`).
    pub fn new(endpoint: Endpoint) -> Self {
        Self { endpoint }
    }
}

/// Builds the shared HTTP client (connection pooling, TLS with the ring provider).
///
/// # Errors
/// When the TLS backend cannot be initialised.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    http_client_connecting_within(Duration::from_secs(10))
}

/// [`http_client`] whose connections must be made within `connect` (a worker sets it below
/// its models' shortest timeout: a request's timeout that strikes while connecting would
/// otherwise look like one that struck after the request went out, a call in doubt).
///
/// # Errors
/// When the TLS backend cannot be initialised.
pub fn http_client_connecting_within(connect: Duration) -> anyhow::Result<reqwest::Client> {
    // reqwest is built without a default crypto provider; install ring once per process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .connect_timeout(connect)
        // Redirects within the endpoint's own server only (a moved path, or http to https
        // on the same host): reqwest strips `Authorization` on a redirect to another host
        // but not `x-api-key` (Anthropic's), and a provider endpoint has no business sending
        // a prompt and its key elsewhere. Any other redirect is the provider's error, with
        // its 3xx status.
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            let to = attempt.url();
            let same_server = attempt.previous().first().is_some_and(|from| {
                from.host_str() == to.host_str()
                    && (from.port_or_known_default() == to.port_or_known_default()
                        || (to.scheme() == "https" && to.port().is_none()))
            });
            if same_server && attempt.previous().len() < 5 {
                attempt.follow()
            } else {
                attempt.stop()
            }
        }))
        .build()?)
}

/// Parses a completion body (the pure parser is `switchyard_core::completion`, which the
/// fuzz targets exercise).
///
/// # Errors
/// [`ProviderError::BadBody`] when the body is not JSON or has no choice with content.
pub fn parse_completion(
    model: &str,
    body: &[u8],
    prompt_chars: usize,
    latency: Duration,
) -> Result<Completion, ProviderError> {
    let parsed = completion::parse_completion(body, prompt_chars)
        .map_err(|e| ProviderError::bad_body(model.to_owned(), e.to_string(), body.len()))?;
    Ok(Completion::from_parsed(parsed, latency))
}

/// The chat completion body of `request` (also a batch line's `body`).
pub fn body_of(request: &CompletionRequest) -> serde_json::Value {
    let messages: Vec<_> = request
        .messages
        .iter()
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();
    let mut body = json!({
        "model": request.model,
        "messages": messages,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
    });
    for (k, v) in &request.params {
        if k != "max_tokens" && k != "max_completion_tokens" {
            body[k.as_str()] = v.clone();
        }
    }
    if request.n > 1 {
        body["n"] = json!(request.n);
    }
    if request.logprobs {
        body["logprobs"] = json!(true);
        body["top_logprobs"] = json!(request.top_logprobs);
    }
    body
}

impl LlmClient for OpenAiClient {
    async fn complete(&self, request: &CompletionRequest) -> Result<Completion, ProviderError> {
        let model = request.model.as_str();
        let body = body_of(request);
        let mut builder = self
            .endpoint
            .request(reqwest::Method::POST, "/chat/completions")
            .json(&body);
        if let Some(id) = &request.client_request_id {
            builder = builder.header(CLIENT_REQUEST_ID, id);
        }
        let started = Instant::now();
        let bytes = self.endpoint.send(builder, model).await?;
        let prompt_chars = request.messages.iter().map(|m| m.content.len()).sum();
        parse_completion(model, &bytes, prompt_chars, started.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::http::retry_after;

    #[test]
    fn parses_content_logprobs_and_usage() {
        let body = br#"{"id":"chatcmpl-1","choices":[{"message":{"content":"A"},
            "logprobs":{"content":[{"token":"A","logprob":-0.1,"top_logprobs":[]}]}}],
            "usage":{"prompt_tokens":12,"completion_tokens":1}}"#;
        let c = parse_completion("m", body, 40, Duration::ZERO).unwrap();
        assert_eq!(c.response_id.as_deref(), Some("chatcmpl-1"));
        assert_eq!(c.content, "A");
        assert_eq!(
            (c.prompt_tokens, c.completion_tokens, c.usage_estimated),
            (12, 1, false)
        );
        assert_eq!(c.logprobs.unwrap()[0].logprob, -0.1);
    }

    #[test]
    fn missing_usage_is_estimated_and_bad_bodies_are_errors() {
        let c = parse_completion(
            "m",
            br#"{"choices":[{"message":{"content":"abcdefgh"}}]}"#,
            10,
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(
            (c.prompt_tokens, c.completion_tokens, c.usage_estimated),
            (3, 2, true)
        );
        for body in [
            &b"{"[..],
            br#"{"choices":[]}"#,
            br#"{"choices":[{"message":{}}]}"#,
            b"null",
        ] {
            assert!(matches!(
                parse_completion("m", body, 1, Duration::ZERO),
                Err(ProviderError::BadBody { .. })
            ));
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_milliseconds() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
    }
}
