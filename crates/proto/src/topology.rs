//! Names of streams, subjects, consumers, buckets and headers, all derived from one
//! deployment prefix so that several deployments (or tests) share a NATS server safely.

/// Header carrying the job id on submissions, so that even a payload that does not decode
/// can be rejected on the right job.
pub const HEADER_JOB_ID: &str = "Sy-Job-Id";
/// JetStream's de-duplication header.
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";
/// Header on dead letters: why the message died.
pub const HEADER_DLQ_REASON: &str = "Sy-Dead-Reason";

/// The names one deployment uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
}

/// A prefix that is not a lowercase identifier.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid deployment prefix `{0}`: use 1-32 characters of a-z, 0-9 and _, starting with a letter"
)]
pub struct InvalidPrefix(pub String);

impl Default for Topology {
    /// The default deployment prefix, `sy`.
    fn default() -> Self {
        Self {
            prefix: "sy".to_owned(),
        }
    }
}

impl Topology {
    /// Names for prefix `prefix` (e.g. `sy`).
    ///
    /// # Errors
    /// [`InvalidPrefix`] unless the prefix is 1-32 of `[a-z0-9_]` starting with a letter
    /// (it becomes part of subjects and stream names, which forbid `.`, `*`, `>` and spaces).
    pub fn new(prefix: &str) -> Result<Self, InvalidPrefix> {
        let ok = !prefix.is_empty()
            && prefix.len() <= 32
            && prefix.starts_with(|c: char| c.is_ascii_lowercase())
            && prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if ok {
            Ok(Self {
                prefix: prefix.to_owned(),
            })
        } else {
            Err(InvalidPrefix(prefix.to_owned()))
        }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn upper(&self) -> String {
        self.prefix.to_ascii_uppercase()
    }

    /// Stream of submitted jobs (work-queue retention).
    pub fn jobs_stream(&self) -> String {
        format!("{}_JOBS", self.upper())
    }
    /// Subject jobs are submitted on.
    pub fn jobs_submit_subject(&self) -> String {
        format!("{}.jobs.submit", self.prefix)
    }
    /// Durable consumer shared by all dispatchers.
    pub fn dispatcher_consumer(&self) -> String {
        "dispatcher".to_owned()
    }

    /// Stream of routed items, all tiers (work-queue retention, one consumer per tier).
    pub fn work_stream(&self) -> String {
        format!("{}_WORK", self.upper())
    }
    /// Subject of one tier's work.
    pub fn work_subject(&self, tier: &str) -> String {
        format!("{}.work.{tier}", self.prefix)
    }
    /// All tiers' work subjects.
    pub fn work_subjects_wildcard(&self) -> String {
        format!("{}.work.>", self.prefix)
    }
    /// Durable consumer shared by all workers of a tier.
    pub fn worker_consumer(&self, tier: &str) -> String {
        format!("worker_{tier}")
    }

    /// Stream of dead letters (limits retention: kept for inspection).
    pub fn dlq_stream(&self) -> String {
        format!("{}_DLQ", self.upper())
    }
    /// Dead-letter subject for jobs that were rejected.
    pub fn dlq_jobs_subject(&self) -> String {
        format!("{}.dlq.jobs", self.prefix)
    }
    /// Dead-letter subject for items of a tier that failed for good.
    pub fn dlq_work_subject(&self, tier: &str) -> String {
        format!("{}.dlq.work.{tier}", self.prefix)
    }
    /// All dead-letter subjects.
    pub fn dlq_wildcard(&self) -> String {
        format!("{}.dlq.>", self.prefix)
    }

    /// Stream that captures JetStream's max-deliveries advisories for the work stream, so a
    /// message whose worker died on its last delivery is still recorded as dead.
    pub fn advisories_stream(&self) -> String {
        format!("{}_ADVISORIES", self.upper())
    }
    /// The advisory subject for the work stream's consumers.
    pub fn max_deliveries_advisory_subject(&self) -> String {
        format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.*",
            self.work_stream()
        )
    }

    /// Core subject of a job's progress events.
    pub fn events_subject(&self, job_id: &str) -> String {
        format!("{}.events.{}", self.prefix, subject_token(job_id))
    }
    /// Core subject announcing a job reached a final state.
    pub fn job_done_subject(&self, job_id: &str) -> String {
        format!("{}.jobs.done.{}", self.prefix, subject_token(job_id))
    }
    /// Core subject on which cancellations are broadcast to workers.
    pub fn cancel_subject(&self) -> String {
        format!("{}.control.cancel", self.prefix)
    }
    /// Core subject of a team's budget warnings (JSON; a soft limit reached, once per month).
    pub fn budget_warning_subject(&self, team: &str) -> String {
        format!("{}.budget.warnings.{}", self.prefix, subject_token(team))
    }
    /// Every team's budget warnings.
    pub fn budget_warnings_wildcard(&self) -> String {
        format!("{}.budget.warnings.*", self.prefix)
    }

    /// Core subject on which a 429's pause of a model is shared by every worker.
    pub fn pause_subject(&self) -> String {
        format!("{}.control.pause", self.prefix)
    }

    /// Object store bucket for large job inputs.
    pub fn inputs_bucket(&self) -> String {
        format!("{}_INPUTS", self.upper())
    }

    /// Object store bucket for the Batch API's files (uploads, batch output and errors).
    pub fn files_bucket(&self) -> String {
        format!("{}_FILES", self.upper())
    }
}

/// Makes an id safe as one subject token (ids may contain `.`, `*`, `>` or spaces).
pub fn subject_token(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_validated() {
        assert!(Topology::new("sy").is_ok());
        assert!(Topology::new("t_01abc").is_ok());
        for bad in ["", "Sy", "a.b", "a b", "1a", "a>", &"a".repeat(33)] {
            assert!(Topology::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_follow_the_prefix() {
        let t = Topology::new("demo").unwrap();
        assert_eq!(t.jobs_stream(), "DEMO_JOBS");
        assert_eq!(t.work_subject("weak"), "demo.work.weak");
        assert_eq!(t.events_subject("a.b*c"), "demo.events.a_b_c");
    }
}
