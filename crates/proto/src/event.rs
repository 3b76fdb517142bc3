//! Progress events on core NATS (best effort: the database is the source of truth).

use serde::{Deserialize, Serialize};

/// Published on `<prefix>.events.<job_id>` after a worker commits results of the job, and on
/// `<prefix>.jobs.done.<job_id>` when the job reaches a final state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub v: u16,
    pub job_id: String,
    /// `progress`, `completed`, `partial`, `rejected`, `cancelled`.
    pub kind: String,
    /// Items that reached a final result in this step.
    #[serde(default)]
    pub finished: u64,
}
