//! OpenAI's error body. Every non-2xx answer of the API carries one, so the SDK raises its
//! typed exception (`BadRequestError`, `AuthenticationError`, `NotFoundError`, …) with our
//! message in it.

use serde::{Deserialize, Serialize};

/// `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, as OpenAI words it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `not_found_error`, `server_error`, …
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl ErrorBody {
    /// An error of `kind` with a message, and optionally the parameter and a code.
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                message: message.into(),
                kind: kind.to_owned(),
                param: None,
                code: None,
            },
        }
    }

    /// A bad request naming the parameter at fault (HTTP 400).
    pub fn invalid_request(param: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new("invalid_request_error", message);
        e.error.param = Some(param.to_owned());
        e
    }

    /// A missing or wrong API key (HTTP 401).
    pub fn authentication(message: impl Into<String>) -> Self {
        let mut e = Self::new("invalid_request_error", message);
        e.error.code = Some("invalid_api_key".to_owned());
        e
    }

    /// No such object for this key (HTTP 404): another team's id answers this too.
    pub fn not_found(what: &str, id: &str) -> Self {
        let mut e = Self::new("invalid_request_error", format!("No such {what}: '{id}'"));
        e.error.param = Some("id".to_owned());
        e
    }

    /// With a machine-readable code.
    pub fn with_code(mut self, code: &str) -> Self {
        self.error.code = Some(code.to_owned());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_in_openai_shape() {
        let e = ErrorBody::invalid_request("completion_window", "only 24h is supported");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {
                "message": "only 24h is supported",
                "type": "invalid_request_error",
                "param": "completion_window",
                "code": null
            }})
        );
        let back: ErrorBody = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
        assert_eq!(
            ErrorBody::authentication("bad key").error.code.as_deref(),
            Some("invalid_api_key")
        );
        assert!(
            ErrorBody::not_found("batch", "batch_x")
                .error
                .message
                .contains("batch_x")
        );
    }
}
