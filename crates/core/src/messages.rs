//! Reading an Anthropic Messages API body (`POST /v1/messages`): pure, like
//! [`crate::completion`], and read into the same [`ParsedCompletion`].
//!
//! Usage is normalized to the ledger's terms. Anthropic's `input_tokens` counts only the
//! input that was neither read from nor written to the cache, so the prompt is
//! `input_tokens + cache_creation_input_tokens + cache_read_input_tokens`, of which
//! `cache_read_input_tokens` were cached (the ledger's `cached ≤ prompt` holds) and
//! `cache_creation_input_tokens` were written to the cache
//! ([`ParsedCompletion::cache_write_tokens`]; the 1-hour share, from
//! `usage.cache_creation.ephemeral_1h_input_tokens`, in
//! [`ParsedCompletion::cache_write_1h_tokens`]). Anthropic gives no logprobs and no `n`.
//!
//! As for OpenAI bodies: a `200` is a call the provider may bill, so usage it cannot read is
//! estimated and flagged, and a body without text content is an error the worker still books.

use serde_json::Value;

use crate::completion::{CompletionError, MAX_RESPONSE_ID_BYTES, ParsedCompletion};

/// Parses a Messages API body. `prompt_chars` sizes the estimate when `usage` is missing.
///
/// # Errors
/// A [`CompletionError`]: not JSON, no content, or no text in it.
pub fn parse_message(
    body: &[u8],
    prompt_chars: usize,
) -> Result<ParsedCompletion, CompletionError> {
    // A lone surrogate anywhere (a model's broken emoji) fails the whole document: read it
    // again with those escapes as U+FFFD, so that an answer the provider billed is kept
    // (lossily) rather than called, and billed, again.
    let v: Value = serde_json::from_slice(body)
        .or_else(|e| {
            std::str::from_utf8(body)
                .ok()
                .map(crate::completion::replace_lone_surrogates)
                .and_then(|fixed| serde_json::from_str(&fixed).ok())
                .ok_or(e)
        })
        .map_err(|e| CompletionError::NotACompletion(e.to_string()))?;
    if !v.is_object() {
        return Err(CompletionError::NotACompletion(
            "the body is not an object".to_owned(),
        ));
    }
    let parts = v
        .get("content")
        .and_then(Value::as_array)
        .ok_or(CompletionError::NoChoices)?;
    let texts: Vec<&str> = parts
        .iter()
        .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect();
    // No text, but the message ended (a refusal, `stop_reason: "refusal"`, or a turn with
    // nothing to say): an empty answer, billed as such and escalated as not an answer,
    // rather than called again for the same. No text and no end: unusable.
    if texts.is_empty() && v.get("stop_reason").and_then(Value::as_str).is_none() {
        return Err(CompletionError::NoContent);
    }
    let content = texts.concat();
    let usage = v.get("usage").and_then(read_usage);
    let (prompt, completion, cached, written, written_1h, estimated) = match usage {
        Some(u) => (
            u.prompt,
            u.completion,
            u.cached,
            u.written,
            u.written_1h,
            false,
        ),
        None => (
            saturating_u32(prompt_chars.div_ceil(4)),
            saturating_u32(content.chars().count().div_ceil(4)),
            0,
            0,
            0,
            true,
        ),
    };
    let response_id = v
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty() && id.len() <= MAX_RESPONSE_ID_BYTES)
        .map(str::to_owned);
    Ok(ParsedCompletion {
        response_id,
        content,
        raw_content: None,
        logprobs: None,
        prompt_tokens: prompt,
        completion_tokens: completion,
        cached_prompt_tokens: cached,
        cache_write_tokens: written,
        cache_write_1h_tokens: written_1h,
        usage_estimated: estimated,
        raw_usage: v.get("usage").map(Value::to_string),
        // In OpenAI's words, as the Batch API's output lines say them.
        finish_reason: v
            .get("stop_reason")
            .and_then(Value::as_str)
            .map(|r| match r {
                "end_turn" | "stop_sequence" => "stop",
                "max_tokens" => "length",
                "refusal" => "content_filter",
                other => other,
            })
            .and_then(crate::completion::plain_finish_reason),
        samples: Vec::new(),
    })
}

struct Usage {
    prompt: u32,
    completion: u32,
    cached: u32,
    written: u32,
    written_1h: u32,
}

/// Usage in the ledger's terms; `None` when the counts are missing or not whole numbers in
/// range (the call is then estimated).
fn read_usage(u: &Value) -> Option<Usage> {
    let count = |v: Option<&Value>| -> Option<u32> {
        let n = v?.as_u64()?;
        u32::try_from(n).ok().filter(|n| i32::try_from(*n).is_ok())
    };
    let optional = |key: &str| match u.get(key) {
        None | Some(Value::Null) => Some(0),
        v => count(v),
    };
    let input = count(u.get("input_tokens"))?;
    let completion = count(u.get("output_tokens"))?;
    let read = optional("cache_read_input_tokens")?;
    let written = optional("cache_creation_input_tokens")?;
    let prompt = input.checked_add(read)?.checked_add(written)?;
    i32::try_from(prompt).ok()?;
    let written_1h = u
        .get("cache_creation")
        .and_then(|c| count(c.get("ephemeral_1h_input_tokens")))
        .unwrap_or(0)
        .min(written);
    Some(Usage {
        prompt,
        completion,
        cached: read,
        written,
        written_1h,
    })
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_reads_and_writes_are_normalized_into_the_prompt() {
        let body = br#"{"id":"msg_01","type":"message","role":"assistant",
            "content":[{"type":"text","text":"Paris"},{"type":"text","text":"."}],
            "stop_reason":"end_turn",
            "usage":{"input_tokens":20,"output_tokens":3,"cache_read_input_tokens":1000,
                     "cache_creation_input_tokens":500,
                     "cache_creation":{"ephemeral_5m_input_tokens":200,
                                       "ephemeral_1h_input_tokens":300}}}"#;
        let c = parse_message(body, 10).unwrap();
        assert_eq!(c.response_id.as_deref(), Some("msg_01"));
        assert_eq!(c.content, "Paris.");
        assert_eq!(c.finish_reason.as_deref(), Some("stop"));
        assert_eq!(
            (c.prompt_tokens, c.cached_prompt_tokens, c.completion_tokens),
            (1520, 1000, 3)
        );
        assert_eq!((c.cache_write_tokens, c.cache_write_1h_tokens), (500, 300));
        assert!(!c.usage_estimated && c.logprobs.is_none());
    }

    #[test]
    fn a_lone_surrogate_in_the_text_is_kept_as_a_replacement_character() {
        let c = parse_message(
            br#"{"content":[{"type":"text","text":"x\ud800y \ud83d\ude00"}],"stop_reason":"end_turn","usage":{"input_tokens":5,"output_tokens":2}}"#,
            0,
        )
        .unwrap();
        assert_eq!(c.content, "x\u{fffd}y \u{1f600}");
        assert_eq!((c.prompt_tokens, c.usage_estimated), (5, false));
        // An escaped backslash before `u` is text, not an escape.
        let c = parse_message(
            br#"{"content":[{"type":"text","text":"a\\ud800 \udc00"}],"stop_reason":"end_turn"}"#,
            0,
        )
        .unwrap();
        assert_eq!(c.content, "a\\ud800 \u{fffd}");
    }

    #[test]
    fn a_refusal_without_text_is_an_empty_answer() {
        let c = parse_message(
            br#"{"content":[],"stop_reason":"refusal","usage":{"input_tokens":7,"output_tokens":0}}"#,
            0,
        )
        .unwrap();
        assert_eq!(c.content, "");
        assert_eq!(c.finish_reason.as_deref(), Some("content_filter"));
        assert_eq!((c.prompt_tokens, c.usage_estimated), (7, false));
    }

    #[test]
    fn plain_usage_odd_usage_and_unusable_bodies() {
        let c = parse_message(
            br#"{"content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":4,"output_tokens":1}}"#,
            0,
        )
        .unwrap();
        assert_eq!(
            (
                c.prompt_tokens,
                c.cached_prompt_tokens,
                c.cache_write_tokens
            ),
            (4, 0, 0)
        );
        let odd = parse_message(
            br#"{"content":[{"type":"text","text":"abcd"}],"usage":{"input_tokens":-1,"output_tokens":1}}"#,
            40,
        )
        .unwrap();
        assert!(odd.usage_estimated);
        assert_eq!((odd.prompt_tokens, odd.completion_tokens), (10, 1));
        let overflow = format!(
            r#"{{"content":[{{"type":"text","text":"x"}}],"usage":{{"input_tokens":{},"output_tokens":1,"cache_read_input_tokens":{}}}}}"#,
            i32::MAX,
            i32::MAX
        );
        assert!(
            parse_message(overflow.as_bytes(), 4)
                .unwrap()
                .usage_estimated
        );
        for bad in [
            &b"nope"[..],
            b"[]",
            b"{}",
            br#"{"content":[{"type":"tool_use"}]}"#,
            br#"{"content":[]}"#,
        ] {
            assert!(
                parse_message(bad, 4).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
