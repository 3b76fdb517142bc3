//! The wire contract of Switchyard.
//!
//! Everything that crosses NATS is defined here and encoded by [`codec`] (MessagePack with
//! named fields via `rmp-serde`), so a client in any language can follow it. The human
//! readable version of this contract is `docs/wire-protocol.md`.
//!
//! - [`chat`]: an OpenAI chat completion request as an item of a `chat` job.
//! - [`job`]: the job spec a submitter publishes on `<prefix>.jobs.submit`.
//! - [`work`]: one item routed to a tier, published by the dispatcher on
//!   `<prefix>.work.<tier>` and by workers when they escalate.
//! - [`event`]: progress and completion events on core NATS subjects.
//! - [`teams`]: team-scoped submit and results subjects (identity from NATS permissions).
//! - [`topology`]: stream, subject, bucket and header names derived from a deployment prefix.
//!
//! Versioning rules: every top-level message carries `v`. New fields are optional; a decoder
//! rejects a `v` greater than [`PROTOCOL_VERSION`] instead of guessing.

pub mod chat;
pub mod codec;
pub mod event;
pub mod job;
pub mod teams;
pub mod topology;
pub mod work;

/// The version of plain messages, which every reader since the first understands.
pub const PROTOCOL_VERSION: u16 = 1;

/// The version of messages that carry a deadline ([`JobSpec::deadline`],
/// [`WorkItem::deadline`]): a reader of an older version would run such an item in real time
/// (at the real-time price) without knowing it may wait, so it leaves the message for a newer
/// reader instead (a worker offers it again every `ack_wait`). Readers of this version read
/// chat items too.
pub const DEADLINE_VERSION: u16 = 3;

/// The highest message version this build understands: messages of chat jobs carry
/// [`chat::CHAT_VERSION`], messages with a deadline [`DEADLINE_VERSION`].
pub const MAX_VERSION: u16 = DEADLINE_VERSION;

/// The version a message about `task` needs, with or without a deadline: the lowest one
/// whose readers understand it, so older readers keep reading what they can.
pub fn version_for(task: &Task, has_deadline: bool) -> u16 {
    if has_deadline {
        DEADLINE_VERSION
    } else {
        task.message_version()
    }
}

pub use chat::{ChatItem, ChatMessage};
pub use codec::{DecodeError, decode, encode};
pub use job::{Cascade, InputRef, Item, JobSpec, Policy, Routing, Task, TaskKind};
pub use topology::Topology;
pub use work::{EscalationRule, WorkItem};
