//! The record of every chat-completion call the simulator served, whatever its status.
//!
//! Tests and benches check a client's behaviour against it (how many calls, which faults,
//! which answers were correct), and `--call-log` appends it to a JSONL file for later analysis.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::SimError;

/// One served call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    /// 0, 1, 2, ... in the order calls were logged.
    pub seq: u64,
    /// The `id` of the chat.completion answered; `None` for errors and for bodies the client
    /// cannot use (a broken connection, malformed JSON, no choices).
    pub response_id: Option<String>,
    pub model: String,
    pub status: u16,
    /// The data record the prompt matched, if any.
    pub record_id: Option<String>,
    pub answer: Option<String>,
    /// Replayed correctness of the answer; `None` when unknown (synthetic answer or error).
    pub correct: Option<bool>,
    pub score: Option<f64>,
    pub confidence: Option<f64>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// When the call was logged, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The injected fault (`fail_next`, `rate_limit_next`, `rpm_limit`, `tpm_limit`,
    /// `error_rate`, `timeout`, `status`, `rate_limit`, `reset`, `trickle`, `malformed_json`,
    /// `no_usage`, `empty_choices`), if any.
    pub fault: Option<String>,
    /// The client tag of the route the call came in on (`/c/<tag>/v1/…`), if any: lets a
    /// test tell which client process made the call.
    #[serde(default)]
    pub client: Option<String>,
    /// The client's id of the request (`X-Client-Request-Id`), if it sent one: Switchyard
    /// sends its ledger call id, so the log can be matched to the ledger call by call.
    #[serde(default)]
    pub client_request_id: Option<String>,
    /// Choices answered (a request's `n`); `answer`, `correct` and `confidence` are the
    /// first one's, the tokens all of them.
    #[serde(default = "one")]
    pub choices: u32,
    /// Prompt tokens read from the prompt cache (Anthropic route), of `prompt_tokens`.
    #[serde(default)]
    pub cached_prompt_tokens: u32,
    /// Prompt tokens written to the prompt cache, and of those the ones kept an hour.
    #[serde(default)]
    pub cache_write_tokens: u32,
    #[serde(default)]
    pub cache_write_1h_tokens: u32,
}

fn one() -> u32 {
    1
}

impl CallRecord {
    /// True for a line of a batch (its client tag is `batch:<id>`): billed at the batch
    /// discount.
    pub fn is_batch_line(&self) -> bool {
        self.client
            .as_deref()
            .is_some_and(|c| c.starts_with(crate::batches::BATCH_TAG_PREFIX))
    }
}

/// The call ids (our `X-Client-Request-Id`) of the calls the simulator bills: what a ledger
/// that booked every billed call holds.
pub fn billed_ids(calls: &[CallRecord]) -> std::collections::BTreeSet<&str> {
    calls
        .iter()
        .filter(|c| c.billed())
        .filter_map(|c| c.client_request_id.as_deref())
        .collect()
}

/// The call ids of the calls the simulator served with `fault` (`"reset"`, `"timeout"`, …),
/// in the order it served them.
pub fn faulted_ids<'a>(calls: &'a [CallRecord], fault: &str) -> Vec<&'a str> {
    calls
        .iter()
        .filter(|c| c.fault.as_deref() == Some(fault))
        .filter_map(|c| c.client_request_id.as_deref())
        .collect()
}

impl CallRecord {
    /// True when the simulator answered `200` (usable or not, whole or broken off mid-body):
    /// it generated the answer, so it bills it, as a provider does. A call that hung past the
    /// client's timeout, before any answer, is not billed.
    pub fn billed(&self) -> bool {
        self.status == 200 && self.fault.as_deref() != Some("timeout")
    }

    /// An empty record for `model` with `status`; `seq` and `unix_ms` are set when logged.
    pub fn new(model: impl Into<String>, status: u16) -> Self {
        Self {
            seq: 0,
            response_id: None,
            model: model.into(),
            status,
            record_id: None,
            answer: None,
            correct: None,
            score: None,
            confidence: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            unix_ms: 0,
            fault: None,
            client: None,
            choices: 1,
            client_request_id: None,
            cached_prompt_tokens: 0,
            cache_write_tokens: 0,
            cache_write_1h_tokens: 0,
        }
    }
}

/// The in-memory log, mirrored to an append-only JSONL file when one is configured.
#[derive(Debug, Default)]
pub struct CallLog {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    calls: Vec<CallRecord>,
    file: Option<File>,
}

impl CallLog {
    /// A log that also appends to `path` (created if missing).
    pub fn with_file(path: &Path) -> Result<Self, SimError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| SimError::CallLog {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            inner: Mutex::new(Inner {
                calls: Vec::new(),
                file: Some(file),
            }),
        })
    }

    /// Stamps `call` with the next sequence number and the time, and stores it. The file line
    /// is written under the same lock, so the file is in `seq` order. A failed write is logged
    /// and otherwise ignored: losing a log line must not fail the call.
    pub fn record(&self, mut call: CallRecord) -> CallRecord {
        let mut inner = self.lock();
        call.seq = inner.calls.len() as u64;
        call.unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        if let Some(file) = inner.file.as_mut() {
            let written = serde_json::to_string(&call)
                .map_err(std::io::Error::from)
                .and_then(|line| file.write_all(format!("{line}\n").as_bytes()));
            if let Err(error) = written {
                tracing::warn!(%error, "cannot append to the call log file");
            }
        }
        inner.calls.push(call.clone());
        call
    }

    /// A copy of every call so far, in order.
    pub fn snapshot(&self) -> Vec<CallRecord> {
        self.lock().calls.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the log half-updated, so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_in_order_and_mirrors_to_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calls.jsonl");
        let log = CallLog::with_file(&path).unwrap();
        log.record(CallRecord::new("a", 200));
        let second = log.record(CallRecord::new("b", 500));
        assert_eq!(second.seq, 1);
        assert!(second.unix_ms > 0);
        let calls = log.snapshot();
        assert_eq!(calls.iter().map(|c| c.seq).collect::<Vec<_>>(), [0, 1]);

        let text = std::fs::read_to_string(&path).unwrap();
        let from_file: Vec<CallRecord> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(from_file, calls);
    }

    fn call(id: Option<&str>, status: u16, fault: Option<&str>) -> CallRecord {
        let mut c = CallRecord::new("m", status);
        c.client_request_id = id.map(str::to_owned);
        c.fault = fault.map(str::to_owned);
        c
    }

    #[test]
    fn every_answer_but_a_hang_is_billed() {
        let calls = [
            call(Some("a"), 200, None),
            call(Some("b"), 200, Some("no_usage")),
            call(Some("c"), 200, Some("timeout")),
            call(Some("d"), 503, Some("error_rate")),
            call(Some("e"), 200, Some("malformed_json")),
            call(Some("f"), 200, Some("reset")),
            call(None, 200, None),
        ];
        // A body broken off after its `200` was generated and is billed; a hang is not.
        assert_eq!(
            billed_ids(&calls),
            std::collections::BTreeSet::from(["a", "b", "e", "f"])
        );
    }
}
