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
    /// No answer came within the model's timeout. `sent`: the connection was made and the
    /// request went out, so the provider may have made the call (and bill it); a timeout
    /// while connecting sent nothing.
    #[error(
        "`{model}` timed out {}",
        if *sent {
            format!("after {after:?} with the request sent (the provider may bill it: booked in doubt)")
        } else {
            "while connecting (nothing was sent)".to_owned()
        }
    )]
    Timeout {
        model: String,
        after: Duration,
        sent: bool,
    },
    /// The connection failed or broke before any answer. `sent`: it had been made and the
    /// request went out (it broke after), so the provider may have made the call; a
    /// connection that could not be made sent nothing.
    #[error("`{model}` connection failed: {message}")]
    Connection {
        model: String,
        message: String,
        sent: bool,
    },
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
    /// A 200 whose body is not a usable completion. The provider may bill it.
    #[error("`{model}` returned an unusable body: {message}")]
    BadBody {
        model: String,
        message: String,
        /// The body's length, to estimate what it cost (the sum of them, when `billed > 1`).
        bytes: usize,
        /// The `200`s this stands for: one, or several when every identical request of a
        /// provider batch line came back unreadable (each billed, so each booked).
        billed: u32,
    },
    /// A 200 whose body broke off while it was read (the connection broke, or the timeout
    /// struck): the provider generated the answer and bills it, though none of it is usable.
    #[error("`{model}` answered HTTP 200, but its body broke off after {bytes} bytes: {message}")]
    CutOff {
        model: String,
        message: String,
        bytes: usize,
    },
    /// A 200 whose body is larger than the worker reads. The provider may bill it.
    #[error("`{model}` returned a body over {limit} bytes (not read further)")]
    TooLarge { model: String, limit: usize },
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
    /// One `200` whose `bytes`-long body is not a usable completion.
    pub fn bad_body(model: impl Into<String>, message: impl Into<String>, bytes: usize) -> Self {
        ProviderError::BadBody {
            model: model.into(),
            message: message.into(),
            bytes,
            billed: 1,
        }
    }

    /// True when the provider answered `200`: the call happened and may be billed, although
    /// its body cannot be used.
    pub fn answered(&self) -> bool {
        matches!(
            self,
            ProviderError::BadBody { .. }
                | ProviderError::TooLarge { .. }
                | ProviderError::CutOff { .. }
        )
    }

    /// True when the request went out and no answer came back (in time, or before the
    /// connection broke): the provider may have made and billed the call, and nobody can tell
    /// which until its usage report. Such a call is booked in doubt at its worst case
    /// (settled by reconciliation) and never retried under its call id.
    pub fn in_doubt(&self) -> bool {
        matches!(
            self,
            ProviderError::Timeout { sent: true, .. }
                | ProviderError::Connection { sent: true, .. }
        )
    }

    /// How to react to this error.
    pub fn retry(&self) -> Retry {
        match self {
            ProviderError::RateLimited { retry_after, .. } => Retry::Throttled(*retry_after),
            ProviderError::ServerError { retry_after, .. } => Retry::Transient(*retry_after),
            // A cut-off completion is [`answered`](Self::answered) (booked, then tried again
            // on another delivery); any other request cut off (a batch's status or results)
            // costs nothing and is tried again like a broken connection.
            ProviderError::Timeout { .. }
            | ProviderError::Connection { .. }
            | ProviderError::CutOff { .. } => Retry::Transient(None),
            // The provider answered: the call is booked, and the item tried again later (a
            // body that is too large fails it). Never retried inside one call, since every
            // such answer may be billed and needs its own call id.
            ProviderError::BadBody { .. }
            | ProviderError::TooLarge { .. }
            | ProviderError::Refused { .. } => Retry::Never,
        }
    }
}
