//! The offline twin of the fleet's decision: `switchyard policy eval`.
//!
//! A job is replayed on a routing-data file the way the fleet would run it (routing, the
//! pilot, the plan, escalation with the simulator's confidence, the audit sample), with
//! every call priced, and its achieved quality (replayed scores, which the fleet cannot see)
//! printed next to the audit's estimate. So a policy can be tuned and tested without running
//! the fleet, on held-out groups (`--folds`), and an end-to-end test can check that the fleet
//! agrees with it.
//!
//! Why a crate of its own: the twin needs the router, the simulator's replay and the pure
//! decision code of `switchyard-core`; core cannot depend on the other two (it sits below
//! them), and the CLI's crate pulls in the whole fleet. Here it builds in seconds after a
//! change to the decision code, and the CLI, the demo and the tests share it.
//!
//! - [`data`]: a routing-data file as jobs see it (text, kind, group, both outcomes);
//! - [`folds`]: group folds and out-of-fold router scores;
//! - [`job`]: one job replayed ([`job::Twin::run`]);
//! - [`plot`]: a job's cost-quality frontier as SVG;
//! - [`cli`]: the `policy eval` command.

pub mod cli;
pub mod data;
pub mod folds;
pub mod job;
pub mod plot;
