//! Team-scoped subjects: where a team submits jobs and asks for its results, so that NATS
//! permissions per user (not a field anyone can set) decide which team a client acts as.
//!
//! | what | subject |
//! |---|---|
//! | submit a job as `<team>` (JetStream) | `<prefix>.jobs.submit.<team>` |
//! | a job's status, as `<team>` (request/reply, JSON) | `<prefix>.api.<team>.status` |
//! | a job's results, as `<team>` (request/reply, JSON) | `<prefix>.api.<team>.results` |
//!
//! A team user's NATS permissions allow publishing on its own team's two subjects only, and
//! subscribing only to its own reply subjects ([`client_permissions`]).

use crate::Topology;

/// Request verbs of the team API.
pub const API_STATUS: &str = "status";
pub const API_RESULTS: &str = "results";

/// The subject `team` submits jobs on.
pub fn submit_subject(t: &Topology, team: &str) -> String {
    format!("{}.{team}", t.jobs_submit_subject())
}

/// Every team's submit subject.
pub fn submit_wildcard(t: &Topology) -> String {
    format!("{}.*", t.jobs_submit_subject())
}

/// The team a submission subject names (`None` for the bare `<prefix>.jobs.submit`).
pub fn team_of_submit_subject<'a>(t: &Topology, subject: &'a str) -> Option<&'a str> {
    let base = t.jobs_submit_subject();
    subject
        .strip_prefix(base.as_str())?
        .strip_prefix('.')
        .filter(|team| !team.is_empty() && !team.contains('.'))
}

/// The subject of a team API request.
pub fn api_subject(t: &Topology, team: &str, verb: &str) -> String {
    format!("{}.api.{team}.{verb}", t.prefix())
}

/// Every team API request (what the responder subscribes to).
pub fn api_wildcard(t: &Topology) -> String {
    format!("{}.api.*.*", t.prefix())
}

/// `(team, verb)` of a team API subject.
pub fn parse_api_subject<'a>(t: &Topology, subject: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = subject.strip_prefix(t.prefix())?.strip_prefix(".api.")?;
    let (team, verb) = rest.split_once('.')?;
    (!team.is_empty() && !verb.contains('.')).then_some((team, verb))
}

/// What a team user may do on NATS: publish on its submit and API subjects, subscribe to its
/// own replies (`<inbox_prefix>.>`; the client sets the same prefix).
pub fn client_permissions(
    t: &Topology,
    team: &str,
    inbox_prefix: &str,
) -> (Vec<String>, Vec<String>) {
    (
        vec![
            submit_subject(t, team),
            format!("{}.api.{team}.>", t.prefix()),
        ],
        vec![format!("{inbox_prefix}.>")],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip() {
        let t = Topology::new("sy").unwrap();
        assert_eq!(submit_subject(&t, "red"), "sy.jobs.submit.red");
        assert_eq!(
            team_of_submit_subject(&t, "sy.jobs.submit.red"),
            Some("red")
        );
        assert_eq!(team_of_submit_subject(&t, "sy.jobs.submit"), None);
        assert_eq!(team_of_submit_subject(&t, "sy.jobs.submitx.red"), None);
        assert_eq!(
            parse_api_subject(&t, &api_subject(&t, "red", API_RESULTS)),
            Some(("red", "results"))
        );
    }
}
