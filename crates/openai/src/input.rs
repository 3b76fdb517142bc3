//! Checking a batch input file: JSONL, one request a line,
//! `{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body": {...}}`.
//!
//! Two kinds of fault, as OpenAI has them:
//! - **file faults** fail the whole batch before anything runs, each reported with its line
//!   in the batch's `errors` ([`FileCheck`]): a line that is not a JSON object, a missing or
//!   duplicate `custom_id`, a `url` other than the batch's endpoint, a method other than
//!   `POST`, a missing `body`, more than [`MAX_REQUESTS`] lines or [`MAX_FILE_BYTES`] bytes;
//! - **request faults** go to the error file while the rest of the batch runs
//!   ([`check_chat`]): `n > 1`, `stream`, tools, parts that are not text, a body that is not a
//!   chat completion request. (Unknown models, oversized items, provider refusals and budget
//!   refusals are found later, by the fleet, and go to the error file the same way.)
//!
//! The check reads a line at a time and keeps only the custom ids seen, so a file can be
//! streamed from the object store.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::error::ErrorBody;
use crate::objects::BatchError;

/// The most requests one batch may hold.
pub const MAX_REQUESTS: u64 = 50_000;
/// The largest input file, in bytes.
pub const MAX_FILE_BYTES: u64 = 200 * 1024 * 1024;
/// The longest `custom_id`, in bytes: it becomes the id of the item in the fleet, whose
/// ids are at most this long (`switchyard_core::validate::Limits::max_name_bytes`). A longer
/// one, or one holding control characters, is a fault of its line, not of the whole job
/// once it runs.
pub const MAX_CUSTOM_ID_BYTES: usize = 256;
/// A failed batch reports at most this many faults (the first ones, in line order).
pub const MAX_REPORTED: usize = 100;

/// One request of a batch, as the file holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// 1-based line.
    pub line: u64,
    pub custom_id: String,
    /// The chat completion request, untouched.
    pub body: Map<String, Value>,
}

/// The checks of one input file, fed a line at a time.
#[derive(Debug)]
pub struct FileCheck {
    endpoint: String,
    seen: HashSet<String>,
    lines: u64,
    requests: u64,
    bytes: u64,
    errors: Vec<BatchError>,
    more_errors: u64,
}

fn fault(code: &str, line: Option<u64>, param: Option<&str>, message: String) -> BatchError {
    BatchError {
        code: code.to_owned(),
        message,
        param: param.map(str::to_owned),
        line,
    }
}

impl FileCheck {
    /// Checks for a batch of `endpoint`.
    pub fn new(endpoint: &str) -> Self {
        Self {
            endpoint: endpoint.to_owned(),
            seen: HashSet::new(),
            lines: 0,
            requests: 0,
            bytes: 0,
            errors: Vec::new(),
            more_errors: 0,
        }
    }

    fn report(&mut self, e: BatchError) {
        if self.errors.len() < MAX_REPORTED {
            self.errors.push(e);
        } else {
            self.more_errors += 1;
        }
    }

    /// Checks the next line (without its newline). Blank lines are skipped, as the SDK's
    /// own writers never produce them but editors do. Returns the request when the line is
    /// a good one.
    pub fn line(&mut self, text: &str) -> Option<Request> {
        self.lines += 1;
        self.bytes += text.len() as u64 + 1;
        let line = self.lines;
        if text.trim().is_empty() {
            return None;
        }
        self.requests += 1;
        if self.requests == MAX_REQUESTS + 1 {
            self.report(fault(
                "too_many_requests",
                Some(line),
                None,
                format!("the file has more than {MAX_REQUESTS} requests"),
            ));
        }
        match self.parse(line, text) {
            Ok(r) => Some(r),
            Err(e) => {
                self.report(e);
                None
            }
        }
    }

    /// Records the next line as one of `len` bytes, over the `limit` a request's line may
    /// have (it is not read: a line of hundreds of megabytes would take the reader's memory,
    /// and no request of the fleet is that large).
    pub fn too_long(&mut self, len: usize, limit: usize) {
        self.unread_line(len, "line_too_long", |line| {
            format!("line {line} is {len} bytes long (limit {limit} a request)")
        });
    }

    /// Records the next line as one that is not UTF-8 text (so not JSON either).
    pub fn not_text(&mut self, len: usize) {
        self.unread_line(len, "invalid_json_line", |line| {
            format!("line {line} is not UTF-8 text")
        });
    }

    /// Counts the next line, of `len` bytes, as a request whose line is not read, and
    /// reports it under `code` with the message `says` writes for its line number.
    fn unread_line(&mut self, len: usize, code: &str, says: impl FnOnce(u64) -> String) {
        self.lines += 1;
        self.requests += 1;
        self.bytes += len as u64 + 1;
        let line = self.lines;
        self.report(fault(code, Some(line), None, says(line)));
    }

    fn parse(&mut self, line: u64, text: &str) -> Result<Request, BatchError> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            fault(
                "invalid_json_line",
                Some(line),
                None,
                format!("line {line} is not valid JSON: {e}"),
            )
        })?;
        let Value::Object(mut obj) = value else {
            return Err(fault(
                "invalid_json_line",
                Some(line),
                None,
                format!("line {line} is not a JSON object"),
            ));
        };
        let custom_id = match obj.remove("custom_id") {
            Some(Value::String(s)) if s.len() > MAX_CUSTOM_ID_BYTES => {
                return Err(fault(
                    "invalid_custom_id",
                    Some(line),
                    Some("custom_id"),
                    format!(
                        "line {line}: custom_id is {} bytes long (limit {MAX_CUSTOM_ID_BYTES})",
                        s.len()
                    ),
                ));
            }
            Some(Value::String(s)) if s.chars().any(char::is_control) => {
                return Err(fault(
                    "invalid_custom_id",
                    Some(line),
                    Some("custom_id"),
                    format!("line {line}: custom_id {s:?} contains control characters"),
                ));
            }
            Some(Value::String(s)) if !s.is_empty() => s,
            Some(Value::String(_)) | None | Some(Value::Null) => {
                return Err(fault(
                    "missing_required_parameter",
                    Some(line),
                    Some("custom_id"),
                    format!("line {line} has no custom_id"),
                ));
            }
            Some(other) => {
                return Err(fault(
                    "invalid_custom_id",
                    Some(line),
                    Some("custom_id"),
                    format!("line {line}: custom_id must be a string, found {other}"),
                ));
            }
        };
        match obj.get("method").and_then(Value::as_str) {
            Some("POST") => {}
            other => {
                return Err(fault(
                    "invalid_method",
                    Some(line),
                    Some("method"),
                    format!(
                        "line {line} (custom_id `{custom_id}`): method must be POST, found {}",
                        other.map_or_else(|| "none".to_owned(), |m| format!("`{m}`"))
                    ),
                ));
            }
        }
        let url = obj.get("url").and_then(Value::as_str).unwrap_or_default();
        if url != self.endpoint {
            return Err(fault(
                "mismatched_endpoint",
                Some(line),
                Some("url"),
                format!(
                    "line {line} (custom_id `{custom_id}`): url `{url}` is not the batch's endpoint {}",
                    self.endpoint
                ),
            ));
        }
        let Some(Value::Object(body)) = obj.remove("body") else {
            return Err(fault(
                "missing_required_parameter",
                Some(line),
                Some("body"),
                format!("line {line} (custom_id `{custom_id}`): body must be a JSON object"),
            ));
        };
        if !self.seen.insert(custom_id.clone()) {
            return Err(fault(
                "duplicate_custom_id",
                Some(line),
                Some("custom_id"),
                format!(
                    "line {line}: custom_id `{custom_id}` is a duplicate of an earlier request; \
                     it must be unique within a batch"
                ),
            ));
        }
        Ok(Request {
            line,
            custom_id,
            body,
        })
    }

    /// The file's verdict once every line is in: its request count, or the faults that fail
    /// the batch (the first [`MAX_REPORTED`], in line order, and a last entry counting the
    /// rest).
    ///
    /// # Errors
    /// Every fault found.
    pub fn finish(mut self) -> Result<u64, Vec<BatchError>> {
        if self.bytes > MAX_FILE_BYTES {
            let bytes = self.bytes;
            self.report(fault(
                "file_too_large",
                None,
                None,
                format!("the file has {bytes} bytes; at most {MAX_FILE_BYTES} are allowed"),
            ));
        }
        if self.requests == 0 && self.errors.is_empty() {
            self.report(fault(
                "empty_file",
                None,
                None,
                "the file has no requests".to_owned(),
            ));
        }
        if self.more_errors > 0 {
            let n = self.more_errors;
            self.errors.push(fault(
                "too_many_errors",
                None,
                None,
                format!("{n} more faults are not listed"),
            ));
        }
        if self.errors.is_empty() {
            Ok(self.requests)
        } else {
            Err(self.errors)
        }
    }
}

/// Checks a whole file in memory (tests and small files; the server streams).
///
/// # Errors
/// The faults that fail the batch.
pub fn check_file(text: &str, endpoint: &str) -> Result<Vec<Request>, Vec<BatchError>> {
    let mut check = FileCheck::new(endpoint);
    let requests: Vec<Request> = text.lines().filter_map(|l| check.line(l)).collect();
    check.finish().map(|_| requests)
}

/// The chat completion parameters passed to the model as they are.
pub const PASSED_THROUGH: &[&str] = &[
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "response_format",
];

/// A request the fleet will not send, with what goes to the error file for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFault {
    pub status_code: u16,
    pub body: ErrorBody,
}

impl RequestFault {
    fn bad(param: &str, message: impl Into<String>) -> Self {
        Self {
            status_code: 400,
            body: ErrorBody::invalid_request(param, message),
        }
    }
}

/// A chat request the fleet can answer: its model and its messages (text only).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    /// `(role, text)` in order; a content of text parts is joined with newlines.
    pub messages: Vec<(String, String)>,
    /// The [`PASSED_THROUGH`] parameters the request set.
    pub params: Map<String, Value>,
}

/// Checks one request's body as a chat completion request the fleet can answer.
///
/// # Errors
/// What the error file says about it (status 400 and OpenAI's error body).
pub fn check_chat(body: &Map<String, Value>) -> Result<ChatRequest, RequestFault> {
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() => m.clone(),
        _ => return Err(RequestFault::bad("model", "model is required")),
    };
    if let Some(n) = body.get("n")
        && n.as_u64() != Some(1)
        && !n.is_null()
    {
        return Err(RequestFault::bad(
            "n",
            format!("n = {n} is not supported: one choice per request"),
        ));
    }
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(RequestFault::bad(
            "stream",
            "stream is not supported in a batch",
        ));
    }
    for key in ["tools", "functions", "tool_choice", "function_call"] {
        if body.get(key).is_some_and(|v| !v.is_null()) {
            return Err(RequestFault::bad(
                key,
                format!("{key} is not supported: text chat completions only"),
            ));
        }
    }
    let Some(Value::Array(raw)) = body.get("messages") else {
        return Err(RequestFault::bad("messages", "messages must be an array"));
    };
    if raw.is_empty() {
        return Err(RequestFault::bad("messages", "messages is empty"));
    }
    let mut messages = Vec::with_capacity(raw.len());
    for (i, m) in raw.iter().enumerate() {
        let param = format!("messages[{i}]");
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| RequestFault::bad(&param, format!("{param} has no role")))?;
        let text = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut texts = Vec::with_capacity(parts.len());
                for (j, p) in parts.iter().enumerate() {
                    match (p.get("type").and_then(Value::as_str), p.get("text")) {
                        (Some("text"), Some(Value::String(t))) => texts.push(t.as_str()),
                        (kind, _) => {
                            return Err(RequestFault::bad(
                                &format!("{param}.content[{j}]"),
                                format!(
                                    "{param}.content[{j}] is a `{}` part; only text parts are supported",
                                    kind.unwrap_or("untyped")
                                ),
                            ));
                        }
                    }
                }
                texts.join("\n")
            }
            _ => {
                return Err(RequestFault::bad(
                    &param,
                    format!("{param} has no text content"),
                ));
            }
        };
        messages.push((role.to_owned(), text));
    }
    let params = PASSED_THROUGH
        .iter()
        .filter_map(|k| Some(((*k).to_owned(), body.get(*k)?.clone())))
        .filter(|(_, v)| !v.is_null())
        .collect();
    Ok(ChatRequest {
        model,
        messages,
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CHAT_COMPLETIONS;
    use serde_json::json;

    fn line(id: &str) -> String {
        json!({"custom_id": id, "method": "POST", "url": CHAT_COMPLETIONS,
               "body": {"model": "switchyard:auto", "messages": [{"role": "user", "content": "hi"}]}})
        .to_string()
    }

    #[test]
    fn a_good_file_gives_its_requests_in_order() {
        let text = format!("{}\n\n{}\n", line("a"), line("b"));
        let reqs = check_file(&text, CHAT_COMPLETIONS).unwrap();
        assert_eq!(
            reqs.iter()
                .map(|r| (r.line, r.custom_id.as_str()))
                .collect::<Vec<_>>(),
            [(1, "a"), (3, "b")]
        );
        assert_eq!(reqs[0].body["model"], "switchyard:auto");
    }

    #[test]
    fn every_file_fault_is_reported_with_its_line_and_code() {
        let lines = [
            line("a"),
            "not json".to_owned(),
            "[1]".to_owned(),
            json!({"method": "POST", "url": CHAT_COMPLETIONS, "body": {}}).to_string(),
            line("a"),
            json!({"custom_id": "u", "method": "POST", "url": "/v1/embeddings", "body": {}})
                .to_string(),
            json!({"custom_id": "m", "method": "GET", "url": CHAT_COMPLETIONS, "body": {}})
                .to_string(),
            json!({"custom_id": "b", "method": "POST", "url": CHAT_COMPLETIONS}).to_string(),
            json!({"custom_id": 7, "method": "POST", "url": CHAT_COMPLETIONS, "body": {}})
                .to_string(),
            json!({"custom_id": "t\tab", "method": "POST", "url": CHAT_COMPLETIONS, "body": {}})
                .to_string(),
            json!({"custom_id": "x".repeat(MAX_CUSTOM_ID_BYTES + 1), "method": "POST",
                   "url": CHAT_COMPLETIONS, "body": {}})
            .to_string(),
            json!({"custom_id": "x".repeat(MAX_CUSTOM_ID_BYTES), "method": "POST",
                   "url": CHAT_COMPLETIONS, "body": {}})
            .to_string(),
        ];
        let errors = check_file(&lines.join("\n"), CHAT_COMPLETIONS).unwrap_err();
        let got: Vec<(Option<u64>, &str, Option<&str>)> = errors
            .iter()
            .map(|e| (e.line, e.code.as_str(), e.param.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (Some(2), "invalid_json_line", None),
                (Some(3), "invalid_json_line", None),
                (Some(4), "missing_required_parameter", Some("custom_id")),
                (Some(5), "duplicate_custom_id", Some("custom_id")),
                (Some(6), "mismatched_endpoint", Some("url")),
                (Some(7), "invalid_method", Some("method")),
                (Some(8), "missing_required_parameter", Some("body")),
                (Some(9), "invalid_custom_id", Some("custom_id")),
                (Some(10), "invalid_custom_id", Some("custom_id")),
                (Some(11), "invalid_custom_id", Some("custom_id")),
            ]
        );
        assert!(errors[3].message.contains("`a`"), "{}", errors[3].message);
    }

    #[test]
    fn limits_and_empty_files_fail_the_batch() {
        let errors = check_file("\n\n", CHAT_COMPLETIONS).unwrap_err();
        assert_eq!(errors[0].code, "empty_file");
        let mut check = FileCheck::new(CHAT_COMPLETIONS);
        let one = line("x");
        for i in 0..=MAX_REQUESTS {
            // Distinct ids without re-serializing: the check reads the id as it is.
            check.line(&one.replacen("\"x\"", &format!("\"x{i}\""), 1));
        }
        let errors = check.finish().unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(
            (errors[0].code.as_str(), errors[0].line),
            ("too_many_requests", Some(MAX_REQUESTS + 1))
        );
    }

    #[test]
    fn a_line_that_is_not_text_is_a_fault_of_its_own_line() {
        let mut check = FileCheck::new(CHAT_COMPLETIONS);
        assert!(check.line(&line("a")).is_some());
        check.not_text(3);
        let errors = check.finish().unwrap_err();
        assert_eq!(
            (errors[0].code.as_str(), errors[0].line),
            ("invalid_json_line", Some(2))
        );
    }

    #[test]
    fn a_flood_of_faults_is_capped_and_counted() {
        let text = "x\n".repeat(MAX_REPORTED + 5);
        let errors = check_file(&text, CHAT_COMPLETIONS).unwrap_err();
        assert_eq!(errors.len(), MAX_REPORTED + 1);
        assert_eq!(errors[MAX_REPORTED].code, "too_many_errors");
        assert!(errors[MAX_REPORTED].message.starts_with("5 more"));
    }

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn chat_requests_keep_text_and_the_passed_parameters() {
        let c = check_chat(&body(json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
            ],
            "temperature": 0, "max_tokens": 5, "seed": 3, "n": 1, "stream": false,
            "logit_bias": {"1": 2}, "top_p": null
        })))
        .unwrap();
        assert_eq!(c.model, "gpt-4o-mini");
        assert_eq!(
            c.messages,
            [
                ("system".to_owned(), "be brief".to_owned()),
                ("user".to_owned(), "a\nb".to_owned())
            ]
        );
        let mut keys: Vec<&str> = c.params.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["max_tokens", "seed", "temperature"]);
    }

    #[test]
    fn requests_the_fleet_cannot_answer_name_the_parameter() {
        let msgs = json!([{"role": "user", "content": "hi"}]);
        let param = |v: Value| check_chat(&body(v)).unwrap_err().body.error.param.unwrap();
        assert_eq!(param(json!({"messages": msgs})), "model");
        assert_eq!(param(json!({"model": "m", "messages": msgs, "n": 2})), "n");
        assert_eq!(
            param(json!({"model": "m", "messages": msgs, "stream": true})),
            "stream"
        );
        assert_eq!(
            param(json!({"model": "m", "messages": msgs, "tools": []})),
            "tools"
        );
        assert_eq!(param(json!({"model": "m", "messages": []})), "messages");
        assert_eq!(
            param(
                json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "x"}}]}]})
            ),
            "messages[0].content[0]"
        );
        assert_eq!(
            param(json!({"model": "m", "messages": [{"content": "x"}]})),
            "messages[0]"
        );
        assert_eq!(
            check_chat(&body(json!({"model": "m", "messages": msgs, "n": 3})))
                .unwrap_err()
                .status_code,
            400
        );
    }
}
