//! Model providers. [`LlmClient`] is what the worker needs from one; [`openai`] implements it
//! for every OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp, OpenRouter, and our
//! simulator), [`anthropic`] for Anthropic's Messages API; [`Provider`] is the one a model's
//! `protocol` names.

pub mod anthropic;
pub mod anthropic_batch;
pub mod batch_api;
pub mod error;
pub mod http;
pub mod openai;
pub mod openai_batch;

use std::future::Future;
use std::time::Duration;

use switchyard_core::completion::ParsedCompletion;
use switchyard_core::confidence::TokenLogprob;
use switchyard_core::prompt::Message;

pub use error::ProviderError;

/// One chat completion request.
#[derive(Debug, Clone)]
pub struct CompletionRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub max_tokens: u32,
    /// Ask for token logprobs (the confidence signal).
    pub logprobs: bool,
    /// Alternatives per token to return with logprobs.
    pub top_logprobs: u8,
    /// Our id of the call, sent as `X-Client-Request-Id` so that the provider's usage
    /// records can be matched with the ledger (`switchyard ledger reconcile`).
    pub client_request_id: Option<String>,
    /// Choices to ask for (OpenAI's `n`): 1, or `1 + k` to draw `k` extra samples of the
    /// answer in the same request (a model without logprobs, see `switchyard_core::samples`).
    pub n: u8,
    /// The provider has no `n`: each choice is a request of its own, its prompt billed
    /// again (Anthropic; see `anthropic.rs`). Budget bounds count the prompt `n` times.
    pub separate_choices: bool,
    /// Sampling temperature: 0 for one answer, above 0 when samples must be able to differ.
    pub temperature: f32,
    /// A chat request's own parameters (`temperature`, `top_p`, `stop`, `seed`,
    /// `response_format`), sent as they are; they win over the defaults above. The completion
    /// ceiling is `max_tokens`, already taken from the request.
    pub params: serde_json::Map<String, serde_json::Value>,
}

impl CompletionRequest {
    /// The most completion tokens this request can be billed for: `max_tokens` per choice.
    pub fn completion_bound(&self) -> u32 {
        self.max_tokens.saturating_mul(u32::from(self.n.max(1)))
    }

    /// The tokens of an answer that could not be used, estimated: one prompt at four
    /// characters a token, the completion from the body's `body_bytes` at four a token, at
    /// most `cap`. The provider bills such an answer; the worker books this estimate.
    pub fn estimate_unusable(&self, body_bytes: usize, cap: u32) -> (u32, u32) {
        let prompt_chars: usize = self.messages.iter().map(|m| m.content.len()).sum();
        let prompt = u32::try_from(prompt_chars.div_ceil(4)).unwrap_or(u32::MAX);
        let completion = u32::try_from(body_bytes / 4).unwrap_or(u32::MAX).min(cap);
        (prompt, completion)
    }

    /// The requests this call makes: one, or one per choice for a provider without `n`.
    pub fn requests(&self) -> u32 {
        if self.separate_choices {
            u32::from(self.n.max(1))
        } else {
            1
        }
    }
}

#[cfg(test)]
impl CompletionRequest {
    /// For tests: a call of 400 prompt characters (100 tokens), `max_tokens` 8, drawing four
    /// samples as separate requests (a provider without `n`).
    pub(crate) fn sampling_for_tests() -> Self {
        CompletionRequest {
            model: "claude".into(),
            messages: vec![switchyard_core::prompt::Message {
                role: "user".into(),
                content: "x".repeat(400),
            }],
            max_tokens: 8,
            logprobs: false,
            top_logprobs: 0,
            client_request_id: None,
            n: 5,
            temperature: 0.7,
            separate_choices: true,
            params: serde_json::Map::new(),
        }
    }
}

/// What a provider answered.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The provider's id of this call (`chatcmpl-…`), if it gave one.
    pub response_id: Option<String>,
    pub content: String,
    /// The answer as the JSON string literal the provider sent, when `content` cannot hold
    /// it exactly (see `switchyard_core::completion`).
    pub raw_content: Option<String>,
    /// Token logprobs, when the provider returned them.
    pub logprobs: Option<Vec<TokenLogprob>>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens the provider served from its cache.
    pub cached_prompt_tokens: u32,
    /// Prompt tokens written to the provider's cache (Anthropic), and of those the ones kept
    /// for an hour: priced at the cache-write rates.
    pub cache_write_tokens: u32,
    pub cache_write_1h_tokens: u32,
    /// The provider's `usage` object as it came (kept on the ledger row when storable).
    pub raw_usage: Option<String>,
    /// Why the answer ended (`stop`, `length`, …), in OpenAI's words.
    pub finish_reason: Option<String>,
    /// The provider returned no usable `usage`: the token counts are estimates (chars / 4).
    pub usage_estimated: bool,
    pub latency: Duration,
    /// The texts of the choices after the first, when `n > 1` was asked for (the usage
    /// covers every choice).
    pub samples: Vec<String>,
}

impl Completion {
    /// What a parser of a provider's body read (`switchyard_core::completion` or
    /// `::messages`), answered after `latency`.
    pub fn from_parsed(parsed: ParsedCompletion, latency: Duration) -> Self {
        Self {
            response_id: parsed.response_id,
            content: parsed.content,
            raw_content: parsed.raw_content,
            logprobs: parsed.logprobs,
            prompt_tokens: parsed.prompt_tokens,
            completion_tokens: parsed.completion_tokens,
            cached_prompt_tokens: parsed.cached_prompt_tokens,
            cache_write_tokens: parsed.cache_write_tokens,
            cache_write_1h_tokens: parsed.cache_write_1h_tokens,
            raw_usage: parsed.raw_usage,
            finish_reason: parsed.finish_reason,
            usage_estimated: parsed.usage_estimated,
            latency,
            samples: parsed.samples,
        }
    }
}

/// A model endpoint.
pub trait LlmClient: Send + Sync {
    /// Sends one request, without retrying (retries and quota waits are the caller's).
    fn complete(
        &self,
        request: &CompletionRequest,
    ) -> impl Future<Output = Result<Completion, ProviderError>> + Send;
}

/// The client of one model endpoint, by the protocol it speaks.
#[derive(Debug, Clone)]
pub enum Provider {
    Openai(openai::OpenAiClient),
    Anthropic(anthropic::AnthropicClient),
}

impl LlmClient for Provider {
    async fn complete(&self, request: &CompletionRequest) -> Result<Completion, ProviderError> {
        match self {
            Provider::Openai(c) => c.complete(request).await,
            Provider::Anthropic(c) => c.complete(request).await,
        }
    }
}
