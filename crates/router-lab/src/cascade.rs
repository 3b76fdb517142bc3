//! Routing plus escalation (a cascade) in replay, with RouterBench's accounting: every
//! attempt is paid.
//!
//! For each row we know both models' quality and cost, the router's score, and the
//! confidence the weak model would report (from the simulator's calibrated confidence model,
//! computed by the caller). A policy is a strong share `p` (the router's top `p` go straight
//! to the strong model) and a confidence threshold `τ` (a weak answer below it escalates):
//!
//! - routed strong: pay strong, get strong quality;
//! - routed weak, confidence ≥ τ: pay weak, get weak quality;
//! - routed weak, confidence < τ: pay weak **and** strong, get strong quality.
//!
//! `τ = 0` is pure routing. Each τ gives a cost-quality curve over `p`; curves are compared
//! by RouterBench's AIQ (area under the non-decreasing convex hull over a common cost range)
//! and by the cost needed to recover 50/80/95% of the weak-to-strong quality gap. AIQ only
//! integrates from a curve's cheapest point, and a cascade's cheapest point already pays for
//! its escalations, so a threshold is judged by the **frontier** it adds to pure routing: the
//! AIQ of the hull of both curves together. A cascade beats routing at `τ` when that frontier
//! AIQ exceeds routing's alone by more than [`MIN_AIQ_GAIN`]. Costs are
//! evaluation averages in USD per item (floats, like the rest of the offline metrics; no
//! money is booked here).

use serde::Serialize;

use crate::metrics::{aiq, nondecreasing_convex_hull};

/// One replayed item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CascadeRow {
    pub weak: f64,
    pub strong: f64,
    pub weak_cost: f64,
    pub strong_cost: f64,
    /// The weak model's reported confidence in its answer.
    pub confidence: f64,
    /// The router's score (higher = more need for the strong model), tie-broken.
    pub score: f64,
}

/// One policy's outcome, per item.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CascadePoint {
    pub strong_share: f64,
    pub cost: f64,
    pub quality: f64,
    /// Share of all items that escalated.
    pub escalated: f64,
}

/// How much a cascade must add to routing's AIQ to count as beating it.
pub const MIN_AIQ_GAIN: f64 = 0.001;

/// One confidence threshold's curve over strong shares.
#[derive(Debug, Clone, Serialize)]
pub struct CascadeCurve {
    pub threshold: f64,
    pub points: Vec<CascadePoint>,
    /// AIQ of this curve alone, and of its hull together with pure routing's.
    pub aiq: f64,
    pub frontier_aiq: f64,
    /// Cost (as a share of the all-strong cost) to recover 50, 80 and 95% of the quality
    /// gap, on the curve's hull; `None` when never reached.
    pub cost_to_recover: [Option<f64>; 3],
    pub best_quality: f64,
}

/// The comparison of pure routing (threshold 0) with cascades.
#[derive(Debug, Clone, Serialize)]
pub struct CascadeReport {
    pub rows: usize,
    pub weak_quality: f64,
    pub strong_quality: f64,
    pub all_strong_cost: f64,
    pub curves: Vec<CascadeCurve>,
    /// Thresholds whose AIQ beats pure routing's.
    pub beats_routing: Vec<f64>,
}

/// The shares of the gap `cost_to_recover` reports.
pub const RECOVER: [f64; 3] = [0.5, 0.8, 0.95];

/// The cost and quality of strong share `share` and threshold `tau`.
pub fn point(rows: &[CascadeRow], order: &[usize], share: f64, tau: f64) -> CascadePoint {
    let n = rows.len();
    let k = ((share.clamp(0.0, 1.0) * n as f64).round() as usize).min(n);
    let (mut cost, mut quality, mut escalated) = (0.0, 0.0, 0usize);
    for (rank, &i) in order.iter().enumerate() {
        let r = &rows[i];
        if rank < k {
            cost += r.strong_cost;
            quality += r.strong;
        } else if r.confidence < tau {
            cost += r.weak_cost + r.strong_cost;
            quality += r.strong;
            escalated += 1;
        } else {
            cost += r.weak_cost;
            quality += r.weak;
        }
    }
    let m = n.max(1) as f64;
    CascadePoint {
        strong_share: share,
        cost: cost / m,
        quality: quality / m,
        escalated: escalated as f64 / m,
    }
}

/// The cheapest cost at which the hull of `points` reaches `target` quality.
fn cost_at(points: &[(f64, f64)], target: f64) -> Option<f64> {
    let hull = nondecreasing_convex_hull(points);
    let first = hull.first()?;
    if first.1 >= target {
        return Some(first.0);
    }
    hull.windows(2).find_map(|w| {
        let ((c0, q0), (c1, q1)) = (w[0], w[1]);
        (q1 >= target && q1 > q0).then(|| c0 + (target - q0) / (q1 - q0) * (c1 - c0))
    })
}

/// Evaluates every threshold (0 is added if missing: it is pure routing) at strong shares
/// 0, 5, …, 100%.
pub fn evaluate(rows: &[CascadeRow], thresholds: &[f64]) -> CascadeReport {
    let n = rows.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| rows[b].score.total_cmp(&rows[a].score).then(a.cmp(&b)));
    let mut taus: Vec<f64> = thresholds.to_vec();
    if !taus.contains(&0.0) {
        taus.insert(0, 0.0);
    }
    taus.sort_by(f64::total_cmp);
    taus.dedup();
    let shares: Vec<f64> = (0..=20).map(|i| f64::from(i) / 20.0).collect();
    let m = n.max(1) as f64;
    let weak_quality = rows.iter().map(|r| r.weak).sum::<f64>() / m;
    let strong_quality = rows.iter().map(|r| r.strong).sum::<f64>() / m;
    let all_strong_cost = rows.iter().map(|r| r.strong_cost).sum::<f64>() / m;
    let curves_pts: Vec<Vec<CascadePoint>> = taus
        .iter()
        .map(|&t| shares.iter().map(|&s| point(rows, &order, s, t)).collect())
        .collect();
    let xy: Vec<Vec<(f64, f64)>> = curves_pts
        .iter()
        .map(|c| c.iter().map(|p| (p.cost, p.quality)).collect())
        .collect();
    // Every curve alone, then every curve joined with pure routing (index 0), one cost range.
    let mut all = xy.clone();
    all.extend(xy.iter().map(|c| {
        let mut u = xy[0].clone();
        u.extend_from_slice(c);
        u
    }));
    let aiqs = aiq(&all);
    let (alone, frontier) = aiqs.split_at(xy.len());
    let curves: Vec<CascadeCurve> = taus
        .iter()
        .zip(curves_pts)
        .zip(xy.iter().zip(alone.iter().zip(frontier)))
        .map(|((&threshold, points), (pts, (&aiq, &frontier_aiq)))| {
            let cost_to_recover = RECOVER.map(|x| {
                let target = weak_quality + x * (strong_quality - weak_quality);
                cost_at(pts, target).map(|c| {
                    if all_strong_cost > 0.0 {
                        c / all_strong_cost
                    } else {
                        0.0
                    }
                })
            });
            CascadeCurve {
                threshold,
                best_quality: points.iter().map(|p| p.quality).fold(0.0, f64::max),
                points,
                aiq,
                frontier_aiq,
                cost_to_recover,
            }
        })
        .collect();
    let routing_aiq = curves.first().map_or(f64::NAN, |c| c.aiq);
    let beats_routing = curves
        .iter()
        .filter(|c| c.threshold > 0.0 && c.frontier_aiq > routing_aiq + MIN_AIQ_GAIN)
        .map(|c| c.threshold)
        .collect();
    CascadeReport {
        rows: n,
        weak_quality,
        strong_quality,
        all_strong_cost,
        curves,
        beats_routing,
    }
}

impl CascadeReport {
    /// A table for people.
    pub fn table(&self) -> String {
        let mut out = format!(
            "rows={} weak quality {:.3}, strong {:.3}, all-strong cost ${:.6}/item \
             (every attempt paid)\n",
            self.rows, self.weak_quality, self.strong_quality, self.all_strong_cost
        );
        out.push_str(
            "threshold     AIQ  +routing  cost→50%  cost→80%  cost→95%  best quality  (cost as % of all strong)\n",
        );
        let pct = |x: Option<f64>| x.map_or("never".to_owned(), |v| format!("{:.1}%", 100.0 * v));
        for c in &self.curves {
            out.push_str(&format!(
                "{:>9}  {:.4}  {:>8.4}  {:>8}  {:>8}  {:>8}  {:>12.4}\n",
                if c.threshold == 0.0 {
                    "routing".to_owned()
                } else {
                    format!("{:.2}", c.threshold)
                },
                c.aiq,
                c.frontier_aiq,
                pct(c.cost_to_recover[0]),
                pct(c.cost_to_recover[1]),
                pct(c.cost_to_recover[2]),
                c.best_quality
            ));
        }
        if self.beats_routing.is_empty() {
            out.push_str("cascade does not beat pure routing at any threshold (frontier AIQ)\n");
        } else {
            let t: Vec<String> = self
                .beats_routing
                .iter()
                .map(|t| format!("{t:.2}"))
                .collect();
            out.push_str(&format!(
                "cascade beats pure routing (frontier AIQ) at thresholds {}\n",
                t.join(", ")
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(confidence_is_informative: bool) -> Vec<CascadeRow> {
        (0..100)
            .map(|i| {
                let weak_right = i % 3 != 0;
                CascadeRow {
                    weak: if weak_right { 1.0 } else { 0.0 },
                    strong: 1.0,
                    weak_cost: 0.01,
                    strong_cost: 0.2,
                    confidence: if confidence_is_informative == weak_right {
                        0.9
                    } else {
                        0.5
                    },
                    // A useless router: ranks by index.
                    score: f64::from(i),
                }
            })
            .collect()
    }

    #[test]
    fn every_attempt_is_paid_and_threshold_zero_is_pure_routing() {
        let r = rows(true);
        let order: Vec<usize> = (0..r.len()).rev().collect();
        let p = point(&r, &order, 0.0, 0.0);
        assert!((p.cost - 0.01).abs() < 1e-12 && p.escalated == 0.0);
        // Escalating the weak-wrong third: each pays weak + strong.
        let p = point(&r, &order, 0.0, 0.8);
        assert!((p.escalated - 0.34).abs() < 1e-12);
        assert!((p.cost - (0.01 + 0.34 * 0.2)).abs() < 1e-12);
        assert!((p.quality - 1.0).abs() < 1e-12);
    }

    #[test]
    fn an_informative_confidence_beats_routing_and_an_inverted_one_does_not() {
        let good = evaluate(&rows(true), &[0.8]);
        assert_eq!(good.curves.len(), 2);
        assert_eq!(good.beats_routing, vec![0.8]);
        assert!(good.table().contains("beats pure routing"));
        let bad = evaluate(&rows(false), &[0.8]);
        assert!(bad.beats_routing.is_empty(), "{}", bad.table());
    }
}
