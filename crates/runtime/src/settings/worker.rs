//! `[worker]`: how a worker process pulls, calls, commits and shares its providers' quota.

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::reliability::BreakerSettings;
use super::{Fraction, at_least, at_least_duration, count};

/// A worker process's knobs (per tier lane).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// Model calls in flight per process and tier.
    pub concurrency: NonZeroUsize,
    /// Messages requested per pull.
    pub fetch_batch: NonZeroUsize,
    /// Outcomes written per database transaction (at most).
    pub commit_batch: NonZeroUsize,
    /// How long a partial commit batch may wait for more outcomes. The committer waits only
    /// while its lane has other calls in flight (their outcomes are on their way); a lone
    /// outcome is committed at once, so an idle worker adds no batching delay.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// JetStream redelivers an item not acked (or progressed) within this time.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Deliveries before an item is dead-lettered. Waiting for quota never counts.
    pub max_deliver: i64,
    /// Delay before a failed item is redelivered.
    #[serde(with = "humantime_serde")]
    pub retry_delay: Duration,
    /// In-flight items get this long to finish on shutdown; the rest are nak'ed.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Models' `rpm`/`tpm` are the provider's quota for the whole fleet, shared among the
    /// live worker processes (false: each process applies them on its own).
    pub fleet_quota: bool,
    /// Share of the quota the limiters pace at, in (0, 1]: with `fleet_quota` the fleet's
    /// shares add up to `rpm × quota_headroom`, without it each process paces at that on its
    /// own. The margin covers the time between a call leaving and the provider counting it,
    /// and clock skew between processes and the provider's window.
    pub quota_headroom: Fraction,
    /// The per-model circuit breaker (`[worker.breaker]`).
    pub breaker: BreakerSettings,
    /// Largest answer (bytes of its text) a call may return: a longer one fails its item
    /// (the call is still booked). Bodies are read up to four times this plus 64 KiB.
    pub max_answer_bytes: NonZeroUsize,
    /// Provider batches for jobs with a deadline (`[worker.batching]`).
    pub batching: BatchingSettings,
}

/// How attempts of jobs with a deadline are grouped into provider batches, on models with
/// `batch = true`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchingSettings {
    /// Lines in one provider batch, at most (OpenAI allows 50,000).
    pub max_lines: NonZeroUsize,
    /// How long a batch's first line waits for more before the batch is sent.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// How often a batch running at its provider is looked at (by any worker).
    #[serde(with = "humantime_serde")]
    pub poll_every: Duration,
    /// An attempt waits in a batch only while its job's deadline is at least this far off;
    /// nearer, and past it, it is called in real time.
    #[serde(with = "humantime_serde")]
    pub min_time_left: Duration,
}

impl Default for BatchingSettings {
    fn default() -> Self {
        Self {
            max_lines: count(10_000),
            max_wait: Duration::from_secs(30),
            poll_every: Duration::from_secs(30),
            min_time_left: Duration::from_secs(3600),
        }
    }
}

/// OpenAI's limit of lines in one batch input file.
pub const MAX_BATCH_LINES: usize = 50_000;

impl WorkerSettings {
    /// The most of a provider's body a worker reads (an answer plus logprobs and JSON).
    pub fn max_body_bytes(&self) -> usize {
        self.max_answer_bytes
            .get()
            .saturating_mul(4)
            .saturating_add(64 * 1024)
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: count(64),
            fetch_batch: count(128),
            commit_batch: count(256),
            commit_interval: Duration::from_millis(20),
            ack_wait: Duration::from_secs(60),
            max_deliver: 5,
            retry_delay: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(20),
            fleet_quota: true,
            quota_headroom: const { Fraction::literal(0.98) },
            breaker: BreakerSettings::default(),
            max_answer_bytes: count(1024 * 1024),
            batching: BatchingSettings::default(),
        }
    }
}

impl WorkerSettings {
    /// Checks what the types cannot.
    ///
    /// # Errors
    /// A message naming the key and the value.
    pub fn validate(&self) -> Result<(), String> {
        at_least("worker.max_deliver", self.max_deliver, 2)?;
        if self.quota_headroom == Fraction::ZERO {
            return Err(
                "worker.quota_headroom = 0: must be above 0 (it scales every quota)".into(),
            );
        }
        if self.batching.max_lines.get() > MAX_BATCH_LINES {
            return Err(format!(
                "worker.batching.max_lines = {}: at most {MAX_BATCH_LINES} (a provider's limit)",
                self.batching.max_lines
            ));
        }
        at_least_duration("worker.ack_wait", self.ack_wait, Duration::from_secs(1))
    }
}
