//! The quality prior of a training set (the level a router's gains add to), measured from
//! benchmark rows; the types and their check are the online crate's
//! (`switchyard_router::prior`).

use switchyard_router::prior::{QualityPrior, from_rows};

use crate::data::PairedRow;

/// The prior of training sets weighted like [`crate::train::train_recipe`]: a set of `n` rows
/// weighs `n^balance` in total.
pub fn measure(sets: &[&[PairedRow]], balance: f64) -> QualityPrior {
    let rows = sets.iter().flat_map(|rows| {
        let n = rows.len().max(1) as f64;
        let w = n.powf(balance) / n;
        rows.iter()
            .map(move |r| (r.kind, r.weak.score, r.strong.score, w))
    });
    from_rows(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_router::TaskKind;
    use switchyard_router::prior::validate;

    fn row(kind: TaskKind, weak: f64, strong: f64) -> PairedRow {
        crate::test_rows::scored(1, "x".into(), kind, "t", weak, strong)
    }

    #[test]
    fn sets_are_weighted_like_training() {
        let big: Vec<PairedRow> = (0..100)
            .map(|_| row(TaskKind::Classify, 1.0, 1.0))
            .collect();
        let small: Vec<PairedRow> = (0..4).map(|_| row(TaskKind::Classify, 0.0, 1.0)).collect();
        let p = measure(&[&big, &small], 0.5);
        // Weights 10 and 2: (10·1 + 2·0) / 12.
        assert!((p["classify"].weak - 10.0 / 12.0).abs() < 1e-6);
        assert_eq!(p["classify"].rows, 104);
        let p = measure(&[&big, &small], 1.0);
        assert!((p["classify"].weak - 100.0 / 104.0).abs() < 1e-6);
        assert!(validate(&p).is_ok());
        let mut bad = p.clone();
        bad.insert("translate".into(), p["classify"]);
        assert!(validate(&bad).is_err());
    }
}
