//! How a simulator instance behaves: latency, confidence calibration, limits and faults.

use std::path::PathBuf;
use std::time::Duration;

use crate::confidence::{DEFAULT_AUROC, DEFAULT_BIAS};
use crate::faults::Faults;

/// Settings of one simulator server. `SimConfig::default()` is an instant, fault-free
/// provider with AUROC 0.75.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Base delay before each answer.
    pub latency: Duration,
    /// The delay varies uniformly by up to this much either way (never below zero).
    pub latency_jitter: Duration,
    /// AUROC of the reported confidence against replayed correctness.
    pub auroc: f64,
    /// Logit offset of all confidences: how sure of itself the model sounds overall. See
    /// [`crate::confidence`] for why the default is 2.0.
    pub confidence_bias: f64,
    /// Seeds the confidence noise and the fault/jitter rolls.
    pub seed: u64,
    /// Requests per minute per model; beyond it, 429.
    pub rpm_limit: Option<u32>,
    /// Tokens (prompt + completion) per minute per model; beyond it, 429.
    pub tpm_limit: Option<u32>,
    /// Faults at start; replace them at run time with [`crate::SimHandle::set_faults`].
    pub faults: Faults,
    /// Also append each call as a JSON line to this file.
    pub call_log_path: Option<PathBuf>,
    /// Send logprobs when asked (`false`: the no-logprobs mode of providers that never do;
    /// the agreement of repeated samples is then the only confidence signal, see
    /// [`crate::replay::sample`]).
    pub logprobs: bool,
    /// How long a batch of the batch API waits before its lines are answered.
    pub batch_delay: Duration,
    /// A batch expires after answering this many lines (the rest come back
    /// `batch_expired`); `None`: batches run to the end.
    pub batch_expire_after_lines: Option<usize>,
    /// The first this many batch creations are carried out but answered 503, so the
    /// client never learns the batch's id: what a client sees when it dies between creating
    /// a batch and recording it (it must find the batch again, not create a second).
    pub batch_creations_lost: usize,
    /// How long a batch creation takes before the batch exists (a large upload, a slow
    /// provider): a client must keep its claim on the batch meanwhile, not send it twice.
    pub batch_create_latency: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            latency_jitter: Duration::ZERO,
            auroc: DEFAULT_AUROC,
            confidence_bias: DEFAULT_BIAS,
            seed: 0,
            rpm_limit: None,
            tpm_limit: None,
            faults: Faults::default(),
            call_log_path: None,
            logprobs: true,
            batch_delay: Duration::ZERO,
            batch_expire_after_lines: None,
            batch_creations_lost: 0,
            batch_create_latency: Duration::ZERO,
        }
    }
}
