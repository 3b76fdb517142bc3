//! Switchyard's domain logic, pure and synchronous: no NATS, no Postgres, no HTTP.
//!
//! - [`validate`]: what makes a job or an item acceptable, and the reasons it is not.
//! - [`policy`]: how router scores become tiers (threshold, exact strong share).
//! - [`calibrate`]: job-level calibration (share, threshold, budget, quality) into one cut.
//! - [`rules`]: routing rules from the configuration (force a tier, shift a score).
//! - [`route`]: route planning: where each item of a job goes (pin, rule or policy) and why.
//! - [`estimate`]: expected tokens and cost of an item before any call.
//! - [`shadow`]: which weak-routed items also get a shadow call to the strong model.
//! - [`agreement`]: how far a weak and a strong answer agree (labels learned from the fleet).
//! - [`escalation`]: what is known after an answer, and the calibrated rule that escalates it.
//! - [`samples`]: the confidence of a model without logprobs: agreement of extra samples.
//! - [`audit`]: the audit sample of a job and its estimate of the quality delivered.
//! - [`quality`]: planning a `quality=Q` job (pilot, up-front share and escalation rule).
//! - [`pricing`]: exact cost of a call from its tokens and a price version.
//! - [`tariff`]: a price version's full tariff (cached input, batch discount) and its checks.
//! - [`prompt`]: the chat messages a task sends to a model.
//! - [`confidence`]: how sure a model was, from its logprobs, and whether to escalate.
//! - [`completion`]: reading a provider's chat completion body (pure, fuzzed).

pub mod agreement;
pub mod audit;
pub mod calibrate;
pub mod completion;
pub mod confidence;
pub mod escalation;
pub mod estimate;
pub mod messages;
pub mod policy;
pub mod pricing;
pub mod prompt;
pub mod quality;
pub mod route;
pub mod rules;
pub mod samples;
pub mod shadow;
pub mod tariff;
pub mod validate;
