//! Reading an OpenAI-compatible chat completion body: pure, so the provider-facing parser can
//! be unit-tested and fuzzed (`fuzz/`) without HTTP, sqlx or NATS in the build.
//!
//! Lenient where providers differ (unknown fields are ignored, a missing `usage` is estimated
//! at four characters a token and flagged) and strict where an answer is unusable: a body
//! that is not JSON, has no choice, or whose choice has no message content is an error.

use serde::Deserialize;

use crate::confidence::TokenLogprob;

/// Response ids longer than this are not trusted as ledger keys (the worker mints one).
pub const MAX_RESPONSE_ID_BYTES: usize = 200;

/// What a provider's body says, once read.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedCompletion {
    /// The provider's id of the call (`chatcmpl-…`), if it gave a usable one.
    pub response_id: Option<String>,
    pub content: String,
    /// Token logprobs (finite values only, clamped to ≤ 0), when the provider sent them.
    pub logprobs: Option<Vec<TokenLogprob>>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// No `usage` in the body: the token counts are estimates.
    pub usage_estimated: bool,
}

/// Why a body is not a usable completion.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CompletionError {
    /// Not JSON, or not shaped like a chat completion.
    #[error("not a chat completion: {0}")]
    NotACompletion(String),
    /// `choices` is missing or empty.
    #[error("no choices")]
    NoChoices,
    /// The first choice carries no message text.
    #[error("the choice has no message content")]
    NoContent,
}

#[derive(Deserialize)]
struct ChatResponse {
    id: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: Option<ChoiceMessage>,
    logprobs: Option<Logprobs>,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    content: Option<String>,
}

#[derive(Deserialize)]
struct Logprobs {
    content: Option<Vec<LogprobToken>>,
}

#[derive(Deserialize)]
struct LogprobToken {
    token: String,
    logprob: f64,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: u32,
    completion_tokens: u32,
}

/// Parses a chat completion body. `prompt_chars` sizes the estimate when `usage` is missing.
///
/// # Errors
/// A [`CompletionError`] saying why the body is unusable.
pub fn parse_completion(
    body: &[u8],
    prompt_chars: usize,
) -> Result<ParsedCompletion, CompletionError> {
    let parsed: ChatResponse =
        serde_json::from_slice(body).map_err(|e| CompletionError::NotACompletion(e.to_string()))?;
    let choice = parsed
        .choices
        .into_iter()
        .next()
        .ok_or(CompletionError::NoChoices)?;
    let content = choice
        .message
        .and_then(|m| m.content)
        .ok_or(CompletionError::NoContent)?;
    let logprobs = choice.logprobs.and_then(|l| l.content).map(|tokens| {
        tokens
            .into_iter()
            .filter(|t| t.logprob.is_finite())
            .map(|t| TokenLogprob {
                token: t.token,
                logprob: t.logprob.min(0.0),
            })
            .collect::<Vec<_>>()
    });
    let (prompt_tokens, completion_tokens, usage_estimated) = match parsed.usage {
        Some(u) => (u.prompt_tokens, u.completion_tokens, false),
        None => (
            saturating_u32(prompt_chars.div_ceil(4)),
            saturating_u32(content.chars().count().div_ceil(4)),
            true,
        ),
    };
    Ok(ParsedCompletion {
        response_id: parsed
            .id
            .filter(|id| !id.is_empty() && id.len() <= MAX_RESPONSE_ID_BYTES),
        content,
        logprobs,
        prompt_tokens,
        completion_tokens,
        usage_estimated,
    })
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_logprobs_and_usage() {
        let body = br#"{"id":"chatcmpl-1","choices":[{"message":{"content":"A"},
            "logprobs":{"content":[{"token":"A","logprob":-0.1,"top_logprobs":[]},
            {"token":"B","logprob":0.5}]}}],"usage":{"prompt_tokens":12,"completion_tokens":1}}"#;
        let c = parse_completion(body, 40).unwrap();
        assert_eq!(c.response_id.as_deref(), Some("chatcmpl-1"));
        assert_eq!((c.prompt_tokens, c.completion_tokens), (12, 1));
        let lp = c.logprobs.unwrap();
        assert_eq!((lp[0].logprob, lp[1].logprob), (-0.1, 0.0));
    }

    #[test]
    fn each_unusable_body_has_its_reason() {
        assert!(matches!(
            parse_completion(b"{", 1),
            Err(CompletionError::NotACompletion(_))
        ));
        assert_eq!(
            parse_completion(br#"{"choices":[]}"#, 1),
            Err(CompletionError::NoChoices)
        );
        assert_eq!(
            parse_completion(br#"{"choices":[{"message":{}}]}"#, 1),
            Err(CompletionError::NoContent)
        );
        let long_id = format!(
            r#"{{"id":"{}","choices":[{{"message":{{"content":"x"}}}}]}}"#,
            "a".repeat(500)
        );
        let c = parse_completion(long_id.as_bytes(), 1).unwrap();
        assert_eq!(c.response_id, None);
        assert!(c.usage_estimated);
    }
}
