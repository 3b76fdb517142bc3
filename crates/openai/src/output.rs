//! The lines of a batch's output and error files, one per request, in any order:
//! `{"id", "custom_id", "response": {"status_code", "request_id", "body"} | null,
//! "error": {"code", "message"} | null}`.
//!
//! A request answered goes to the output file with status 200 and the final call's
//! `chat.completion` as the body. A request refused (a fault of the request, a provider's
//! 4xx, a budget refusal) goes to the error file with its status code and an OpenAI error body.
//! A request never started because its batch was cancelled or expired goes to the error file
//! with no response and `error.code` `batch_cancelled` / `batch_expired`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ErrorBody;

/// `error.code` of a request its batch's cancellation stopped.
pub const BATCH_CANCELLED: &str = "batch_cancelled";
/// `error.code` of a request still unfinished when its batch expired.
pub const BATCH_EXPIRED: &str = "batch_expired";

/// What the request got back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub status_code: u16,
    pub request_id: String,
    pub body: Value,
}

/// Why a request has no response at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineError {
    pub code: String,
    pub message: String,
}

/// One line of an output or error file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputLine {
    /// `batch_req_…`, unique per line.
    pub id: String,
    pub custom_id: String,
    pub response: Option<Response>,
    pub error: Option<LineError>,
    /// Switchyard's extension: the tiers the request's calls ran on and its total cost
    /// (every call booked for it, escalations included). SDKs ignore fields they do not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchyard: Option<Value>,
}

impl OutputLine {
    /// An answered request (output file).
    pub fn answered(id: String, custom_id: String, request_id: String, completion: Value) -> Self {
        Self {
            id,
            custom_id,
            response: Some(Response {
                status_code: 200,
                request_id,
                body: completion,
            }),
            error: None,
            switchyard: None,
        }
    }

    /// A request refused with `status_code` (error file).
    pub fn refused(
        id: String,
        custom_id: String,
        status_code: u16,
        request_id: String,
        error: &ErrorBody,
    ) -> Self {
        Self {
            id,
            custom_id,
            response: Some(Response {
                status_code,
                request_id,
                body: serde_json::to_value(error).unwrap_or(Value::Null),
            }),
            error: None,
            switchyard: None,
        }
    }

    /// A request never answered because its batch stopped (error file): `code` is
    /// [`BATCH_CANCELLED`] or [`BATCH_EXPIRED`].
    pub fn not_run(id: String, custom_id: String, code: &str, message: impl Into<String>) -> Self {
        Self {
            id,
            custom_id,
            response: None,
            error: Some(LineError {
                code: code.to_owned(),
                message: message.into(),
            }),
            switchyard: None,
        }
    }

    /// The line with Switchyard's extension field.
    #[must_use]
    pub fn with_switchyard(mut self, extension: Value) -> Self {
        self.switchyard = Some(extension);
        self
    }

    /// Whether this line belongs in the output file (a 2xx answer) rather than the error file.
    pub fn is_success(&self) -> bool {
        self.response
            .as_ref()
            .is_some_and(|r| (200..300).contains(&r.status_code))
    }

    /// The line as written (JSON, no newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_have_openais_shape_and_sort_into_their_files() {
        let ok = OutputLine::answered(
            "batch_req_1".into(),
            "a".into(),
            "call-1".into(),
            json!({"object": "chat.completion"}),
        );
        let v: Value = serde_json::from_str(&ok.to_json_line()).unwrap();
        assert_eq!(v["response"]["status_code"], 200);
        assert_eq!(v["response"]["request_id"], "call-1");
        assert_eq!(v["error"], Value::Null);
        assert!(ok.is_success());

        let refused = OutputLine::refused(
            "batch_req_2".into(),
            "b".into(),
            400,
            "req-2".into(),
            &ErrorBody::invalid_request("n", "one choice"),
        );
        let v: Value = serde_json::from_str(&refused.to_json_line()).unwrap();
        assert_eq!(v["response"]["body"]["error"]["param"], "n");
        assert!(!refused.is_success());

        let stopped = OutputLine::not_run("batch_req_3".into(), "c".into(), BATCH_CANCELLED, "x");
        let v: Value = serde_json::from_str(&stopped.to_json_line()).unwrap();
        assert_eq!(v["response"], Value::Null);
        assert_eq!(v["error"]["code"], "batch_cancelled");
        assert!(!stopped.is_success());
        let back: OutputLine = serde_json::from_value(v).unwrap();
        assert_eq!(back, stopped);
    }
}
