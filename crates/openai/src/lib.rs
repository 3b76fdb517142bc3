//! OpenAI's Batch API, the part of it a pipeline written against the official SDK touches:
//! upload a JSONL file of chat-completion requests, create a batch over it, poll it, download
//! its output and error files. This crate is the wire contract only (pure: serde, no I/O), so
//! the API server, the provider-batch client and the simulator read and write the same bytes.
//!
//! - [`objects`]: the file, batch and list objects the endpoints answer, with the batch's
//!   statuses and request counts.
//! - [`error`]: OpenAI's error body (`{"error": {message, type, param, code}}`).
//! - [`input`]: checking an uploaded batch input file line by line (the faults that fail a
//!   whole batch, each with its line), into the requests it holds.
//! - [`output`]: the output and error lines, one per request.

pub mod error;
pub mod input;
pub mod objects;
pub mod output;

/// The one endpoint batches are accepted for.
pub const CHAT_COMPLETIONS: &str = "/v1/chat/completions";

/// The one completion window OpenAI offers.
pub const COMPLETION_WINDOW: &str = "24h";
