//! Who may talk to the fleet, and how secrets are kept out of sight (docs/security.md).
//!
//! - `[nats.auth]`: user/password, token, nkey seed or a `.creds` file (JWT), each secret
//!   inline (a `secrecy::SecretString`, printed as `[redacted]`) or from an environment
//!   variable (`*_env`); `inbox_prefix` gives a client its own reply subjects, so NATS
//!   permissions can keep teams out of each other's replies.
//! - `[nats.tls]`: a CA to trust, a client certificate, TLS required.
//! - `[database.tls]`: Postgres TLS (`sslmode`, root certificate, client certificate), merged
//!   into the connection URL at load.
//! - `[security]`: whether a job's team comes from the subject it was submitted on
//!   (`<prefix>.jobs.submit.<team>`, which NATS permissions restrict per user) instead of the
//!   job's own `team` field, and the NATS user → team mapping those permissions are made
//!   from (`switchyard security nats-permissions` prints them).

use std::collections::BTreeMap;
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

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

    /// `url` with these settings as query parameters (`sslmode`, `sslrootcert`, `sslcert`,
    /// `sslkey`), replacing the URL's own.
    pub fn merge_into(&self, url: &str) -> String {
        let params: Vec<(&str, String)> = [
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
        .collect();
        if params.is_empty() {
            return url.to_owned();
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut kept: Vec<String> = query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .filter(|kv| {
                let key = kv.split('=').next().unwrap_or_default();
                !params.iter().any(|(k, _)| *k == key)
            })
            .map(str::to_owned)
            .collect();
        kept.extend(
            params
                .iter()
                .map(|(k, v)| format!("{k}={}", encode_query(v))),
        );
        format!("{base}?{}", kept.join("&"))
    }
}

fn encode_query(v: &str) -> String {
    v.chars()
        .map(|c| match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '-' | '_' | '.' | '~' | '/' => c.to_string(),
            other => {
                let mut buf = [0u8; 4];
                other
                    .encode_utf8(&mut buf)
                    .bytes()
                    .map(|b| format!("%{b:02X}"))
                    .collect()
            }
        })
        .collect()
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

/// Replaces the credentials of a NATS URL (`nats://user:password@host`, or a token
/// `nats://token@host`) with `[redacted]`, for messages and `--check-config`. Several
/// comma-separated URLs are each redacted.
pub fn redact_nats_url(url: &str) -> String {
    url.split(',')
        .map(|u| {
            let u = u.trim();
            match (u.find("://"), u.rfind('@')) {
                (Some(scheme), Some(at)) if at > scheme => {
                    format!("{}://[redacted]@{}", &u[..scheme], &u[at + 1..])
                }
                _ => u.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Splits the credentials off NATS URLs: the URLs without them, and `(user, password)` or
/// `(token, None)` from the first URL that has some (percent-decoded, as URL userinfo is).
pub fn split_url_credentials(url: &str) -> (String, Option<(String, Option<SecretString>)>) {
    let mut found = None;
    let bare = url
        .split(',')
        .map(|u| {
            let u = u.trim();
            match (u.find("://"), u.rfind('@')) {
                (Some(scheme), Some(at)) if at > scheme => {
                    let userinfo = &u[scheme + 3..at];
                    if found.is_none() {
                        found = Some(match userinfo.split_once(':') {
                            Some((user, password)) => (
                                percent_decode(user),
                                Some(SecretString::from(percent_decode(password))),
                            ),
                            None => (percent_decode(userinfo), None),
                        });
                    }
                    format!("{}://{}", &u[..scheme], &u[at + 1..])
                }
                _ => u.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    (bare, found)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Serializes a NATS URL redacted (for `--check-config`).
///
/// # Errors
/// The serializer's.
pub fn serialize_nats_url<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_nats_url(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_urls_lose_their_credentials() {
        assert_eq!(
            redact_nats_url("nats://u:hunter2@h:4222,tls://tok3n@k:1"),
            "nats://[redacted]@h:4222,tls://[redacted]@k:1"
        );
        assert_eq!(redact_nats_url("nats://h:4222"), "nats://h:4222");
    }

    #[test]
    fn credentials_leave_the_url() {
        let (bare, creds) = split_url_credentials("nats://u:p%40ss@h:1, nats://k:2");
        assert_eq!(bare, "nats://h:1,nats://k:2");
        let (user, password) = creds.unwrap();
        assert_eq!(
            (user.as_str(), password.unwrap().expose_secret()),
            ("u", "p@ss")
        );
        let (_, creds) = split_url_credentials("tls://tok@h:1");
        assert!(matches!(creds, Some((t, None)) if t == "tok"));
    }

    #[test]
    fn postgres_tls_becomes_url_parameters() {
        let tls = PostgresTls {
            ssl_mode: Some("verify-full".into()),
            root_cert: Some("/etc/ssl/ca dir/ca.pem".into()),
            ..PostgresTls::default()
        };
        assert_eq!(
            tls.merge_into("postgres://u@h/db?sslmode=disable&application_name=x"),
            "postgres://u@h/db?application_name=x&sslmode=verify-full&sslrootcert=/etc/ssl/ca%20dir/ca.pem"
        );
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
