//! Provider failures, classified by what the worker should do about them.

use std::time::Duration;

/// Why a model call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// HTTP 429. Waiting never counts against the item's deliveries.
    #[error("`{model}` rate limited the request (retry after {retry_after:?})")]
    RateLimited {
        model: String,
        retry_after: Option<Duration>,
    },
    /// The request did not finish within the model's timeout.
    #[error("`{model}` timed out after {after:?}")]
    Timeout { model: String, after: Duration },
    /// The connection failed or broke.
    #[error("`{model}` connection failed: {message}")]
    Connection { model: String, message: String },
    /// A 5xx status: the provider's fault, retried.
    #[error("`{model}` returned HTTP {status}: {body}")]
    ServerError {
        model: String,
        status: u16,
        body: String,
        retry_after: Option<Duration>,
    },
    /// Any other non-success status: our request is wrong, not retried.
    #[error("`{model}` refused the request with HTTP {status}: {body}")]
    Refused {
        model: String,
        status: u16,
        body: String,
    },
    /// A 200 whose body is not a usable completion.
    #[error("`{model}` returned an unusable body: {message}")]
    BadBody { model: String, message: String },
}

/// What to do after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Quota: wait (at least this long) and try again, without limit.
    Throttled(Option<Duration>),
    /// Transient fault: try again with backoff, a bounded number of times.
    Transient(Option<Duration>),
    /// Do not try again: the item fails.
    Never,
}

impl ProviderError {
    /// How to react to this error.
    pub fn retry(&self) -> Retry {
        match self {
            ProviderError::RateLimited { retry_after, .. } => Retry::Throttled(*retry_after),
            ProviderError::ServerError { retry_after, .. } => Retry::Transient(*retry_after),
            ProviderError::Timeout { .. } | ProviderError::Connection { .. } => {
                Retry::Transient(None)
            }
            // A truncated or empty body is usually a glitch on the provider's side.
            ProviderError::BadBody { .. } => Retry::Transient(None),
            ProviderError::Refused { .. } => Retry::Never,
        }
    }
}
