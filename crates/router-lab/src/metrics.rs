//! Routing metrics, computed exactly as RouteLLM and RouterBench compute them.
//!
//! A faithful port of the project's reference harness `shared/tools/routing_metrics.py`
//! (itself a re-implementation of RouteLLM's `evaluate.py`/`benchmarks.py` and RouterBench's
//! `AIQ.py`), including its numpy semantics: linear quantiles, `np.interp` over a possibly
//! non-monotone array (a binary search, like numpy), trapezoid areas. Keeping the quirks
//! matters: a router's APGR and CPT are only comparable with published numbers if computed
//! the same way, and a test checks that ours agree with the Python to 3 decimals.
//!
//! - **APGR** (average performance gap recovered): the area under the quality-vs-strong-share
//!   curve, between the all-weak and the all-strong lines, as a fraction of the gap.
//!   Random routing gets ~0.5, the oracle ~1 or more.
//! - **CPT(x%)** (call-performance threshold): the share of strong calls needed to recover x%
//!   of the quality gap. Lower is better; random needs ~x%.
//! - **AIQ** (RouterBench's average improvement in quality): the area under the
//!   non-decreasing convex hull of (cost, quality) points, over the largest cost.

/// `numpy.quantile(..., method="linear")` on sorted data.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    let pos = (n - 1) as f64 * q;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(n - 1);
    let frac = pos - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

/// Python's `bisect.bisect_right`: the binary search, whether or not `xs` is sorted.
fn bisect_right(xs: &[f64], x: f64) -> usize {
    let (mut lo, mut hi) = (0, xs.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if x < xs[mid] {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// `numpy.interp` semantics: clamps outside the range and, like numpy, binary-searches `xp`
/// even when it is not increasing (RouteLLM interpolates over qualities sorted by strong
/// share, which need not be monotone).
pub fn np_interp(x: f64, xp: &[f64], fp: &[f64]) -> f64 {
    let n = xp.len();
    if n == 0 {
        return f64::NAN;
    }
    if x <= xp[0] {
        return fp[0];
    }
    if x >= xp[n - 1] {
        return fp[n - 1];
    }
    let j = bisect_right(xp, x)
        .saturating_sub(1)
        .min(n.saturating_sub(2));
    let (x0, x1) = (xp[j], xp[j + 1]);
    if x1 == x0 {
        return fp[j];
    }
    fp[j] + (fp[j + 1] - fp[j]) * (x - x0) / (x1 - x0)
}

/// `numpy.trapz(y, x)`.
pub fn trapz(y: &[f64], x: &[f64]) -> f64 {
    (0..x.len().saturating_sub(1))
        .map(|i| (x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2.0)
        .sum()
}

/// One point of a routing curve: with this threshold, this share of strong calls gave this
/// mean quality at this mean cost per item.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CurvePoint {
    /// Strong calls, percent of items (0..100).
    pub strong_pct: f64,
    /// Mean quality per item.
    pub quality: f64,
    /// Mean cost per item.
    pub cost: f64,
}

/// Per-item inputs of a curve: both models' quality and cost.
#[derive(Debug, Clone, Copy)]
pub struct Outcomes<'a> {
    pub weak: &'a [f64],
    pub strong: &'a [f64],
    pub weak_cost: &'a [f64],
    pub strong_cost: &'a [f64],
}

/// RouteLLM's evaluation loop (`benchmarks.py`): thresholds at the 0, 10%, .., 100%
/// quantiles of the scores; an item goes strong iff its score is `>=` the threshold, except
/// at the last (largest) threshold, where `>` yields 0% strong calls.
pub fn routellm_curve(scores: &[f64], o: &Outcomes<'_>, num_results: usize) -> Vec<CurvePoint> {
    let mut sorted = scores.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = scores.len().max(1) as f64;
    (0..=num_results)
        .map(|i| {
            let t = quantile(&sorted, i as f64 / num_results as f64);
            let last = i == num_results;
            let (mut quality, mut cost, mut n_strong) = (0.0, 0.0, 0usize);
            for (j, &w) in scores.iter().enumerate() {
                let strong = if last { w > t } else { w >= t };
                if strong {
                    n_strong += 1;
                    quality += o.strong[j];
                    cost += o.strong_cost[j];
                } else {
                    quality += o.weak[j];
                    cost += o.weak_cost[j];
                }
            }
            CurvePoint {
                strong_pct: 100.0 * n_strong as f64 / n,
                quality: quality / n,
                cost: cost / n,
            }
        })
        .collect()
}

/// RouteLLM's summary of a curve.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RouteMetrics {
    #[serde(rename = "APGR")]
    pub apgr: f64,
    #[serde(rename = "AUC")]
    pub auc: f64,
    /// Percent of strong calls to recover 20% of the quality gap.
    #[serde(rename = "CPT(20%)")]
    pub cpt20: f64,
    #[serde(rename = "CPT(50%)")]
    pub cpt50: f64,
    #[serde(rename = "CPT(80%)")]
    pub cpt80: f64,
}

/// `evaluate.py generate_results()`: CPT by `np.interp` over the curve sorted by strong
/// share, AUC by the trapezoid rule over strong share / 100, APGR = (AUC - weak AUC) /
/// (strong AUC - weak AUC) over the same grid. `points` are `(strong %, quality)`.
pub fn routellm_metrics(points: &[(f64, f64)], weak_acc: f64, strong_acc: f64) -> RouteMetrics {
    let mut pts = points.to_vec();
    // A stable sort on strong share only, as Python's `sorted(key=...)`.
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let xs: Vec<f64> = pts.iter().map(|p| p.0).collect();
    let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
    let cpt = |pct: f64| np_interp(pct * (strong_acc - weak_acc) + weak_acc, &ys, &xs);
    let xr: Vec<f64> = xs.iter().map(|x| x / 100.0).collect();
    let auc = trapz(&ys, &xr);
    let weak_auc = trapz(&vec![weak_acc; xr.len()], &xr);
    let strong_auc = trapz(&vec![strong_acc; xr.len()], &xr);
    RouteMetrics {
        apgr: (auc - weak_auc) / (strong_auc - weak_auc),
        auc,
        cpt20: cpt(0.2),
        cpt50: cpt(0.5),
        cpt80: cpt(0.8),
    }
}

/// `benchmarks.py get_optimal_accuracy`, graded version: give the `int(n × share)` items with
/// the largest gains to the strong model, where the gain is positive. Returns the mean
/// quality and the mean cost.
pub fn optimal_point(o: &Outcomes<'_>, strong_frac: f64) -> (f64, f64) {
    let n = o.weak.len();
    let mut order: Vec<usize> = (0..n).collect();
    let gain = |i: usize| o.strong[i] - o.weak[i];
    // Stable, descending: Python's `sorted(..., reverse=True)` keeps ties in order.
    order.sort_by(|&a, &b| gain(b).total_cmp(&gain(a)));
    let k = (n as f64 * strong_frac) as usize;
    let mut quality: f64 = o.weak.iter().sum();
    let mut cost: f64 = o.weak_cost.iter().sum();
    for &i in order.iter().take(k) {
        if gain(i) > 0.0 {
            quality += gain(i);
            cost += o.strong_cost[i] - o.weak_cost[i];
        }
    }
    let n = n.max(1) as f64;
    (quality / n, cost / n)
}

/// `calibrate_threshold.py`: the score threshold that sends `strong_share` of items strong.
pub fn calibrate_threshold(scores: &[f64], strong_share: f64) -> f64 {
    let mut s = scores.to_vec();
    s.sort_by(f64::total_cmp);
    quantile(&s, 1.0 - strong_share)
}

/// RouterBench's frontier: the upper convex hull of (cost, quality) points, then only the
/// points not lower than their predecessor (quality non-decreasing as cost grows).
pub fn nondecreasing_convex_hull(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut pts = points.to_vec();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    pts.dedup();
    let mut hull: Vec<(f64, f64)> = Vec::new();
    for p in pts {
        while hull.len() >= 2 {
            let (x1, y1) = hull[hull.len() - 2];
            let (x2, y2) = hull[hull.len() - 1];
            if (x2 - x1) * (p.1 - y1) - (y2 - y1) * (p.0 - x1) >= 0.0 {
                hull.pop();
            } else {
                break;
            }
        }
        hull.push(p);
    }
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(hull.len());
    for p in hull {
        match out.last() {
            Some(last) if p.1 < last.1 => {}
            _ => out.push(p),
        }
    }
    out
}

/// RouterBench `calc_AIQ`: per router, the frontier of its (cost, quality) points extended
/// flat to the largest cost of all routers; AIQ = area under it / that largest cost.
pub fn aiq(routers: &[Vec<(f64, f64)>]) -> Vec<f64> {
    let hulls: Vec<Vec<(f64, f64)>> = routers
        .iter()
        .map(|p| nondecreasing_convex_hull(p))
        .collect();
    let cmax = hulls
        .iter()
        .filter_map(|h| h.last().map(|p| p.0))
        .fold(f64::NEG_INFINITY, f64::max);
    hulls
        .into_iter()
        .map(|mut h| {
            let Some(&(_, y)) = h.last() else {
                return f64::NAN;
            };
            h.push((cmax, y));
            let ys: Vec<f64> = h.iter().map(|p| p.1).collect();
            let xs: Vec<f64> = h.iter().map(|p| p.0).collect();
            trapz(&ys, &xs) / cmax
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_helpers() {
        let s = [1.0, 2.0, 4.0, 8.0];
        assert_eq!(quantile(&s, 0.0), 1.0);
        assert_eq!(quantile(&s, 1.0), 8.0);
        assert!((quantile(&s, 0.5) - 3.0).abs() < 1e-12);
        assert_eq!(np_interp(0.0, &[1.0, 2.0], &[10.0, 20.0]), 10.0);
        assert_eq!(np_interp(3.0, &[1.0, 2.0], &[10.0, 20.0]), 20.0);
        assert!((np_interp(1.25, &[1.0, 2.0], &[10.0, 20.0]) - 12.5).abs() < 1e-12);
        assert_eq!(trapz(&[1.0, 1.0, 1.0], &[0.0, 0.5, 1.0]), 1.0);
        assert_eq!(bisect_right(&[1.0, 2.0, 2.0, 3.0], 2.0), 3);
    }

    fn outcomes<'a>(w: &'a [f64], s: &'a [f64], zero: &'a [f64], one: &'a [f64]) -> Outcomes<'a> {
        Outcomes {
            weak: w,
            strong: s,
            weak_cost: zero,
            strong_cost: one,
        }
    }

    #[test]
    fn perfect_router_beats_reversed_router() {
        // Items 0..5: the strong model wins on the last three only.
        let w = [1.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        let s = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        let (zero, one) = ([0.0; 6], [1.0; 6]);
        let o = outcomes(&w, &s, &zero, &one);
        let good = [0.0, 0.1, 0.9, 0.8, 0.7, 0.2];
        let bad: Vec<f64> = good.iter().map(|x| -x).collect();
        let (wa, sa) = (0.5, 1.0);
        let pts = |sc: &[f64]| -> Vec<(f64, f64)> {
            routellm_curve(sc, &o, 10)
                .iter()
                .map(|p| (p.strong_pct, p.quality))
                .collect()
        };
        let mg = routellm_metrics(&pts(&good), wa, sa);
        let mb = routellm_metrics(&pts(&bad), wa, sa);
        // A perfect router for half the items recovers 3/4 of the area, its reverse 1/4.
        assert!(
            (mg.apgr - 0.75).abs() < 1e-9 && (mb.apgr - 0.25).abs() < 1e-9,
            "{mg:?} {mb:?}"
        );
        assert!(mg.cpt50 < mb.cpt50);
        let curve = routellm_curve(&good, &o, 10);
        assert_eq!(curve.last().map(|p| p.strong_pct), Some(0.0));
        assert_eq!(curve[0].strong_pct, 100.0);
        assert_eq!(curve[0].cost, 1.0);
        let (q, c) = optimal_point(&o, 0.5);
        assert_eq!((q, c), (1.0, 0.5));
    }

    #[test]
    fn hull_and_aiq() {
        let pts = [(0.0, 0.5), (0.5, 0.6), (0.25, 0.9), (1.0, 0.8), (1.0, 0.8)];
        let h = nondecreasing_convex_hull(&pts);
        assert_eq!(h, vec![(0.0, 0.5), (0.25, 0.9)]);
        let a = aiq(&[pts.to_vec(), vec![(0.0, 0.5), (1.0, 1.0)]]);
        // Router 1: 0.25 × 0.7 + 0.75 × 0.9 = 0.85; router 2: the diagonal, 0.75.
        assert!(
            (a[0] - 0.85).abs() < 1e-12 && (a[1] - 0.75).abs() < 1e-12,
            "{a:?}"
        );
    }

    #[test]
    fn threshold_calibration() {
        let t = calibrate_threshold(&[4.0, 1.0, 3.0, 2.0], 0.5);
        assert_eq!(t, 2.5);
    }
}
