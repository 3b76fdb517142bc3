//! `[dispatcher]`: how jobs are admitted, routed and published.

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_core::validate::Limits;

use super::{Fraction, at_least, at_least_duration, count};

/// The dispatcher's knobs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatcherSettings {
    /// The tier items go to when the router says the weak model will do.
    pub weak_tier: String,
    /// The tier items go to when the router says they need the strong model.
    pub strong_tier: String,
    /// A router artifact (from `switchyard router train`); the built-in default when unset.
    pub router: Option<String>,
    /// Items whose text is longer are rejected (bytes).
    pub max_item_bytes: usize,
    /// Items of chat jobs (OpenAI batch lines: a conversation and its parameters) longer
    /// than this are rejected (bytes); the API sends longer lines to the error file.
    pub max_chat_item_bytes: usize,
    /// Jobs with more items are rejected.
    pub max_items: u64,
    /// Classification tasks with more labels are rejected.
    pub max_labels: usize,
    /// Publish-acks awaited concurrently while publishing items (engine notes: ≥ 64).
    pub publish_window: NonZeroUsize,
    /// Items scored and inserted per database statement.
    pub chunk_size: NonZeroUsize,
    /// Default cascade threshold when a job does not set one.
    pub confidence_threshold: Fraction,
    /// Default escalations per item when a job does not set it.
    pub max_escalations: u8,
    /// Deliveries of a job message before it is dead-lettered.
    pub max_deliver: i64,
    /// JetStream redelivers a job message not acked (or progressed) within this time, e.g.
    /// when its dispatcher died; a live dispatcher sends in-progress acks every third of it.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// On SIGTERM each job being dispatched gets this long to finish (all of them at once);
    /// then it is handed back (nak) and another dispatcher resumes it from its stored state.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Jobs one dispatcher process works on at once (default 8: single-item jobs at
    /// concurrency 32 went from 181 to 210-220 jobs/s over 4 on 2 cores). A small job costs a few
    /// milliseconds of round trips to Postgres and JetStream that leave the CPU idle; taking
    /// several jobs at a time overlaps them, and a big job no longer holds up the small ones
    /// queued behind it. Each job in flight holds its own ingest state (see `ingest`) and a
    /// database connection for its job lock, so peak memory grows with the number of big jobs
    /// dispatched at once, and the process takes at most `database.max_connections - 1` jobs at
    /// a time (one connection stays free for the jobs' queries). All dispatcher processes
    /// together hold at most 64 job messages (the jobs consumer's `max_ack_pending`).
    pub concurrent_jobs: NonZeroUsize,
    /// A job not finished (`ingesting`, `dispatching`, `running`) with no live owner and no
    /// progress for this long is finished by a sweep (docs/reliability.md, "Stuck jobs"):
    /// its missing work re-published, or it is completed, or failed with a reason. Keep it
    /// well above `ack_wait` (the dispatcher's and the workers'): a message held by a process
    /// that died comes back by itself after `ack_wait`.
    #[serde(with = "humantime_serde")]
    pub stuck_after: Duration,
    /// How often each dispatcher looks for stuck jobs.
    #[serde(with = "humantime_serde")]
    pub sweep_every: Duration,
}

impl Default for DispatcherSettings {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            weak_tier: "weak".to_owned(),
            strong_tier: "strong".to_owned(),
            router: None,
            max_item_bytes: limits.max_item_bytes,
            max_chat_item_bytes: limits.max_chat_item_bytes,
            max_items: limits.max_items,
            max_labels: limits.max_labels,
            publish_window: count(256),
            chunk_size: count(2000),
            confidence_threshold: const { Fraction::literal(0.5) },
            max_escalations: 1,
            max_deliver: 5,
            ack_wait: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(20),
            concurrent_jobs: count(8),
            stuck_after: Duration::from_secs(600),
            sweep_every: Duration::from_secs(60),
        }
    }
}

impl DispatcherSettings {
    /// The validation limits these settings describe.
    pub fn limits(&self) -> Limits {
        Limits {
            max_item_bytes: self.max_item_bytes,
            max_chat_item_bytes: self.max_chat_item_bytes,
            max_items: self.max_items,
            max_labels: self.max_labels,
            ..Limits::default()
        }
    }

    /// Checks what the types cannot: lower bounds of durations and delivery counts. The
    /// tiers named here are checked against `[tiers]` by `Settings::validate`.
    ///
    /// # Errors
    /// A message naming the key and the value.
    pub fn validate(&self) -> Result<(), String> {
        at_least("dispatcher.max_deliver", self.max_deliver, 2)?;
        at_least_duration("dispatcher.ack_wait", self.ack_wait, Duration::from_secs(3))?;
        at_least_duration(
            "dispatcher.stuck_after",
            self.stuck_after,
            Duration::from_secs(1),
        )?;
        at_least_duration(
            "dispatcher.sweep_every",
            self.sweep_every,
            Duration::from_millis(100),
        )
    }
}
