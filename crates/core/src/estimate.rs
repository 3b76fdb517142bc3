//! Cost estimates before any model is called: what budgets (`budget-usd=B`) and
//! `switchyard quote` weigh.
//!
//! Tokens are estimated, then priced exactly (`Decimal`):
//! - **prompt**: the characters of every message the task sends (instructions, labels, the
//!   item's text) divided by 4, rounded up, plus 4 per message for the chat framing: the
//!   usual rule of thumb for English with GPT-style tokenizers;
//! - **completion**: a label's tokens for `classify` (the longest label / 4, rounded up, at
//!   least 1); about 1.3 tokens per word of the word budget for `summarize`; half the
//!   deployment's `generate_max_tokens` for `generate` (answers rarely use all of it).
//!
//! These are expectations, not bounds: a job's real cost may differ (the ledger has the
//! truth), and escalations come on top.

use rust_decimal::Decimal;
use switchyard_proto::Task;

use crate::pricing::Price;
use crate::prompt::{self, DEFAULT_MAX_WORDS};

/// Tokens a call is expected to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenEstimate {
    pub prompt: u32,
    pub completion: u32,
}

/// Chat framing tokens per message.
const PER_MESSAGE: usize = 4;

/// The estimate of one task, computed once per job (the instructions are the same for every
/// item), then per item from its text alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimator {
    /// Characters of every message but the item's text.
    fixed_chars: usize,
    messages: usize,
    completion: u32,
}

impl Estimator {
    /// The estimator of `task`.
    pub fn new(task: &Task, generate_max_tokens: u32) -> Self {
        let messages = prompt::messages_for(task, "");
        let fixed_chars = messages.iter().map(|m| m.content.chars().count()).sum();
        let completion = match task {
            Task::Classify { labels, .. } => labels
                .iter()
                .map(|l| l.chars().count().div_ceil(4))
                .max()
                .unwrap_or(1)
                .max(1) as u32,
            Task::Summarize { max_words, .. } => {
                (f64::from(max_words.unwrap_or(DEFAULT_MAX_WORDS)) * 1.3).ceil() as u32
            }
            Task::Generate { .. } | Task::Chat {} => generate_max_tokens.div_ceil(2),
        };
        Self {
            fixed_chars,
            messages: messages.len(),
            completion,
        }
    }

    /// The tokens of one item with this text.
    pub fn tokens(&self, text: &str) -> TokenEstimate {
        let prompt =
            (self.fixed_chars + text.chars().count()).div_ceil(4) + PER_MESSAGE * self.messages;
        TokenEstimate {
            prompt: u32::try_from(prompt).unwrap_or(u32::MAX),
            completion: self.completion,
        }
    }
}

/// The tokens one item of `task` is expected to use.
pub fn tokens(task: &Task, text: &str, generate_max_tokens: u32) -> TokenEstimate {
    Estimator::new(task, generate_max_tokens).tokens(text)
}

/// The expected cost of one call with these tokens at this price.
pub fn cost(t: TokenEstimate, price: &Price) -> Decimal {
    price.cost(t.prompt, t.completion)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn classify_is_the_prompt_plus_a_label() {
        let task = Task::Classify {
            labels: vec!["A".into(), "B".into()],
            instructions: Some("x".repeat(40)),
        };
        let t = tokens(&task, &"y".repeat(400), 512);
        assert_eq!(t.completion, 1);
        // 400 text + 40 instructions + the fixed lines of the classify prompt.
        let system = prompt::messages_for(&task, "")[0].content.chars().count();
        assert_eq!(t.prompt as usize, (400 + system).div_ceil(4) + 8);
        let price = Price::new(Decimal::from(10), Decimal::from(30)).unwrap();
        assert_eq!(
            cost(t, &price),
            Decimal::from(t.prompt) * Decimal::from_str("0.00001").unwrap()
                + Decimal::from_str("0.00003").unwrap()
        );
    }

    #[test]
    fn summaries_and_generation_use_their_budgets() {
        let s = Task::Summarize {
            max_words: Some(100),
            instructions: None,
        };
        assert_eq!(tokens(&s, "t", 512).completion, 130);
        let g = Task::Generate { instructions: None };
        assert_eq!(tokens(&g, "t", 512).completion, 256);
    }
}
