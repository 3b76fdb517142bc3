//! `[models]` and `[tiers]`: the fleet. Each model names its tier; each tier its default
//! model and where low-confidence answers escalate. Neither has a built-in default: a fleet
//! is what an operator describes (`Settings::demo` is the simulator's).

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use rust_decimal::Decimal;
use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use switchyard_core::pricing::Price;
use switchyard_proto::Topology;
use url::Url;

use super::Fraction;

/// One model endpoint and its price.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// The tier this model serves.
    pub tier: String,
    /// Provider label for the ledger (`openai`, `vllm`, `sim`).
    #[serde(default = "default_provider")]
    pub provider: String,
    /// The API the endpoint speaks: `openai` (chat completions: OpenAI, vLLM, Ollama,
    /// llama.cpp, OpenRouter, the simulator) or `anthropic` (the Messages API:
    /// `POST {base_url}/messages`, `x-api-key`, no logprobs, prompt caching).
    #[serde(default)]
    pub protocol: Protocol,
    /// Base URL (ending in `/v1`); http or https.
    pub base_url: Url,
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
    /// Requests per minute the provider allows the whole fleet (unset: not limited). With
    /// `[worker] fleet_quota` (the default) every live worker process holds a share of it and
    /// the shares in use add up to at most `rpm × quota_headroom` (docs/sizing.md); with it
    /// off, each process paces at `rpm × quota_headroom` on its own, so give each process
    /// its part.
    #[serde(default)]
    pub rpm: Option<NonZeroU32>,
    /// Tokens per minute the provider allows the whole fleet, shared like `rpm`. A call
    /// counts an estimate when it leaves (prompt bytes / 4, plus its completion budget),
    /// corrected to the usage the provider reports.
    #[serde(default)]
    pub tpm: Option<NonZeroU32>,
    /// Per-request timeout.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries of one call on 5xx, broken connections and timeouts while connecting before the
    /// item is handed back to JetStream (a request that timed out after it went out is booked
    /// in doubt and handed back at once; 429s wait without limit).
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Ask for logprobs (confidence). Turn off for providers that reject the field.
    #[serde(default = "default_true")]
    pub logprobs: bool,
    /// Confidence given to a valid answer when the provider returns no logprobs.
    #[serde(default = "default_confidence_without_logprobs")]
    pub confidence_without_logprobs: Fraction,
    /// Completion budget for `generate` tasks.
    #[serde(default = "default_generate_max_tokens")]
    pub generate_max_tokens: u32,
    /// The provider serves a batch API at `base_url`: OpenAI's Batch API (`/files`,
    /// `/batches`) for `protocol = "openai"`, Anthropic's Message Batches
    /// (`/messages/batches`) for `protocol = "anthropic"`. Attempts of jobs with a deadline
    /// are sent through it, at the price version's batch discount (`[worker.batching]`).
    #[serde(default)]
    pub batch: bool,
    /// The provider's batch queue limit for this model (OpenAI's "enqueued tokens"): input
    /// tokens of its batches waiting or running at the provider at once, fleet-wide, a
    /// quota like `rpm` and `tpm`. A batch is created only when its lines' estimated tokens
    /// fit beside those of the model's open batches (else it waits, recorded, and is sent
    /// when earlier batches have ended), and a batch is never grouped larger than it.
    #[serde(default)]
    pub batch_queue_tokens: Option<std::num::NonZeroU64>,
}

/// The API a model endpoint speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// OpenAI's chat completions (and every server compatible with it).
    #[default]
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
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
fn default_confidence_without_logprobs() -> Fraction {
    const { Fraction::literal(0.5) }
}
fn default_generate_max_tokens() -> u32 {
    512
}

impl ModelSettings {
    /// Checks the model on its own: both prices or neither, an http(s) base URL.
    ///
    /// # Errors
    /// A message naming the model, the key and the value.
    pub fn validate(&self, name: &str) -> Result<(), String> {
        match (self.input_usd_per_mtok, self.output_usd_per_mtok) {
            (Some(i), Some(o)) => {
                Price::new(i, o).map_err(|e| format!("models.\"{name}\": {e}"))?;
            }
            (None, None) => {}
            _ => {
                return Err(format!(
                    "models.\"{name}\": give both input_usd_per_mtok and output_usd_per_mtok, or neither"
                ));
            }
        }
        if !matches!(self.base_url.scheme(), "http" | "https") {
            return Err(format!(
                "models.\"{name}\".base_url = \"{}\": must be http or https",
                super::redact::redact_url(self.base_url.as_str())
            ));
        }
        Ok(())
    }
}

/// Checks that models and tiers refer to each other consistently and that escalation chains
/// end (each model's own keys are checked by [`ModelSettings::validate`]).
///
/// # Errors
/// A message naming the first broken reference.
pub fn validate_fleet(
    models: &BTreeMap<String, ModelSettings>,
    tiers: &BTreeMap<String, TierSettings>,
) -> Result<(), String> {
    for (name, tier) in tiers {
        if Topology::new(name).is_err() {
            return Err(format!(
                "tiers.{name}: a tier name must be lowercase letters, digits or _"
            ));
        }
        match models.get(&tier.default_model) {
            None => {
                return Err(format!(
                    "tiers.{name}.default_model = \"{}\": not in [models]",
                    tier.default_model
                ));
            }
            Some(m) if m.tier != *name => {
                return Err(format!(
                    "tiers.{name}.default_model = \"{}\": that model belongs to tier `{}`",
                    tier.default_model, m.tier
                ));
            }
            Some(_) => {}
        }
        if let Some(next) = &tier.escalate_to
            && !tiers.contains_key(next)
        {
            return Err(format!(
                "tiers.{name}.escalate_to = \"{next}\": not in [tiers]"
            ));
        }
    }
    // Escalation chains must end.
    for start in tiers.keys() {
        let mut seen = vec![start.as_str()];
        let mut cur = start.as_str();
        while let Some(next) = tiers.get(cur).and_then(|t| t.escalate_to.as_deref()) {
            if seen.contains(&next) {
                return Err(format!("tiers.{start}: escalation loops back to `{next}`"));
            }
            seen.push(next);
            cur = next;
        }
    }
    for (name, m) in models {
        if !tiers.contains_key(&m.tier) {
            return Err(format!(
                "models.\"{name}\".tier = \"{}\": not in [tiers]",
                m.tier
            ));
        }
        m.validate(name)?;
    }
    Ok(())
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
