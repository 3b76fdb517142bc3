//! The job spec: what a submitter publishes on `<prefix>.jobs.submit`.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::PROTOCOL_VERSION;

/// A batch job: a task applied to many items under one routing policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Protocol version of this message.
    pub v: u16,
    /// Client-chosen id (a ULID when the CLI picks it). Unique per deployment.
    pub job_id: String,
    /// Re-submitting with the same key creates nothing new. Defaults to `job_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Team the spend is booked to (finance groups by it). Defaults to `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Project within the team. Defaults to `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// What to do with every item.
    pub task: Task,
    /// The items, inline. Exactly one of `items` and `input` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<Item>>,
    /// The items as a JSONL object in the NATS object store, for jobs too large for one
    /// message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<InputRef>,
    /// How items are split between tiers and when answers escalate.
    #[serde(default)]
    pub policy: Policy,
    /// Free tags for finance (`cost_center = "ops"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// How long the job may take, in seconds from when the dispatcher accepts it (60 s to 30
    /// days). The dispatcher fixes the instant and every work message carries it: what lets a
    /// job that can wait (a nightly pipeline) have its calls sent through a provider's batch
    /// API at the batch price. Absent: real time. A spec that carries it has
    /// `v` = [`crate::DEADLINE_VERSION`] ([`JobSpec::message_version`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<u64>,
}

impl JobSpec {
    /// A spec with defaults everywhere but the id and the task.
    pub fn new(job_id: impl Into<String>, task: Task) -> Self {
        Self {
            v: task.message_version(),
            job_id: job_id.into(),
            idempotency_key: None,
            team: None,
            project: None,
            task,
            items: None,
            input: None,
            policy: Policy::default(),
            labels: BTreeMap::new(),
            deadline: None,
        }
    }

    /// What the pilot's and audit's draws hash: the policy's `sample_key`, else the job id.
    pub fn sample_key(&self) -> &str {
        self.policy.sample_key.as_deref().unwrap_or(&self.job_id)
    }

    /// The version this spec must carry: the lowest whose readers understand its task and
    /// its deadline.
    pub fn message_version(&self) -> u16 {
        crate::version_for(&self.task, self.deadline.is_some())
    }

    /// This spec with a deadline of `secs` seconds, its version raised to match.
    #[must_use]
    pub fn with_deadline(mut self, secs: u64) -> Self {
        self.deadline = Some(secs);
        self.v = self.message_version();
        self
    }

    /// The idempotency key in force: the explicit one, or the job id.
    pub fn effective_idempotency_key(&self) -> &str {
        self.idempotency_key.as_deref().unwrap_or(&self.job_id)
    }
}

/// The work to do on each item. Tagged by `kind` on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Task {
    /// Pick one of `labels` for each item.
    Classify {
        labels: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instructions: Option<String>,
    },
    /// Summarize each item in at most `max_words` words.
    Summarize {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_words: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instructions: Option<String>,
    },
    /// Free-form generation: the item text is the prompt.
    Generate {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instructions: Option<String>,
    },
    /// Chat completions: each item's text is a [`crate::chat::ChatItem`] (a conversation
    /// sent as it is, with its parameters and perhaps a pinned model). What a batch of the
    /// OpenAI-compatible API becomes. Messages of such jobs carry `v` =
    /// [`crate::chat::CHAT_VERSION`].
    Chat {},
}

impl Task {
    /// The kind of task, which is all a router may know about it.
    pub fn kind(&self) -> TaskKind {
        match self {
            Task::Classify { .. } => TaskKind::Classify,
            Task::Summarize { .. } => TaskKind::Summarize,
            Task::Generate { .. } => TaskKind::Generate,
            Task::Chat {} => TaskKind::Chat,
        }
    }

    /// The protocol version of messages carrying this task: chat items need a reader that
    /// knows them ([`crate::chat::CHAT_VERSION`]); everything else stays at
    /// [`crate::PROTOCOL_VERSION`] so older readers keep reading it.
    pub fn message_version(&self) -> u16 {
        match self {
            Task::Chat {} => crate::chat::CHAT_VERSION,
            _ => PROTOCOL_VERSION,
        }
    }
}

/// The kind of a task, without its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Classify,
    Summarize,
    Generate,
    Chat,
}

impl TaskKind {
    /// The wire name (`classify`, `summarize`, `generate`).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Classify => "classify",
            TaskKind::Summarize => "summarize",
            TaskKind::Generate => "generate",
            TaskKind::Chat => "chat",
        }
    }
}

impl std::fmt::Display for TaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TaskKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "classify" => Ok(TaskKind::Classify),
            "summarize" => Ok(TaskKind::Summarize),
            "generate" => Ok(TaskKind::Generate),
            "chat" => Ok(TaskKind::Chat),
            other => Err(format!(
                "unknown task `{other}` (expected classify, summarize, generate or chat)"
            )),
        }
    }
}

/// One unit of work. Also the shape of one line of a JSONL input file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Unique within the job.
    #[serde(alias = "id")]
    pub item_id: String,
    /// The text the model sees (after the task's instructions).
    pub text: String,
    /// `local_only` pins the item to local tiers, escalation included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<String>,
    /// Anything else the submitter wants kept with the item (returned with results).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

impl Item {
    /// An item with no sensitivity or metadata.
    pub fn new(item_id: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            item_id: item_id.into(),
            text: text.into(),
            sensitivity: None,
            metadata: BTreeMap::new(),
        }
    }
}

/// Where a large job's items are: a JSONL object in the NATS object store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputRef {
    /// Object store bucket (the deployment's inputs bucket).
    pub bucket: String,
    /// Object name.
    pub name: String,
}

/// How a job's items are routed and escalated.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Policy {
    /// Which items start on the strong tier.
    #[serde(default)]
    pub routing: Routing,
    /// When a weak answer is escalated.
    #[serde(default)]
    pub cascade: Cascade,
    /// Per-tier model overrides (`{"weak": "T0pp"}`); each must be a model configured for
    /// that tier.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, String>,
    /// Also send this fraction (in [0, 1]) of the weak-routed items to the strong tier, as
    /// shadow calls: their answers are recorded (and booked as shadow cost) but never final,
    /// so the fleet learns where the weak model falls short. `None`: no shadow calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<f64>,
    /// A `quality=Q` job's audit: its strong calls cost at most this share (in [0, 1]) of
    /// the job's all-strong cost. `None`: the deployment's default (2%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<f64>,
    /// The key a `quality=Q` job's pilot and audit samples are drawn with (hashed with each
    /// item id). `None`: the job id. Two jobs of the same items with the same key pilot and
    /// audit the same items, so they can be compared pair for pair (the demo runs its jobs
    /// again with a deadline this way: the difference is the batch price, not the draw).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_key: Option<String>,
}

/// The routing rule applied to the router's scores (higher score = more need for the strong
/// model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Routing {
    /// Items scoring at or above `value` go strong.
    Threshold { value: f64 },
    /// Exactly `round(value × items)` items go strong: the highest scores of this job.
    StrongShare { value: f64 },
    /// Strong calls go to the items with the best predicted gain per extra dollar (the
    /// router's score over the estimated extra cost of the strong model), as many as keep
    /// the job's expected cost within `value` US dollars. A decimal string on the wire
    /// (`"12.50"`); integers are accepted, floats refused (money stays exact).
    BudgetUsd {
        #[serde(serialize_with = "ser_usd", deserialize_with = "de_usd")]
        value: Decimal,
    },
    /// The smallest strong share whose predicted quality reaches `value` (in (0, 1]) times the
    /// predicted quality of sending every item strong.
    Quality { value: f64 },
}

fn ser_usd<S: Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&d.normalize().to_string())
}

fn de_usd<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Str(String),
        Int(i64),
        Float(f64),
    }
    match Raw::deserialize(d)? {
        Raw::Str(s) => s.trim().parse::<Decimal>().map_err(|e| {
            serde::de::Error::custom(format!("budget `{s}` is not a decimal number: {e}"))
        }),
        Raw::Int(i) => Ok(Decimal::from(i)),
        Raw::Float(f) => Err(serde::de::Error::custom(format!(
            "write budgets as decimal strings (\"{f}\"), so money stays exact"
        ))),
    }
}

impl Default for Routing {
    fn default() -> Self {
        Routing::StrongShare { value: 0.2 }
    }
}

/// Escalation of low-confidence answers to the next tier (a cascade).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Cascade {
    /// Answers below this confidence escalate. `None`: the deployment's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence_threshold: Option<f64>,
    /// At most this many escalations per item. `None`: the deployment's default; 0 disables
    /// the cascade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_escalations: Option<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    #[test]
    fn a_deadline_raises_the_version_only_of_the_messages_that_carry_it() {
        let plain = JobSpec::new("j", Task::Generate { instructions: None });
        assert_eq!(
            plain.v,
            crate::PROTOCOL_VERSION,
            "older readers keep reading it"
        );
        let chat = JobSpec::new("j", Task::Chat {});
        assert_eq!(chat.v, crate::chat::CHAT_VERSION);
        for spec in [plain, chat] {
            let later = spec.with_deadline(86_400);
            assert_eq!(later.v, crate::DEADLINE_VERSION);
            assert_eq!(later.message_version(), crate::DEADLINE_VERSION);
            let back: JobSpec = decode(&encode(&later).unwrap()).unwrap();
            assert_eq!(back.deadline, Some(86_400));
        }
        // A spec without one encodes no `deadline` key at all (byte-identical to before).
        let bytes = encode(&JobSpec::new("j", Task::Generate { instructions: None })).unwrap();
        assert!(!bytes.windows(8).any(|w| w == b"deadline"));
    }

    #[test]
    fn new_routing_kinds_and_shadow_travel_and_budgets_stay_exact() {
        let mut spec = JobSpec::new("j", Task::Generate { instructions: None });
        spec.items = Some(vec![Item::new("1", "x")]);
        spec.policy.routing = Routing::BudgetUsd {
            value: "12.345".parse().unwrap(),
        };
        spec.policy.shadow = Some(0.05);
        let back: JobSpec = decode(&encode(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
        let json = serde_json::to_value(&spec.policy).unwrap();
        assert_eq!(
            json["routing"],
            serde_json::json!({"kind": "budget_usd", "value": "12.345"})
        );
        // A version-1 policy without the new fields still decodes.
        let old: Policy = serde_json::from_value(
            serde_json::json!({"routing": {"kind": "quality", "value": 0.9}}),
        )
        .unwrap();
        assert_eq!(old.routing, Routing::Quality { value: 0.9 });
        assert_eq!(old.shadow, None);
        // Integers are dollars; floats are refused.
        let int: Routing =
            serde_json::from_value(serde_json::json!({"kind": "budget_usd", "value": 3})).unwrap();
        assert_eq!(int, Routing::BudgetUsd { value: 3.into() });
        let e = serde_json::from_value::<Routing>(
            serde_json::json!({"kind": "budget_usd", "value": 2.5}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("decimal strings"), "{e}");
    }
}
