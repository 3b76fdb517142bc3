//! `[database]`: the Postgres connection.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

use super::security::PostgresTls;

/// Default Postgres database (created if missing).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/switchyard";

/// Postgres connection.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// Connection URL; `DATABASE_URL` overrides it. May hold a password, so it is kept as a
    /// secret string (never printed) and checked to be a URL in [`DatabaseSettings::validate`].
    #[serde(serialize_with = "serialize_redacted_url")]
    pub url: SecretString,
    pub max_connections: u32,
    /// How long a query waits for a connection, through an outage for a new one, before it
    /// fails (the workers then wait again: a claim that cannot reach Postgres is not handed
    /// back, see `worker/src/claims.rs`).
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: std::time::Duration,
    /// TLS (`[database.tls]`), merged into the URL when the settings are loaded.
    pub tls: PostgresTls,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from(DEFAULT_DATABASE_URL),
            max_connections: 16,
            acquire_timeout: std::time::Duration::from_secs(30),
            tls: PostgresTls::default(),
        }
    }
}

impl DatabaseSettings {
    /// Checks that the URL parses (as the Postgres driver will parse it) and the TLS
    /// subsection.
    ///
    /// # Errors
    /// A message naming the key (never the URL: it may hold a password).
    pub fn validate(&self) -> Result<(), String> {
        url::Url::parse(self.url.expose_secret())
            .map_err(|e| format!("database.url (or DATABASE_URL) is not a URL: {e}"))?;
        self.tls.validate()
    }

    /// The URL with `[database.tls]` merged in.
    ///
    /// # Errors
    /// A URL that does not parse (see [`DatabaseSettings::validate`]).
    pub fn merged_url(&self) -> Result<SecretString, String> {
        if self.tls.params().is_empty() {
            // Untouched, not even normalized: what the operator wrote is what is used.
            return Ok(self.url.clone());
        }
        let url = url::Url::parse(self.url.expose_secret())
            .map_err(|e| format!("database.url (or DATABASE_URL) is not a URL: {e}"))?;
        Ok(SecretString::from(String::from(self.tls.merge_into(url))))
    }
}

fn serialize_redacted_url<S: Serializer>(v: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&super::redact::redact_url(v.expose_secret()))
}
