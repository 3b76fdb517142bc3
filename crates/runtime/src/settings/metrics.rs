//! `[metrics]`: where a process serves Prometheus `/metrics` (see `crate::metrics`).

use serde::{Deserialize, Serialize};

/// Prometheus `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Address to serve `/metrics` on (e.g. `0.0.0.0:9464`); none: not served. The
    /// dispatcher and worker commands' `--metrics-listen` overrides it.
    pub listen: Option<std::net::SocketAddr>,
}
