//! Paired rows for the unit tests: only the scores matter.

use switchyard_router::TaskKind;

use crate::data::{Outcome, PairedRow};

/// Row `id` (line `line`) of `kind` with `text`, the weak and strong models scoring `weak`
/// and `strong`, no tokens or costs.
pub(crate) fn scored(
    line: usize,
    id: String,
    kind: TaskKind,
    text: &str,
    weak: f64,
    strong: f64,
) -> PairedRow {
    let o = |score| Outcome {
        score,
        prompt_tokens: None,
        completion_tokens: None,
        cost_usd: None,
    };
    PairedRow {
        line,
        id,
        kind,
        task: "t".into(),
        text: text.to_owned(),
        weak: o(weak),
        strong: o(strong),
    }
}
