//! Every failure answers in OpenAI's error shape with the status the SDK maps to its typed
//! exceptions (400 `BadRequestError`, 401 `AuthenticationError`, 404 `NotFoundError`, 413,
//! 500 `InternalServerError`).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use switchyard_openai::error::ErrorBody;

/// An answer that is not a success.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    /// `Retry-After` (seconds) of a 429.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// 400 naming the parameter.
    pub fn bad(param: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            body: ErrorBody::invalid_request(param, message),
            retry_after: None,
        }
    }

    /// 404 for `what` `id` (also what another team's id answers).
    pub fn not_found(what: &str, id: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            body: ErrorBody::not_found(what, id),
            retry_after: None,
        }
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            body: ErrorBody::authentication(message),
            retry_after: None,
        }
    }

    /// 413: an upload over the limit.
    pub fn too_large(limit: u64) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            body: ErrorBody::invalid_request(
                "file",
                format!("the file is larger than this server's limit of {limit} bytes"),
            )
            .with_code("file_too_large"),
            retry_after: None,
        }
    }

    /// 429: the key made more requests than its limit allows; `Retry-After` says when.
    pub fn rate_limited(per_minute: u32, retry_after: std::time::Duration) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            body: ErrorBody::new(
                "requests",
                format!("Rate limit reached for this key: {per_minute} requests per minute"),
            )
            .with_code("rate_limit_exceeded"),
            retry_after: Some(retry_after.as_secs().max(1)),
        }
    }

    /// 500, logged; the caller sees no internals.
    pub fn internal(what: &str, e: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %e, "{what}");
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: ErrorBody::new("server_error", format!("{what}; try again")),
            retry_after: None,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::internal("database error", &e)
    }
}

impl From<ErrorBody> for ApiError {
    fn from(body: ErrorBody) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            body,
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string())
        {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
        response
    }
}
