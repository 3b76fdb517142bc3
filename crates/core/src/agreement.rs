//! How far two answers to the same item agree: the label a fleet can learn from without
//! references.
//!
//! When an item has both a weak and a strong answer (a shadow call, or an escalation), the
//! strong answer stands in for the reference: the weak answer's quality is its agreement with
//! it. That is an assumption (the strong model is wrong sometimes, and then a disagreement is
//! blamed on the weak one), stated wherever these labels are used.
//!
//! - `classify`: 1 when the labels are equal (trimmed, case-insensitive), else 0;
//! - `generate`: when both answers end in a final number (after a `####` or `answer is` /
//!   `Answer:` marker, else the last number on the last line), those numbers are compared
//!   (1 when equal, else 0): two worked solutions of a maths problem agree when they reach
//!   the same result, whatever their wording. Otherwise as `summarize`;
//! - `summarize`: the F1 of the two answers' word multisets (lowercased letters and digits),
//!   a ROUGE-1-like overlap in [0, 1]; two empty answers agree.

use std::collections::HashMap;

use switchyard_proto::TaskKind;

/// The agreement of `a` and `b`, in [0, 1].
pub fn agreement(kind: TaskKind, a: &str, b: &str) -> f64 {
    match kind {
        TaskKind::Classify => {
            if a.trim().eq_ignore_ascii_case(b.trim()) {
                1.0
            } else {
                0.0
            }
        }
        TaskKind::Generate | TaskKind::Chat => match (final_number(a), final_number(b)) {
            (Some(x), Some(y)) => f64::from(u8::from(same_number(&x, &y))),
            _ => word_f1(a, b),
        },
        TaskKind::Summarize => word_f1(a, b),
    }
}

/// The final number of a worked answer: after the last `####`, `answer is` or `Answer:`
/// marker if there is one, else on the last non-empty line; the last number found there.
/// `None` when there is none.
pub fn final_number(answer: &str) -> Option<String> {
    let lower = answer.to_lowercase();
    let tail = ["####", "answer is", "answer:"]
        .iter()
        .filter_map(|m| lower.rfind(m).map(|i| i + m.len()))
        .max()
        .map(|i| &answer[i..])
        .or_else(|| answer.lines().rev().find(|l| !l.trim().is_empty()))?;
    let mut last = None;
    let mut current = String::new();
    for c in tail.chars().chain(std::iter::once(' ')) {
        let continues = c.is_ascii_digit()
            || (c == '.' || c == ',') && current.chars().last().is_some_and(|d| d.is_ascii_digit())
            || c == '-' && current.is_empty();
        if continues {
            current.push(c);
        } else {
            let number = current.trim_end_matches(['.', ',']).replace(',', "");
            if number.chars().any(|d| d.is_ascii_digit()) {
                last = Some(number);
            }
            current.clear();
            if c == '-' {
                current.push(c);
            }
        }
    }
    last
}

fn same_number(a: &str, b: &str) -> bool {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => a == b,
    }
}

fn words(text: &str) -> HashMap<String, u32> {
    let mut counts = HashMap::new();
    for w in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        *counts.entry(w.to_lowercase()).or_insert(0) += 1;
    }
    counts
}

fn word_f1(a: &str, b: &str) -> f64 {
    let (wa, wb) = (words(a), words(b));
    let (na, nb): (u32, u32) = (wa.values().sum(), wb.values().sum());
    if na == 0 && nb == 0 {
        return 1.0;
    }
    if na == 0 || nb == 0 {
        return 0.0;
    }
    let common: u32 = wa
        .iter()
        .map(|(w, &c)| c.min(wb.get(w).copied().unwrap_or(0)))
        .sum();
    2.0 * f64::from(common) / f64::from(na + nb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_compare_exactly_text_by_overlap() {
        assert_eq!(agreement(TaskKind::Classify, " B", "b"), 1.0);
        assert_eq!(agreement(TaskKind::Classify, "A", "B"), 0.0);
        assert_eq!(
            agreement(TaskKind::Summarize, "The cat sat.", "the cat sat"),
            1.0
        );
        let f = agreement(TaskKind::Summarize, "a b c d", "a b x y");
        assert!((f - 0.5).abs() < 1e-12);
        assert_eq!(agreement(TaskKind::Generate, "", "x"), 0.0);
        assert_eq!(agreement(TaskKind::Generate, "", " "), 1.0);
        let f = agreement(TaskKind::Generate, "a b c d", "a b x y");
        assert!((f - 0.5).abs() < 1e-12);
    }

    #[test]
    fn worked_answers_agree_on_their_final_number() {
        let mixtral = " A robe takes 2 bolts of blue fiber and 2/2 * 1/2 = 1/2 bolt.\n\
                       So in total 5/2 = <<5/2=2.5>>2.5 bolts.\n#### 3\n\n";
        let gpt = "For the white fiber, it takes 2 / 2 = 1 bolt.\n\nSo 2 + 1 = 3 bolts.";
        assert_eq!(final_number(mixtral).as_deref(), Some("3"));
        assert_eq!(final_number(gpt).as_deref(), Some("3"));
        assert_eq!(agreement(TaskKind::Generate, mixtral, gpt), 1.0);
        assert_eq!(
            agreement(
                TaskKind::Generate,
                "The answer is 1,200.",
                "Total: $1200.00"
            ),
            1.0
        );
        assert_eq!(agreement(TaskKind::Generate, "#### -4", "it is 4"), 0.0);
        assert_eq!(final_number("no digits here"), None);
        assert_eq!(final_number("Answer: 3.5."), Some("3.5".to_owned()));
    }
}
