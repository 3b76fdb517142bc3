//! Reading an OpenAI-compatible chat completion body: pure, so the provider-facing parser can
//! be unit-tested and fuzzed (`fuzz/`) without HTTP, sqlx or NATS in the build.
//!
//! A body the provider answered with `200` is a call it may bill, so the parser is lenient
//! wherever a usable answer can still be read, and says exactly what it could not use:
//!
//! - `usage` that is missing, or not two whole numbers between 0 and 2³¹−1, is estimated at
//!   four characters a token and flagged ([`ParsedCompletion::usage_estimated`]);
//! - an `id` that is not a string, is empty or over [`MAX_RESPONSE_ID_BYTES`] is dropped;
//! - `content` given as an array of parts (`[{"type": "text", "text": …}]`) is joined;
//! - a `content` string holding escapes no Rust string can hold (a lone UTF-16 surrogate)
//!   keeps its JSON text as sent in [`ParsedCompletion::raw_content`] (lossless) and is
//!   judged with the surrogate replaced by U+FFFD.
//!
//! A body that is not JSON, has no choice, or whose first choice has no content is an error:
//! the worker still books the call (it may be billed) and tries the item again.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::confidence::TokenLogprob;

/// Response ids longer than this are not kept.
pub const MAX_RESPONSE_ID_BYTES: usize = 200;

/// What a provider's body says, once read.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedCompletion {
    /// The provider's id of the call (`chatcmpl-…`), if it gave a usable one.
    pub response_id: Option<String>,
    /// The answer text (lone surrogates replaced by U+FFFD; see `raw_content`).
    pub content: String,
    /// The answer as the JSON string literal the provider sent, when `content` could not
    /// hold it exactly (lone surrogates): store this to keep the answer lossless.
    pub raw_content: Option<String>,
    /// Token logprobs (finite values only, clamped to ≤ 0), when the provider sent them.
    pub logprobs: Option<Vec<TokenLogprob>>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens served from the provider's cache (`prompt_tokens_details.cached_tokens`),
    /// never more than `prompt_tokens`.
    pub cached_prompt_tokens: u32,
    /// Prompt tokens written to the provider's cache at this call (Anthropic's
    /// `cache_creation_input_tokens`; OpenAI caches without charging writes: 0). Part of
    /// `prompt_tokens`, disjoint from `cached_prompt_tokens`.
    pub cache_write_tokens: u32,
    /// Of `cache_write_tokens`, those written for one hour (a dearer rate than five minutes).
    pub cache_write_1h_tokens: u32,
    /// No usable `usage` in the body: the token counts are estimates.
    pub usage_estimated: bool,
    /// The body's `usage` as the provider wrote it (JSON), kept on the ledger row.
    pub raw_usage: Option<String>,
    /// Why the answer ended, in OpenAI's words (`stop`, `length`, `content_filter`, …), when
    /// the provider said so in a short plain word.
    pub finish_reason: Option<String>,
    /// The texts of the other choices, when the request asked for `n > 1` (extra samples of
    /// the same answer, see [`crate::samples`]); choices without readable text are skipped.
    pub samples: Vec<String>,
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
struct ChatResponse<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    choices: Option<Vec<&'a RawValue>>,
    #[serde(borrow)]
    usage: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow)]
    message: Option<&'a RawValue>,
    #[serde(borrow)]
    logprobs: Option<&'a RawValue>,
    #[serde(borrow, default)]
    finish_reason: Option<&'a RawValue>,
}

/// A finish reason worth keeping: a short word of letters, digits and underscores (anything
/// else a provider sends is dropped rather than stored).
pub fn plain_finish_reason(reason: &str) -> Option<String> {
    (!reason.is_empty()
        && reason.len() <= 32
        && reason
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    .then(|| reason.to_owned())
}

#[derive(Deserialize)]
struct ChoiceMessage<'a> {
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    /// OpenAI's refusal (structured outputs), sent with `content: null`.
    #[serde(borrow, default)]
    refusal: Option<&'a RawValue>,
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

/// Parses a chat completion body. `prompt_chars` sizes the estimate when `usage` is missing.
///
/// # Errors
/// A [`CompletionError`] saying why the body is unusable.
pub fn parse_completion(
    body: &[u8],
    prompt_chars: usize,
) -> Result<ParsedCompletion, CompletionError> {
    let not = |e: serde_json::Error| CompletionError::NotACompletion(e.to_string());
    let parsed: ChatResponse<'_> = serde_json::from_slice(body).map_err(not)?;
    let mut choices = parsed.choices.unwrap_or_default().into_iter();
    let first = choices.next().ok_or(CompletionError::NoChoices)?;
    let samples: Vec<String> = choices.filter_map(choice_text).collect();
    // A choice that is not an object (or a message that is not one) holds no content.
    let choice: Choice<'_> =
        serde_json::from_str(first.get()).map_err(|_| CompletionError::NoContent)?;
    let message: ChoiceMessage<'_> = choice
        .message
        .and_then(|m| serde_json::from_str(m.get()).ok())
        .ok_or(CompletionError::NoContent)?;
    let finish_reason = choice
        .finish_reason
        .and_then(|r| serde_json::from_str::<String>(r.get()).ok())
        .and_then(|r| plain_finish_reason(&r));
    // No content: a refusal is the answer; a choice the provider ended without one (a
    // content filter) is an empty answer. Both are billed and both are answers (not answers
    // to the question: they escalate, see `escalation::is_empty_or_refusal`); calling
    // again would be billed again for the same. A body with neither is unusable.
    let (content, raw_content) = match message.content.and_then(read_content) {
        Some(c) => c,
        None => match message
            .refusal
            .and_then(|r| serde_json::from_str::<String>(r.get()).ok())
        {
            Some(refusal) => (refusal, None),
            None if finish_reason.is_some() => (String::new(), None),
            None => return Err(CompletionError::NoContent),
        },
    };
    let logprobs = choice
        .logprobs
        .and_then(|l| serde_json::from_str::<Logprobs>(l.get()).ok())
        .and_then(|l| l.content)
        .map(|tokens| {
            tokens
                .into_iter()
                .filter(|t| t.logprob.is_finite())
                .map(|t| TokenLogprob {
                    token: t.token,
                    logprob: t.logprob.min(0.0),
                })
                .collect::<Vec<_>>()
        });
    let raw_usage = parsed.usage.map(|u| u.get().to_owned());
    let usage = parsed.usage.and_then(read_usage);
    let (prompt_tokens, completion_tokens, cached_prompt_tokens, usage_estimated) = match usage {
        Some((p, c, cached)) => (p, c, cached.min(p), false),
        None => (
            saturating_u32(prompt_chars.div_ceil(4)),
            saturating_u32(content.chars().count().div_ceil(4)),
            0,
            true,
        ),
    };
    let response_id = parsed
        .id
        .and_then(|id| serde_json::from_str::<String>(id.get()).ok())
        .filter(|id| !id.is_empty() && id.len() <= MAX_RESPONSE_ID_BYTES);
    Ok(ParsedCompletion {
        response_id,
        content,
        raw_content,
        logprobs,
        prompt_tokens,
        completion_tokens,
        cached_prompt_tokens,
        cache_write_tokens: 0,
        cache_write_1h_tokens: 0,
        usage_estimated,
        raw_usage,
        finish_reason,
        samples,
    })
}

/// The text of one further choice (lossy: a sample is only compared, never stored).
fn choice_text(raw: &RawValue) -> Option<String> {
    let choice: Choice<'_> = serde_json::from_str(raw.get()).ok()?;
    let message: ChoiceMessage<'_> = serde_json::from_str(choice.message?.get()).ok()?;
    read_content(message.content?).map(|(text, _)| text)
}

/// The text of a message's `content`: a string, or the joined `text` of an array of parts.
/// With a string Rust cannot hold (lone surrogates), the JSON literal comes back too.
fn read_content(raw: &RawValue) -> Option<(String, Option<String>)> {
    #[derive(Deserialize)]
    struct Part {
        text: Option<String>,
    }
    let text = raw.get();
    if text.starts_with('"') {
        return match serde_json::from_str::<String>(text) {
            Ok(s) => Some((s, None)),
            Err(_) => Some((decode_json_string_lossy(text), Some(text.to_owned()))),
        };
    }
    let parts: Vec<Part> = serde_json::from_str(text).ok()?;
    let joined: String = parts.into_iter().filter_map(|p| p.text).collect();
    Some((joined, None))
}

/// A JSON string literal decoded with every escape it cannot hold (a lone surrogate)
/// replaced by U+FFFD; an empty string when `literal` is not a JSON string.
pub fn decode_json_string_lossy(literal: &str) -> String {
    serde_json::from_str(&replace_lone_surrogates(literal)).unwrap_or_default()
}

/// JSON text with every `\u` escape of a lone surrogate (which no Rust string can hold, so
/// `serde_json` refuses the whole document) replaced by `\ufffd`; everything else as it was.
/// Backslashes occur only inside JSON strings, so the whole text can be scanned at once.
pub fn replace_lone_surrogates(literal: &str) -> String {
    let unit_at = |at: usize| -> Option<u16> {
        let hex = literal.get(at..at + 4)?;
        u16::from_str_radix(hex, 16).ok()
    };
    let mut fixed = String::with_capacity(literal.len());
    let mut rest = literal;
    let mut at = 0;
    while let Some(pos) = rest.find('\\') {
        fixed.push_str(&rest[..pos]);
        let esc = at + pos;
        let next = literal.as_bytes().get(esc + 1).copied();
        let mut take = 2;
        if next == Some(b'u')
            && let Some(unit) = unit_at(esc + 2)
        {
            take = 6;
            let high = (0xD800..0xDC00).contains(&unit);
            let low = (0xDC00..0xE000).contains(&unit);
            let paired = high
                && literal.get(esc + 6..esc + 8) == Some("\\u")
                && unit_at(esc + 8).is_some_and(|u| (0xDC00..0xE000).contains(&u));
            if paired {
                take = 12;
            } else if high || low {
                fixed.push_str("\\ufffd");
                at = esc + take;
                rest = &literal[at..];
                continue;
            }
        }
        let end = (esc + take).min(literal.len());
        fixed.push_str(literal.get(esc..end).unwrap_or_default());
        at = end;
        rest = literal.get(at..).unwrap_or_default();
    }
    fixed.push_str(rest);
    fixed
}

/// `(prompt, completion, cached)` when `usage` holds whole numbers in `0..=i32::MAX`.
fn read_usage(raw: &RawValue) -> Option<(u32, u32, u32)> {
    let v: serde_json::Value = serde_json::from_str(raw.get()).ok()?;
    let count = |v: Option<&serde_json::Value>| -> Option<u32> {
        let n = v?.as_u64()?;
        u32::try_from(n).ok().filter(|n| i32::try_from(*n).is_ok())
    };
    let prompt = count(v.get("prompt_tokens"))?;
    let completion = count(v.get("completion_tokens"))?;
    let cached = count(
        v.get("prompt_tokens_details")
            .and_then(|d| d.get("cached_tokens")),
    )
    .unwrap_or(0);
    Some((prompt, completion, cached))
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
    fn the_finish_reason_is_kept_when_it_is_a_plain_word() {
        let with = |reason: &str| {
            let body = format!(
                r#"{{"choices":[{{"message":{{"content":"A"}},"finish_reason":{reason}}}]}}"#
            );
            parse_completion(body.as_bytes(), 4).unwrap().finish_reason
        };
        assert_eq!(with(r#""length""#).as_deref(), Some("length"));
        assert_eq!(
            with(r#""content_filter""#).as_deref(),
            Some("content_filter")
        );
        for odd in [r#""""#, "7", "null", r#""a b""#, r#""x\u0000""#] {
            assert_eq!(with(odd), None, "{odd}");
        }
        assert_eq!(with(&format!(r#""{}""#, "x".repeat(40))), None);
    }

    #[test]
    fn further_choices_are_samples_and_unreadable_ones_are_skipped() {
        let body = br#"{"choices":[{"message":{"content":"A"}},{"message":{"content":"B"}},
            {"message":{}},7,{"message":{"content":[{"type":"text","text":"C"}]}}]}"#;
        let c = parse_completion(body, 40).unwrap();
        assert_eq!(c.content, "A");
        assert_eq!(c.samples, vec!["B".to_string(), "C".to_string()]);
        let one = parse_completion(br#"{"choices":[{"message":{"content":"A"}}]}"#, 4).unwrap();
        assert!(one.samples.is_empty());
    }

    #[test]
    fn odd_but_usable_bodies_are_read() {
        // Usage that is not two whole numbers in range is estimated, not an error.
        for usage in [
            r#"{"prompt_tokens":-1,"completion_tokens":1}"#,
            r#"{"prompt_tokens":"12","completion_tokens":1}"#,
            r#"{"prompt_tokens":99999999999,"completion_tokens":1}"#,
            r#"{"prompt_tokens":1.5,"completion_tokens":1}"#,
            "null",
            "[]",
        ] {
            let body =
                format!(r#"{{"choices":[{{"message":{{"content":"ab"}}}}],"usage":{usage}}}"#);
            let c = parse_completion(body.as_bytes(), 8).unwrap();
            assert!(c.usage_estimated, "{usage}");
            assert_eq!((c.prompt_tokens, c.completion_tokens), (2, 1));
        }
        // An id that is not a string is dropped; content parts are joined; cached tokens kept.
        let c = parse_completion(
            br#"{"id":17,"choices":[{"message":{"content":[{"type":"text","text":"A"},
            {"type":"text","text":"B"}]}}],"usage":{"prompt_tokens":10,"completion_tokens":2,
            "prompt_tokens_details":{"cached_tokens":40}}}"#,
            1,
        )
        .unwrap();
        assert_eq!((c.response_id, c.content.as_str()), (None, "AB"));
        assert_eq!(c.cached_prompt_tokens, 10, "never more than the prompt");
        // NUL and control characters are an answer like any other.
        let c = parse_completion(
            br#"{"choices":[{"message":{"content":"a\u0000b\u0007"}}]}"#,
            1,
        )
        .unwrap();
        assert_eq!(c.content, "a\u{0}b\u{7}");
        assert_eq!(c.raw_content, None);
    }

    #[test]
    fn lone_surrogates_keep_their_json_text() {
        let body = br#"{"choices":[{"message":{"content":"x\ud800y\udc00\ud83d\ude00"}}]}"#;
        let c = parse_completion(body, 1).unwrap();
        assert_eq!(c.content, "x\u{fffd}y\u{fffd}\u{1f600}");
        assert_eq!(
            c.raw_content.as_deref(),
            Some(r#""x\ud800y\udc00\ud83d\ude00""#)
        );
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
        // A refusal is an answer (the refusal's text), an ended choice without content an
        // empty one; only a body with neither is unusable.
        let refusal = parse_completion(
            br#"{"choices":[{"message":{"content":null,"refusal":"I can't help with that."},"finish_reason":"stop"}]}"#,
            1,
        )
        .unwrap();
        assert_eq!(refusal.content, "I can't help with that.");
        let filtered = parse_completion(
            br#"{"choices":[{"message":{"content":null},"finish_reason":"content_filter"}],"usage":{"prompt_tokens":9,"completion_tokens":0}}"#,
            1,
        )
        .unwrap();
        assert_eq!(filtered.content, "");
        assert_eq!(filtered.finish_reason.as_deref(), Some("content_filter"));
        assert!(!filtered.usage_estimated);
        assert_eq!(
            parse_completion(br#"{"choices":[{"message":{"content":null}}]}"#, 1),
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
