//! Process plumbing shared by the dispatcher, the workers and the CLI.
//!
//! - [`settings`]: the TOML configuration plus `NATS_URL` / `DATABASE_URL`, one module per
//!   section, validated into types that cannot be wrong (unknown keys are rejected, secrets
//!   never print). `settings::finance`, `settings::security` (NATS and Postgres
//!   authentication and TLS, team identity) and `settings::reliability` (the per-model
//!   circuit breaker) are sections like the others.
//! - [`route_config`]: the deployment's routing configuration (tiers, rules, token ceilings).
//! - [`nats`]: connecting, and creating the streams and durable consumers idempotently.
//! - [`telemetry`]: tracing subscriber, pretty or JSON.
//! - [`metrics`]: Prometheus families and the `/metrics` server.
//! - [`shutdown`]: SIGINT/SIGTERM to a `CancellationToken`.
//! - [`backoff`]: the pause between tries of a step waiting for a service to come back.

pub mod backoff;
pub mod metrics;
pub mod nats;
pub mod route_config;
pub mod settings;
pub mod shutdown;
pub mod telemetry;

pub use settings::Settings;
