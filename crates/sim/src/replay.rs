//! What a simulated model answers to a question: the heart of the simulator, free of HTTP.
//!
//! A question whose text is a known prompt, asked of a model the record has a result for, is
//! *replayed*: the answer, its correctness and its token counts come from the data. Anything
//! else gets a synthetic answer that claims no quality (see [`crate::synthetic`]). Either way
//! the result is a pure function of the question, the data and the seed, so the same request
//! always gets the same answer and confidence.

use crate::confidence::Calibration;
use crate::dataset::{Dataset, ModelRecord, Record, Replayed as _};
use crate::hashing::{pick, stable_hash, standard_normal, unit_interval};
use crate::synthetic;

/// The parts of a chat request that decide the answer.
#[derive(Debug, Clone, Copy)]
pub struct Question<'a> {
    pub model: &'a str,
    /// The content of the last user message: what identifies the item.
    pub text: &'a str,
    /// All system messages, joined by newlines (where a `Labels:` line may be).
    pub system: &'a str,
    /// Characters in all messages, for estimating prompt tokens of unknown prompts.
    pub prompt_chars: usize,
    pub max_tokens: Option<u32>,
}

/// A simulated model's answer, with what the simulator knows about its quality.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub content: String,
    /// The record the question matched, if any (even if the model is not in it).
    pub record_id: Option<String>,
    /// Replayed correctness; `None` for synthetic answers.
    pub correct: Option<bool>,
    /// Replayed score; `None` for synthetic answers.
    pub score: Option<f64>,
    /// Probability the model puts on its answer, in `(0, 1)`.
    pub confidence: f64,
    /// When the answer is one of a closed set of labels (letters, or the prompt's `Labels:`),
    /// all of them, so that logprobs can spread the remaining mass over the others.
    pub labels: Option<Vec<String>>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// Answers `question` from `dataset`. `seed` only changes the confidence noise.
pub fn answer(
    dataset: &Dataset,
    calibration: &Calibration,
    seed: u64,
    question: &Question<'_>,
) -> Answer {
    let text = question.text.trim();
    let record = dataset.lookup(text);
    let result = record.and_then(|r| Some((r, r.models.get(question.model)?)));
    match result {
        Some((record, result)) => replayed(record, result, calibration, seed, question),
        None => synthetic_answer(record, calibration, seed, question),
    }
}

/// The data's answer for a model the record has a result for.
///
/// A multiple-choice item answers a letter, unless the prompt's `Labels:` line names the
/// choices some other way (as many labels, none of them the letter): then the label in the
/// letter's position, so that the answer stays on the client's label set.
fn replayed(
    record: &Record,
    result: &ModelRecord,
    calibration: &Calibration,
    seed: u64,
    question: &Question<'_>,
) -> Answer {
    let model = question.model;
    let correct = record.is_correct(model);
    let z = noise(seed, record.id.as_bytes(), model);
    let mut content = record
        .answer_of(model)
        .unwrap_or_else(|| synthetic::summary(&record.prompt, None));
    let mut labels = record.is_multiple_choice().then(|| record.letters());
    if let (Some(letters), Some(prompt_labels)) =
        (&labels, synthetic::parse_labels(question.system))
    {
        let letter_is_a_label = prompt_labels
            .iter()
            .any(|l| l.eq_ignore_ascii_case(&content));
        let renamed = letters
            .iter()
            .position(|l| *l == content)
            .filter(|_| !letter_is_a_label && prompt_labels.len() == letters.len())
            .and_then(|i| prompt_labels.get(i).cloned());
        if let Some(label) = renamed {
            content = label;
            labels = Some(prompt_labels);
        }
    }
    Answer {
        content,
        record_id: Some(record.id.clone()),
        correct,
        score: Some(result.score),
        confidence: calibration.confidence(z, correct),
        labels,
        prompt_tokens: result.prompt_tokens,
        completion_tokens: result.completion_tokens,
    }
}

/// An answer with no quality claim: a label when the prompt offers labels (a `Labels:` line,
/// or the letters of a known multiple-choice item), otherwise an extractive summary.
fn synthetic_answer(
    record: Option<&Record>,
    calibration: &Calibration,
    seed: u64,
    question: &Question<'_>,
) -> Answer {
    let text = question.text.trim();
    let labels = synthetic::parse_labels(question.system).or_else(|| {
        record
            .filter(|r| r.is_multiple_choice())
            .map(Record::letters)
    });
    let content = labels
        .as_deref()
        .and_then(|labels| synthetic::choose_label(labels, text))
        .unwrap_or_else(|| synthetic::summary(text, question.max_tokens));
    let z = noise(seed, text.as_bytes(), question.model);
    let prompt_tokens = u32::try_from(question.prompt_chars.div_ceil(4)).unwrap_or(u32::MAX);
    Answer {
        completion_tokens: synthetic::estimate_tokens(&content).max(1),
        content,
        record_id: record.map(|r| r.id.clone()),
        correct: None,
        score: None,
        confidence: calibration.confidence(z, None),
        labels,
        prompt_tokens,
    }
}

/// Sample `index` of the answer to `question`: 0 is [`answer`]; a later sample repeats it
/// with probability equal to its confidence, else gives a different answer (see the module
/// docs). Pure: the same (question, seed, index) always gives the same sample.
pub fn sample(
    dataset: &Dataset,
    calibration: &Calibration,
    seed: u64,
    question: &Question<'_>,
    index: u64,
) -> Answer {
    let first = answer(dataset, calibration, seed, question);
    if index == 0 {
        return first;
    }
    let key = first
        .record_id
        .clone()
        .unwrap_or_else(|| question.text.trim().to_owned());
    let roll = unit_interval(stable_hash(&[
        b"sample",
        &seed.to_le_bytes(),
        key.as_bytes(),
        question.model.as_bytes(),
        &index.to_le_bytes(),
    ]));
    if roll < first.confidence {
        return first;
    }
    let mut other = first.clone();
    match &first.labels {
        Some(labels) if labels.len() > 1 => {
            let others: Vec<&String> = labels.iter().filter(|l| **l != first.content).collect();
            let h = stable_hash(&[b"sample-label", key.as_bytes(), &index.to_le_bytes()]);
            if let Some(label) = others.get(pick(h, others.len().max(1))) {
                other.content = (*label).clone();
            }
        }
        _ => {
            // Another text: an extractive summary of the prompt from a later sentence, so
            // different samples differ from the answer and from each other.
            let text = dataset
                .lookup(question.text)
                .map_or(question.text, |r| r.prompt.as_str());
            let words: Vec<&str> = text.split_whitespace().collect();
            let skip = pick(
                stable_hash(&[b"sample-text", key.as_bytes(), &index.to_le_bytes()]),
                words.len().max(1),
            ) / 2;
            other.content = synthetic::summary(&words[skip..].join(" "), question.max_tokens);
            other.completion_tokens = synthetic::estimate_tokens(&other.content).max(1);
        }
    }
    // A different answer was not recorded: its quality is unknown to the replay.
    if other.content != first.content {
        other.correct = None;
        other.score = None;
    }
    other
}

/// The standard normal noise of one (item, model) pair under `seed`.
fn noise(seed: u64, item: &[u8], model: &str) -> f64 {
    standard_normal(stable_hash(&[
        b"confidence",
        &seed.to_le_bytes(),
        item,
        model.as_bytes(),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::confidence::auroc;

    fn question<'a>(model: &'a str, text: &'a str, system: &'a str) -> Question<'a> {
        Question {
            model,
            text,
            system,
            prompt_chars: system.len() + text.len(),
            max_tokens: None,
        }
    }

    /// `n` four-choice items; model `m` is right on item `i` when `(i * 7 + k) % 10 < 6`
    /// for its index `k`, so models agree on some items and not others.
    fn synthetic_mmlu(n: usize, models: usize) -> Dataset {
        let mut text = String::new();
        for i in 0..n {
            let results: Vec<String> = (0..models)
                .map(|k| {
                    let score = u8::from((i * 7 + k) % 10 < 6);
                    format!(
                        r#""m{k}":{{"score":{score},"prompt_tokens":30,"completion_tokens":1}}"#
                    )
                })
                .collect();
            text.push_str(&format!(
                r#"{{"id":"item-{i}","task":"mmlu/t","prompt":"Question {i}?","choices":["w","x","y","z"],"models":{{{}}}}}"#,
                results.join(",")
            ));
            text.push('\n');
        }
        Dataset::from_jsonl_str("synthetic.jsonl", &text).unwrap()
    }

    fn measured_auroc(data: &Dataset, target: f64, seed: u64) -> f64 {
        let calibration = Calibration::new(target, crate::confidence::DEFAULT_BIAS);
        let mut pairs = Vec::new();
        for record in data.records() {
            for model in record.models.keys() {
                let a = answer(
                    data,
                    &calibration,
                    seed,
                    &question(model, &record.prompt, ""),
                );
                pairs.push((a.confidence, a.correct.unwrap()));
            }
        }
        auroc(&pairs).unwrap()
    }

    #[test]
    fn confidence_is_calibrated_to_the_configured_auroc() {
        let data = synthetic_mmlu(5_000, 2);
        for (target, seed) in [(0.75, 0), (0.75, 42), (0.9, 1), (0.6, 3)] {
            let measured = measured_auroc(&data, target, seed);
            assert!(
                (measured - target).abs() <= 0.03,
                "target {target}, seed {seed}: measured {measured}"
            );
        }
    }

    #[test]
    fn bundled_demo_data_is_calibrated_too() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../data/demo/classify_mmlu.jsonl");
        let data = Dataset::load(&[path]).unwrap();
        let calibration = Calibration::default();
        let mut pairs = Vec::new();
        for record in data.records() {
            for model in record.models.keys() {
                let a = answer(&data, &calibration, 0, &question(model, &record.prompt, ""));
                assert_eq!(
                    a.content == record.gold_label().unwrap(),
                    a.correct.unwrap()
                );
                pairs.push((a.confidence, a.correct.unwrap()));
            }
        }
        let measured = auroc(&pairs).unwrap();
        assert!((measured - 0.75).abs() <= 0.03, "measured {measured}");
    }

    #[test]
    fn same_question_same_answer() {
        let data = synthetic_mmlu(20, 2);
        let calibration = Calibration::default();
        for record in data.records() {
            let q = question("m0", &record.prompt, "");
            assert_eq!(
                answer(&data, &calibration, 5, &q),
                answer(&data, &calibration, 5, &q)
            );
        }
        let unknown = question("m0", "never seen", "");
        assert_eq!(
            answer(&data, &calibration, 5, &unknown),
            answer(&data, &calibration, 5, &unknown)
        );
        // The seed changes the noise, not the answer.
        let q = question("m0", "Question 3?", "");
        let (a, b) = (
            answer(&data, &calibration, 1, &q),
            answer(&data, &calibration, 2, &q),
        );
        assert_eq!(a.content, b.content);
        assert_ne!(a.confidence, b.confidence);
    }

    #[test]
    fn correct_models_agree_on_the_pseudo_gold_letter() {
        let data = synthetic_mmlu(400, 3);
        let calibration = Calibration::default();
        let (mut both_right, mut wrong_pairs_differ) = (0, 0);
        for record in data.records() {
            let gold = record.gold_label().unwrap();
            let answers: Vec<(Answer, bool)> = record
                .models
                .iter()
                .map(|(model, result)| {
                    let a = answer(&data, &calibration, 0, &question(model, &record.prompt, ""));
                    (a, result.score >= 0.5)
                })
                .collect();
            for (a, right) in &answers {
                assert_eq!(a.correct, Some(*right));
                assert_eq!(
                    a.content == gold,
                    *right,
                    "{}: {} vs gold {gold}",
                    record.id,
                    a.content
                );
                assert_eq!(a.completion_tokens, 1);
                assert_eq!(a.prompt_tokens, 30);
            }
            let right: Vec<&Answer> = answers.iter().filter(|(_, r)| *r).map(|(a, _)| a).collect();
            if right.len() >= 2 {
                both_right += 1;
                assert!(right.iter().all(|a| a.content == right[0].content));
            }
            let wrong: Vec<&Answer> = answers
                .iter()
                .filter(|(_, r)| !*r)
                .map(|(a, _)| a)
                .collect();
            if wrong.len() >= 2 && wrong[0].content != wrong[1].content {
                wrong_pairs_differ += 1;
            }
        }
        assert!(both_right > 50, "{both_right}");
        // Wrong answers are scattered over the three wrong letters, not all the same.
        assert!(wrong_pairs_differ > 10, "{wrong_pairs_differ}");
        // The pseudo-gold letters themselves are spread over A-D.
        let golds: std::collections::BTreeSet<String> =
            data.records().filter_map(Record::gold_label).collect();
        assert_eq!(golds.len(), 4);
    }

    #[test]
    fn letters_map_to_the_prompts_own_labels() {
        let data = synthetic_mmlu(10, 2);
        let calibration = Calibration::default();
        let system = "Pick one.\nLabels: w, x, y, z";
        for record in data.records() {
            let letter = answer(&data, &calibration, 0, &question("m0", &record.prompt, ""));
            let named = answer(
                &data,
                &calibration,
                0,
                &question("m0", &record.prompt, system),
            );
            let i = ["A", "B", "C", "D"]
                .iter()
                .position(|l| *l == letter.content)
                .unwrap();
            assert_eq!(named.content, ["w", "x", "y", "z"][i]);
            assert_eq!(named.confidence, letter.confidence);
            // Letter labels are used as they are.
            let letters = "Labels: A, B, C, D";
            let same = answer(
                &data,
                &calibration,
                0,
                &question("m0", &record.prompt, letters),
            );
            assert_eq!(same, letter);
        }
    }

    #[test]
    fn samples_repeat_right_answers_more_often_than_wrong_ones() {
        let data = synthetic_mmlu(3_000, 2);
        for target in [0.75, 0.85] {
            let calibration = Calibration::new(target, crate::confidence::DEFAULT_BIAS);
            let mut pairs = Vec::new();
            let mut latent = Vec::new();
            for record in data.records() {
                let q = question("m0", &record.prompt, "");
                let first = answer(&data, &calibration, 9, &q);
                assert_eq!(sample(&data, &calibration, 9, &q, 0), first);
                let agree = (1..=4)
                    .filter(|&i| sample(&data, &calibration, 9, &q, i).content == first.content)
                    .count();
                let right = first.correct.unwrap();
                pairs.push((agree as f64, right));
                latent.push((first.confidence, right));
                // Stable, and a different sample is another label.
                let s = sample(&data, &calibration, 9, &q, 3);
                assert_eq!(s, sample(&data, &calibration, 9, &q, 3));
                assert!(["A", "B", "C", "D"].contains(&s.content.as_str()));
            }
            let measured = auroc(&pairs).unwrap();
            let exact = auroc(&latent).unwrap();
            assert!((exact - target).abs() < 0.03, "{target}: latent {exact}");
            // Four samples see the signal through binomial noise: weaker, never inverted.
            assert!(
                measured > 0.5 + (target - 0.5) / 2.0,
                "{target}: samples {measured}"
            );
            assert!(measured < target + 0.02, "{target}: samples {measured}");
        }
    }

    #[test]
    fn text_samples_drift_to_other_texts() {
        let text = concat!(
            r#"{"id":"n1","task":"summarize","prompt":"Alpha beta gamma. Delta epsilon zeta. Eta theta iota kappa lambda mu.","#,
            r#""models":{"w":{"score":0.2,"response":"Alpha beta.","prompt_tokens":20,"completion_tokens":3},"#,
            r#""s":{"score":0.9,"response":"Gamma delta.","prompt_tokens":20,"completion_tokens":3}}}"#
        );
        let data = Dataset::from_jsonl_str("news.jsonl", text).unwrap();
        let calibration = Calibration::new(0.99, -6.0);
        let prompt = &data.records().next().unwrap().prompt;
        let q = question("w", prompt, "");
        let first = answer(&data, &calibration, 0, &q);
        assert_eq!(first.content, "Alpha beta.");
        let drifted: Vec<Answer> = (1..=6)
            .map(|i| sample(&data, &calibration, 0, &q, i))
            .collect();
        assert!(drifted.iter().any(|a| a.content != first.content));
        for a in drifted.iter().filter(|a| a.content != first.content) {
            assert_eq!((a.correct, a.score), (None, None));
            assert!(a.completion_tokens >= 1);
        }
    }

    #[test]
    fn unknown_prompts_get_synthetic_answers() {
        let data = synthetic_mmlu(3, 1);
        let calibration = Calibration::default();
        let a = answer(
            &data,
            &calibration,
            0,
            &question("m0", "Tell me about rivers.", ""),
        );
        assert_eq!(a.content, "Tell me about rivers.");
        assert_eq!(
            (a.record_id.as_deref(), a.correct, a.score, a.labels),
            (None, None, None, None)
        );
        assert_eq!(a.completion_tokens, 6);

        let system = "Classify.\nLabels: sports, politics, tech";
        let a = answer(
            &data,
            &calibration,
            0,
            &question("m0", "A match report", system),
        );
        assert!(
            ["sports", "politics", "tech"].contains(&a.content.as_str()),
            "{}",
            a.content
        );
        assert_eq!(a.labels.map(|l| l.len()), Some(3));

        // A known item asked of a model the data does not have: a letter, no quality claim.
        let a = answer(
            &data,
            &calibration,
            0,
            &question("other", "Question 1?", ""),
        );
        assert_eq!(a.record_id.as_deref(), Some("item-1"));
        assert!(["A", "B", "C", "D"].contains(&a.content.as_str()));
        assert_eq!((a.correct, a.score), (None, None));
    }
}
