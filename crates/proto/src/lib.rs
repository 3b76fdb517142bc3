//! The wire contract of Switchyard.
//!
//! Everything that crosses NATS is defined here and encoded by [`codec`] (MessagePack with
//! named fields via `rmp-serde`), so a client in any language can follow it. The human
//! readable version of this contract is `docs/wire-protocol.md`.
//!
//! - [`job`]: the job spec a submitter publishes on `<prefix>.jobs.submit`.
//! - [`work`]: one item routed to a tier, published by the dispatcher on
//!   `<prefix>.work.<tier>` and by workers when they escalate.
//! - [`event`]: progress and completion events on core NATS subjects.
//! - [`teams`]: team-scoped submit and results subjects (identity from NATS permissions).
//! - [`topology`]: stream, subject, bucket and header names derived from a deployment prefix.
//!
//! Versioning rules: every top-level message carries `v`. New fields are optional; a decoder
//! rejects a `v` greater than [`PROTOCOL_VERSION`] instead of guessing.

pub mod codec;
pub mod event;
pub mod job;
pub mod teams;
pub mod topology;
pub mod work;

/// The highest message version this build understands and the one it writes.
pub const PROTOCOL_VERSION: u16 = 1;

pub use codec::{DecodeError, decode, encode};
pub use job::{Cascade, InputRef, Item, JobSpec, Policy, Routing, Task, TaskKind};
pub use topology::Topology;
pub use work::{EscalationRule, WorkItem};
