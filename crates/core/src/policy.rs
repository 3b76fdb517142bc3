//! From router scores to tiers.
//!
//! A batch job's items are all known before any is sent, so the dispatcher can calibrate on
//! the job itself: `strong_share(p)` sends exactly `round(p × n)` items strong, the highest
//! scores of this job, whatever the score distribution. Ties are broken by input position
//! (earlier first), so the split is exact and reproducible. `threshold(t)` compares each
//! score with `t`. Every policy ends as one [`Cut`] over a per-item key (the score, or for a
//! budget the gain per extra dollar); [`crate::calibrate`] computes it.
//!
//! Sensitivity pins come first: a `local_only` item goes to the local tier whatever its
//! score, and does not count against the strong share.

/// Where an item starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Weak,
    Strong,
    /// Pinned to the local tier by its sensitivity.
    Local,
}

/// The decision rule for one job, computed once from all of its scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cut {
    /// Strong iff score ≥ value.
    AtLeast(f32),
    /// Strong iff (score, -seq) ranks in the top: score > score_cut, or score == score_cut
    /// and seq ≤ last_seq. `None` means no item goes strong.
    Rank { score_cut: f32, last_seq: i64 },
    /// No item goes strong.
    Nothing,
}

impl Cut {
    /// The tier of an unpinned item.
    pub fn route(&self, score: f32, seq: i64) -> Route {
        let strong = match *self {
            Cut::AtLeast(t) => score >= t,
            Cut::Rank {
                score_cut,
                last_seq,
            } => score > score_cut || (score == score_cut && seq <= last_seq),
            Cut::Nothing => false,
        };
        if strong { Route::Strong } else { Route::Weak }
    }

    /// The cut as stored with the job: items scoring above `.0`, or equal with seq ≤ `.1`, go
    /// strong; `None` sends nothing strong.
    pub fn as_pair(&self) -> Option<(f32, i64)> {
        match *self {
            Cut::AtLeast(t) => Some((t, i64::MAX)),
            Cut::Rank {
                score_cut,
                last_seq,
            } => Some((score_cut, last_seq)),
            Cut::Nothing => None,
        }
    }

    /// The score the decision compares with, for reports and `router explain`.
    pub fn score_cut(&self) -> Option<f32> {
        match *self {
            Cut::AtLeast(t) => Some(t),
            Cut::Rank { score_cut, .. } => Some(score_cut),
            Cut::Nothing => None,
        }
    }
}

/// The cut that sends exactly `k` of `keyed` (`(key, seq)` pairs, any order) strong: the
/// highest keys, ties broken by input order (earlier first). Reorders `keyed`.
pub fn top_k_cut(k: usize, keyed: &mut [(f32, i64)]) -> Cut {
    let k = k.min(keyed.len());
    if k == 0 {
        return Cut::Nothing;
    }
    let (_, kth, _) = keyed.select_nth_unstable_by(k - 1, by_rank);
    Cut::Rank {
        score_cut: kth.0,
        last_seq: kth.1,
    }
}

/// The order of a rank cut: highest key first; among equal keys, earliest input first.
pub fn by_rank(a: &(f32, i64), b: &(f32, i64)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// How many of `n` items a strong share of `share` sends strong: `round(share × n)`.
pub fn strong_count(share: f64, n: usize) -> usize {
    let k = (share.clamp(0.0, 1.0) * n as f64).round() as usize;
    k.min(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn threshold_compares_each_score() {
        let cut = Cut::AtLeast(0.5);
        assert_eq!(cut.route(0.5, 0), Route::Strong);
        assert_eq!(cut.route(0.49, 0), Route::Weak);
    }

    #[test]
    fn ties_are_broken_by_input_order() {
        let mut s = vec![(1.0, 0), (1.0, 1), (1.0, 2), (0.0, 3)];
        let cut = top_k_cut(strong_count(0.5, s.len()), &mut s);
        let routes: Vec<_> = [(1.0, 0), (1.0, 1), (1.0, 2), (0.0, 3)]
            .iter()
            .map(|&(sc, q)| cut.route(sc, q))
            .collect();
        assert_eq!(
            routes,
            vec![Route::Strong, Route::Strong, Route::Weak, Route::Weak]
        );
    }

    #[test]
    fn zero_share_sends_nothing_strong() {
        let mut s = vec![(1.0, 0), (2.0, 1)];
        assert_eq!(top_k_cut(strong_count(0.0, s.len()), &mut s), Cut::Nothing);
    }

    proptest! {
        #[test]
        fn strong_share_is_exact(
            scores in proptest::collection::vec(0u8..20, 0..300),
            share in 0.0f64..=1.0,
        ) {
            // Few distinct values, so ties are everywhere.
            let items: Vec<(f32, i64)> =
                scores.iter().enumerate().map(|(i, &s)| (f32::from(s) / 7.0, i as i64)).collect();
            let mut work = items.clone();
            let cut = top_k_cut(strong_count(share, work.len()), &mut work);
            let strong = items.iter().filter(|&&(s, q)| cut.route(s, q) == Route::Strong).count();
            prop_assert_eq!(strong, strong_count(share, items.len()));
            // Every strong item scores at least as high as every weak one.
            let min_strong = items.iter().filter(|&&(s, q)| cut.route(s, q) == Route::Strong)
                .map(|x| x.0).fold(f32::INFINITY, f32::min);
            let max_weak = items.iter().filter(|&&(s, q)| cut.route(s, q) == Route::Weak)
                .map(|x| x.0).fold(f32::NEG_INFINITY, f32::max);
            prop_assert!(min_strong >= max_weak);
        }
    }
}
