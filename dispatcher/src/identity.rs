//! The team a job is billed to, from the submitter's authenticated identity.
//!
//! NATS permissions decide who may publish on `<prefix>.jobs.submit.<team>` (a user of team X
//! only on X's subject), so the subject carries the identity; the job's own `team` field is
//! something anyone can write. A job submitted on a team subject is that team's: a `team`
//! field naming another team is a rejection, not a silent correction, so a misconfigured
//! client notices. With `[security] team_from_subject`, the bare `<prefix>.jobs.submit` (which
//! carries no identity) is refused.

use switchyard_proto::{JobSpec, teams};
use switchyard_runtime::Settings;

/// Sets `spec.team` from the submission `subject`.
///
/// # Errors
/// The rejection reason: a bare subject where team subjects are required, or a `team` field
/// that contradicts the subject.
pub fn settle_team(settings: &Settings, subject: &str, spec: &mut JobSpec) -> Result<(), String> {
    let t = settings.topology();
    match teams::team_of_submit_subject(&t, subject) {
        None if settings.security.team_from_subject => Err(format!(
            "this deployment takes a job's team from the subject it is submitted on: submit on \
             `{}`, not `{subject}`",
            teams::submit_subject(&t, "<team>")
        )),
        None => Ok(()),
        Some(team) => match &spec.team {
            Some(claimed) if claimed != team => Err(format!(
                "the job names team `{claimed}` but was submitted as team `{team}`"
            )),
            _ => {
                spec.team = Some(team.to_owned());
                Ok(())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_proto::Task;

    fn spec(team: Option<&str>) -> JobSpec {
        let mut s = JobSpec::new("j", Task::Generate { instructions: None });
        s.team = team.map(str::to_owned);
        s
    }

    #[test]
    fn the_subject_decides_the_team() {
        let mut settings = Settings::demo();
        let mut s = spec(None);
        settle_team(&settings, "sy.jobs.submit.red", &mut s).unwrap();
        assert_eq!(s.team.as_deref(), Some("red"));
        let mut s = spec(Some("blue"));
        let err = settle_team(&settings, "sy.jobs.submit.red", &mut s).unwrap_err();
        assert!(err.contains("`blue`") && err.contains("`red`"), "{err}");
        // The bare subject: trusted only when team subjects are not required.
        let mut s = spec(Some("blue"));
        settle_team(&settings, "sy.jobs.submit", &mut s).unwrap();
        assert_eq!(s.team.as_deref(), Some("blue"));
        settings.security.team_from_subject = true;
        assert!(settle_team(&settings, "sy.jobs.submit", &mut spec(None)).is_err());
    }
}
