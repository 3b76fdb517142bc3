//! Configuration: built-in defaults, then an optional TOML file (`--config`), then the
//! environment (`NATS_URL`, `DATABASE_URL`). Unknown keys are errors, so a typo fails at
//! start-up (or in `--check-config`) rather than silently doing the default.
//!
//! The built-in defaults describe the demo fleet: the simulator on `127.0.0.1:8089` serving
//! the models of the bundled data, priced as in the data's README. A real deployment replaces
//! `[models]` and `[tiers]` (tables given in the file replace the defaults whole, they are not
//! merged). See `deploy/switchyard.example.toml` for every key with comments.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use rust_decimal::Decimal;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use switchyard_core::pricing::Price;
use switchyard_core::validate::Limits;
use switchyard_proto::Topology;

/// Default NATS server.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// Default Postgres database (created if missing).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/switchyard";
/// Where the built-in model config expects the simulator.
pub const DEFAULT_SIM_URL: &str = "http://127.0.0.1:8089/v1";

/// Everything a Switchyard process can be configured with.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    pub finance: crate::finance_settings::FinanceSettings,
    /// Routing rules (force a tier, shift the learned score): see `switchyard_core::rules`.
    #[serde(default)]
    pub routing: switchyard_core::rules::RoutingSettings,
    /// Where a job's team comes from, and the NATS user → team mapping (docs/security.md).
    #[serde(default)]
    pub security: crate::security_settings::SecuritySettings,
    /// Where the process serves Prometheus `/metrics`.
    #[serde(default)]
    pub metrics: MetricsSettings,
    /// Models by name (the name sent to the provider).
    #[serde(default = "default_models")]
    pub models: BTreeMap<String, ModelSettings>,
    /// Tiers by name; work subjects are `<prefix>.work.<tier>`.
    #[serde(default = "default_tiers")]
    pub tiers: BTreeMap<String, TierSettings>,
}

/// Prometheus `/metrics` (see `crate::metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Address to serve `/metrics` on (e.g. `0.0.0.0:9464`); none: not served. The
    /// dispatcher and worker commands' `--metrics-listen` overrides it.
    pub listen: Option<std::net::SocketAddr>,
}

/// NATS connection and naming.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSettings {
    /// Server URL; `NATS_URL` overrides it. Credentials in it are never printed.
    #[serde(serialize_with = "crate::security_settings::serialize_nats_url")]
    pub url: String,
    /// Prefix of every stream, subject and bucket name, so deployments can share a server.
    pub prefix: String,
    /// `file` (durable) or `memory` (tests).
    pub storage: StorageKind,
    /// Stream replicas (3 on a cluster).
    pub replicas: usize,
    /// How long JetStream remembers `Nats-Msg-Id`s to drop duplicate publishes.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// Authentication (`[nats.auth]`): user/password, token, nkey or a credentials file.
    pub auth: crate::security_settings::NatsAuth,
    /// TLS (`[nats.tls]`).
    pub tls: crate::security_settings::NatsTls,
}

/// Stream storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageKind {
    File,
    Memory,
}

impl Default for NatsSettings {
    fn default() -> Self {
        Self {
            url: DEFAULT_NATS_URL.to_owned(),
            prefix: "sy".to_owned(),
            storage: StorageKind::File,
            replicas: 1,
            duplicate_window: Duration::from_secs(300),
            auth: crate::security_settings::NatsAuth::default(),
            tls: crate::security_settings::NatsTls::default(),
        }
    }
}

/// Postgres connection.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// Connection URL; `DATABASE_URL` overrides it. May hold a password: never printed.
    #[serde(serialize_with = "serialize_redacted_url")]
    pub url: SecretString,
    pub max_connections: u32,
    /// TLS (`[database.tls]`), merged into the URL when the settings are loaded.
    pub tls: crate::security_settings::PostgresTls,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from(DEFAULT_DATABASE_URL),
            max_connections: 16,
            tls: crate::security_settings::PostgresTls::default(),
        }
    }
}

/// The dispatcher's knobs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatcherSettings {
    /// The tier items go to when the router says the weak model will do.
    pub weak_tier: String,
    /// The tier items go to when the router says they need the strong model.
    pub strong_tier: String,
    /// A router artifact (from `switchyard router train`); the built-in default when unset.
    pub router: Option<String>,
    /// Items whose text is longer are rejected (bytes).
    pub max_item_bytes: usize,
    /// Jobs with more items are rejected.
    pub max_items: u64,
    /// Classification tasks with more labels are rejected.
    pub max_labels: usize,
    /// Publish-acks awaited concurrently while publishing items (engine notes: ≥ 64).
    pub publish_window: usize,
    /// Items scored and inserted per database statement.
    pub chunk_size: usize,
    /// Default cascade threshold when a job does not set one.
    pub confidence_threshold: f64,
    /// Default escalations per item when a job does not set it.
    pub max_escalations: u8,
    /// Deliveries of a job message before it is dead-lettered.
    pub max_deliver: i64,
    /// JetStream redelivers a job message not acked (or progressed) within this time, e.g.
    /// when its dispatcher died; a live dispatcher sends in-progress acks every third of it.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// On SIGTERM each job being dispatched gets this long to finish (all of them at once);
    /// then it is handed back (nak) and another dispatcher resumes it from its stored state.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Jobs one dispatcher process works on at once (at least 1; default 8: single-item jobs at
    /// concurrency 32 went from 181 to 210-220 jobs/s over 4 on 2 cores). A small job costs a few
    /// milliseconds of round trips to Postgres and JetStream that leave the CPU idle; taking
    /// several jobs at a time overlaps them, and a big job no longer holds up the small ones
    /// queued behind it. Each job in flight holds its own ingest state (see `ingest`) and a
    /// database connection for its job lock, so peak memory grows with the number of big jobs
    /// dispatched at once, and the process takes at most `database.max_connections - 1` jobs at
    /// a time (one connection stays free for the jobs' queries). All dispatcher processes
    /// together hold at most 64 job messages (the jobs consumer's `max_ack_pending`).
    pub concurrent_jobs: usize,
    /// A job not finished (`ingesting`, `dispatching`, `running`) with no live owner and no
    /// progress for this long is finished by a sweep (docs/reliability.md, "Stuck jobs"):
    /// its missing work re-published, or it is completed, or failed with a reason. Keep it
    /// well above `ack_wait` (the dispatcher's and the workers'): a message held by a process
    /// that died comes back by itself after `ack_wait`.
    #[serde(with = "humantime_serde")]
    pub stuck_after: Duration,
    /// How often each dispatcher looks for stuck jobs.
    #[serde(with = "humantime_serde")]
    pub sweep_every: Duration,
}

impl Default for DispatcherSettings {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            weak_tier: "weak".to_owned(),
            strong_tier: "strong".to_owned(),
            router: None,
            max_item_bytes: limits.max_item_bytes,
            max_items: limits.max_items,
            max_labels: limits.max_labels,
            publish_window: 256,
            chunk_size: 2000,
            confidence_threshold: 0.5,
            max_escalations: 1,
            max_deliver: 5,
            ack_wait: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(20),
            concurrent_jobs: 8,
            stuck_after: Duration::from_secs(600),
            sweep_every: Duration::from_secs(60),
        }
    }
}

impl DispatcherSettings {
    /// The validation limits these settings describe.
    pub fn limits(&self) -> Limits {
        Limits {
            max_item_bytes: self.max_item_bytes,
            max_items: self.max_items,
            max_labels: self.max_labels,
            ..Limits::default()
        }
    }
}

/// A worker process's knobs (per tier lane).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// Model calls in flight per process and tier.
    pub concurrency: usize,
    /// Messages requested per pull.
    pub fetch_batch: usize,
    /// Outcomes written per database transaction (at most).
    pub commit_batch: usize,
    /// How long a partial commit batch may wait for more outcomes. The committer waits only
    /// while its lane has other calls in flight (their outcomes are on their way); a lone
    /// outcome is committed at once, so an idle worker adds no batching delay.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// JetStream redelivers an item not acked (or progressed) within this time.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Deliveries before an item is dead-lettered. Waiting for quota never counts.
    pub max_deliver: i64,
    /// Delay before a failed item is redelivered.
    #[serde(with = "humantime_serde")]
    pub retry_delay: Duration,
    /// In-flight items get this long to finish on shutdown; the rest are nak'ed.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Models' `rpm`/`tpm` are the provider's quota for the whole fleet, shared among the
    /// live worker processes (false: each process applies them on its own).
    pub fleet_quota: bool,
    /// Share of the quota the fleet aims at (keeps a margin for clock skew between
    /// processes and the provider's window).
    pub quota_headroom: f64,
    /// The per-model circuit breaker (`[worker.breaker]`).
    pub breaker: crate::reliability_settings::BreakerSettings,
    /// Largest answer (bytes of its text) a call may return: a longer one fails its item
    /// (the call is still booked). Bodies are read up to four times this plus 64 KiB.
    pub max_answer_bytes: usize,
}

impl WorkerSettings {
    /// The most of a provider's body a worker reads (an answer plus logprobs and JSON).
    pub fn max_body_bytes(&self) -> usize {
        self.max_answer_bytes
            .saturating_mul(4)
            .saturating_add(64 * 1024)
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 64,
            fetch_batch: 128,
            commit_batch: 256,
            commit_interval: Duration::from_millis(20),
            ack_wait: Duration::from_secs(60),
            max_deliver: 5,
            retry_delay: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(20),
            fleet_quota: true,
            quota_headroom: 0.98,
            breaker: crate::reliability_settings::BreakerSettings::default(),
            max_answer_bytes: 1024 * 1024,
        }
    }
}

/// One model endpoint and its price.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// The tier this model serves.
    pub tier: String,
    /// Provider label for the ledger (`openai`, `vllm`, `sim`).
    #[serde(default = "default_provider")]
    pub provider: String,
    /// OpenAI-compatible base URL (ending in `/v1`).
    pub base_url: String,
    /// API key, inline (prefer `api_key_env`). Never printed.
    #[serde(default, serialize_with = "serialize_redacted_opt")]
    pub api_key: Option<SecretString>,
    /// Name of an environment variable holding the API key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// USD per million prompt tokens, as a string (`"0.6"`) so it stays exact. Only seeds
    /// a model that has no price version in the database yet (`switchyard prices set`
    /// manages versions); a model with neither cannot start.
    #[serde(
        default,
        deserialize_with = "deserialize_opt_price",
        serialize_with = "serialize_opt_decimal",
        skip_serializing_if = "Option::is_none"
    )]
    pub input_usd_per_mtok: Option<Decimal>,
    /// USD per million completion tokens, as a string (seeds, as above).
    #[serde(
        default,
        deserialize_with = "deserialize_opt_price",
        serialize_with = "serialize_opt_decimal",
        skip_serializing_if = "Option::is_none"
    )]
    pub output_usd_per_mtok: Option<Decimal>,
    /// Requests per minute the provider allows the whole fleet: with `[worker] fleet_quota`
    /// (the default) every live worker process holds a share of it (docs/sizing.md); with it
    /// off, each process applies all of it on its own.
    #[serde(default)]
    pub rpm: Option<NonZeroU32>,
    /// Tokens per minute the provider allows the whole fleet, shared like `rpm`.
    #[serde(default)]
    pub tpm: Option<NonZeroU32>,
    /// Per-request timeout.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries of one call on 429/5xx/timeouts before the item is handed back to JetStream.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Ask for logprobs (confidence). Turn off for providers that reject the field.
    #[serde(default = "default_true")]
    pub logprobs: bool,
    /// Confidence given to a valid answer when the provider returns no logprobs.
    #[serde(default = "default_confidence_without_logprobs")]
    pub confidence_without_logprobs: f64,
    /// Completion budget for `generate` tasks.
    #[serde(default = "default_generate_max_tokens")]
    pub generate_max_tokens: u32,
}

/// One tier of the fleet.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TierSettings {
    /// The model used unless a job overrides it.
    pub default_model: String,
    /// Low-confidence answers move on to this tier.
    #[serde(default)]
    pub escalate_to: Option<String>,
    /// Runs on our own hardware: `local_only` items may only go to such tiers.
    #[serde(default)]
    pub local: bool,
}

fn default_provider() -> String {
    "openai".to_owned()
}
fn default_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_retries() -> u32 {
    3
}
fn default_true() -> bool {
    true
}
fn default_confidence_without_logprobs() -> f64 {
    0.5
}
fn default_generate_max_tokens() -> u32 {
    512
}

fn sim_model(tier: &str, input: &str, output: &str) -> ModelSettings {
    ModelSettings {
        tier: tier.to_owned(),
        provider: "sim".to_owned(),
        base_url: DEFAULT_SIM_URL.to_owned(),
        api_key: None,
        api_key_env: None,
        input_usd_per_mtok: Decimal::from_str(input).ok(),
        output_usd_per_mtok: Decimal::from_str(output).ok(),
        rpm: None,
        tpm: None,
        timeout: default_timeout(),
        max_retries: default_max_retries(),
        logprobs: true,
        confidence_without_logprobs: default_confidence_without_logprobs(),
        generate_max_tokens: default_generate_max_tokens(),
    }
}

/// The demo fleet's models, priced as in the routing data's README (USD per million
/// input/output tokens; the small open models at assumed hosting prices).
pub fn default_models() -> BTreeMap<String, ModelSettings> {
    BTreeMap::from([
        (
            "mistralai/Mixtral-8x7B-Instruct-v0.1".to_owned(),
            sim_model("weak", "0.6", "0.6"),
        ),
        ("T0pp".to_owned(), sim_model("weak", "0.3", "0.3")),
        ("BRIO".to_owned(), sim_model("weak", "0.1", "0.1")),
        (
            "gpt-4-1106-preview".to_owned(),
            sim_model("strong", "10", "30"),
        ),
        (
            "text-davinci-002".to_owned(),
            sim_model("strong", "20", "20"),
        ),
        (
            "mistralai/Mistral-7B-Instruct-v0.1".to_owned(),
            sim_model("local", "0.2", "0.2"),
        ),
    ])
}

/// The demo fleet's tiers: weak escalates to strong; a local tier for `local_only` items.
pub fn default_tiers() -> BTreeMap<String, TierSettings> {
    BTreeMap::from([
        (
            "weak".to_owned(),
            TierSettings {
                default_model: "mistralai/Mixtral-8x7B-Instruct-v0.1".to_owned(),
                escalate_to: Some("strong".to_owned()),
                local: false,
            },
        ),
        (
            "strong".to_owned(),
            TierSettings {
                default_model: "gpt-4-1106-preview".to_owned(),
                escalate_to: None,
                local: false,
            },
        ),
        (
            "local".to_owned(),
            TierSettings {
                default_model: "mistralai/Mistral-7B-Instruct-v0.1".to_owned(),
                escalate_to: None,
                local: true,
            },
        ),
    ])
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            nats: NatsSettings::default(),
            database: DatabaseSettings::default(),
            dispatcher: DispatcherSettings::default(),
            worker: WorkerSettings::default(),
            finance: crate::finance_settings::FinanceSettings::default(),
            routing: switchyard_core::rules::RoutingSettings::default(),
            security: crate::security_settings::SecuritySettings::default(),
            metrics: MetricsSettings::default(),
            models: default_models(),
            tiers: default_tiers(),
        }
    }
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
}

impl Settings {
    /// Loads defaults, then the file (if any), then `NATS_URL` and `DATABASE_URL` from the
    /// process environment, and validates the result.
    ///
    /// # Errors
    /// An unreadable or unparsable file (with the key and line), or an invalid combination.
    pub fn load(path: Option<&Path>) -> Result<Self, SettingsError> {
        let env: BTreeMap<String, String> = ["NATS_URL", "DATABASE_URL"]
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
            .collect();
        Self::load_with_env(path, &env)
    }

    /// [`Settings::load`] with an explicit environment (tests never touch the real one).
    ///
    /// # Errors
    /// As [`Settings::load`].
    pub fn load_with_env(
        path: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<Self, SettingsError> {
        let mut settings = match path {
            None => Settings::default(),
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
        let merged = settings
            .database
            .tls
            .merge_into(settings.database.url.expose_secret());
        settings.database.url = SecretString::from(merged);
        Ok(settings)
    }

    /// Parses TOML text (no environment, no validation).
    ///
    /// # Errors
    /// The parser's message, which names the offending key and line.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks what the types cannot: names refer to things that exist, values are in range.
    ///
    /// # Errors
    /// [`SettingsError::Invalid`] naming the first problem.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |m: String| Err(SettingsError::Invalid(m));
        Topology::new(&self.nats.prefix).map_err(|e| SettingsError::Invalid(e.to_string()))?;
        if self.tiers.is_empty() {
            return bad("no tiers configured".into());
        }
        if self.worker.max_answer_bytes == 0 {
            return bad("worker.max_answer_bytes must be at least 1".into());
        }
        for (name, tier) in &self.tiers {
            if Topology::new(name).is_err() {
                return bad(format!(
                    "tier name `{name}` must be lowercase letters, digits or _"
                ));
            }
            match self.models.get(&tier.default_model) {
                None => {
                    return bad(format!(
                        "tier `{name}`: default_model `{}` is not in [models]",
                        tier.default_model
                    ));
                }
                Some(m) if m.tier != *name => {
                    return bad(format!(
                        "tier `{name}`: default_model `{}` belongs to tier `{}`",
                        tier.default_model, m.tier
                    ));
                }
                Some(_) => {}
            }
            if let Some(next) = &tier.escalate_to
                && !self.tiers.contains_key(next)
            {
                return bad(format!("tier `{name}`: escalate_to `{next}` is not a tier"));
            }
        }
        // Escalation chains must end.
        for start in self.tiers.keys() {
            let mut seen = vec![start.as_str()];
            let mut cur = start.as_str();
            while let Some(next) = self.tiers.get(cur).and_then(|t| t.escalate_to.as_deref()) {
                if seen.contains(&next) {
                    return bad(format!(
                        "escalation from tier `{start}` loops back to `{next}`"
                    ));
                }
                seen.push(next);
                cur = next;
            }
        }
        for (name, m) in &self.models {
            if !self.tiers.contains_key(&m.tier) {
                return bad(format!(
                    "model `{name}`: tier `{}` is not in [tiers]",
                    m.tier
                ));
            }
            match (m.input_usd_per_mtok, m.output_usd_per_mtok) {
                (Some(i), Some(o)) => {
                    Price::new(i, o)
                        .map_err(|e| SettingsError::Invalid(format!("model `{name}`: {e}")))?;
                }
                (None, None) => {}
                _ => {
                    return bad(format!(
                        "model `{name}`: give both input_usd_per_mtok and output_usd_per_mtok, or neither"
                    ));
                }
            }
            if !(m.base_url.starts_with("http://") || m.base_url.starts_with("https://")) {
                return bad(format!(
                    "model `{name}`: base_url `{}` is not http(s)",
                    m.base_url
                ));
            }
            if !(0.0..=1.0).contains(&m.confidence_without_logprobs) {
                return bad(format!(
                    "model `{name}`: confidence_without_logprobs outside [0, 1]"
                ));
            }
        }
        let d = &self.dispatcher;
        for (what, tier) in [("weak_tier", &d.weak_tier), ("strong_tier", &d.strong_tier)] {
            if !self.tiers.contains_key(tier) {
                return bad(format!("dispatcher.{what} `{tier}` is not in [tiers]"));
            }
        }
        if !(0.0..=1.0).contains(&d.confidence_threshold) {
            return bad("dispatcher.confidence_threshold outside [0, 1]".into());
        }
        if d.publish_window == 0 || d.chunk_size == 0 {
            return bad("dispatcher.publish_window and chunk_size must be positive".into());
        }
        if d.concurrent_jobs == 0 {
            return bad("dispatcher.concurrent_jobs must be at least 1".into());
        }
        if d.stuck_after < Duration::from_secs(1) || d.sweep_every < Duration::from_millis(100) {
            return bad(
                "dispatcher.stuck_after must be at least 1s and dispatcher.sweep_every at least \
                 100ms"
                    .into(),
            );
        }
        let w = &self.worker;
        if w.concurrency == 0 || w.fetch_batch == 0 || w.commit_batch == 0 {
            return bad("worker.concurrency, fetch_batch and commit_batch must be positive".into());
        }
        if w.max_deliver < 2 || d.max_deliver < 2 {
            return bad("max_deliver must be at least 2".into());
        }
        if !(w.quota_headroom > 0.0 && w.quota_headroom <= 1.0) {
            return bad("worker.quota_headroom must be in (0, 1]".into());
        }
        if d.ack_wait < Duration::from_secs(3) {
            return bad("dispatcher.ack_wait must be at least 3s".into());
        }
        if w.ack_wait < Duration::from_secs(1) {
            return bad("worker.ack_wait must be at least 1s".into());
        }
        self.finance.validate().map_err(SettingsError::Invalid)?;
        self.nats.auth.validate().map_err(SettingsError::Invalid)?;
        self.nats.tls.validate().map_err(SettingsError::Invalid)?;
        self.database
            .tls
            .validate()
            .map_err(SettingsError::Invalid)?;
        self.security.validate().map_err(SettingsError::Invalid)?;
        self.routing_rules()?;
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

    /// The database URL (a secret: do not log it).
    pub fn database_url(&self) -> &str {
        self.database.url.expose_secret()
    }
}

fn deserialize_price<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Str(String),
        Int(i64),
        Float(f64),
    }
    match Raw::deserialize(d)? {
        Raw::Str(s) => Decimal::from_str(s.trim())
            .map_err(|e| serde::de::Error::custom(format!("price `{s}` is not a decimal: {e}"))),
        Raw::Int(i) => Ok(Decimal::from(i)),
        Raw::Float(f) => Err(serde::de::Error::custom(format!(
            "write prices as strings (\"{f}\"), so they stay exact decimals"
        ))),
    }
}

fn deserialize_opt_price<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    deserialize_price(d).map(Some)
}

fn serialize_opt_decimal<S: Serializer>(d: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&d.to_string()),
        None => s.serialize_none(),
    }
}

fn serialize_redacted_opt<S: Serializer>(
    v: &Option<SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("[redacted]"),
        None => s.serialize_none(),
    }
}

fn serialize_redacted_url<S: Serializer>(v: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(v.expose_secret()))
}

/// Replaces the password of a URL (`scheme://user:password@host`) with `[redacted]`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let Some(at) = rest.find('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}://{}:[redacted]@{}",
            &url[..scheme_end],
            &userinfo[..colon],
            &rest[at + 1..]
        ),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Settings::default().validate().unwrap();
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
        let mut s = Settings::load_with_env(None, &env).unwrap();
        assert_eq!(s.nats.url, "nats://n:4222");
        s.models
            .values_mut()
            .for_each(|m| m.api_key = Some(SecretString::from("sk-secret")));
        let shown = format!("{}{:?}", s.to_redacted_toml(), s);
        assert!(
            !shown.contains("hunter2") && !shown.contains("sk-secret"),
            "{shown}"
        );
        assert!(shown.contains("postgres://u:[redacted]@db/x"));
    }

    #[test]
    fn zero_concurrent_jobs_is_refused() {
        let s = Settings::from_toml("[dispatcher]\nconcurrent_jobs = 0\n").unwrap();
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("dispatcher.concurrent_jobs"), "{err}");
        let s = Settings::from_toml("[dispatcher]\nconcurrent_jobs = 8\n").unwrap();
        s.validate().unwrap();
        assert_eq!(s.dispatcher.concurrent_jobs, 8);
    }

    #[test]
    fn broken_references_are_named() {
        let mut s = Settings::default();
        s.tiers.get_mut("weak").unwrap().escalate_to = Some("nowhere".into());
        assert!(s.validate().unwrap_err().to_string().contains("nowhere"));
        let mut s = Settings::default();
        s.tiers.get_mut("strong").unwrap().escalate_to = Some("weak".into());
        assert!(s.validate().unwrap_err().to_string().contains("loops"));
    }
}
