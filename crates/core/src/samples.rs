//! A confidence signal for models that give no logprobs: the agreement of extra samples.
//!
//! A model that is unsure of an answer tends to give a different one when asked again at a
//! non-zero temperature; one that knows gives the same (self-consistency). So a worker that
//! gets no logprobs draws `k` extra samples of the same request and measures how far they
//! agree with the answer it keeps (the first): the mean of [`crate::agreement`] over the
//! samples, labels compared after matching them to the label set. That mean is the answer's
//! confidence, in place of the model's fixed `confidence_without_logprobs`, and a feature of
//! the escalation model ([`crate::escalation::AnswerFeatures::sample_agreement`]).
//!
//! The samples are booked like any call, under their item: with a provider that honours
//! OpenAI's `n`, one request for `n = 1 + k` choices (the prompt is billed once); otherwise
//! `k` more requests.

use switchyard_proto::Task;

use crate::agreement::agreement;
use crate::confidence::match_label;

/// Extra samples a `quality=Q` job draws per answer from a model without logprobs. Four
/// gives five answers in all, so the agreement takes five distinct values (0, ¼, …, 1): a
/// usable ranking for the price of four short completions (the prompt is billed once when
/// the provider honours `n`).
pub const DEFAULT_EXTRA_SAMPLES: u8 = 4;

/// The mean agreement of `samples` with `answer`, in [0, 1]; `None` without samples.
///
/// Classification compares the labels the answers name (an answer naming no label agrees
/// with nothing); other tasks use [`crate::agreement::agreement`] on the texts.
pub fn sample_agreement(task: &Task, answer: &str, samples: &[String]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let total: f64 = match task {
        Task::Classify { labels, .. } => {
            let first = match_label(answer, labels);
            samples
                .iter()
                .map(|s| {
                    let same = first.is_some() && match_label(s, labels) == first;
                    f64::from(u8::from(same))
                })
                .sum()
        }
        _ => samples
            .iter()
            .map(|s| agreement(task.kind(), answer, s))
            .sum(),
    };
    Some(total / samples.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_matched_before_comparing() {
        let task = Task::Classify {
            labels: vec!["A".into(), "B".into()],
            instructions: None,
        };
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            sample_agreement(&task, "A", &s(&["a.", "(A)", "B", "A"])),
            Some(0.75)
        );
        assert_eq!(sample_agreement(&task, "Z", &s(&["Z", "Z"])), Some(0.0));
        assert_eq!(sample_agreement(&task, "A", &[]), None);
        let text = Task::Summarize {
            max_words: None,
            instructions: None,
        };
        assert_eq!(
            sample_agreement(&text, "the cat sat", &s(&["The cat sat.", "dogs run"])),
            Some(0.5)
        );
    }
}
