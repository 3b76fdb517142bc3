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
}

impl ApiError {
    /// 400 naming the parameter.
    pub fn bad(param: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            body: ErrorBody::invalid_request(param, message),
        }
    }

    /// 404 for `what` `id` (also what another team's id answers).
    pub fn not_found(what: &str, id: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            body: ErrorBody::not_found(what, id),
        }
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            body: ErrorBody::authentication(message),
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
        }
    }

    /// 500, logged; the caller sees no internals.
    pub fn internal(what: &str, e: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %e, "{what}");
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: ErrorBody::new("server_error", format!("{what}; try again")),
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
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}
