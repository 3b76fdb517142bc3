//! Answers for requests the data cannot replay: an unknown prompt, or a model that the
//! matching record has no result for.
//!
//! They make no claim of quality; they only have to look plausible to a client. A
//! classification prompt (a system line `Labels: a, b, c`, as the worker writes it) gets one of
//! its labels; anything else gets a short extractive "summary": the first words of the text.

use crate::hashing::{pick, stable_hash};

/// How many words an extractive summary keeps at most.
pub const SUMMARY_WORDS: usize = 40;

/// Estimated token count of a text: `ceil(chars / 4)`, the usual rule of thumb, at least 1
/// for a non-empty text.
pub fn estimate_tokens(text: &str) -> u32 {
    let chars = text.chars().count();
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX)
}

/// The labels of a classification prompt: the comma-separated list on the first line of
/// `system` that starts with `Labels:`. `None` if there is no such line or it lists nothing.
pub fn parse_labels(system: &str) -> Option<Vec<String>> {
    let line = system
        .lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix("Labels:"))?;
    let labels: Vec<String> = line
        .split(',')
        .map(str::trim)
        .filter(|label| !label.is_empty())
        .map(str::to_owned)
        .collect();
    (!labels.is_empty()).then_some(labels)
}

/// One of `labels`, chosen stably by the text being classified.
pub fn choose_label(labels: &[String], text: &str) -> Option<String> {
    if labels.is_empty() {
        return None;
    }
    let index = pick(stable_hash(&[b"label", text.as_bytes()]), labels.len());
    labels.get(index).cloned()
}

/// The first [`SUMMARY_WORDS`] words of `text`, fewer if the estimated tokens would exceed
/// `max_tokens`. Never empty: an empty text summarizes to `"(empty)"`.
pub fn summary(text: &str, max_tokens: Option<u32>) -> String {
    let mut out = String::new();
    for word in text.split_whitespace().take(SUMMARY_WORDS) {
        let candidate_len =
            out.chars().count() + usize::from(!out.is_empty()) + word.chars().count();
        let within_budget = max_tokens.is_none_or(|max| candidate_len.div_ceil(4) <= max as usize);
        if !within_budget && !out.is_empty() {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
        if !within_budget {
            break; // a single over-long first word is still an answer
        }
    }
    if out.is_empty() {
        out.push_str("(empty)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_parsed_from_their_line() {
        let system = "You classify text.\nLabels: sports, politics , tech\nAnswer with one label.";
        assert_eq!(
            parse_labels(system),
            Some(vec!["sports".into(), "politics".into(), "tech".into()])
        );
        assert_eq!(parse_labels("no labels here"), None);
        assert_eq!(parse_labels("Labels: , "), None);
    }

    #[test]
    fn label_choice_is_stable() {
        let labels = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let first = choose_label(&labels, "some text");
        assert_eq!(first, choose_label(&labels, "some text"));
        assert!(labels.contains(&first.unwrap_or_default()));
        assert_eq!(choose_label(&[], "x"), None);
    }

    #[test]
    fn summary_keeps_first_words_within_budget() {
        let text = (0..100)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(
            summary(&text, None).split_whitespace().count(),
            SUMMARY_WORDS
        );
        let short = summary(&text, Some(3));
        assert!(estimate_tokens(&short) <= 3, "{short}");
        assert!(short.starts_with("w0 w1"));
        assert_eq!(summary("   ", None), "(empty)");
    }

    #[test]
    fn tokens_are_estimated_by_chars() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
    }
}
