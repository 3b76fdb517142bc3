//! What a router knows about quality besides its per-item score: the mean quality of the weak
//! and the strong model per task kind on the rows it was trained on.
//!
//! Why: the score estimates the strong model's *gain* over the weak one on an item. A job
//! policy such as `quality=0.95` ("the smallest strong share whose predicted quality reaches
//! 95% of all-strong") also needs the level the gains are added to, the weak model's
//! quality. It is measured at training time (weighted as the training weighted the rows) and
//! stored in the artifact (measured by `switchyard_router_lab::prior::measure`), so the dispatcher and `switchyard quote` predict with the numbers
//! the router was built from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::TaskKind;

/// Mean qualities of the two models on one task kind.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KindQuality {
    /// Weighted mean quality of the weak model, in [0, 1].
    pub weak: f64,
    /// Weighted mean quality of the strong model, in [0, 1].
    pub strong: f64,
    /// Training rows of this kind.
    pub rows: usize,
}

/// Per task kind (`classify`, `summarize`, `generate`), the kinds training saw.
pub type QualityPrior = BTreeMap<String, KindQuality>;

/// The weak quality assumed for a task kind the router has no measurement of: halfway, so
/// that predicted quality is a relative figure and says so (documented in the README).
pub const ASSUMED_WEAK_QUALITY: f64 = 0.5;

/// The prior of `(kind, weak quality, strong quality, weight)` rows.
pub fn from_rows(rows: impl Iterator<Item = (TaskKind, f64, f64, f64)>) -> QualityPrior {
    // kind -> (Σw, Σw·weak, Σw·strong, rows)
    let mut acc: BTreeMap<String, (f64, f64, f64, usize)> = BTreeMap::new();
    for (kind, weak, strong, w) in rows {
        let a = acc.entry(kind.as_str().to_owned()).or_default();
        a.0 += w;
        a.1 += w * weak;
        a.2 += w * strong;
        a.3 += 1;
    }
    acc.into_iter()
        .filter(|(_, a)| a.0 > 0.0)
        .map(|(k, a)| {
            (
                k,
                KindQuality {
                    weak: round6(a.1 / a.0),
                    strong: round6(a.2 / a.0),
                    rows: a.3,
                },
            )
        })
        .collect()
}

/// Six decimals: plenty for a mean quality, and stable text in the artifact.
fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Checks a prior read from an artifact: known kinds, qualities in [0, 1].
pub fn validate(prior: &QualityPrior) -> Result<(), String> {
    for (kind, q) in prior {
        kind.parse::<TaskKind>()
            .map_err(|e| format!("quality prior: {e}"))?;
        for (what, v) in [("weak", q.weak), ("strong", q.strong)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!(
                    "quality prior: {kind} {what} quality {v} is outside [0, 1]"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_weighted_and_unknown_kinds_are_refused() {
        let p = from_rows(
            [
                (TaskKind::Classify, 1.0, 1.0, 10.0),
                (TaskKind::Classify, 0.0, 1.0, 2.0),
            ]
            .into_iter(),
        );
        assert!((p["classify"].weak - 10.0 / 12.0).abs() < 1e-6);
        assert_eq!(p["classify"].rows, 2);
        assert!(validate(&p).is_ok());
        let mut bad = p.clone();
        bad.insert("translate".into(), p["classify"]);
        assert!(validate(&bad).is_err());
    }
}
