//! Who may talk to the fleet, and how secrets are kept out of sight (docs/security.md).
//!
//! - `[nats.auth]`: user/password, token, nkey seed or a `.creds` file (JWT), each secret
//!   inline (a `secrecy::SecretString`, printed as `[redacted]`) or from an environment
//!   variable (`*_env`); `inbox_prefix` gives a client its own reply subjects, so NATS
//!   permissions can keep teams out of each other's replies.
//! - `[nats.tls]`: a CA to trust, a client certificate, TLS required.
//! - `[database.tls]`: Postgres TLS (`sslmode`, root certificate, client certificate), merged
//!   into the connection URL at load.
//! - Credentials inside URLs are redacted by one rule for every URL (see `redact`).
//! - `[security]`: whether a job's team comes from the subject it was submitted on
//!   (`<prefix>.jobs.submit.<team>`, which NATS permissions restrict per user) instead of the
//!   job's own `team` field, and the NATS user → team mapping those permissions are made
//!   from (`switchyard security nats-permissions` prints them).

use std::collections::BTreeMap;
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};
use url::Url;

/// How a process authenticates to NATS (`[nats.auth]`). At most one method.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsAuth {
    pub user: Option<String>,
    #[serde(serialize_with = "redacted")]
    pub password: Option<SecretString>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    #[serde(serialize_with = "redacted")]
    pub token: Option<SecretString>,
    pub token_env: Option<String>,
    /// An nkey seed (`SU…`).
    #[serde(serialize_with = "redacted")]
    pub nkey_seed: Option<SecretString>,
    pub nkey_seed_env: Option<String>,
    /// A `.creds` file (user JWT and nkey seed), for operator/JWT deployments.
    pub credentials_file: Option<PathBuf>,
    /// Reply subjects of this client start with it (`_INBOX` when unset). Give each team
    /// user its own (`_INBOX_<user>`) and allow it only that in its subscribe permissions.
    pub inbox_prefix: Option<String>,
}

/// TLS to NATS (`[nats.tls]`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsTls {
    /// Refuse a server that does not speak TLS.
    pub required: bool,
    /// PEM file of the CA(s) that signed the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), for servers that verify clients.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// TLS to Postgres (`[database.tls]`), merged into the URL as libpq-style parameters.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresTls {
    /// `disable`, `prefer`, `require`, `verify-ca` or `verify-full`; unset: the URL's own.
    pub ssl_mode: Option<String>,
    pub root_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// `[security]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySettings {
    /// The team a job is billed to is the `<team>` of the subject it was submitted on
    /// (`<prefix>.jobs.submit.<team>`); submissions on the bare `<prefix>.jobs.submit` and jobs
    /// whose `team` field names another team are rejected. Pair it with NATS permissions
    /// that let each user publish only on its team's subject.
    pub team_from_subject: bool,
    /// NATS user → team: the users whose permissions `switchyard security nats-permissions`
    /// renders (each may submit and read results as its team only).
    pub nats_users: BTreeMap<String, String>,
}

const SSL_MODES: &[&str] = &["disable", "prefer", "require", "verify-ca", "verify-full"];

fn redacted<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("[redacted]"),
        None => s.serialize_none(),
    }
}

/// A secret given inline or through an environment variable.
fn resolve(
    what: &str,
    inline: Option<&SecretString>,
    env: Option<&str>,
) -> Result<Option<SecretString>, String> {
    if let Some(s) = inline {
        return Ok(Some(s.clone()));
    }
    match env {
        None => Ok(None),
        Some(var) => std::env::var(var)
            .map(|v| Some(SecretString::from(v)))
            .map_err(|_| format!("nats.auth.{what}_env: environment variable `{var}` is not set")),
    }
}

/// A team name usable as one subject token (and so in NATS permissions).
pub fn is_subject_safe(team: &str) -> bool {
    !team.is_empty()
        && team.len() <= 64
        && team
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl NatsAuth {
    /// Checks that at most one method is configured.
    ///
    /// # Errors
    /// A message naming the keys.
    pub fn validate(&self) -> Result<(), String> {
        let methods = [
            self.user.is_some(),
            self.token.is_some() || self.token_env.is_some(),
            self.nkey_seed.is_some() || self.nkey_seed_env.is_some(),
            self.credentials_file.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(
                "nats.auth: choose one of user/password, token, nkey_seed, credentials_file".into(),
            );
        }
        if (self.password.is_some() || self.password_env.is_some()) && self.user.is_none() {
            return Err("nats.auth: a password needs a user".into());
        }
        Ok(())
    }

    /// Applies the method (secrets resolved now) to `options`.
    ///
    /// # Errors
    /// A missing environment variable or an unreadable credentials file (the message names
    /// the variable or file, never a secret).
    pub async fn apply(
        &self,
        mut options: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, String> {
        if let Some(user) = &self.user {
            let password = resolve(
                "password",
                self.password.as_ref(),
                self.password_env.as_deref(),
            )?
            .map(|p| p.expose_secret().to_owned())
            .unwrap_or_default();
            options = options.user_and_password(user.clone(), password);
        }
        if let Some(token) = resolve("token", self.token.as_ref(), self.token_env.as_deref())? {
            options = options.token(token.expose_secret().to_owned());
        }
        if let Some(seed) = resolve(
            "nkey_seed",
            self.nkey_seed.as_ref(),
            self.nkey_seed_env.as_deref(),
        )? {
            options = options.nkey(seed.expose_secret().to_owned());
        }
        if let Some(path) = &self.credentials_file {
            options = options.credentials_file(path).await.map_err(|e| {
                format!(
                    "nats.auth.credentials_file `{}` cannot be read: {}",
                    path.display(),
                    e.kind()
                )
            })?;
        }
        if let Some(prefix) = &self.inbox_prefix {
            options = options.custom_inbox_prefix(prefix);
        }
        Ok(options)
    }
}

impl NatsTls {
    /// Applies the TLS settings to `options`.
    pub fn apply(&self, mut options: async_nats::ConnectOptions) -> async_nats::ConnectOptions {
        if self.required {
            options = options.require_tls(true);
        }
        if let Some(ca) = &self.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        options
    }

    /// Checks that a client certificate comes with its key.
    ///
    /// # Errors
    /// A message naming the keys.
    pub fn validate(&self) -> Result<(), String> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("nats.tls: cert_file and key_file go together".into());
        }
        Ok(())
    }
}

impl PostgresTls {
    /// Checks the mode.
    ///
    /// # Errors
    /// A message naming the value.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(mode) = &self.ssl_mode
            && !SSL_MODES.contains(&mode.as_str())
        {
            return Err(format!(
                "database.tls.ssl_mode `{mode}` is not one of {}",
                SSL_MODES.join(", ")
            ));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err("database.tls: client_cert and client_key go together".into());
        }
        Ok(())
    }

    /// These settings as libpq-style query parameters (`sslmode`, `sslrootcert`, `sslcert`,
    /// `sslkey`); empty when none is set.
    pub(super) fn params(&self) -> Vec<(&'static str, String)> {
        [
            ("sslmode", self.ssl_mode.clone()),
            (
                "sslrootcert",
                self.root_cert.as_ref().map(|p| p.display().to_string()),
            ),
            (
                "sslcert",
                self.client_cert.as_ref().map(|p| p.display().to_string()),
            ),
            (
                "sslkey",
                self.client_key.as_ref().map(|p| p.display().to_string()),
            ),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }

    /// `url` with these settings as query parameters, replacing the URL's own. The query is
    /// written by `url` (form encoding), which is how the Postgres driver reads it back.
    pub fn merge_into(&self, mut url: Url) -> Url {
        let params = self.params();
        if params.is_empty() {
            return url;
        }
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(key, _)| !params.iter().any(|(k, _)| k == key))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        url.query_pairs_mut()
            .clear()
            .extend_pairs(kept)
            .extend_pairs(params);
        url
    }
}

impl SecuritySettings {
    /// Checks that every mapped team can be a subject token.
    ///
    /// # Errors
    /// A message naming the team.
    pub fn validate(&self) -> Result<(), String> {
        for (user, team) in &self.nats_users {
            if !is_subject_safe(team) {
                return Err(format!(
                    "security.nats_users.{user}: team `{team}` must be 1-64 of A-Z a-z 0-9 - _"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_tls_becomes_url_parameters() {
        let tls = PostgresTls {
            ssl_mode: Some("verify-full".into()),
            root_cert: Some("/etc/ssl/ca dir/ca.pem".into()),
            ..PostgresTls::default()
        };
        let merged = tls.merge_into(
            Url::parse("postgres://u@h/db?sslmode=disable&application_name=x").unwrap(),
        );
        let pairs: Vec<(String, String)> = merged.query_pairs().into_owned().collect();
        assert_eq!(
            pairs,
            [
                ("application_name", "x"),
                ("sslmode", "verify-full"),
                ("sslrootcert", "/etc/ssl/ca dir/ca.pem"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        let plain = Url::parse("postgres://u@h/db").unwrap();
        assert_eq!(PostgresTls::default().merge_into(plain.clone()), plain);
        assert!(
            PostgresTls {
                ssl_mode: Some("sometimes".into()),
                ..PostgresTls::default()
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn one_auth_method_at_a_time() {
        let auth = NatsAuth {
            user: Some("u".into()),
            token: Some(SecretString::from("t")),
            ..NatsAuth::default()
        };
        assert!(auth.validate().is_err());
        assert!(!is_subject_safe("a.b") && is_subject_safe("team-1_x"));
    }
}
