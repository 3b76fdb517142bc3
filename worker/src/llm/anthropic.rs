//! Anthropic's Messages API (`POST {base_url}/messages`), for models whose `protocol` is
//! `anthropic`.
//!
//! What differs from chat completions, and how it is bridged:
//! - `system` is a top-level field: the request's system messages are joined into it (with
//!   `cache_control` on it, so a long shared system prompt is cached by the provider and its
//!   reads are booked at the cached rate);
//! - `max_tokens` is required (the request always has one); `stop` becomes `stop_sequences`;
//!   `temperature` and `top_p` pass through; `seed`, `response_format` and `n` do not exist;
//! - a request for `n > 1` choices (extra samples of a weak answer, whose agreement is its
//!   confidence: `switchyard_core::samples`) is made as `n` requests, the answer's first and
//!   then the samples' side by side, all under the call's one id; the call's usage is their
//!   sum, so the ledger's one row for the call books every request the provider bills (a
//!   provider's usage lines of one call id are summed by `ledger reconcile` too). A sample
//!   request that fails is left out: the answer keeps the samples that came (the escalation
//!   rule knows an answer without samples); one whose `200` body cannot be read is billed,
//!   so it is booked at an estimate, as an unusable answer is;
//! - no logprobs: confidence comes from the model's `confidence_without_logprobs` or the
//!   job's escalation rule;
//! - usage is normalized by `switchyard_core::messages` (prompt = input + cache reads +
//!   cache writes).
//!
//! The key goes in `x-api-key` and is never logged; `anthropic-version` is pinned.

use std::time::Instant;

use serde_json::{Value, json};
use switchyard_core::messages;

use super::http::{Auth, Endpoint};
use super::openai::CLIENT_REQUEST_ID;
use super::{Completion, CompletionRequest, LlmClient, ProviderError};

/// The API version every request names.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// A client for one Anthropic endpoint.
#[derive(Clone, Debug)]
pub struct AnthropicClient {
    endpoint: Endpoint,
}

impl AnthropicClient {
    /// A client for `endpoint` (its key sent in `x-api-key`).
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint: endpoint.with_auth(Auth::ApiKeyHeader),
        }
    }
}

/// The Messages API body of `request`.
pub fn body_of(request: &CompletionRequest) -> Value {
    let system: Vec<&str> = request
        .messages
        .iter()
        .filter(|m| m.role == "system")
        .map(|m| m.content.as_str())
        .collect();
    let messages: Vec<Value> = request
        .messages
        .iter()
        .filter(|m| m.role != "system")
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();
    let mut body = json!({
        "model": request.model,
        "max_tokens": request.max_tokens.max(1),
        "messages": messages,
        "temperature": request.temperature,
    });
    if !system.is_empty() {
        body["system"] = json!([{
            "type": "text",
            "text": system.join("\n\n"),
            "cache_control": {"type": "ephemeral"},
        }]);
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = request.params.get(key) {
            body[key] = v.clone();
        }
    }
    match request.params.get("stop") {
        Some(Value::String(s)) => body["stop_sequences"] = json!([s]),
        Some(Value::Array(a)) => body["stop_sequences"] = Value::Array(a.clone()),
        _ => {}
    }
    body
}

impl AnthropicClient {
    /// One request of `request` (its `n` ignored).
    async fn one(&self, request: &CompletionRequest) -> Result<Completion, ProviderError> {
        let model = request.model.as_str();
        let mut builder = self
            .endpoint
            .request(reqwest::Method::POST, "/messages")
            .header("anthropic-version", ANTHROPIC_VERSION)
            .json(&body_of(request));
        if let Some(id) = &request.client_request_id {
            builder = builder.header(CLIENT_REQUEST_ID, id);
        }
        let started = Instant::now();
        let bytes = self.endpoint.send(builder, model).await?;
        let latency = started.elapsed();
        let prompt_chars = request.messages.iter().map(|m| m.content.len()).sum();
        let parsed = messages::parse_message(&bytes, prompt_chars)
            .map_err(|e| ProviderError::bad_body(model.to_owned(), e.to_string(), bytes.len()))?;
        Ok(Completion::from_parsed(parsed, latency))
    }
}

impl LlmClient for AnthropicClient {
    async fn complete(&self, request: &CompletionRequest) -> Result<Completion, ProviderError> {
        let mut answer = self.one(request).await?;
        if request.n > 1 {
            let samples = (1..request.n).map(|_| self.one(request));
            let raw_first = answer.raw_usage.take();
            let mut raws = vec![raw_first];
            for drawn in futures::future::join_all(samples).await {
                raws.push(add_sample(&mut answer, drawn, request));
            }
            answer.raw_usage = raw_usages(&raws);
        }
        Ok(answer)
    }
}

/// Adds one sample request's outcome to the call's answer: its text to the samples and its
/// usage to the call's; returns its raw usage. A failed request adds nothing, except one the
/// provider may bill ([`ProviderError::answered`] or [`ProviderError::in_doubt`]): booked
/// with the call at an estimate, the prompt and, as completion, a readable body's size or
/// else `max_tokens` (at most `max_tokens` either way), for reconciliation to settle.
fn add_sample(
    answer: &mut Completion,
    drawn: Result<Completion, ProviderError>,
    request: &CompletionRequest,
) -> Option<String> {
    match drawn {
        Ok(c) => {
            answer.samples.push(c.content);
            answer.prompt_tokens = answer.prompt_tokens.saturating_add(c.prompt_tokens);
            answer.completion_tokens = answer.completion_tokens.saturating_add(c.completion_tokens);
            answer.cached_prompt_tokens = answer
                .cached_prompt_tokens
                .saturating_add(c.cached_prompt_tokens);
            answer.cache_write_tokens = answer
                .cache_write_tokens
                .saturating_add(c.cache_write_tokens);
            answer.cache_write_1h_tokens = answer
                .cache_write_1h_tokens
                .saturating_add(c.cache_write_1h_tokens);
            answer.usage_estimated |= c.usage_estimated;
            answer.latency = answer.latency.max(c.latency);
            c.raw_usage
        }
        Err(e) if e.answered() || e.in_doubt() => {
            tracing::debug!(model = %request.model, error = %e, "a sample request may be billed: booked at an estimate");
            let body = match e {
                ProviderError::BadBody { bytes, .. } => bytes,
                _ => usize::MAX,
            };
            let (prompt, completion) = request.estimate_unusable(body, request.max_tokens);
            answer.prompt_tokens = answer.prompt_tokens.saturating_add(prompt);
            answer.completion_tokens = answer.completion_tokens.saturating_add(completion);
            answer.usage_estimated = true;
            None
        }
        Err(e) => {
            tracing::debug!(model = %request.model, error = %e, "a sample request failed; the answer keeps the others");
            None
        }
    }
}

/// A line of a message batch whose call drew samples as requests of their own (`parts`: its
/// requests' results by index, the line's own first), folded as the real-time client folds
/// them: the first request that answered is the answer (the requests are identical, at a
/// temperature above 0), the others that answered are its samples, and the call's usage is
/// that of every request the provider billed (an unreadable `200` at an estimate). With no
/// answer at all: an unreadable `200` if one came (billed: booked, then called again), else
/// the first failure; `None` when no request came back.
pub(crate) fn fold_line(
    parts: Vec<Result<Completion, ProviderError>>,
    request: &CompletionRequest,
) -> Option<Result<Completion, ProviderError>> {
    let mut parts: Vec<Option<Result<Completion, ProviderError>>> =
        parts.into_iter().map(Some).collect();
    let Some(first) = parts.iter().position(|p| matches!(p, Some(Ok(_)))) else {
        let failures = parts.into_iter().flatten();
        let (unreadable, other): (Vec<_>, Vec<_>) =
            failures.partition(|e| matches!(e, Err(ProviderError::BadBody { .. })));
        return unreadable_together(unreadable).or_else(|| other.into_iter().next());
    };
    let Some(Ok(mut answer)) = parts[first].take() else {
        return None;
    };
    let mut raws = vec![answer.raw_usage.take()];
    for drawn in parts.into_iter().flatten() {
        raws.push(add_sample(&mut answer, drawn, request));
    }
    answer.raw_usage = raw_usages(&raws);
    Some(Ok(answer))
}

/// A line's unreadable `200`s as one error that books them all: each was billed, so the
/// estimate counts each one's prompt and body (`billed`, `bytes` summed), not the first's.
fn unreadable_together(
    unreadable: Vec<Result<Completion, ProviderError>>,
) -> Option<Result<Completion, ProviderError>> {
    let mut together: Option<ProviderError> = None;
    for e in unreadable.into_iter().filter_map(Result::err) {
        let ProviderError::BadBody { bytes, billed, .. } = e else {
            continue;
        };
        match &mut together {
            None => together = Some(e),
            Some(ProviderError::BadBody {
                bytes: all_bytes,
                billed: all_billed,
                ..
            }) => {
                *all_bytes = all_bytes.saturating_add(bytes);
                *all_billed = all_billed.saturating_add(billed);
            }
            Some(_) => {}
        }
    }
    together.map(Err)
}

/// The raw usages of a call's requests, as one JSON array (`null` for a request without
/// one), or nothing when none had any.
fn raw_usages(raws: &[Option<String>]) -> Option<String> {
    if raws.iter().all(Option::is_none) {
        return None;
    }
    let values: Vec<Value> = raws
        .iter()
        .map(|r| {
            r.as_deref()
                .and_then(|r| serde_json::from_str(r).ok())
                .unwrap_or(Value::Null)
        })
        .collect();
    Some(Value::Array(values).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::prompt::Message;

    #[test]
    fn system_is_top_level_and_cached_and_parameters_are_translated() {
        let mut params = serde_json::Map::new();
        params.insert("stop".into(), json!("END"));
        params.insert("top_p".into(), json!(0.9));
        params.insert("seed".into(), json!(7));
        let request = CompletionRequest {
            model: "claude".into(),
            messages: vec![
                Message {
                    role: "system".into(),
                    content: "Be brief.".into(),
                },
                Message {
                    role: "user".into(),
                    content: "Hi".into(),
                },
            ],
            max_tokens: 0,
            logprobs: true,
            top_logprobs: 5,
            client_request_id: None,
            n: 3,
            temperature: 0.0,
            separate_choices: false,
            params,
        };
        let body = body_of(&request);
        assert_eq!(body["system"][0]["text"], "Be brief.");
        assert_eq!(body["system"][0]["cache_control"]["type"], "ephemeral");
        assert_eq!(body["messages"], json!([{"role": "user", "content": "Hi"}]));
        assert_eq!(body["max_tokens"], 1, "required, at least 1");
        assert_eq!(body["stop_sequences"], json!(["END"]));
        assert_eq!(body["top_p"], 0.9);
        for absent in ["seed", "n", "logprobs", "top_logprobs", "stop"] {
            assert!(body.get(absent).is_none(), "{absent} is not Anthropic's");
        }
    }

    fn answered(content: &str, prompt: u32, completion: u32) -> Result<Completion, ProviderError> {
        Ok(Completion {
            response_id: None,
            content: content.into(),
            raw_content: None,
            logprobs: None,
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_prompt_tokens: 0,
            cache_write_tokens: 0,
            cache_write_1h_tokens: 0,
            raw_usage: Some(format!(r#"{{"input_tokens":{prompt}}}"#)),
            finish_reason: None,
            usage_estimated: false,
            latency: std::time::Duration::ZERO,
            samples: Vec::new(),
        })
    }

    fn overloaded() -> Result<Completion, ProviderError> {
        Err(ProviderError::ServerError {
            model: "claude".into(),
            status: 503,
            body: "overloaded".into(),
            retry_after: None,
        })
    }

    fn unreadable() -> Result<Completion, ProviderError> {
        Err(ProviderError::bad_body("claude", "no content", 40))
    }

    #[test]
    fn a_batch_line_s_requests_fold_into_one_answer_that_books_every_billed_one() {
        let r = CompletionRequest::sampling_for_tests();
        // The line's own request failed (not billed), its samples answered: the first of
        // them is the answer, the others its samples; an unreadable one is billed at an
        // estimate (100 prompt tokens, 40 bytes / 4 = 10 completion tokens, at most the
        // request's 8).
        let parts = vec![
            overloaded(),
            answered("A", 100, 1),
            answered("B", 100, 1),
            unreadable(),
            answered("A", 100, 1),
        ];
        let c = fold_line(parts, &r).unwrap().unwrap();
        assert_eq!(c.content, "A");
        assert_eq!(c.samples, vec!["B".to_owned(), "A".to_owned()]);
        assert_eq!((c.prompt_tokens, c.completion_tokens), (400, 3 + 8));
        assert!(c.usage_estimated);
        let raws: serde_json::Value =
            serde_json::from_str(c.raw_usage.as_deref().unwrap()).unwrap();
        // One raw usage per request, `null` where a request had none.
        let raws = raws.as_array().unwrap();
        assert_eq!(raws.len(), 5, "{raws:?}");
        assert_eq!(raws.iter().filter(|u| u.is_null()).count(), 2, "{raws:?}");
        // All five answered: the line's own first, four samples, five prompts.
        let all = (0..5).map(|_| answered("C", 100, 1)).collect();
        let c = fold_line(all, &r).unwrap().unwrap();
        assert_eq!((c.samples.len(), c.prompt_tokens), (4, 500));
        assert!(!c.usage_estimated);
    }

    #[test]
    fn a_sample_request_the_provider_may_bill_is_booked_at_its_worst_case() {
        let r = CompletionRequest::sampling_for_tests();
        let mut answer = answered("A", 100, 1).unwrap();
        let prompt = r.estimate_unusable(0, 0).0;
        let cut_off = Err(ProviderError::CutOff {
            model: "claude".into(),
            message: "reset".into(),
            bytes: 16,
        });
        let timeout = |sent| {
            Err(ProviderError::Timeout {
                model: "claude".into(),
                after: std::time::Duration::from_secs(1),
                sent,
            })
        };
        let broken = |sent| {
            Err(ProviderError::Connection {
                model: "claude".into(),
                sent,
                message: "reset".into(),
            })
        };
        for drawn in [
            cut_off,
            timeout(true),
            broken(true),
            timeout(false),
            broken(false),
            overloaded(),
        ] {
            assert!(add_sample(&mut answer, drawn, &r).is_none());
        }
        // The cut-off body and the requests that went out: each the prompt and `max_tokens`;
        // the failures while connecting and the 503 sent or billed nothing.
        assert_eq!(
            (answer.prompt_tokens, answer.completion_tokens),
            (100 + 3 * prompt, 1 + 3 * r.max_tokens)
        );
        assert!(answer.usage_estimated);
        assert!(answer.samples.is_empty());
    }

    #[test]
    fn a_batch_line_without_an_answer_is_unreadable_if_one_was_billed_else_failed() {
        let r = CompletionRequest::sampling_for_tests();
        let billed = fold_line(vec![overloaded(), unreadable(), overloaded()], &r);
        assert!(
            matches!(billed, Some(Err(ProviderError::BadBody { .. }))),
            "{billed:?}"
        );
        // Every unreadable 200 of the line was billed: all are booked, not the first alone.
        let all = fold_line(
            vec![unreadable(), overloaded(), unreadable(), unreadable()],
            &r,
        );
        assert!(
            matches!(
                all,
                Some(Err(ProviderError::BadBody {
                    bytes: 120,
                    billed: 3,
                    ..
                }))
            ),
            "{all:?}"
        );
        let failed = fold_line(vec![overloaded(), overloaded()], &r);
        assert!(
            matches!(failed, Some(Err(ProviderError::ServerError { .. }))),
            "{failed:?}"
        );
        assert!(fold_line(Vec::new(), &r).is_none());
    }
}
