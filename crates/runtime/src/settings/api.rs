//! The `[api]` section: `switchyard api`, the OpenAI-compatible Batch API
//! (docs/openai-compatibility.md). Flags of the command override `listen` and
//! `max_upload_bytes`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::at_least_duration;

/// OpenAI's limit for a batch input file: 200 MB.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 200 * 1024 * 1024;

/// The Batch API server (every key has a default).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// Address to serve `/v1` and `/healthz` on.
    pub listen: SocketAddr,
    /// Uploads above this many bytes answer 413.
    pub max_upload_bytes: u64,
    /// The policy of `switchyard:auto` requests in batches whose metadata names none
    /// (`switchyard_policy`), as `switchyard submit --policy` takes it.
    pub default_policy: String,
    /// Per team, a default policy of its own (`[api.team_policies] support = "quality=0.9"`),
    /// in place of `default_policy` for that team's batches.
    pub team_policies: BTreeMap<String, String>,
    /// How often a running batch is looked at (its counts, a cancellation, its expiry, its
    /// end): the delay between a job's end and its batch's `completed`.
    #[serde(with = "humantime_serde")]
    pub look_every: Duration,
    /// Requests per minute one API key may make (bursts of up to that many); above it the
    /// key gets 429 with `Retry-After`. Every API process counts on its own: with N
    /// processes behind a balancer a key gets up to N times this.
    pub requests_per_minute_per_key: NonZeroU32,
    /// PEM certificate chain: with `tls_key`, the API serves HTTPS only.
    pub tls_cert: Option<String>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<String>,
    /// Uploaded files and the output and error files of batches are deleted (row and
    /// object) this long after they were created. Unset: `finance.retention` (the retention
    /// of prompts and answers), and when that is unset too, kept until deleted.
    #[serde(default, with = "humantime_serde")]
    pub file_retention: Option<Duration>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8091)),
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            default_policy: "quality=0.95".to_owned(),
            team_policies: BTreeMap::new(),
            look_every: Duration::from_secs(2),
            requests_per_minute_per_key: NonZeroU32::new(600).unwrap_or(NonZeroU32::MIN),
            tls_cert: None,
            tls_key: None,
            file_retention: None,
        }
    }
}

impl ApiSettings {
    /// Checks the values.
    ///
    /// # Errors
    /// A message naming the key and the value.
    pub fn validate(&self) -> Result<(), String> {
        at_least_duration("api.look_every", self.look_every, Duration::from_millis(50))?;
        if self.max_upload_bytes == 0 {
            return Err("api.max_upload_bytes = 0: must be at least 1".to_owned());
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => Err("api.tls_cert is set without api.tls_key".to_owned()),
            (None, Some(_)) => Err("api.tls_key is set without api.tls_cert".to_owned()),
            _ => Ok(()),
        }?;
        if let Some(r) = self.file_retention {
            at_least_duration("api.file_retention", r, Duration::from_secs(60))?;
        }
        if self.default_policy.trim().is_empty() {
            return Err("api.default_policy is empty (e.g. \"quality=0.95\")".to_owned());
        }
        Ok(())
    }
}
