//! One item on its way to a tier: `<prefix>.work.<tier>`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::job::Task;

/// An item routed to a tier. Self-contained, so a worker needs no database read to call the
/// model; the dispatcher publishes the first attempt, a worker publishes each escalation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkItem {
    /// Protocol version.
    pub v: u16,
    pub job_id: String,
    pub item_id: String,
    /// 0 for the routed attempt, n for the n-th escalation. Part of the idempotency key.
    pub attempt: u16,
    /// The tier this attempt runs on.
    pub tier: String,
    pub text: String,
    pub task: Task,
    pub team: String,
    pub project: String,
    /// The item is pinned to local tiers (escalation included).
    #[serde(default)]
    pub local_only: bool,
    /// Per-tier model overrides from the job's policy.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, String>,
    /// Escalate answers below this confidence.
    pub confidence_threshold: f64,
    /// Escalations left for this item after this attempt's tier.
    pub escalations_left: u8,
    /// The job's calibrated escalation rule (a `quality=Q` policy): when present it decides
    /// instead of `confidence_threshold` (`switchyard_core::escalation::decide`), and says
    /// how many extra samples to draw from a model without logprobs. Absent in messages of
    /// older dispatchers and of other policies: the threshold decides, as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<EscalationRule>,
    /// The router's raw score of the item, a feature of the escalation rule (sent with a
    /// rule; absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_score: Option<f32>,
    /// The item's estimated strong-tier cost over the job's mean one (sent with a rule whose
    /// `cost_slope` is not 0; absent otherwise, read as 1): an escalation of a costly item
    /// must buy more to be worth it (see [`EscalationRule::cost_slope`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_weight: Option<f32>,
    /// When the item's job must be done, in Unix seconds (the job's deadline fixed by the
    /// dispatcher when it accepted the job): until then the attempt may wait in a provider's
    /// batch. Absent: real time. A message that carries it has `v` =
    /// [`crate::DEADLINE_VERSION`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<u64>,
}

/// A calibrated escalation rule, as data: a logistic model over what is known after an
/// answer (router score, confidence, answer checks, agreement of samples) and the
/// probability of "the answer falls short" at or above which the answer escalates.
///
/// The feature layout is versioned (`features`); a worker that does not know the version
/// falls back to the confidence threshold rather than guess (see
/// `switchyard_core::escalation`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EscalationRule {
    /// Version of the feature layout the weights are for.
    pub features: u16,
    /// One weight per feature, the intercept first.
    pub weights: Vec<f64>,
    /// Escalate when the predicted probability of falling short is at least this. Above 1:
    /// never escalate (a pilot answer that is only recorded).
    pub threshold: f64,
    /// Extra samples to draw when the model gives no logprobs (their agreement with the
    /// answer is the confidence signal); 0: none.
    #[serde(default)]
    pub samples: u8,
    /// How the threshold rises with the item's cost: escalate when the probability is at
    /// least `threshold + cost_slope × (w − 1)`, `w` the item's `cost_weight`. A plan
    /// escalates where the expected gain per dollar is highest, and an escalation's price is
    /// the item's strong call. 0 (rules of older dispatchers): the threshold alone.
    #[serde(default)]
    pub cost_slope: f64,
}

impl WorkItem {
    /// An item's first attempt on `tier`, with the defaults of a job that sets nothing: team
    /// and project `default`, no model overrides, escalation below confidence 0.8 and at
    /// most once, no calibrated rule, no deadline; `v` is the task's. Callers set what their
    /// job says.
    pub fn new(
        job_id: impl Into<String>,
        item_id: impl Into<String>,
        tier: impl Into<String>,
        text: impl Into<String>,
        task: Task,
    ) -> Self {
        Self {
            v: task.message_version(),
            job_id: job_id.into(),
            item_id: item_id.into(),
            attempt: 0,
            tier: tier.into(),
            text: text.into(),
            task,
            team: "default".to_owned(),
            project: "default".to_owned(),
            local_only: false,
            models: BTreeMap::new(),
            confidence_threshold: 0.8,
            escalations_left: 1,
            escalation: None,
            router_score: None,
            cost_weight: None,
            deadline: None,
        }
    }

    /// The key of this attempt, unique per (job, item, attempt). Length-prefixed so that ids
    /// containing `:` cannot collide.
    pub fn attempt_key(&self) -> String {
        attempt_key(&self.job_id, &self.item_id, self.attempt)
    }
}

/// The attempt number of a shadow call: a weak-routed item sent to the strong tier as well,
/// whose answer is recorded and booked (ledger `outcome = 'shadow'`) but never final. Far
/// above any escalation chain, so it never collides with a real attempt.
pub const SHADOW_ATTEMPT: u16 = 1000;

/// The attempt number of an audit call: an item of a job's audit sample (or of its pilot)
/// sent to the strong tier besides its routed attempt. Booked under the item like any call;
/// never escalated; its answer becomes the item's final answer (the strong model's) while
/// the routed attempt's answer is kept to measure what the policy would have delivered. An
/// audit answer never fails or re-opens an item.
pub const AUDIT_ATTEMPT: u16 = 1001;

impl WorkItem {
    /// True for a shadow call (see [`SHADOW_ATTEMPT`]).
    pub fn is_shadow(&self) -> bool {
        self.attempt == SHADOW_ATTEMPT
    }

    /// True for an audit call (see [`AUDIT_ATTEMPT`]).
    pub fn is_audit(&self) -> bool {
        self.attempt == AUDIT_ATTEMPT
    }

    /// True for one of the item's own attempts (the routed one or an escalation), as
    /// opposed to a shadow or audit call running beside them.
    pub fn is_own(&self) -> bool {
        self.attempt < SHADOW_ATTEMPT
    }
}

/// `Nats-Msg-Id` of an attempt: `w:<len(job)>:<job>:<item>:<attempt>`.
pub fn attempt_key(job_id: &str, item_id: &str, attempt: u16) -> String {
    format!("w:{}:{job_id}:{item_id}:{attempt}", job_id.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    fn item() -> WorkItem {
        let mut item = WorkItem::new("j", "i", "weak", "t", Task::Generate { instructions: None });
        item.v = 1;
        item
    }

    #[test]
    fn the_rule_travels_and_older_messages_still_decode() {
        let mut with = item();
        with.escalation = Some(EscalationRule {
            features: 1,
            weights: vec![0.5, -1.25, 2.0],
            threshold: 0.3,
            samples: 3,
            cost_slope: 0.125,
        });
        with.router_score = Some(0.25);
        with.cost_weight = Some(1.5);
        let back: WorkItem = decode(&encode(&with).unwrap()).unwrap();
        assert_eq!(back, with);
        // A message written before the field existed (no `escalation` key) decodes to None.
        #[derive(Serialize)]
        struct Old<'a> {
            v: u16,
            job_id: &'a str,
            item_id: &'a str,
            attempt: u16,
            tier: &'a str,
            text: &'a str,
            task: Task,
            team: &'a str,
            project: &'a str,
            confidence_threshold: f64,
            escalations_left: u8,
        }
        let old = encode(&Old {
            v: 1,
            job_id: "j",
            item_id: "i",
            attempt: 0,
            tier: "weak",
            text: "t",
            task: Task::Generate { instructions: None },
            team: "default",
            project: "default",
            confidence_threshold: 0.8,
            escalations_left: 1,
        })
        .unwrap();
        let decoded: WorkItem = decode(&old).unwrap();
        assert_eq!(decoded, item());
        let mut audit = item();
        audit.attempt = AUDIT_ATTEMPT;
        assert!(audit.is_audit() && !audit.is_shadow() && !item().is_audit());
    }
}
