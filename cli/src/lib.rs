//! The `switchyard` command as a library: the command groups the binary parses, so tests
//! call the same code. What the commands run lives in library crates: jobs in
//! `switchyard-client`, the demo and its in-process fleet in `switchyard-demo`, finance's
//! formats and ledger API in `switchyard-finance`, benches and chaos in `switchyard-lab`.
//!
//! - [`quote`]: `switchyard quote` (a job's expected cost, strong share and quality;
//!   computed by `switchyard_client::quote`, explained item by item by
//!   `switchyard_client::explain`).
//! - [`router_cmd`]: `switchyard router …`, with [`audit`], [`learn`]
//!   (`train --from-db`) and [`cascade_cmd`] (cascade replay).
//! - [`security_cli`]: `audit local-only` and `security nats-permissions` (docs/security.md).
//! - [`finance_cli`]: `prices`, `budget`, `ledger` and `purge` (docs/finance.md).

pub mod audit;
pub mod cascade_cmd;
pub mod finance_cli;
pub mod learn;
pub mod quote;
pub mod router_cmd;
pub mod security_cli;
