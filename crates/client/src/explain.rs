//! `switchyard router explain JOB ITEM` (from what the dispatcher stored) and `router explain
//! --file ITEMS.jsonl --item ID …` (the same decision computed as `quote` computes it,
//! without a job): why an item went where it went.
//!
//! In the routing order: the sensitivity pin or the rule that matched (and its effect), the
//! router's score (and the shifted score), the key the job's cut compared (the score, or for
//! a budget the gain per extra dollar with the cost estimates behind it), the cut and the
//! tie-break by input position, the tier; for a job, then what happened: each answer with its
//! tier, model, confidence, escalation and whether it was a shadow call.

use rust_decimal::Decimal;
use serde::Serialize;
use switchyard_core::calibrate::KeyKind;
use switchyard_store::routing::{AttemptRow, Explained};

use crate::quote::Quoted;

/// Why one item went where it went.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub job_id: Option<String>,
    pub item_id: String,
    /// Input position (ties at the cut go to the earlier item).
    pub seq: i64,
    pub policy: String,
    pub router_score: f32,
    /// The rule that decided the item (`sensitivity` for a pin).
    pub rule: Option<String>,
    /// The tier a pin or rule forced.
    pub forced_tier: Option<String>,
    /// The rule's shift of the score (0 without one).
    pub shift: f32,
    pub score: f32,
    pub key_kind: KeyKind,
    pub key: f32,
    pub est_weak_usd: Option<Decimal>,
    pub est_strong_usd: Option<Decimal>,
    /// The cut: items whose key is above it, or equal with `seq <= cut_seq`, go strong.
    pub cut: Option<f32>,
    pub cut_seq: Option<i64>,
    pub tier: Option<String>,
    /// What happened (a job only).
    pub answers: Vec<Answer>,
    pub final_tier: Option<String>,
}

/// One answer of the item.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub attempt: i32,
    pub tier: String,
    pub model: String,
    pub confidence: f64,
    pub escalated: bool,
    pub shadow: bool,
}

impl From<&AttemptRow> for Answer {
    fn from(a: &AttemptRow) -> Self {
        Self {
            attempt: a.attempt,
            tier: a.tier.clone(),
            model: a.model.clone(),
            confidence: a.confidence,
            escalated: a.escalated,
            shadow: a.is_shadow(),
        }
    }
}

/// The explanation of a stored item.
pub fn from_job(e: &Explained) -> Explanation {
    let policy: Option<switchyard_proto::Policy> = e
        .job
        .policy
        .clone()
        .and_then(|p| serde_json::from_value(p).ok());
    let (policy_text, key_kind) = match &policy {
        Some(p) => (
            switchyard_core::calibrate::describe(&p.routing),
            switchyard_core::calibrate::key_kind(&p.routing),
        ),
        None => ("(unknown)".to_owned(), KeyKind::Score),
    };
    let i = &e.item;
    let score = i.route_score.unwrap_or(i.router_score);
    Explanation {
        job_id: Some(e.job.job_id.clone()),
        item_id: i.item_id.clone(),
        seq: i.seq,
        policy: policy_text,
        router_score: i.router_score,
        rule: i.route_rule.clone(),
        forced_tier: i.route_tier.clone(),
        shift: score - i.router_score,
        score,
        key_kind,
        key: i.route_key.unwrap_or(score),
        est_weak_usd: i.est_weak_usd,
        est_strong_usd: i.est_strong_usd,
        cut: e.job.routing_cut,
        cut_seq: e.job.routing_cut_seq,
        tier: i.routed_tier.clone(),
        answers: e.attempts.iter().map(Answer::from).collect(),
        final_tier: i.final_tier.clone(),
    }
}

/// The explanation of row `index` of a quoted file.
pub fn from_quote(q: &Quoted, index: usize) -> Explanation {
    let (route, raw) = &q.routes[index];
    let (cut, cut_seq) = match q.plan.cut.as_pair() {
        Some((c, s)) => (Some(c), Some(s)),
        None => (None, None),
    };
    Explanation {
        job_id: None,
        item_id: q.items[index].item_id.clone(),
        seq: index as i64,
        policy: q.plan.policy.clone(),
        router_score: *raw,
        rule: route.rule.clone(),
        forced_tier: route.tier.clone(),
        shift: route.score - raw,
        score: route.score,
        key_kind: q.plan.key,
        key: route.key,
        est_weak_usd: Some(route.est_weak_usd),
        est_strong_usd: Some(route.est_strong_usd),
        cut,
        cut_seq,
        tier: Some(q.tier_of(index)),
        answers: Vec::new(),
        final_tier: None,
    }
}

fn usd(d: Decimal) -> String {
    format!("${}", d.round_dp(6).normalize())
}

/// The explanation for people.
pub fn render(e: &Explanation) -> String {
    let mut out = match &e.job_id {
        Some(job) => format!("item {:?} of job {job} (position {})\n", e.item_id, e.seq),
        None => format!("item {:?} (row {} of the file)\n", e.item_id, e.seq + 1),
    };
    out.push_str(&format!("  policy        {}\n", e.policy));
    out.push_str(&format!("  router score  {:+.4}\n", e.router_score));
    match (&e.rule, &e.forced_tier) {
        (Some(rule), Some(tier)) if rule == switchyard_core::route::SENSITIVITY_RULE => {
            out.push_str(&format!(
                "  pinned        local_only item → tier `{tier}` (sensitivity pins come first; \
                 no rule or policy applies)\n"
            ));
        }
        (Some(rule), Some(tier)) => {
            out.push_str(&format!(
                "  rule          `{rule}` forces tier `{tier}` (the policy does not decide it)\n"
            ));
        }
        (Some(rule), None) => {
            out.push_str(&format!(
                "  rule          `{rule}` shifts the score by {:+.4} → {:+.4}\n",
                e.shift, e.score
            ));
        }
        (None, _) => out.push_str("  rule          none matched\n"),
    }
    if let (Some(w), Some(s)) = (e.est_weak_usd, e.est_strong_usd) {
        out.push_str(&format!(
            "  est. cost     weak {}, strong {} (extra {})\n",
            usd(w),
            usd(s),
            usd(s - w)
        ));
    }
    if e.forced_tier.is_none() {
        let what = match e.key_kind {
            KeyKind::Score => "score",
            KeyKind::GainPerDollar => "gain per extra dollar",
        };
        out.push_str(&format!("  key           {what} {:.6}\n", e.key));
        match (e.cut, e.cut_seq) {
            (Some(cut), Some(seq)) if seq == i64::MAX => {
                let verdict = if e.key >= cut { "≥" } else { "<" };
                out.push_str(&format!(
                    "  cut           {what} at least {cut:.6}: {:.6} {verdict} {cut:.6}\n",
                    e.key
                ));
            }
            (Some(cut), Some(seq)) => {
                let verdict = if e.key > cut {
                    "above the cut".to_owned()
                } else if e.key == cut {
                    format!(
                        "equal to the cut; position {} {} {seq}",
                        e.seq,
                        if e.seq <= seq { "≤" } else { ">" }
                    )
                } else {
                    "below the cut".to_owned()
                };
                out.push_str(&format!(
                    "  cut           strong if {what} > {cut:.6}, or equal at position ≤ {seq}: \
                     {verdict}\n"
                ));
            }
            _ => out.push_str("  cut           none: the policy sent nothing strong\n"),
        }
    }
    out.push_str(&format!(
        "  → tier        {}\n",
        e.tier.as_deref().unwrap_or("(not routed yet)")
    ));
    for a in &e.answers {
        out.push_str(&format!(
            "  answer {:>4}   {} ({}), confidence {:.3}{}\n",
            a.attempt,
            a.tier,
            a.model,
            a.confidence,
            if a.shadow {
                ", shadow call (recorded, not final)"
            } else if a.escalated {
                ", below the threshold: escalated"
            } else {
                ""
            }
        ));
    }
    if let Some(t) = &e.final_tier {
        out.push_str(&format!("  final answer  from tier {t}\n"));
    }
    out
}
