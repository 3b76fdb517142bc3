//! What makes a job acceptable. Every check returns a reason a user can act on; the
//! dispatcher stores it on the job and `switchyard status` shows it.

use std::collections::HashSet;

use switchyard_proto::{Item, JobSpec, Routing, Task};

/// Size limits, from the deployment's configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest item text, in bytes.
    pub max_item_bytes: usize,
    /// Most items in one job.
    pub max_items: u64,
    /// Most labels of a classification task.
    pub max_labels: usize,
    /// Longest id (job, item, idempotency key), team, project or label, in bytes.
    pub max_name_bytes: usize,
    /// Largest item of a `chat` job, in bytes: a whole conversation with its parameters
    /// (an OpenAI batch line's body).
    pub max_chat_item_bytes: usize,
}

impl Limits {
    /// The limits that apply to the items of a job of `task`: a chat item is a whole
    /// conversation and has a limit of its own.
    #[must_use]
    pub fn for_task(&self, task: &Task) -> Self {
        let mut limits = self.clone();
        if let Task::Chat {} = task {
            limits.max_item_bytes = self.max_chat_item_bytes;
        }
        limits
    }
}

/// The default largest chat item: 1 MiB.
pub const DEFAULT_MAX_CHAT_ITEM_BYTES: usize = 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_item_bytes: 64 * 1024,
            max_items: 10_000_000,
            max_labels: 1000,
            max_name_bytes: 256,
            max_chat_item_bytes: DEFAULT_MAX_CHAT_ITEM_BYTES,
        }
    }
}

/// The longest `sample_key` a policy may name.
pub const MAX_SAMPLE_KEY_BYTES: usize = 256;

/// The shortest deadline a job may have: a minute (less is real time by another name).
pub const MIN_DEADLINE_SECS: u64 = 60;
/// The longest deadline a job may have: 30 days (longer than any provider keeps a batch).
pub const MAX_DEADLINE_SECS: u64 = 30 * 24 * 3600;

/// Why a job was rejected (the text is shown to the submitter as is).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Rejection(pub String);

fn reject<T>(msg: impl Into<String>) -> Result<T, Rejection> {
    Err(Rejection(msg.into()))
}

/// The sensitivities this build knows.
pub const KNOWN_SENSITIVITIES: &[&str] = &["local_only", "normal"];

fn check_name(what: &str, value: &str, limits: &Limits) -> Result<(), Rejection> {
    if value.is_empty() {
        return reject(format!("{what} is empty"));
    }
    if value.len() > limits.max_name_bytes {
        return reject(format!(
            "{what} is {} bytes long (limit {})",
            value.len(),
            limits.max_name_bytes
        ));
    }
    if value.chars().any(char::is_control) {
        return reject(format!("{what} {value:?} contains control characters"));
    }
    Ok(())
}

/// Checks everything about a job that does not need its items.
///
/// # Errors
/// The first problem found, as a [`Rejection`].
pub fn check_spec(spec: &JobSpec, limits: &Limits) -> Result<(), Rejection> {
    check_name("job_id", &spec.job_id, limits)?;
    if let Some(key) = &spec.idempotency_key {
        check_name("idempotency_key", key, limits)?;
    }
    if let Some(team) = &spec.team {
        check_name("team", team, limits)?;
    }
    if let Some(project) = &spec.project {
        check_name("project", project, limits)?;
    }
    if let Some(secs) = spec.deadline
        && !(MIN_DEADLINE_SECS..=MAX_DEADLINE_SECS).contains(&secs)
    {
        return reject(format!(
            "deadline is {secs} s; a deadline is between {MIN_DEADLINE_SECS} s and \
             {MAX_DEADLINE_SECS} s (30 days)"
        ));
    }
    let instructions = match &spec.task {
        Task::Classify { instructions, .. }
        | Task::Summarize { instructions, .. }
        | Task::Generate { instructions } => instructions.as_deref(),
        Task::Chat {} => None,
    };
    if let Some(text) = instructions {
        // Sent with every item: bounded like an item's text.
        if text.len() > limits.max_item_bytes {
            return reject(format!(
                "task instructions are {} bytes (limit {})",
                text.len(),
                limits.max_item_bytes
            ));
        }
        if text.contains('\0') {
            return reject("task instructions contain a NUL byte");
        }
    }
    match &spec.task {
        Task::Classify { labels, .. } => {
            if labels.is_empty() {
                return reject("classify task has no labels");
            }
            if labels.len() > limits.max_labels {
                return reject(format!(
                    "classify task has {} labels (limit {})",
                    labels.len(),
                    limits.max_labels
                ));
            }
            let mut seen = HashSet::new();
            for label in labels {
                check_name("label", label, limits)?;
                if label.contains(',') {
                    return reject(format!("label {label:?} contains a comma"));
                }
                if !seen.insert(label.to_ascii_lowercase()) {
                    return reject(format!("label {label:?} appears twice"));
                }
            }
        }
        Task::Summarize {
            max_words: Some(0), ..
        } => return reject("summarize max_words is 0"),
        Task::Summarize { .. } | Task::Generate { .. } | Task::Chat {} => {}
    }
    match (&spec.items, &spec.input) {
        (None, None) => return reject("job has no items: set `items` or `input`"),
        (Some(_), Some(_)) => return reject("job sets both `items` and `input`: use one"),
        (Some(items), None) if items.is_empty() => return reject("job has no items"),
        (Some(items), None) if items.len() as u64 > limits.max_items => {
            return reject(format!(
                "job has {} items (limit {})",
                items.len(),
                limits.max_items
            ));
        }
        _ => {}
    }
    match spec.policy.routing {
        Routing::Threshold { value } if !value.is_finite() => {
            return reject("policy threshold is not a finite number");
        }
        Routing::StrongShare { value } if !(0.0..=1.0).contains(&value) => {
            return reject(format!("policy strong_share {value} is outside [0, 1]"));
        }
        Routing::BudgetUsd { value } if value.is_sign_negative() && !value.is_zero() => {
            return reject(format!("policy budget_usd {value} is negative"));
        }
        Routing::Quality { value } if !(value > 0.0 && value <= 1.0) => {
            return reject(format!("policy quality {value} is outside (0, 1]"));
        }
        _ => {}
    }
    if let Some(f) = spec.policy.shadow
        && !(0.0..=1.0).contains(&f)
    {
        return reject(format!("policy shadow {f} is outside [0, 1]"));
    }
    // A share of the job's all-strong cost; NaN would be stored as null and read back as
    // no plan at all (the job then ran as a plain one).
    if let Some(a) = spec.policy.audit
        && !(0.0..=1.0).contains(&a)
    {
        return reject(format!("policy audit {a} is outside [0, 1]"));
    }
    if let Some(key) = &spec.policy.sample_key
        && (key.is_empty() || key.len() > MAX_SAMPLE_KEY_BYTES)
    {
        return reject(format!(
            "policy sample_key is {} bytes; it must be 1 to {MAX_SAMPLE_KEY_BYTES}",
            key.len()
        ));
    }
    if spec
        .policy
        .sample_key
        .as_deref()
        .is_some_and(|k| k.contains('\0'))
    {
        return reject("policy sample_key contains a NUL byte");
    }
    // Stored as `jsonb`, which cannot hold `\u0000`: refused here, not by Postgres halfway
    // through the job.
    if let Some((key, _)) = spec
        .labels
        .iter()
        .find(|(k, v)| k.contains('\0') || v.contains('\0'))
    {
        return reject(format!("label {key:?} contains a NUL byte"));
    }
    if let Some(t) = spec.policy.cascade.confidence_threshold
        && !(0.0..=1.0).contains(&t)
    {
        return reject(format!(
            "cascade confidence_threshold {t} is outside [0, 1]"
        ));
    }
    Ok(())
}

/// Checks one item (duplicates are found by the database, which sees all of them).
///
/// # Errors
/// A [`Rejection`] naming the item (by id, or by line for an id that is itself the problem).
pub fn check_item(item: &Item, line: u64, limits: &Limits) -> Result<(), Rejection> {
    check_name(&format!("item {line}: item_id"), &item.item_id, limits)?;
    if item.text.is_empty() {
        return reject(format!("item {:?} has empty text", item.item_id));
    }
    if item.text.len() > limits.max_item_bytes {
        return reject(format!(
            "item {:?} is {} bytes (limit {})",
            item.item_id,
            item.text.len(),
            limits.max_item_bytes
        ));
    }
    if item.text.contains('\0') {
        return reject(format!("item {:?} contains a NUL byte", item.item_id));
    }
    // Stored as `jsonb`, which cannot hold `\u0000` in a key or a string.
    if let Some((key, _)) = item
        .metadata
        .iter()
        .find(|(k, v)| k.contains('\0') || json_holds_nul(v))
    {
        return reject(format!(
            "item {:?} has metadata {key:?} that contains a NUL byte",
            item.item_id
        ));
    }
    if let Some(s) = &item.sensitivity
        && !KNOWN_SENSITIVITIES.contains(&s.as_str())
    {
        return reject(format!(
            "item {:?} has unknown sensitivity {s:?} (known: {})",
            item.item_id,
            KNOWN_SENSITIVITIES.join(", ")
        ));
    }
    Ok(())
}

/// Whether a key or a string anywhere in `v` holds a NUL byte.
fn json_holds_nul(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(json_holds_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || json_holds_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// True when the item must stay on local tiers.
pub fn is_local_only(item: &Item) -> bool {
    item.sensitivity.as_deref() == Some("local_only")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        let mut s = JobSpec::new(
            "j",
            Task::Classify {
                labels: vec!["a".into(), "b".into()],
                instructions: None,
            },
        );
        s.items = Some(vec![Item::new("1", "x")]);
        s
    }

    #[test]
    fn a_good_spec_passes() {
        assert_eq!(check_spec(&spec(), &Limits::default()), Ok(()));
    }

    #[test]
    fn each_spec_problem_has_its_reason() {
        let l = Limits::default();
        let mut s = spec();
        s.items = Some(vec![]);
        assert!(check_spec(&s, &l).unwrap_err().0.contains("no items"));
        let mut s = spec();
        s.task = Task::Classify {
            labels: vec!["a".into(), "A".into()],
            instructions: None,
        };
        assert!(check_spec(&s, &l).unwrap_err().0.contains("twice"));
        let mut s = spec();
        s.policy.routing = Routing::StrongShare { value: 1.5 };
        assert!(check_spec(&s, &l).unwrap_err().0.contains("strong_share"));
        let mut s = spec();
        s.job_id = String::new();
        assert!(check_spec(&s, &l).unwrap_err().0.contains("job_id"));
        for bad in [0, MIN_DEADLINE_SECS - 1, MAX_DEADLINE_SECS + 1] {
            let s = spec().with_deadline(bad);
            let e = check_spec(&s, &l).unwrap_err().0;
            assert!(
                e.contains("deadline is") && e.contains(&bad.to_string()),
                "{e}"
            );
        }
        assert_eq!(check_spec(&spec().with_deadline(86_400), &l), Ok(()));
        for (audit, ok) in [(0.02, true), (0.0, true), (1.5, false), (f64::NAN, false)] {
            let mut s = spec();
            s.policy.audit = Some(audit);
            let got = check_spec(&s, &l);
            assert_eq!(got.is_ok(), ok, "{audit}: {got:?}");
            if !ok {
                assert!(got.unwrap_err().0.contains("policy audit"));
            }
        }
        let mut s = spec();
        s.labels.insert("cost_center".into(), "o\0ps".into());
        let e = check_spec(&s, &l).unwrap_err().0;
        assert!(
            e.contains("label \"cost_center\"") && e.contains("NUL"),
            "{e}"
        );
        for (key, ok) in [
            ("", false),
            ("k", true),
            (&"k".repeat(257)[..], false),
            ("k\0", false),
        ] {
            let mut s = spec();
            s.policy.sample_key = Some(key.to_owned());
            let got = check_spec(&s, &l);
            assert_eq!(got.is_ok(), ok, "{key:?}: {got:?}");
            if !ok {
                assert!(got.unwrap_err().0.contains("sample_key"));
            }
        }
    }

    #[test]
    fn item_problems_name_the_item() {
        let l = Limits {
            max_item_bytes: 4,
            ..Limits::default()
        };
        let err = check_item(&Item::new("big", "12345"), 1, &l).unwrap_err();
        assert!(
            err.0.contains("\"big\"") && err.0.contains("limit 4"),
            "{err}"
        );
        let mut it = Item::new("s", "x");
        it.sensitivity = Some("secret".into());
        assert!(
            check_item(&it, 1, &l)
                .unwrap_err()
                .0
                .contains("unknown sensitivity")
        );
        // Metadata is stored as `jsonb`, which holds no NUL: in a key, or a string however
        // deep.
        for meta in [
            serde_json::json!({"a\0": 1}),
            serde_json::json!([1, {"b": ["x\0"]}]),
        ] {
            let mut it = Item::new("m", "x");
            it.metadata.insert("k".into(), meta);
            let e = check_item(&it, 1, &l).unwrap_err().0;
            assert!(e.contains("\"m\"") && e.contains("metadata"), "{e}");
        }
        let mut it = Item::new("m", "x");
        it.metadata
            .insert("k".into(), serde_json::json!({"fine": [1, "y"]}));
        assert_eq!(check_item(&it, 1, &l), Ok(()));
    }
}
