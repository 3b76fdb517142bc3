//! Reading a submission: decode, then validate what can be checked without the items.

use switchyard_core::validate::{self, Limits};
use switchyard_proto::{DecodeError, JobSpec, codec};

/// What a submission turned out to be.
#[derive(Debug)]
pub enum Intake {
    /// A well-formed job (its items are checked while they stream in).
    Job(Box<JobSpec>),
    /// A job that will not run, with the reason the submitter sees.
    Reject {
        job_id: String,
        team: String,
        project: String,
        reason: String,
    },
}

/// Decodes and checks a job message. `header_job_id` (the `Sy-Job-Id` header) and
/// `fallback_id` name the job when the payload is too broken to say.
pub fn read_submission(
    payload: &[u8],
    header_job_id: Option<&str>,
    fallback_id: &str,
    limits: &Limits,
) -> Intake {
    let envelope = codec::decode_envelope(payload).unwrap_or_default();
    let job_id = envelope
        .job_id
        .filter(|id| {
            !id.is_empty() && id.len() <= limits.max_name_bytes && !id.chars().any(char::is_control)
        })
        .or_else(|| header_job_id.map(str::to_owned))
        .unwrap_or_else(|| fallback_id.to_owned());
    let reject = |reason: String| Intake::Reject {
        job_id: job_id.clone(),
        team: "default".to_owned(),
        project: "default".to_owned(),
        reason,
    };
    let spec: JobSpec = match codec::decode(payload) {
        Ok(spec) => spec,
        Err(DecodeError::Malformed(m)) => {
            return reject(format!("job message is not a valid job spec: {m}"));
        }
        Err(e) => return reject(format!("job message rejected: {e}")),
    };
    if let Err(r) = validate::check_spec(&spec, limits) {
        return Intake::Reject {
            // A job id that is itself the problem (empty, huge, control characters) is not
            // stored: the rejection goes on the header's id (or the fallback).
            job_id: if spec.job_id.is_empty()
                || spec.job_id.len() > limits.max_name_bytes
                || spec.job_id.chars().any(char::is_control)
            {
                job_id
            } else {
                spec.job_id.clone()
            },
            team: spec.team.clone().unwrap_or_else(|| "default".to_owned()),
            project: spec.project.clone().unwrap_or_else(|| "default".to_owned()),
            reason: r.0,
        };
    }
    Intake::Job(Box::new(spec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_proto::{Item, Task};

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn not_msgpack_is_rejected_under_the_header_id() {
        match read_submission(
            b"\xc1\xc1 definitely not msgpack",
            Some("job-h"),
            "fb",
            &limits(),
        ) {
            Intake::Reject { job_id, reason, .. } => {
                assert_eq!(job_id, "job-h");
                assert!(reason.contains("not a valid job spec"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_task_is_named() {
        #[derive(serde::Serialize)]
        struct T {
            kind: &'static str,
        }
        #[derive(serde::Serialize)]
        struct Spec {
            v: u16,
            job_id: &'static str,
            task: T,
            items: Vec<Item>,
        }
        let bytes = codec::encode(&Spec {
            v: 1,
            job_id: "j",
            task: T { kind: "translate" },
            items: vec![Item::new("1", "x")],
        })
        .unwrap();
        match read_submission(&bytes, None, "fb", &limits()) {
            Intake::Reject { job_id, reason, .. } => {
                assert_eq!(job_id, "j");
                assert!(reason.contains("translate"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn good_job_passes() {
        let mut spec = JobSpec::new(
            "ok",
            Task::Summarize {
                max_words: None,
                instructions: None,
            },
        );
        spec.items = Some(vec![Item::new("1", "text")]);
        let bytes = codec::encode(&spec).unwrap();
        assert!(matches!(
            read_submission(&bytes, None, "fb", &limits()),
            Intake::Job(_)
        ));
    }
}
