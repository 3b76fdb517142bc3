//! The prompt-length baseline: longer prompts more often need the strong model.

use crate::{Router, TaskKind};

/// Scores an item by the logarithm of its length in characters. The floor every learned
/// router must beat.
#[derive(Debug, Clone, Copy, Default)]
pub struct LengthRouter;

impl Router for LengthRouter {
    fn name(&self) -> &str {
        "length"
    }

    fn score(&self, text: &str, _task: TaskKind) -> f32 {
        // ln(1 + chars) keeps the score finite and small while preserving order.
        ((text.chars().count() as f64) + 1.0).ln() as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longer_scores_higher_and_empty_is_finite() {
        let r = LengthRouter;
        assert!(
            r.score("a much longer prompt", TaskKind::Classify)
                > r.score("short", TaskKind::Classify)
        );
        assert!(r.score("", TaskKind::Generate).is_finite());
    }
}
