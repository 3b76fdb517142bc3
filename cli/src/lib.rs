//! The `switchyard` command as a library: everything the binary does is here, so tests call
//! the same code.
//!
//! - [`client`]: submit jobs and follow them (what `submit`, `wait`, `status`, `results`,
//!   `cancel` and `retry` use; any Rust program can use it too).
//! - [`input`]: reading a JSONL items file with errors that name the line.
//! - [`fleet`]: the whole fleet in one process (simulator, dispatcher, workers), for the demo
//!   and the end-to-end tests.
//! - [`demo`]: `switchyard demo`.
//! - [`report`]: rendering status and exporting results.
//! - [`exit`]: the exit codes, documented for pipelines.

pub mod client;
pub mod demo;
pub mod exit;
pub mod fleet;
pub mod input;
pub mod report;
