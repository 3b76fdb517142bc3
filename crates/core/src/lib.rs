//! Switchyard's domain logic, pure and synchronous: no NATS, no Postgres, no HTTP.
//!
//! - [`validate`]: what makes a job or an item acceptable, and the reasons it is not.
//! - [`policy`]: how router scores become tiers (threshold, exact strong share).
//! - [`pricing`]: exact cost of a call from its tokens and a price version.
//! - [`prompt`]: the chat messages a task sends to a model.
//! - [`confidence`]: how sure a model was, from its logprobs, and whether to escalate.

pub mod confidence;
pub mod policy;
pub mod pricing;
pub mod prompt;
pub mod validate;
