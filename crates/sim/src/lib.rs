//! The model simulator: a real OpenAI-compatible HTTP server that stands in for model
//! providers in the demo, tests and benches.
//!
//! It replays real routing data (prompts with the quality real models achieved on them), so a
//! router and a worker fleet can be exercised end to end, at no cost, with realistic
//! right/wrong answers, token counts, confidences, latency, rate limits and failures.
//!
//! - [`dataset`]: loading the JSONL routing data into [`Dataset`] / [`Record`].
//! - [`replay`]: what a model answers to a question, and how sure it says it is.
//! - [`confidence`]: confidence calibrated to a chosen AUROC, and [`auroc`] to measure it.
//! - [`synthetic`]: answers for prompts the data does not know.
//! - [`openai`]: the chat-completions wire format and logprobs.
//! - [`faults`] and [`rate_limit`]: injected failures and rpm/tpm quotas.
//! - [`anthropic`]: Anthropic's Messages API; [`batches`] and [`message_batches`]: OpenAI's
//!   Batch API and Anthropic's Message Batches API, answered like calls at the batch discount.
//! - [`call_log`]: the record of every call served; [`bill`]: its exact bill at given prices.
//! - [`server`]: the axum routes; [`start`] returns a [`SimHandle`].
//! - [`cli`]: `switchyard sim`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), switchyard_sim::SimError> {
//! use std::sync::Arc;
//! let dataset = switchyard_sim::Dataset::load(&["data/demo/classify_mmlu.jsonl"])?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
//!     .await
//!     .map_err(switchyard_sim::SimError::Listener)?;
//! let sim = switchyard_sim::start(listener, Arc::new(dataset), Default::default()).await?;
//! println!("OpenAI base URL: {}", sim.base_url());
//! sim.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod anthropic;
pub mod batches;
pub mod bill;
pub mod call_log;
pub mod cli;
pub mod confidence;
pub mod config;
pub mod dataset;
pub mod error;
pub mod faults;
mod hashing;
pub mod message_batches;
pub mod openai;
pub mod rate_limit;
pub mod replay;
pub mod server;
pub mod synthetic;

pub use bill::{Bill, ModelPrice};
pub use call_log::CallRecord;
pub use confidence::auroc;
pub use config::SimConfig;
pub use dataset::{Dataset, ModelRecord, Record};
pub use error::SimError;
pub use faults::{FaultKind, Faults, OddAnswer};
pub use server::{SimHandle, start, start_one_question};
