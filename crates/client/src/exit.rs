//! Exit codes of `switchyard`, for pipelines (cron, Airflow) that branch on them.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success; for `submit --wait` / `wait`: every item has a final answer |
//! | 1 | an error: bad input file, bad configuration, unreachable NATS or Postgres |
//! | 2 | usage error (unknown flag, missing argument) |
//! | 3 | the job finished but some items failed (`status` shows why) |
//! | 4 | the job was rejected (the reason is printed) |
//! | 5 | the job was cancelled |
//! | 6 | `--timeout` passed before the job finished (it keeps running) |
//! | 7 | no such job |

/// Success.
pub const OK: u8 = 0;
/// Any error.
pub const ERROR: u8 = 1;
/// Some items failed.
pub const PARTIAL: u8 = 3;
/// The job was rejected.
pub const REJECTED: u8 = 4;
/// The job was cancelled.
pub const CANCELLED: u8 = 5;
/// Waiting timed out.
pub const TIMEOUT: u8 = 6;
/// No such job.
pub const NOT_FOUND: u8 = 7;

/// The exit code for a job in `status`.
pub fn for_job_status(status: &str) -> u8 {
    match status {
        "completed" => OK,
        "partial" => PARTIAL,
        "rejected" => REJECTED,
        "cancelled" => CANCELLED,
        _ => TIMEOUT,
    }
}
