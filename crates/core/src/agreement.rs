//! How far two answers to the same item agree: the label a fleet can learn from without
//! references.
//!
//! When an item has both a weak and a strong answer (a shadow call, or an escalation), the
//! strong answer stands in for the reference: the weak answer's quality is its agreement with
//! it. That is an assumption (the strong model is wrong sometimes, and then a disagreement is
//! blamed on the weak one), stated wherever these labels are used.
//!
//! - `classify`: 1 when the labels are equal (trimmed, case-insensitive), else 0;
//! - `summarize`, `generate`: the F1 of the two answers' word multisets (lowercased letters
//!   and digits), a ROUGE-1-like overlap in [0, 1]; two empty answers agree.

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
        TaskKind::Summarize | TaskKind::Generate => word_f1(a, b),
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
        let f = agreement(TaskKind::Generate, "a b c d", "a b x y");
        assert!((f - 0.5).abs() < 1e-12);
        assert_eq!(agreement(TaskKind::Generate, "", "x"), 0.0);
        assert_eq!(agreement(TaskKind::Generate, "", " "), 1.0);
    }
}
