//! Process plumbing shared by the dispatcher, the workers and the CLI.
//!
//! - [`finance_settings`]: the `[finance]` section (price refresh, budget holds, retention).
//! - [`settings`]: the TOML configuration plus `NATS_URL` / `DATABASE_URL`, validated into
//!   types that cannot be wrong (unknown keys are rejected, secrets never print).
//! - [`route_config`]: the deployment's routing configuration (tiers, rules, token ceilings).
//! - [`security_settings`]: NATS and Postgres authentication and TLS, team identity.
//! - [`reliability_settings`]: the per-model circuit breaker (`[worker.breaker]`).
//! - [`nats`]: connecting, and creating the streams and durable consumers idempotently.
//! - [`telemetry`]: tracing subscriber, pretty or JSON.
//! - [`metrics`]: Prometheus families and the `/metrics` server.
//! - [`shutdown`]: SIGINT/SIGTERM to a `CancellationToken`.

pub mod finance_settings;
pub mod metrics;
pub mod nats;
pub mod reliability_settings;
pub mod route_config;
pub mod security_settings;
pub mod settings;
pub mod shutdown;
pub mod telemetry;

pub use settings::Settings;
