//! The chat messages a task sends to a model.
//!
//! The classification prompt ends with a `Labels: a, b, c` line; the simulator relies on
//! that line to answer prompts it has no record of, so keep it stable.

use switchyard_proto::{ChatItem, Task};

/// A chat message (OpenAI roles).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user`, `assistant` (a chat item's roles pass through as they are).
    pub role: String,
    pub content: String,
}

/// Default summary length when the task does not say.
pub const DEFAULT_MAX_WORDS: u32 = 80;

/// The messages for one item: a system message with the task's instructions, then the item
/// text unchanged as the user message.
pub fn messages_for(task: &Task, text: &str) -> Vec<Message> {
    let system = match task {
        // A chat item is its own conversation; text that is not one is sent as the user's.
        Task::Chat {} => {
            return match ChatItem::from_text(text) {
                Ok(chat) => chat
                    .messages
                    .into_iter()
                    .map(|m| Message {
                        role: m.role,
                        content: m.content,
                    })
                    .collect(),
                Err(_) => vec![Message {
                    role: "user".into(),
                    content: text.to_owned(),
                }],
            };
        }
        Task::Classify {
            labels,
            instructions,
        } => format!(
            "{}\nAnswer with exactly one of the labels and nothing else.\nLabels: {}",
            instructions
                .as_deref()
                .unwrap_or("Classify the user's text."),
            labels.join(", ")
        ),
        Task::Summarize {
            max_words,
            instructions,
        } => format!(
            "{}\nUse at most {} words.",
            instructions
                .as_deref()
                .unwrap_or("Summarize the user's text."),
            max_words.unwrap_or(DEFAULT_MAX_WORDS)
        ),
        Task::Generate { instructions } => instructions
            .clone()
            .unwrap_or_else(|| "You are a helpful assistant.".to_owned()),
    };
    vec![
        Message {
            role: "system".into(),
            content: system,
        },
        Message {
            role: "user".into(),
            content: text.to_owned(),
        },
    ]
}

/// The completion budget for a task: a label is a few tokens, a summary about two tokens per
/// word, generation whatever the deployment allows.
pub fn max_tokens_for(task: &Task, generate_default: u32) -> u32 {
    match task {
        Task::Classify { labels, .. } => {
            let longest = labels.iter().map(|l| l.len()).max().unwrap_or(1) as u32;
            (longest / 2 + 4).min(64)
        }
        Task::Summarize { max_words, .. } => max_words.unwrap_or(DEFAULT_MAX_WORDS) * 2 + 16,
        Task::Generate { .. } => generate_default,
        // A chat request's own ceiling, else what generation gets.
        Task::Chat {} => generate_default,
    }
}

/// The completion budget of one item: a chat request's own `max_completion_tokens` /
/// `max_tokens` when it set one, else the task's ([`max_tokens_for`]).
pub fn max_tokens_for_item(task: &Task, text: &str, generate_default: u32) -> u32 {
    if matches!(task, Task::Chat {})
        && let Some(n) = ChatItem::from_text(text).ok().and_then(|c| c.max_tokens())
    {
        return n;
    }
    max_tokens_for(task, generate_default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_prompt_lists_labels_and_keeps_text() {
        let task = Task::Classify {
            labels: vec!["A".into(), "B".into()],
            instructions: None,
        };
        let m = messages_for(&task, "  the item  ");
        assert!(m[0].content.ends_with("Labels: A, B"));
        assert_eq!(m[1].content, "  the item  ");
    }
}
