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
}

impl WorkItem {
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

impl WorkItem {
    /// True for a shadow call (see [`SHADOW_ATTEMPT`]).
    pub fn is_shadow(&self) -> bool {
        self.attempt == SHADOW_ATTEMPT
    }
}

/// `Nats-Msg-Id` of an attempt: `w:<len(job)>:<job>:<item>:<attempt>`.
pub fn attempt_key(job_id: &str, item_id: &str, attempt: u16) -> String {
    format!("w:{}:{job_id}:{item_id}:{attempt}", job_id.len())
}
