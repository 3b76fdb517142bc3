//! The `switchyard` command as a library: everything the binary does is here, so tests call
//! the same code.
//!
//! - [`bench`]: `switchyard bench`, the fleet against the raw engines.
//! - [`chaos`]: `switchyard chaos`, crashes, restarts and provider faults during a job, and
//!   the books that show nothing was lost or paid twice.
//! - [`client`]: submit jobs and follow them (what `submit`, `wait`, `status`, `results`,
//!   `cancel` and `retry` use; any Rust program can use it too).
//! - [`input`]: reading a JSONL items file with errors that name the line.
//! - [`fleet`]: the whole fleet in one process (simulator, dispatcher, workers), for the demo
//!   and the end-to-end tests.
//! - [`demo`]: `switchyard demo`.
//! - [`report`]: rendering status and exporting results.
//! - [`exit`]: the exit codes, documented for pipelines.
//! - [`policy_arg`]: `--policy` (strong-share, threshold, budget-usd, quality, shadow).
//! - [`quote`]: `switchyard quote` (a job's expected cost, strong share and quality).
//! - [`router_cmd`]: `switchyard router …`, with [`explain`], [`audit`], [`learn`]
//!   (`train --from-db`) and [`cascade_cmd`] (cascade replay).
//! - [`security_cli`]: `audit local-only` and `security nats-permissions` (docs/security.md).
//! - [`finance_cli`]: `prices`, `budget`, `ledger` and `purge` (docs/finance.md), with
//!   [`ledger_format`] (table, FOCUS CSV, JSON), [`ledger_serve`] (the read-only API and
//!   dashboard), [`ledger_bench`] (the report at scale) and [`usage_report`] (provider usage
//!   evidence for `ledger reconcile`).

pub mod audit;
pub mod bench;
pub mod cascade_cmd;
pub mod chaos;
pub mod client;
pub mod demo;
pub mod exit;
pub mod explain;
pub mod finance_cli;
pub mod fleet;
pub mod input;
pub mod learn;
pub mod ledger_bench;
pub mod ledger_format;
pub mod ledger_serve;
pub mod policy_arg;
pub mod quote;
pub mod report;
pub mod router_cmd;
pub mod security_cli;
pub mod usage_report;
