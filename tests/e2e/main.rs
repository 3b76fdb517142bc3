#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

//! End-to-end scenarios: the real dispatcher and workers, in this process, against real NATS
//! JetStream and PostgreSQL, calling the simulator over real HTTP. Each test has its own
//! database and stream prefix, so they run in parallel.

mod anthropic;
mod bad_input;
mod bad_input_catalog;
mod budget_race;
mod cluster;
mod deadline;
mod dispatcher_concurrency;
mod exactly_once;
mod finance_support;
mod foreign_client;
mod jobs;
mod ledger_budgets;
mod ledger_dashboard;
mod ledger_finance;
mod ledger_in_doubt;
mod ledger_prices;
mod ledger_reconcile;
mod ledger_scale;
mod metrics;
mod provider_batches;
mod provider_faults;
mod quality;
mod quality_twin;
mod quota;
mod resilience;
mod routing;
mod security;
mod stuck_jobs;
mod support;
