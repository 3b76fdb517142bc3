//! Finance's side of the ledger: what the `prices`, `budget`, `ledger` and `purge` commands
//! and the ledger API share (docs/finance.md).
//!
//! - [`format`]: a ledger report as a table, FOCUS CSV or JSON.
//! - [`serve`]: the read-only ledger API and its dashboard (`switchyard ledger serve`).
//! - [`usage_report`]: a provider's usage export read as evidence for `ledger reconcile`.
//! - [`period`]: times, periods, amounts and ages as finance writes them on a command line.
//!
//! The queries themselves are the store's (`switchyard_store::ledger_reports`); this crate
//! shapes their input and output.

pub mod format;
pub mod period;
pub mod serve;
pub mod usage_report;
