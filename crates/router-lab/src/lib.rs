//! Offline router tooling: everything that builds a router artifact from benchmark rows and
//! proves what it is worth, with the same metrics as RouteLLM and RouterBench. The
//! dispatcher never links it (it links `switchyard-router`: artifact, features, model,
//! scoring).
//!
//! - [`data`]: the routing-data format (JSONL rows with per-model scores) as a router may
//!   see it, for training, evaluation and the twin; [`record`]: the same files read whole
//!   (responses, references, token counts) for the simulator's replay.
//! - [`train`], [`prior`]: fitting a router and measuring the quality level its gains add to.
//! - [`metrics`], [`baselines`], [`eval`], [`crossval`]: APGR, CPT, AIQ and the curves, the
//!   random/length/oracle baselines, evaluation and group cross-validation.
//! - [`adapt`]: adapting a router to the fleet's own answers (agreement labels).
//! - [`cascade`]: replaying a cascade (escalate below a confidence) on routing data.
//! - [`plot`]: the curves as pictures.
//! - [`cli`]: `switchyard router …` and the standalone `switchyard-router` binary.

pub mod adapt;
pub mod baselines;
pub mod cascade;
pub mod cli;
pub mod crossval;
pub mod data;
pub mod eval;
pub mod metrics;
pub mod plot;
pub mod prior;
pub mod record;
pub mod train;

#[cfg(test)]
mod test_rows;
