//! Everything Switchyard keeps in Postgres. The schema is in `migrations/` at the repository
//! root; [`MIGRATOR`] applies it.
//!
//! - [`connect`]: a pool, creating the database first if it does not exist.
//! - [`jobs`]: job rows and their life cycle (ingesting → dispatching → running → done).
//! - [`items`]: item rows, inserted in batches by the dispatcher.
//! - [`outcomes`]: what workers write: results, ledger rows and item states, one
//!   transaction per batch of outcomes.
//! - [`prices`]: price versions; every ledger row references one.
//! - [`reports`]: read models for `status`, `results` and the demo report.
//!
//! Idempotency lives here: results are unique per `(job, item, attempt)`, ledger rows per
//! model call, dead letters per message; every insert is `ON CONFLICT DO NOTHING`, so a
//! redelivered message changes nothing it already changed.

pub mod connect;
pub mod dead_letters;
pub mod items;
pub mod jobs;
pub mod outcomes;
pub mod prices;
pub mod reports;

pub use connect::{connect, connect_and_migrate};

/// The schema migrations, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// sha256 of some text, hex: input hashes and spec hashes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
