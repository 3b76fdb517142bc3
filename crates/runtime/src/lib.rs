//! Process plumbing shared by the dispatcher, the workers and the CLI.
//!
//! - [`finance_settings`]: the `[finance]` section (price refresh, budget holds, retention).
//! - [`settings`]: the TOML configuration plus `NATS_URL` / `DATABASE_URL`, validated into
//!   types that cannot be wrong (unknown keys are rejected, secrets never print).
//! - [`nats`]: connecting, and creating the streams and durable consumers idempotently.
//! - [`telemetry`]: tracing subscriber, pretty or JSON.
//! - [`shutdown`]: SIGINT/SIGTERM to a `CancellationToken`.

pub mod finance_settings;
pub mod nats;
pub mod settings;
pub mod shutdown;
pub mod telemetry;

pub use settings::Settings;
