//! Chat items: one OpenAI chat completion request as an item of a `chat` job (what a batch of
//! the OpenAI-compatible API becomes).
//!
//! A chat item travels in the item's `text` as the JSON of a [`ChatItem`]: the conversation,
//! the parameters passed to the model as they are, and the model the request pinned (none for
//! a routing alias such as `switchyard:auto`). Keeping it in `text` means every path that
//! already carries an item (the items table, the sweeper's re-publish, `retry`, escalations)
//! carries a chat item whole, with no second field to forget. The router scores
//! [`ChatItem::prompt_text`], not the JSON.
//!
//! Messages of chat jobs carry `v` = [`CHAT_VERSION`]: a worker or dispatcher that predates
//! them sees a newer version and leaves the message for a newer process (a rolling upgrade
//! never terminates what an old process cannot read), instead of failing it as malformed.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The version of messages that carry chat items (plain messages stay at
/// [`crate::PROTOCOL_VERSION`], so older readers keep reading them).
pub const CHAT_VERSION: u16 = 2;

/// The prefix of routing aliases: a request whose `model` starts with it is routed by the
/// job's policy; any other model name pins that model.
pub const ALIAS_PREFIX: &str = "switchyard:";

/// One message of the conversation (text only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// A chat completion request as an item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatItem {
    /// The model the request named when it is not a routing alias: the item runs on that
    /// model only (no routing, no escalation). `None`: the job's policy routes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    /// Parameters passed to the model as they are (`max_tokens`, `temperature`, …).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub params: Map<String, Value>,
}

/// Why an item's text is not a chat item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the item is not a chat request: {0}")]
pub struct NotChat(String);

impl ChatItem {
    /// A chat item of `messages` for a request that named `model` (an alias routes; any other
    /// name pins).
    pub fn new(model: &str, messages: Vec<ChatMessage>, params: Map<String, Value>) -> Self {
        Self {
            model: (!is_alias(model)).then(|| model.to_owned()),
            messages,
            params,
        }
    }

    /// The item's `text`: this item as JSON.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a chat item back from an item's `text`.
    ///
    /// # Errors
    /// [`NotChat`] when the text is not a chat item's JSON or has no messages.
    pub fn from_text(text: &str) -> Result<Self, NotChat> {
        let item: Self = serde_json::from_str(text).map_err(|e| NotChat(e.to_string()))?;
        if item.messages.is_empty() {
            return Err(NotChat("it has no messages".to_owned()));
        }
        Ok(item)
    }

    /// What the router scores: the conversation's text, one message per line, without the
    /// roles of user messages (the router was trained on prompts).
    pub fn prompt_text(&self) -> String {
        let mut out = String::new();
        for m in &self.messages {
            if !out.is_empty() {
                out.push('\n');
            }
            if m.role != "user" {
                out.push_str(&m.role);
                out.push_str(": ");
            }
            out.push_str(&m.content);
        }
        out
    }

    /// An integer parameter (`max_tokens`, `max_completion_tokens`), if set and in range.
    pub fn param_u32(&self, name: &str) -> Option<u32> {
        self.params
            .get(name)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
    }

    /// The completion ceiling the request asked for (`max_completion_tokens` wins over the
    /// older `max_tokens`, as in OpenAI's API).
    pub fn max_tokens(&self) -> Option<u32> {
        self.param_u32("max_completion_tokens")
            .or_else(|| self.param_u32("max_tokens"))
    }
}

/// True when `model` is a routing alias (`switchyard:auto`, …).
pub fn is_alias(model: &str) -> bool {
    model.starts_with(ALIAS_PREFIX)
}

/// The model a chat item's text pins, if any (`None` too when the text is not a chat item:
/// the worker reports that, not the router).
pub fn pinned_model(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Pin {
        model: Option<String>,
    }
    serde_json::from_str::<Pin>(text).ok()?.model
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs() -> Vec<ChatMessage> {
        vec![
            ChatMessage {
                role: "system".into(),
                content: "Be brief.".into(),
            },
            ChatMessage {
                role: "user".into(),
                content: "What is 2+2?".into(),
            },
        ]
    }

    #[test]
    fn aliases_route_and_other_names_pin() {
        let routed = ChatItem::new("switchyard:auto", msgs(), Map::new());
        assert_eq!(routed.model, None);
        let mut params = Map::new();
        params.insert("max_tokens".into(), 64.into());
        params.insert("max_completion_tokens".into(), 32.into());
        let pinned = ChatItem::new("gpt-4o", msgs(), params);
        assert_eq!(pinned.model.as_deref(), Some("gpt-4o"));
        assert_eq!(pinned.max_tokens(), Some(32));
        let back = ChatItem::from_text(&pinned.to_text()).unwrap();
        assert_eq!(back, pinned);
        assert_eq!(pinned_model(&pinned.to_text()).as_deref(), Some("gpt-4o"));
        assert_eq!(pinned_model(&routed.to_text()), None);
        assert_eq!(routed.prompt_text(), "system: Be brief.\nWhat is 2+2?");
    }

    #[test]
    fn text_that_is_not_a_chat_item_is_named_as_such() {
        for bad in ["plain prompt", "{\"messages\": []}", "{\"model\": 3}"] {
            let e = ChatItem::from_text(bad).unwrap_err().to_string();
            assert!(e.contains("not a chat request"), "{bad}: {e}");
        }
        assert_eq!(pinned_model("plain prompt"), None);
    }
}
