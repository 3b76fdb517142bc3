//! Model providers. [`LlmClient`] is what the worker needs from one; [`openai`] implements it
//! for every OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp, OpenRouter, and our
//! simulator).

pub mod error;
pub mod openai;

use std::future::Future;
use std::time::Duration;

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
}

/// What a provider answered.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The provider's id of this call (`chatcmpl-…`), if it gave one.
    pub response_id: Option<String>,
    pub content: String,
    /// Token logprobs, when the provider returned them.
    pub logprobs: Option<Vec<TokenLogprob>>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// The provider returned no `usage`: the token counts are estimates (chars / 4).
    pub usage_estimated: bool,
    pub latency: Duration,
}

/// A model endpoint.
pub trait LlmClient: Send + Sync {
    /// Sends one request, without retrying (retries and quota waits are the caller's).
    fn complete(
        &self,
        request: &CompletionRequest,
    ) -> impl Future<Output = Result<Completion, ProviderError>> + Send;
}
