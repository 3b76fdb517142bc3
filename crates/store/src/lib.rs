//! Everything Switchyard keeps in Postgres. The schema is in `migrations/` at the repository
//! root; [`MIGRATOR`] applies it.
//!
//! - [`api`]: the OpenAI-compatible Batch API's keys (hashed), files and batches.
//! - [`audit`]: did a `local_only` item reach an external model (`reporting.local_only_calls`).
//! - [`connect`]: a pool, creating the database first if it does not exist.
//! - [`jobs`]: job rows and their life cycle (ingesting → dispatching → running → done).
//! - [`items`]: item rows, inserted in batches by the dispatcher.
//! - [`intents`]: call intents (written before a request leaves, the claim on an attempt)
//!   and worker leases; in-doubt bookings of calls whose worker is gone.
//! - [`outcomes`]: what workers write: results, ledger rows and item states, one
//!   transaction per batch of outcomes.
//! - [`prices`]: price versions, effective-dated and never changed; every ledger row
//!   references the version in force at its call's time.
//! - [`quality`]: a `quality=Q` job's pilot answers, plan, the team's labelled history and
//!   the answers its audit estimate is computed from.
//! - [`reports`]: read models for `status`, `results` and the demo report.
//! - [`routing`]: why each item went where it went, job plans, and the weak/strong answer
//!   pairs the fleet learns from.
//! - [`sweep`]: what a dispatcher's sweep reads of unfinished jobs (progress, lost attempts).
//!
//! Finance (docs/finance.md): [`booking`] (what a ledger row needs beyond the call),
//! [`budgets`] (limits, reservations, parked items, soft-limit warnings), [`corrections`]
//! (reversal entries), [`reconcile`] (settling in-doubt and estimated entries against a
//! provider's usage evidence), [`ledger_reports`] (grouped spend from the daily rollup or the
//! ledger), [`retention`] (purging prompts and answers), [`finance_role`] (the read-only
//! role), [`money`] (exact decimal strings).
//!
//! Idempotency lives here: results are unique per `(job, item, attempt)`, ledger rows per
//! model call, dead letters per message; every insert is `ON CONFLICT DO NOTHING`, so a
//! redelivered message changes nothing it already changed.

pub mod api;
pub mod audit;
pub mod booking;
pub mod budgets;
pub mod connect;
pub mod corrections;
pub mod dead_letters;
pub mod finance_role;
pub mod intents;
pub mod items;
pub mod jobs;
pub mod ledger_reports;
pub mod money;
pub mod outcomes;
pub mod prices;
pub mod provider_batches;
pub mod quality;
pub mod reconcile;
pub mod reports;
pub mod retention;
pub mod routing;
pub mod sweep;

pub use connect::{
    connect, connect_and_migrate, connect_and_migrate_waiting, connect_punctual, is_transient,
    is_transient_sqlx,
};

/// The schema migrations, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// sha256 of some text, hex: input hashes and spec hashes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
