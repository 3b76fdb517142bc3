//! Routing rules: deterministic overrides of the learned router, from the configuration.
//!
//! Why rules beside a learned router: some routing is policy, not prediction ("legal's
//! contracts always go strong", "tickets from the `fr` queue get a bump", "anything
//! mentioning a card number stays off the big model"). A rule matches on what the dispatcher
//! knows about an item (the job's task kind, team and project; the item's metadata, length,
//! keywords, a regular expression) and either **forces a tier** or **shifts the learned
//! score**. A shifted score still competes in the job's policy (a strong share stays exact;
//! a budget still holds); a forced item is outside the policy, like a sensitivity pin. The
//! learned score itself never sees team, project or metadata: only rules do.
//!
//! The order, documented for users in `deploy/switchyard.example.toml`:
//! 1. **sensitivity pins**: a `local_only` item goes to the local tier, and no rule applies;
//! 2. **rules, in file order; the first rule whose every condition holds wins**, and no later
//!    rule is looked at;
//! 3. **the job's policy** over the (shifted) scores of the items no pin or rule forced.
//!
//! ```toml
//! [[routing.rules]]
//! name = "legal-contracts-strong"
//! team = "legal"
//! keywords = ["indemnification", "governing law"]
//! tier = "strong"
//!
//! [[routing.rules]]
//! name = "enterprise-bump"
//! metadata = { segment = "enterprise" }
//! shift = 0.2
//! ```

use std::collections::BTreeMap;

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize};
use switchyard_proto::TaskKind;

/// The `[routing]` section of the configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSettings {
    /// Rules, tried in order; the first that matches applies.
    pub rules: Vec<Rule>,
}

/// One rule: conditions (all must hold; an absent condition always holds) and one effect.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Shown by `router explain` and stored with every item it routed.
    pub name: String,
    /// Task kinds (`classify`, `summarize`, `generate`): one or a list.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub task: Vec<TaskKind>,
    /// Teams: one or a list.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub team: Vec<String>,
    /// Projects: one or a list.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub project: Vec<String>,
    /// Item metadata: per key, the value (or one of the values) it must have. Numbers and
    /// booleans compare by their JSON text (`3`, `true`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, OneOrMany>,
    /// The item text has at least / at most this many characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_chars: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_chars: Option<usize>,
    /// The text contains one of these, case-insensitively, as whole words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keywords: Vec<String>,
    /// The text matches this regular expression (Rust `regex` syntax; `(?i)` for any case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Effect: send matching items to this tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Effect: add this to the learned score (the score is a predicted quality gain, about
    /// −1 to 1, so 0.1 is a nudge and 1 nearly forces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shift: Option<f64>,
}

/// The values a metadata key may have: one or a list of strings, numbers or booleans,
/// compared as text.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            Str(String),
            Int(i64),
            Float(f64),
            Bool(bool),
        }
        impl Scalar {
            fn text(self) -> String {
                match self {
                    Scalar::Str(s) => s,
                    Scalar::Int(i) => i.to_string(),
                    Scalar::Float(f) => f.to_string(),
                    Scalar::Bool(b) => b.to_string(),
                }
            }
        }
        Ok(OneOrMany(
            one_or_many::<D, Scalar>(d)?
                .into_iter()
                .map(Scalar::text)
                .collect(),
        ))
    }
}

impl OneOrMany {
    fn contains(&self, v: &str) -> bool {
        self.0.iter().any(|s| s == v)
    }
}

fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw<T> {
        One(T),
        Many(Vec<T>),
    }
    Ok(match Raw::<T>::deserialize(d)? {
        Raw::One(v) => vec![v],
        Raw::Many(v) => v,
    })
}

/// What a matching rule does.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// The item goes to this tier, outside the job's policy.
    Force(String),
    /// The item's score is shifted by this much before the policy sees it.
    Shift(f32),
}

impl std::fmt::Display for Effect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Effect::Force(t) => write!(f, "force tier `{t}`"),
            Effect::Shift(s) => write!(f, "shift score by {s:+}"),
        }
    }
}

/// A configuration of rules that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("routing rule {index} ({name:?}): {message}")]
pub struct RuleError {
    pub index: usize,
    pub name: String,
    pub message: String,
}

/// What the dispatcher knows about an item when rules are applied.
#[derive(Debug, Clone, Copy)]
pub struct ItemFacts<'a> {
    pub task: TaskKind,
    pub team: &'a str,
    pub project: &'a str,
    pub metadata: &'a BTreeMap<String, serde_json::Value>,
    pub text: &'a str,
}

/// The rule that decided an item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Matched<'a> {
    /// Position in the configuration (0-based).
    pub index: usize,
    pub name: &'a str,
    pub effect: &'a Effect,
}

#[derive(Debug, Clone)]
struct Compiled {
    rule: Rule,
    keywords: Option<Regex>,
    regex: Option<Regex>,
    effect: Effect,
}

/// Rules checked and compiled, ready to match items (cheap to clone: share it).
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Compiled>,
}

impl RuleSet {
    /// Checks and compiles rules. `tiers` are the configured tier names.
    ///
    /// # Errors
    /// The first bad rule: no name or a repeated one, both or neither of `tier` and `shift`,
    /// an unknown tier, a shift that is not a finite number, a bad regular expression, an
    /// empty keyword, `min_chars` above `max_chars`.
    pub fn compile(rules: &[Rule], tiers: &[&str]) -> Result<Self, RuleError> {
        let mut out = Vec::with_capacity(rules.len());
        for (index, rule) in rules.iter().enumerate() {
            let bad = |message: String| RuleError {
                index,
                name: rule.name.clone(),
                message,
            };
            if rule.name.trim().is_empty() {
                return Err(bad("has no name".into()));
            }
            if rules[..index].iter().any(|r| r.name == rule.name) {
                return Err(bad("the name is used by an earlier rule".into()));
            }
            let effect = match (&rule.tier, rule.shift) {
                (Some(t), None) => {
                    if !tiers.contains(&t.as_str()) {
                        return Err(bad(format!(
                            "tier `{t}` is not configured (tiers: {})",
                            tiers.join(", ")
                        )));
                    }
                    Effect::Force(t.clone())
                }
                (None, Some(s)) if s.is_finite() => Effect::Shift(s as f32),
                (None, Some(s)) => return Err(bad(format!("shift {s} is not a finite number"))),
                (Some(_), Some(_)) => {
                    return Err(bad("sets both `tier` and `shift`: pick one effect".into()));
                }
                (None, None) => {
                    return Err(bad("has no effect: set `tier` or `shift`".into()));
                }
            };
            if let (Some(lo), Some(hi)) = (rule.min_chars, rule.max_chars)
                && lo > hi
            {
                return Err(bad(format!("min_chars {lo} is above max_chars {hi}")));
            }
            let keywords = if rule.keywords.is_empty() {
                None
            } else {
                if rule.keywords.iter().any(|k| k.trim().is_empty()) {
                    return Err(bad("has an empty keyword".into()));
                }
                Some(keyword_regex(&rule.keywords).map_err(|e| bad(e.to_string()))?)
            };
            let regex = match &rule.regex {
                None => None,
                Some(r) => {
                    Some(Regex::new(r).map_err(|e| bad(format!("bad regular expression: {e}")))?)
                }
            };
            out.push(Compiled {
                rule: rule.clone(),
                keywords,
                regex,
                effect,
            });
        }
        Ok(Self { rules: out })
    }

    /// No rules at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule whose every condition holds for the item.
    pub fn first_match(&self, item: &ItemFacts<'_>) -> Option<Matched<'_>> {
        self.rules
            .iter()
            .enumerate()
            .find(|(_, c)| c.matches(item))
            .map(|(index, c)| Matched {
                index,
                name: &c.rule.name,
                effect: &c.effect,
            })
    }

    /// The effect of the rule called `name`, if configured.
    pub fn effect_of(&self, name: &str) -> Option<&Effect> {
        self.rules
            .iter()
            .find(|c| c.rule.name == name)
            .map(|c| &c.effect)
    }
}

/// `(?i)` alternation of the keywords, each bounded by `\b` where it begins or ends with a
/// word character (so `refund` does not match `refunded`, and `c++` still matches).
fn keyword_regex(keywords: &[String]) -> Result<Regex, regex::Error> {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let alternatives: Vec<String> = keywords
        .iter()
        .map(|k| {
            let k = k.trim();
            format!(
                "{}{}{}",
                if word(k.chars().next()) { r"\b" } else { "" },
                regex::escape(k),
                if word(k.chars().last()) { r"\b" } else { "" },
            )
        })
        .collect();
    Regex::new(&format!("(?i)(?:{})", alternatives.join("|")))
}

fn metadata_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Compiled {
    fn matches(&self, item: &ItemFacts<'_>) -> bool {
        let r = &self.rule;
        if !r.task.is_empty() && !r.task.contains(&item.task) {
            return false;
        }
        if !r.team.is_empty() && !r.team.iter().any(|t| t == item.team) {
            return false;
        }
        if !r.project.is_empty() && !r.project.iter().any(|p| p == item.project) {
            return false;
        }
        for (key, wanted) in &r.metadata {
            match item.metadata.get(key) {
                Some(v) if wanted.contains(&metadata_text(v)) => {}
                _ => return false,
            }
        }
        if r.min_chars.is_some() || r.max_chars.is_some() {
            let n = item.text.chars().count();
            if r.min_chars.is_some_and(|lo| n < lo) || r.max_chars.is_some_and(|hi| n > hi) {
                return false;
            }
        }
        if let Some(k) = &self.keywords
            && !k.is_match(item.text)
        {
            return false;
        }
        if let Some(re) = &self.regex
            && !re.is_match(item.text)
        {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIERS: &[&str] = &["weak", "strong", "local"];

    fn parse(toml_text: &str) -> RoutingSettings {
        // The configuration is TOML; JSON-shaped values exercise the same serde paths.
        serde_json::from_str(toml_text).unwrap()
    }

    fn facts<'a>(
        text: &'a str,
        team: &'a str,
        meta: &'a BTreeMap<String, serde_json::Value>,
    ) -> ItemFacts<'a> {
        ItemFacts {
            task: TaskKind::Classify,
            team,
            project: "p",
            metadata: meta,
            text,
        }
    }

    #[test]
    fn first_matching_rule_wins_and_every_condition_must_hold() {
        let s = parse(
            r#"{"rules": [
              {"name": "legal", "team": ["legal", "compliance"], "keywords": ["governing law"], "tier": "strong"},
              {"name": "enterprise", "metadata": {"segment": "enterprise", "tier": [1, "2"]}, "shift": 0.25},
              {"name": "long", "task": "classify", "min_chars": 20, "shift": -0.1},
              {"name": "card", "regex": "\\b\\d{4}-\\d{4}\\b", "tier": "local"}
            ]}"#,
        );
        let rules = RuleSet::compile(&s.rules, TIERS).unwrap();
        let none = BTreeMap::new();
        let m = rules
            .first_match(&facts("The Governing LAW is ...", "legal", &none))
            .unwrap();
        assert_eq!((m.index, m.name), (0, "legal"));
        assert_eq!(m.effect, &Effect::Force("strong".into()));
        // Same text, another team: rule 0 fails, rule 2 (long) matches.
        let m = rules
            .first_match(&facts("The Governing LAW is ...", "ops", &none))
            .unwrap();
        assert_eq!(m.name, "long");
        // Keywords are whole words.
        assert!(
            rules
                .first_match(&facts("governing lawyers", "legal", &none))
                .is_none()
        );
        let meta = BTreeMap::from([
            ("segment".to_owned(), serde_json::json!("enterprise")),
            ("tier".to_owned(), serde_json::json!(1)),
        ]);
        let m = rules.first_match(&facts("short", "ops", &meta)).unwrap();
        assert_eq!(m.effect, &Effect::Shift(0.25));
        let meta = BTreeMap::from([("segment".to_owned(), serde_json::json!("enterprise"))]);
        assert!(
            rules.first_match(&facts("short", "ops", &meta)).is_none(),
            "a missing metadata key does not match"
        );
        let m = rules.first_match(&facts("card 1234-5678", "ops", &none));
        assert_eq!(m.map(|m| m.name), Some("card"));
        assert_eq!(
            rules.effect_of("card"),
            Some(&Effect::Force("local".into()))
        );
    }

    #[test]
    fn bad_rules_are_named() {
        let err = |json: &str| {
            RuleSet::compile(&parse(json).rules, TIERS)
                .unwrap_err()
                .to_string()
        };
        let e = err(r#"{"rules": [{"name": "a", "tier": "gold"}]}"#);
        assert!(e.contains("rule 0 (\"a\")") && e.contains("gold"), "{e}");
        assert!(err(r#"{"rules": [{"name": "a"}]}"#).contains("no effect"));
        assert!(err(r#"{"rules": [{"name": "a", "tier": "weak", "shift": 1}]}"#).contains("both"));
        assert!(err(r#"{"rules": [{"name": "a", "regex": "(", "shift": 1}]}"#).contains("regular"));
        assert!(
            err(r#"{"rules": [{"name": "a", "shift": 1}, {"name": "a", "shift": 2}]}"#)
                .contains("rule 1")
        );
        assert!(err(r#"{"rules": [{"name": " ", "shift": 1}]}"#).contains("no name"));
        assert!(
            err(r#"{"rules": [{"name": "a", "min_chars": 9, "max_chars": 3, "shift": 1}]}"#)
                .contains("min_chars")
        );
        assert!(
            serde_json::from_str::<RoutingSettings>(r#"{"rules": [{"name": "a", "colour": 1}]}"#)
                .is_err(),
            "unknown keys are errors"
        );
    }
}
