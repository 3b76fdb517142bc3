//! `switchyard router audit JOB --by LABEL`: is routing fair across groups of items?
//!
//! Items are grouped by any metadata key (a language, a customer segment). Per group:
//! - **routed strong**: the share the policy (or a rule) sent to the strong tier;
//! - **escalated**: the share of the weak-routed items whose answer escalated;
//! - **weak final**: the share whose final answer came from the weak tier;
//! - **gap** (where shadow samples exist): on shadow-sampled items whose weak answer was
//!   final, the mean disagreement of the weak answer with the strong one (1 − agreement, see
//!   `switchyard_core::agreement`): how much worse than the strong model the weak answers
//!   that were kept are, measured, not predicted. Only shadow samples count: they are drawn
//!   at random among weak-routed items, while escalated pairs are selected by low confidence
//!   and would overstate the gap;
//! - **est. loss** = weak final × gap: the share of the group's answers expected to be worse
//!   than all-strong;
//! - **predicted gain** of the weak-final items (the router's mean score): the same question
//!   asked of the router, available without shadow samples.
//!
//! A group is **flagged** as served markedly worse when its estimated loss exceeds the whole
//! job's by more than 5 points and by more than twice its standard error, on at least
//! [`MIN_SAMPLES`] shadow samples. Without shadow samples nothing is claimed; the report says
//! how to get them (`--policy …,shadow=0.1`).

use std::collections::BTreeMap;

use serde::Serialize;
use switchyard_core::agreement::agreement;
use switchyard_proto::TaskKind;
use switchyard_store::routing::AuditItem;

/// Shadow samples a group needs before it can be flagged.
pub const MIN_SAMPLES: usize = 10;
/// How much worse (absolute estimated loss) a group must be to be flagged.
pub const MARGIN: f64 = 0.05;

/// The label of items without the metadata key.
pub const MISSING: &str = "(none)";

/// One group's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GroupAudit {
    pub group: String,
    pub items: usize,
    pub routed_strong: f64,
    pub escalated: f64,
    pub weak_final: f64,
    /// Shadow samples whose weak answer was final, and their mean disagreement.
    pub shadow_samples: usize,
    pub gap: Option<f64>,
    pub estimated_loss: Option<f64>,
    /// Standard error of the estimated loss.
    pub loss_se: Option<f64>,
    pub predicted_gain: f64,
    pub flagged: bool,
}

/// The audit of one job.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub job_id: String,
    pub by: String,
    pub overall: GroupAudit,
    pub groups: Vec<GroupAudit>,
    pub flagged: Vec<String>,
    pub note: Option<String>,
}

#[derive(Default)]
struct Acc {
    items: usize,
    strong: usize,
    weak_routed: usize,
    escalated: usize,
    weak_final: usize,
    samples: usize,
    disagreement: f64,
    disagreement_sq: f64,
    predicted: f64,
}

impl Acc {
    fn add(&mut self, it: &AuditItem, kind: TaskKind, weak: &str, strong: &str) {
        self.items += 1;
        let routed = it.routed_tier.as_deref();
        if routed == Some(strong) {
            self.strong += 1;
        }
        if routed == Some(weak) {
            self.weak_routed += 1;
            if it.escalated {
                self.escalated += 1;
            }
        }
        let weak_final = it.final_tier.as_deref() == Some(weak);
        if weak_final {
            self.weak_final += 1;
            self.predicted += f64::from(it.router_score.max(0.0));
            if it.shadowed
                && let (Some(w), Some(s)) = (&it.weak_answer, &it.strong_answer)
            {
                let d = 1.0 - agreement(kind, w, s);
                self.samples += 1;
                self.disagreement += d;
                self.disagreement_sq += d * d;
            }
        }
    }

    fn finish(&self, group: String) -> GroupAudit {
        let share = |k: usize, n: usize| if n == 0 { 0.0 } else { k as f64 / n as f64 };
        let weak_final = share(self.weak_final, self.items);
        let (gap, loss, se) = if self.samples == 0 {
            (None, None, None)
        } else {
            let m = self.samples as f64;
            let gap = self.disagreement / m;
            let var = (self.disagreement_sq / m - gap * gap).max(0.0);
            let se = weak_final * (var / m).sqrt();
            (Some(gap), Some(weak_final * gap), Some(se))
        };
        GroupAudit {
            group,
            items: self.items,
            routed_strong: share(self.strong, self.items),
            escalated: share(self.escalated, self.weak_routed),
            weak_final,
            shadow_samples: self.samples,
            gap,
            estimated_loss: loss,
            loss_se: se,
            predicted_gain: if self.weak_final == 0 {
                0.0
            } else {
                self.predicted / self.weak_final as f64
            },
            flagged: false,
        }
    }
}

/// Audits a job's items grouped by their `by` metadata value.
pub fn audit(
    job_id: &str,
    by: &str,
    items: &[AuditItem],
    kind: TaskKind,
    weak_tier: &str,
    strong_tier: &str,
) -> AuditReport {
    let mut overall = Acc::default();
    let mut groups: BTreeMap<String, Acc> = BTreeMap::new();
    for it in items {
        overall.add(it, kind, weak_tier, strong_tier);
        let g = it.grp.clone().unwrap_or_else(|| MISSING.to_owned());
        groups
            .entry(g)
            .or_default()
            .add(it, kind, weak_tier, strong_tier);
    }
    let overall = overall.finish("(all)".to_owned());
    let mut out: Vec<GroupAudit> = groups.into_iter().map(|(g, a)| a.finish(g)).collect();
    let mut flagged = Vec::new();
    if let Some(base) = overall.estimated_loss {
        for g in &mut out {
            if let (Some(loss), Some(se)) = (g.estimated_loss, g.loss_se) {
                let excess = loss - base;
                if g.shadow_samples >= MIN_SAMPLES && excess > MARGIN && excess > 2.0 * se {
                    g.flagged = true;
                    flagged.push(g.group.clone());
                }
            }
        }
    }
    let note = (overall.shadow_samples == 0).then(|| {
        "no shadow samples in this job: the quality gap cannot be measured; submit with \
         `--policy …,shadow=0.1` to sample 10% of the weak-routed items on the strong model"
            .to_owned()
    });
    AuditReport {
        job_id: job_id.to_owned(),
        by: by.to_owned(),
        overall,
        groups: out,
        flagged,
        note,
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn opt(x: Option<f64>) -> String {
    x.map_or("-".to_owned(), |v| format!("{v:.3}"))
}

/// The audit for people.
pub fn render(r: &AuditReport) -> String {
    let width = r
        .groups
        .iter()
        .map(|g| g.group.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = format!("job {} by `{}`\n", r.job_id, r.by);
    out.push_str(&format!(
        "{:<width$}  {:>6}  {:>7}  {:>9}  {:>10}  {:>6}  {:>6}  {:>9}  {:>9}\n",
        "group",
        "items",
        "strong",
        "escalated",
        "weak final",
        "shadow",
        "gap",
        "est. loss",
        "pred.gain"
    ));
    for g in r.groups.iter().chain(std::iter::once(&r.overall)) {
        out.push_str(&format!(
            "{:<width$}  {:>6}  {:>7}  {:>9}  {:>10}  {:>6}  {:>6}  {:>9}  {:>9.3}{}\n",
            g.group,
            g.items,
            pct(g.routed_strong),
            pct(g.escalated),
            pct(g.weak_final),
            g.shadow_samples,
            opt(g.gap),
            opt(g.estimated_loss),
            g.predicted_gain,
            if g.flagged { "  ← served worse" } else { "" }
        ));
    }
    for g in r.groups.iter().filter(|g| g.flagged) {
        out.push_str(&format!(
            "flag: `{}` is served markedly worse: estimated loss {} vs {} overall (gap {} \
             over {} shadow samples)\n",
            g.group,
            opt(g.estimated_loss),
            opt(r.overall.estimated_loss),
            opt(g.gap),
            g.shadow_samples
        ));
    }
    if r.flagged.is_empty() && r.note.is_none() {
        out.push_str("no group is served markedly worse\n");
    }
    if let Some(n) = &r.note {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(g: &str, routed: &str, final_tier: &str, weak: &str, strong: &str) -> AuditItem {
        AuditItem {
            grp: Some(g.to_owned()),
            router_score: 0.1,
            routed_tier: Some(routed.to_owned()),
            final_tier: Some(final_tier.to_owned()),
            status: "done".to_owned(),
            escalated: routed == "weak" && final_tier == "strong",
            weak_answer: Some(weak.to_owned()),
            strong_answer: Some(strong.to_owned()),
            shadowed: true,
        }
    }

    #[test]
    fn a_group_whose_weak_answers_disagree_is_flagged() {
        let mut items = Vec::new();
        for i in 0..40 {
            // en: weak agrees with strong 9 times in 10.
            let w = if i % 10 == 0 { "B" } else { "A" };
            items.push(item("en", "weak", "weak", w, "A"));
        }
        for i in 0..20 {
            // de: weak agrees only half the time.
            let w = if i % 2 == 0 { "B" } else { "A" };
            items.push(item("de", "weak", "weak", w, "A"));
        }
        items.push(item("en", "strong", "strong", "A", "A"));
        let r = audit("j", "lang", &items, TaskKind::Classify, "weak", "strong");
        assert_eq!(r.flagged, vec!["de".to_owned()]);
        let de = r.groups.iter().find(|g| g.group == "de").unwrap();
        assert_eq!(de.shadow_samples, 20);
        assert!((de.gap.unwrap() - 0.5).abs() < 1e-9);
        let en = r.groups.iter().find(|g| g.group == "en").unwrap();
        assert!(!en.flagged);
        assert!((en.routed_strong - 1.0 / 41.0).abs() < 1e-9);
        assert!(render(&r).contains("served markedly worse"));
    }

    #[test]
    fn without_shadow_samples_nothing_is_claimed() {
        let mut it = item("x", "weak", "weak", "A", "B");
        it.shadowed = false;
        let r = audit("j", "k", &[it], TaskKind::Classify, "weak", "strong");
        assert!(r.flagged.is_empty());
        assert!(r.note.as_deref().unwrap_or("").contains("shadow=0.1"));
        assert_eq!(r.groups[0].gap, None);
    }
}
