//! Anthropic's Messages API on the simulator (`POST /v1/messages`): the request is read as
//! the equivalent chat completion (so the same replayed answers, faults, limits and call log
//! apply), and the answer is written back in Anthropic's shape.
//!
//! Prompt caching as Anthropic bills it: a `system` block marked `cache_control` is written
//! to the cache the first time the simulator sees it for a model
//! (`cache_creation_input_tokens`, 5-minute or 1-hour by the mark's `ttl`) and read from it
//! afterwards (`cache_read_input_tokens`); `input_tokens` is what is left of the prompt. The
//! call log keeps the whole prompt, as the ledger normalizes it.

use serde_json::{Value, json};

/// The chat completion request of a Messages request, and the text of the `system` blocks
/// marked for caching with whether one asked for an hour.
///
/// # Errors
/// A message naming what is wrong (400).
pub fn to_chat(body: &[u8]) -> Result<(Value, Option<(String, bool)>), String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))?;
    let model = v
        .get("model")
        .and_then(Value::as_str)
        .ok_or("`model` is required")?;
    if v.get("max_tokens").and_then(Value::as_u64).is_none() {
        return Err("`max_tokens` is required".to_owned());
    }
    let mut messages = Vec::new();
    let mut cached = None;
    match v.get("system") {
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(Value::Array(blocks)) => {
            let mut text = String::new();
            for b in blocks {
                if let Some(t) = b.get("text").and_then(Value::as_str) {
                    text.push_str(t);
                    if let Some(c) = b.get("cache_control") {
                        let hour = c.get("ttl").and_then(Value::as_str) == Some("1h");
                        cached = Some((text.clone(), hour));
                    }
                }
            }
            messages.push(json!({"role": "system", "content": text}));
        }
        _ => {}
    }
    for m in v
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("`messages` is required")?
    {
        messages.push(json!({"role": m.get("role"), "content": m.get("content")}));
    }
    let mut chat = json!({
        "model": model,
        "messages": messages,
        "max_tokens": v["max_tokens"],
    });
    if let Some(t) = v.get("temperature") {
        chat["temperature"] = t.clone();
    }
    Ok((chat, cached))
}

/// The Messages API answer of a chat completion answer. `cache`: tokens of the prompt
/// written to and read from the cache (`(written, written for an hour, read)`).
pub fn from_chat(chat: &Value, cache: (u32, bool, u32)) -> Value {
    let text = chat["choices"][0]["message"]["content"].clone();
    let prompt = chat["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
    let prompt32 = u32::try_from(prompt).unwrap_or(u32::MAX);
    let (written, hour, read) = crate::server::capped(cache, prompt32);
    let (written, read) = (u64::from(written), u64::from(read));
    let input = prompt - written - read;
    let stop = match chat["choices"][0]["finish_reason"].as_str() {
        Some("length") => "max_tokens",
        _ => "end_turn",
    };
    let id = chat["id"].as_str().map_or_else(
        || "msg_sim".to_owned(),
        |i| i.replacen("chatcmpl-", "msg_", 1),
    );
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": chat["model"],
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop,
        "stop_sequence": null,
        "usage": {
            "input_tokens": input,
            "output_tokens": chat["usage"]["completion_tokens"],
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": if hour { 0 } else { written },
                "ephemeral_1h_input_tokens": if hour { written } else { 0 },
            },
        },
    })
}

/// Anthropic's error body for an OpenAI-shaped error.
pub fn error_from_chat(status: u16, chat: &Value) -> Value {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    let message = chat["error"]["message"].as_str().unwrap_or("error");
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_messages_request_reads_as_chat_and_its_answer_goes_back_with_cache_usage() {
        let body = json!({"model": "claude", "max_tokens": 20,
            "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
            "messages": [{"role": "user", "content": "Hi"}]});
        let (chat, cached) = to_chat(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            chat["messages"][0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(chat["messages"][1]["content"], "Hi");
        assert_eq!(cached, Some(("Be brief.".to_owned(), true)));
        let answer = json!({"id": "chatcmpl-1", "model": "claude",
            "choices": [{"message": {"content": "Hello"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 2}});
        let m = from_chat(&answer, (60, true, 0));
        assert_eq!(m["content"][0]["text"], "Hello");
        assert_eq!(m["usage"]["input_tokens"], 40);
        assert_eq!(
            m["usage"]["cache_creation"]["ephemeral_1h_input_tokens"],
            60
        );
        assert!(
            to_chat(br#"{"model": "x", "messages": []}"#).is_err(),
            "max_tokens is required"
        );
    }
}
