//! How sure a model was of its answer, and whether the answer escalates.
//!
//! - Classification: the answer must be one of the labels (after trimming punctuation and
//!   case), else its confidence is 0 (an off-label answer is never final when a stronger tier
//!   exists). With logprobs, confidence is the probability of the answer's tokens,
//!   `exp(Σ logprob)`, i.e. the probability the model gave the chosen label.
//! - Summaries and generation: `exp(mean token logprob)`, the geometric mean token
//!   probability; an empty answer scores 0, and a summary more than twice its word budget is
//!   halved (format check).
//! - Providers without logprobs: the model's configured `confidence_without_logprobs`
//!   (documented in the example config), applied to valid answers only.

/// One generated token and its log-probability.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f64,
}

/// What the judge concluded about one answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// The answer as stored: the matched label for classification, the text otherwise.
    pub answer: String,
    /// 0..=1.
    pub confidence: f64,
    /// Classification only: the answer was not one of the labels.
    pub off_label: bool,
}

/// Finds which label an answer names, if any: exact (case-insensitive) after trimming
/// whitespace, quotes and trailing punctuation, or the first word of the answer, after an
/// optional `Answer:` prefix.
pub fn match_label<'a>(answer: &str, labels: &'a [String]) -> Option<&'a str> {
    let trim = |s: &str| {
        s.trim()
            .trim_matches(|c: char| c == '"' || c == '\'' || c == '`' || c == '*')
            .trim_start_matches(['(', '['])
            .trim_end_matches(['.', ')', ']', ':', ',', ';'])
            .trim()
            .to_owned()
    };
    let mut a = trim(answer);
    if let Some(rest) = a
        .strip_prefix("Answer:")
        .or_else(|| a.strip_prefix("answer:"))
    {
        a = trim(rest);
    }
    let find = |cand: &str| {
        labels
            .iter()
            .find(|l| l.eq_ignore_ascii_case(cand))
            .map(String::as_str)
    };
    find(&a).or_else(|| {
        let first = a
            .split(|c: char| c.is_whitespace() || c == ',' || c == ')' || c == '.')
            .next()?;
        find(&trim(first))
    })
}

/// Judges a classification answer.
pub fn judge_label(
    answer: &str,
    logprobs: Option<&[TokenLogprob]>,
    labels: &[String],
    without_logprobs: f64,
) -> Judgement {
    match match_label(answer, labels) {
        None => Judgement {
            answer: answer.trim().to_owned(),
            confidence: 0.0,
            off_label: true,
        },
        Some(label) => {
            let confidence = match logprobs {
                Some(tokens) if !tokens.is_empty() => {
                    let sum: f64 = tokens
                        .iter()
                        .filter(|t| !t.token.trim().is_empty())
                        .map(|t| t.logprob)
                        .sum();
                    sum.exp()
                }
                _ => without_logprobs,
            };
            Judgement {
                answer: label.to_owned(),
                confidence: clamp01(confidence),
                off_label: false,
            }
        }
    }
}

/// Judges a summary (`max_words` set) or a generated text.
pub fn judge_text(
    answer: &str,
    logprobs: Option<&[TokenLogprob]>,
    max_words: Option<u32>,
    without_logprobs: f64,
) -> Judgement {
    let text = answer.trim();
    if text.is_empty() {
        return Judgement {
            answer: String::new(),
            confidence: 0.0,
            off_label: false,
        };
    }
    // A refusal ("I cannot…", a provider's `refusal`) is not an answer, however sure the
    // model was of its words: no confidence, so the threshold rule escalates it as a
    // calibrated rule does.
    if crate::escalation::is_empty_or_refusal(text) {
        return Judgement {
            answer: text.to_owned(),
            confidence: 0.0,
            off_label: false,
        };
    }
    let mut confidence = match logprobs {
        Some(tokens) if !tokens.is_empty() => {
            let mean = tokens.iter().map(|t| t.logprob).sum::<f64>() / tokens.len() as f64;
            mean.exp()
        }
        _ => without_logprobs,
    };
    if let Some(limit) = max_words
        && text.split_whitespace().count() > 2 * limit as usize
    {
        confidence *= 0.5;
    }
    Judgement {
        answer: text.to_owned(),
        confidence: clamp01(confidence),
        off_label: false,
    }
}

fn clamp01(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        ["A", "B", "C", "D"].iter().map(|s| s.to_string()).collect()
    }

    fn lp(token: &str, p: f64) -> TokenLogprob {
        TokenLogprob {
            token: token.into(),
            logprob: p.ln(),
        }
    }

    #[test]
    fn label_variants_match() {
        for a in ["A", " a ", "A.", "(A)", "Answer: C", "B) because", "\"D\""] {
            assert!(match_label(a, &labels()).is_some(), "{a:?}");
        }
        assert_eq!(match_label("E", &labels()), None);
        assert_eq!(match_label("I think so", &labels()), None);
    }

    #[test]
    fn label_confidence_is_the_token_probability() {
        let j = judge_label("B", Some(&[lp("B", 0.8)]), &labels(), 0.5);
        assert_eq!(j.answer, "B");
        assert!((j.confidence - 0.8).abs() < 1e-9);
    }

    #[test]
    fn off_label_answers_have_zero_confidence() {
        let j = judge_label("Z", Some(&[lp("Z", 0.99)]), &labels(), 0.5);
        assert!(j.off_label);
        assert_eq!(j.confidence, 0.0);
    }

    #[test]
    fn missing_logprobs_use_the_fallback() {
        assert_eq!(judge_label("A", None, &labels(), 0.6).confidence, 0.6);
        assert_eq!(judge_text("some text", None, None, 0.7).confidence, 0.7);
    }

    #[test]
    fn text_confidence_is_geometric_mean_and_checks_format() {
        let toks = [lp("a", 0.5), lp(" b", 0.5)];
        assert!((judge_text("a b", Some(&toks), Some(10), 0.0).confidence - 0.5).abs() < 1e-9);
        let long = "word ".repeat(30);
        assert!((judge_text(&long, Some(&toks), Some(10), 0.0).confidence - 0.25).abs() < 1e-9);
        assert_eq!(judge_text("   ", Some(&toks), None, 0.9).confidence, 0.0);
        let refusal = judge_text("I can't help with that.", Some(&toks), None, 0.9);
        assert_eq!(
            (refusal.answer.as_str(), refusal.confidence),
            ("I can't help with that.", 0.0)
        );
    }
}
