//! Configuration: built-in defaults, then an optional TOML file (`--config`), then the
//! environment (`NATS_URL`, `DATABASE_URL`). Unknown keys are errors, so a typo fails at
//! start-up (or in `--check-config`) rather than silently doing the default.
//!
//! One module per section, each owning its defaults and its checks. What a type can enforce
//! is enforced when the file is read (counts that must be at least 1 are `NonZero*`, shares
//! are [`Fraction`]s, model endpoints are `url::Url`s), so a bad value fails with the key, its
//! line and the value; [`Settings::validate`] checks the rest: lower bounds of durations, and
//! that sections referring to each other agree.
//!
//! The built-in defaults describe no fleet: no models and no tiers, so a process started
//! without `--config` cannot quietly call a simulator nobody meant to use (the dispatcher and
//! the workers refuse to start, [`Settings::require_fleet`]). The demo fleet (the simulator on
//! `127.0.0.1:8089` serving the models of the bundled data) is an embedded file,
//! [`Settings::demo`], printed by `switchyard config demo`. `[models]` and `[tiers]` given in
//! a file are the whole fleet. See `deploy/switchyard.example.toml` for every key with
//! comments.

pub mod api;
pub mod database;
pub mod dispatcher;
pub mod finance;
mod fraction;
pub mod metrics;
pub mod models;
pub mod nats;
pub mod redact;
pub mod reliability;
pub mod security;
pub mod worker;

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use switchyard_core::pricing::Price;
use switchyard_proto::Topology;

pub use api::ApiSettings;
pub use database::{DEFAULT_DATABASE_URL, DatabaseSettings};
pub use dispatcher::DispatcherSettings;
pub use finance::FinanceSettings;
pub use fraction::Fraction;
pub use metrics::MetricsSettings;
pub use models::{ModelSettings, Protocol, TierSettings};
pub use nats::{DEFAULT_NATS_URL, NatsSettings, StorageKind};
pub use redact::redact_url;
pub use reliability::BreakerSettings;
pub use security::{NatsAuth, NatsTls, PostgresTls, SecuritySettings};
pub use worker::WorkerSettings;

/// The demo fleet's configuration (`switchyard config demo` prints it).
pub const DEMO_TOML: &str = include_str!("demo.toml");

/// Everything a Switchyard process can be configured with.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub nats: NatsSettings,
    #[serde(default)]
    pub database: DatabaseSettings,
    #[serde(default)]
    pub dispatcher: DispatcherSettings,
    #[serde(default)]
    pub worker: WorkerSettings,
    /// Prices, budgets, retention and the finance dashboard.
    #[serde(default)]
    pub finance: FinanceSettings,
    /// Routing rules (force a tier, shift the learned score): see `switchyard_core::rules`.
    #[serde(default)]
    pub routing: switchyard_core::rules::RoutingSettings,
    /// Where a job's team comes from, and the NATS user → team mapping (docs/security.md).
    #[serde(default)]
    pub security: SecuritySettings,
    /// Where the process serves Prometheus `/metrics`.
    #[serde(default)]
    pub metrics: MetricsSettings,
    /// The OpenAI-compatible Batch API (`switchyard api`).
    #[serde(default)]
    pub api: ApiSettings,
    /// Models by name (the name sent to the provider). None by default.
    #[serde(default)]
    pub models: BTreeMap<String, ModelSettings>,
    /// Tiers by name; work subjects are `<prefix>.work.<tier>`. None by default.
    #[serde(default)]
    pub tiers: BTreeMap<String, TierSettings>,
}

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read config file `{path}`: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file `{path}`: {message}")]
    Parse { path: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error(
        "no models configured: pass --config FILE (see deploy/switchyard.example.toml) or run \
         `switchyard config demo > fleet.toml` for the simulator's demo fleet"
    )]
    NoFleet,
}

/// `n` as a count that cannot be zero, for literals in code (zero is a bug: it panics, at
/// compile time in a `const` block).
pub const fn count(n: usize) -> NonZeroUsize {
    match NonZeroUsize::new(n) {
        Some(c) => c,
        None => panic!("a count must be at least 1"),
    }
}

/// `key = value: must be at least min`, for counts the types cannot bound.
fn at_least(key: &str, value: i64, min: i64) -> Result<(), String> {
    if value < min {
        return Err(format!("{key} = {value}: must be at least {min}"));
    }
    Ok(())
}

/// `key = value: must be at least min`, for durations.
fn at_least_duration(key: &str, value: Duration, min: Duration) -> Result<(), String> {
    if value < min {
        return Err(format!(
            "{key} = \"{}\": must be at least {}",
            humantime::format_duration(value),
            humantime::format_duration(min)
        ));
    }
    Ok(())
}

impl Settings {
    /// The demo fleet ([`DEMO_TOML`]) on the built-in defaults: what `switchyard demo`,
    /// `bench` and `chaos` run without `--config`, and what tests that want the simulator's
    /// models start from.
    #[expect(
        clippy::expect_used,
        reason = "the embedded file is checked by a test; it cannot fail at run time"
    )]
    pub fn demo() -> Self {
        Self::from_toml(DEMO_TOML).expect("the embedded demo configuration parses")
    }

    /// Loads defaults, then the file (if any), then `NATS_URL` and `DATABASE_URL` from the
    /// process environment, and validates the result.
    ///
    /// # Errors
    /// An unreadable or unparsable file (with the key and line), or an invalid combination.
    pub fn load(path: Option<&Path>) -> Result<Self, SettingsError> {
        Self::load_or(path, Settings::default)
    }

    /// [`Settings::load`], starting from `without_file()` when there is no file (the demo
    /// commands pass [`Settings::demo`]).
    ///
    /// # Errors
    /// As [`Settings::load`].
    pub fn load_or(
        path: Option<&Path>,
        without_file: fn() -> Settings,
    ) -> Result<Self, SettingsError> {
        let env: BTreeMap<String, String> = ["NATS_URL", "DATABASE_URL"]
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
            .collect();
        Self::load_with_env_or(path, &env, without_file)
    }

    /// [`Settings::load`] with an explicit environment (tests never touch the real one).
    ///
    /// # Errors
    /// As [`Settings::load`].
    pub fn load_with_env(
        path: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<Self, SettingsError> {
        Self::load_with_env_or(path, env, Settings::default)
    }

    fn load_with_env_or(
        path: Option<&Path>,
        env: &BTreeMap<String, String>,
        without_file: fn() -> Settings,
    ) -> Result<Self, SettingsError> {
        let mut settings = match path {
            None => without_file(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| SettingsError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                Self::from_toml(&text).map_err(|message| SettingsError::Parse {
                    path: p.display().to_string(),
                    message,
                })?
            }
        };
        if let Some(url) = env.get("NATS_URL").filter(|s| !s.is_empty()) {
            settings.nats.url = url.clone();
        }
        if let Some(url) = env.get("DATABASE_URL").filter(|s| !s.is_empty()) {
            settings.database.url = SecretString::from(url.clone());
        }
        settings.validate()?;
        settings.database.url = settings
            .database
            .merged_url()
            .map_err(SettingsError::Invalid)?;
        Ok(settings)
    }

    /// Parses TOML text (no environment, no validation).
    ///
    /// # Errors
    /// The parser's message, which names the offending key, its line and the value.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks what the types cannot: each section's own bounds, then that sections agree
    /// (models and tiers refer to each other, the dispatcher's tiers and the routing rules
    /// name configured tiers). An empty fleet is valid here, since client commands need
    /// none; the roles that call models check [`Settings::require_fleet`].
    ///
    /// # Errors
    /// [`SettingsError::Invalid`] naming the first problem's key and value.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = SettingsError::Invalid;
        self.nats.validate().map_err(invalid)?;
        self.database.validate().map_err(invalid)?;
        self.dispatcher.validate().map_err(invalid)?;
        self.worker.validate().map_err(invalid)?;
        self.finance.validate().map_err(invalid)?;
        self.api.validate().map_err(invalid)?;
        self.security.validate().map_err(invalid)?;
        models::validate_fleet(&self.models, &self.tiers).map_err(invalid)?;
        if !self.tiers.is_empty() {
            let d = &self.dispatcher;
            for (key, tier) in [("weak_tier", &d.weak_tier), ("strong_tier", &d.strong_tier)] {
                if !self.tiers.contains_key(tier) {
                    return Err(invalid(format!(
                        "dispatcher.{key} = \"{tier}\": not in [tiers]"
                    )));
                }
            }
        }
        self.routing_rules()?;
        Ok(())
    }

    /// Checks that there is a fleet to run: the dispatcher and the workers call this before
    /// they start, so that a process without `--config` stops with instructions rather than
    /// routing work to tiers nobody configured.
    ///
    /// # Errors
    /// [`SettingsError::NoFleet`] when no model or no tier is configured.
    pub fn require_fleet(&self) -> Result<(), SettingsError> {
        if self.models.is_empty() || self.tiers.is_empty() {
            return Err(SettingsError::NoFleet);
        }
        Ok(())
    }

    /// The stream and subject names of this deployment.
    pub fn topology(&self) -> Topology {
        // Validated in `validate`; the default prefix is only a fallback for unvalidated
        // settings built in code.
        Topology::new(&self.nats.prefix).unwrap_or_default()
    }

    /// The effective configuration as TOML, secrets redacted (for `--check-config`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }

    /// The price of a model in the configuration (a seed: the database's price versions are
    /// what calls are booked with).
    pub fn price_of(&self, model: &str) -> Option<Price> {
        let m = self.models.get(model)?;
        Price::new(m.input_usd_per_mtok?, m.output_usd_per_mtok?).ok()
    }

    /// The model a tier uses for a job, honouring the job's per-tier override when it names a
    /// model of that tier.
    pub fn model_for<'a>(
        &'a self,
        tier: &str,
        overrides: &'a BTreeMap<String, String>,
    ) -> Option<&'a str> {
        if let Some(m) = overrides.get(tier) {
            return self
                .models
                .get(m)
                .filter(|s| s.tier == tier)
                .map(|_| m.as_str());
        }
        self.tiers.get(tier).map(|t| t.default_model.as_str())
    }

    /// The routing rules, checked and compiled against the configured tiers.
    ///
    /// # Errors
    /// [`SettingsError::Invalid`] naming the first bad rule.
    pub fn routing_rules(&self) -> Result<switchyard_core::rules::RuleSet, SettingsError> {
        let tiers: Vec<&str> = self.tiers.keys().map(String::as_str).collect();
        switchyard_core::rules::RuleSet::compile(&self.routing.rules, &tiers)
            .map_err(|e| SettingsError::Invalid(e.to_string()))
    }

    /// The first local tier, where `local_only` items go.
    pub fn local_tier(&self) -> Option<&str> {
        self.tiers
            .iter()
            .find(|(_, t)| t.local)
            .map(|(n, _)| n.as_str())
    }

    /// Sends every model's calls to `base_url` (the simulator's, for the demo, the benches
    /// and tests that start one on a free port).
    ///
    /// # Errors
    /// `base_url` is not a URL.
    pub fn point_models_at(&mut self, base_url: &str) -> Result<(), url::ParseError> {
        let url = url::Url::parse(base_url)?;
        for m in self.models.values_mut() {
            m.base_url = url.clone();
        }
        Ok(())
    }

    /// The database URL (a secret: do not log it).
    pub fn database_url(&self) -> &str {
        self.database.url.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;

    use rust_decimal::Decimal;

    use super::*;

    #[test]
    fn defaults_are_valid_and_describe_no_fleet() {
        let s = Settings::default();
        s.validate().unwrap();
        assert!(s.models.is_empty() && s.tiers.is_empty());
        let err = s.require_fleet().unwrap_err().to_string();
        assert!(
            err.contains("no models configured") && err.contains("switchyard config demo"),
            "{err}"
        );
        // Loading without a file gives the same: no fleet, so the roles refuse to start.
        let loaded = Settings::load_with_env(None, &BTreeMap::new()).unwrap();
        assert!(loaded.require_fleet().is_err());
    }

    #[test]
    fn the_demo_fleet_is_the_simulators_and_valid() {
        let s = Settings::demo();
        s.validate().unwrap();
        s.require_fleet().unwrap();
        assert_eq!(s.models.len(), 6);
        assert!(
            s.models
                .values()
                .all(|m| m.provider == "sim" && m.base_url.as_str() == "http://127.0.0.1:8089/v1")
        );
        assert_eq!(
            s.tiers["weak"].escalate_to.as_deref(),
            Some("strong"),
            "weak escalates to strong"
        );
        assert_eq!(s.local_tier(), Some("local"));
        assert_eq!(
            s.price_of("gpt-4-1106-preview"),
            Price::new(Decimal::from(10), Decimal::from(30)).ok()
        );
        // What `--check-config` prints reads back as the same fleet.
        let back = Settings::from_toml(&s.to_redacted_toml()).unwrap();
        back.validate().unwrap();
        assert_eq!(
            back.models.keys().collect::<Vec<_>>(),
            s.models.keys().collect::<Vec<_>>()
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = Settings::from_toml("[worker]\nconcurrenzy = 3\n").unwrap_err();
        assert!(err.contains("concurrenzy"), "{err}");
    }

    #[test]
    fn float_prices_are_refused_strings_accepted() {
        let base = |price: &str| {
            format!(
                "[models.m]\ntier = \"t\"\nbase_url = \"http://x/v1\"\ninput_usd_per_mtok = {price}\n\
                 output_usd_per_mtok = \"1\"\n[tiers.t]\ndefault_model = \"m\"\n\
                 [dispatcher]\nweak_tier = \"t\"\nstrong_tier = \"t\"\n"
            )
        };
        assert!(
            Settings::from_toml(&base("0.6"))
                .unwrap_err()
                .contains("strings")
        );
        let s = Settings::from_toml(&base("\"0.6\"")).unwrap();
        s.validate().unwrap();
        assert_eq!(
            s.models["m"].input_usd_per_mtok,
            Some(Decimal::from_str("0.6").unwrap())
        );
    }

    #[test]
    fn env_overrides_file_and_secrets_never_print() {
        let env = BTreeMap::from([
            (
                "DATABASE_URL".to_owned(),
                "postgres://u:hunter2@db/x".to_owned(),
            ),
            ("NATS_URL".to_owned(), "nats://n:4222".to_owned()),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.toml");
        std::fs::write(&path, DEMO_TOML).unwrap();
        let mut s = Settings::load_with_env(Some(&path), &env).unwrap();
        assert_eq!(s.nats.url, "nats://n:4222");
        assert_eq!(s.database_url(), "postgres://u:hunter2@db/x");
        s.models
            .values_mut()
            .for_each(|m| m.api_key = Some(SecretString::from("sk-secret")));
        let shown = format!("{}{:?}", s.to_redacted_toml(), s);
        assert!(
            !shown.contains("hunter2") && !shown.contains("sk-secret") && !shown.contains("u:"),
            "{shown}"
        );
        assert!(shown.contains("postgres://[redacted]@db/x"), "{shown}");
    }

    #[test]
    fn database_tls_is_merged_into_the_url_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.toml");
        std::fs::write(
            &path,
            "[database]\nurl = \"postgres://u@h/db?sslmode=disable\"\n\
             [database.tls]\nssl_mode = \"require\"\n",
        )
        .unwrap();
        let s = Settings::load_with_env(Some(&path), &BTreeMap::new()).unwrap();
        assert_eq!(s.database_url(), "postgres://u@h/db?sslmode=require");
        let env = BTreeMap::from([("DATABASE_URL".to_owned(), "no url here".to_owned())]);
        let err = Settings::load_with_env(None, &env).unwrap_err().to_string();
        assert!(err.contains("database.url"), "{err}");
    }

    #[test]
    fn counts_and_fractions_are_checked_when_read() {
        let err = Settings::from_toml("[dispatcher]\nconcurrent_jobs = 0\n").unwrap_err();
        assert!(err.contains("concurrent_jobs"), "{err}");
        let s = Settings::from_toml("[dispatcher]\nconcurrent_jobs = 8\n").unwrap();
        s.validate().unwrap();
        assert_eq!(s.dispatcher.concurrent_jobs, count(8));
        for (key, line) in [
            (
                "confidence_threshold",
                "[dispatcher]\nconfidence_threshold = 1.5\n",
            ),
            ("quota_headroom", "[worker]\nquota_headroom = 1.5\n"),
        ] {
            let err = Settings::from_toml(line).unwrap_err();
            assert!(
                err.contains(key) && err.contains("1.5: must be between 0 and 1"),
                "{err}"
            );
        }
        let s = Settings::from_toml("[worker]\nquota_headroom = 0\n").unwrap();
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("worker.quota_headroom = 0"), "{err}");
        let s = Settings::from_toml("[dispatcher]\nack_wait = \"2s\"\n").unwrap();
        let err = s.validate().unwrap_err().to_string();
        assert!(
            err.contains("dispatcher.ack_wait = \"2s\": must be at least 3s"),
            "{err}"
        );
    }

    #[test]
    fn model_urls_are_urls_and_http() {
        let model = |url: &str| {
            format!(
                "[models.m]\ntier = \"t\"\nbase_url = \"{url}\"\n[tiers.t]\ndefault_model = \"m\"\n\
                 [dispatcher]\nweak_tier = \"t\"\nstrong_tier = \"t\"\n"
            )
        };
        assert!(Settings::from_toml(&model("not a url")).is_err());
        let s = Settings::from_toml(&model("ftp://x/v1")).unwrap();
        let err = s.validate().unwrap_err().to_string();
        assert!(
            err.contains("models.\"m\".base_url = \"ftp://x/v1\": must be http or https"),
            "{err}"
        );
    }

    #[test]
    fn broken_references_are_named() {
        let mut s = Settings::demo();
        s.tiers.get_mut("weak").unwrap().escalate_to = Some("nowhere".into());
        assert!(s.validate().unwrap_err().to_string().contains("nowhere"));
        let mut s = Settings::demo();
        s.tiers.get_mut("strong").unwrap().escalate_to = Some("weak".into());
        assert!(s.validate().unwrap_err().to_string().contains("loops"));
        let mut s = Settings::demo();
        s.dispatcher.weak_tier = "cheap".into();
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("dispatcher.weak_tier = \"cheap\""), "{err}");
    }
}
