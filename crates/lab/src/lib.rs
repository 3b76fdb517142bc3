//! The lab: what measures the fleet rather than runs it. None of it is on a production path.
//!
//! - [`bench`]: `switchyard bench`, the fleet against the raw engines (dispatch, end to end,
//!   quota, memory, overhead) and against other gateways (`bench gateway`).
//! - [`chaos`]: `switchyard chaos`, crashes, restarts and provider faults during a job, and
//!   the books that show nothing was lost or paid twice.
//! - [`ledger_bench`]: `switchyard ledger bench`, finance's report at scale.
//!
//! They stay subcommands of the one `switchyard` binary (the deploy scripts, CI and the
//! docs call `switchyard bench …` and `switchyard chaos`, and chaos restarts role processes
//! of the same binary it runs in); the code lives here so the CLI only parses and renders.

pub mod bench;
pub mod chaos;
pub mod ledger_bench;
