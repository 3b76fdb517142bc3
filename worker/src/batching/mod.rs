//! Provider batches: attempts of jobs with a deadline, on models with `batch = true`, go
//! through the provider's Batch API at its batch price instead of being called at once.
//!
//! 1. [`collect`]: the lane hands each such attempt over once its intent is claimed and its
//!    budget hold taken ([`Line`]); per model, lines are grouped (up to
//!    `[worker.batching] max_lines`, waiting at most `max_wait`). A group is **recorded** in
//!    Postgres first (the batch, each line with its work message; the lines' intents and
//!    holds move to the batch, see `switchyard_store::provider_batches`), then the work
//!    messages are acked (the attempt is durably "in provider batch X"), then the input file
//!    is uploaded and the provider batch created with `metadata.switchyard_batch` naming
//!    ours, and its ids recorded.
//! 2. [`poll`]: any worker serving the model takes a batch whose lease ran out: one recorded
//!    but not known to be created is looked for at the provider by its metadata (its
//!    creator died in between) and sent if it is not there; one submitted is polled. When
//!    the provider has ended it, every open line is booked from the output and error files
//!    (answers judged and escalated as in real time, booked at the batch price), lines
//!    without an answer go back to their tier to be called again (in another batch while
//!    the deadline allows, else in real time), the provider's files are deleted and the
//!    batch ended. Past the deadline a running batch is cancelled at the provider.
//!
//! A crash at any step loses nothing and answers nothing twice: an attempt is in at most
//! one open line, a batch is created under its own id's metadata and found again by it,
//! and booking is idempotent per call id.

pub mod collect;
pub mod poll;

use switchyard_proto::WorkItem;
use switchyard_store::outcomes::AttemptKey;

use crate::context::{ModelRuntime, Worker};
use crate::llm::CompletionRequest;
use crate::settle::Delivery;

pub use collect::start;
pub use poll::run_poller;

/// An attempt bound for a provider batch: its claimed call and what booking it needs.
#[derive(Debug)]
pub struct Line {
    pub key: AttemptKey,
    /// The ledger call id (also the line's `custom_id` at the provider).
    pub call_id: String,
    pub tier: String,
    pub model: String,
    pub request: CompletionRequest,
    /// The budget hold its booking settles (moved to the batch when it is recorded).
    pub reservation_id: Option<i64>,
    /// When its call is priced (its hold's time).
    pub priced_at: chrono::DateTime<chrono::Utc>,
    /// The job's deadline, Unix seconds.
    pub deadline: u64,
    /// The work message as delivered: whoever books the line decodes it.
    pub work: Vec<u8>,
}

impl Line {
    /// Its estimated input tokens (as the TPM estimate counts a prompt): what it puts in the
    /// provider's batch queue (`batch_queue_tokens`).
    pub fn input_tokens(&self) -> u64 {
        let all = crate::limiter::estimate_tokens(&self.request);
        u64::from(all.saturating_sub(self.request.completion_bound()))
    }
}

/// A line with the message that brought it, settled once the line is recorded.
pub struct Queued {
    pub line: Line,
    pub delivery: Delivery,
}

/// How long a worker holds a batch it is moving on (recording and sending it, or looking at
/// it): four polls, at least a second. A worker that dies meanwhile delays the batch by this
/// much at most; another worker takes it after.
pub fn lease(settings: &switchyard_runtime::Settings) -> std::time::Duration {
    (settings.worker.batching.poll_every * 4).max(std::time::Duration::from_secs(1))
}

/// Whether `item` goes into a provider batch of `model`: the model has a Batch API, the
/// item's job has a deadline far enough off (`[worker.batching] min_time_left`), and the
/// attempt is not a shadow call (a sample of the routing, not worth a day's wait).
pub fn eligible(w: &Worker, item: &WorkItem, model: &ModelRuntime) -> bool {
    let Some(deadline) = item.deadline else {
        return false;
    };
    if model.batch.is_none() || item.is_shadow() {
        return false;
    }
    let left = w.settings.worker.batching.min_time_left.as_secs();
    let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
    deadline >= now.saturating_add(left)
}
