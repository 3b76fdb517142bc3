//! `[nats]`: where the server is, and how streams, subjects and buckets are named.

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};
use switchyard_proto::Topology;

use super::security::{NatsAuth, NatsTls};

/// Default NATS server.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// NATS connection and naming.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSettings {
    /// Server URL, or several comma-separated (a cluster's seeds), so it stays a string;
    /// `NATS_URL` overrides it. Credentials in it are never printed.
    #[serde(serialize_with = "serialize_nats_url")]
    pub url: String,
    /// Prefix of every stream, subject and bucket name, so deployments can share a server.
    pub prefix: String,
    /// `file` (durable) or `memory` (tests).
    pub storage: StorageKind,
    /// Stream replicas (3 on a cluster).
    pub replicas: NonZeroUsize,
    /// How long JetStream remembers `Nats-Msg-Id`s to drop duplicate publishes.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// Authentication (`[nats.auth]`): user/password, token, nkey or a credentials file.
    pub auth: NatsAuth,
    /// TLS (`[nats.tls]`).
    pub tls: NatsTls,
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
            replicas: NonZeroUsize::MIN,
            duplicate_window: Duration::from_secs(300),
            auth: NatsAuth::default(),
            tls: NatsTls::default(),
        }
    }
}

impl NatsSettings {
    /// Checks the prefix and the auth and TLS subsections.
    ///
    /// # Errors
    /// A message naming the key and the value.
    pub fn validate(&self) -> Result<(), String> {
        Topology::new(&self.prefix).map_err(|e| format!("nats.prefix = {:?}: {e}", self.prefix))?;
        self.auth.validate()?;
        self.tls.validate()
    }
}

/// Serializes a NATS URL redacted (for `--check-config`).
///
/// # Errors
/// The serializer's.
pub fn serialize_nats_url<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&super::redact::redact_nats_url(url))
}
