//! What every provider's HTTP exchange shares: send, read a bounded body, and turn the
//! status into a [`ProviderError`] the call loop knows how to treat (429 waits, 5xx and
//! timeouts retry, other 4xx are refused), with the provider's `Retry-After` and without the
//! API key in any message.

use std::time::Duration;

use super::ProviderError;

/// Sends `builder` and returns the body of a successful answer.
///
/// # Errors
/// The [`ProviderError`] of a failed connection, a timeout, a non-success status, or a body
/// over `max_body_bytes`.
pub async fn exchange(
    builder: reqwest::RequestBuilder,
    model: &str,
    max_body_bytes: usize,
    timeout: Duration,
    api_key: Option<&str>,
) -> Result<Vec<u8>, ProviderError> {
    let response = builder
        .send()
        .await
        .map_err(|e| classify_send_error(model, e, timeout))?;
    let status = response.status();
    let after = retry_after(response.headers());
    let bytes = match read_body(response, max_body_bytes).await {
        Ok(bytes) => bytes,
        // An error's body is only read for its message.
        Err(BodyError::TooLarge) if !status.is_success() => Vec::new(),
        Err(BodyError::TooLarge) => {
            return Err(ProviderError::TooLarge {
                model: model.to_owned(),
                limit: max_body_bytes,
            });
        }
        Err(BodyError::Http(e)) => return Err(classify_send_error(model, e, timeout)),
    };
    if status.is_success() {
        return Ok(bytes);
    }
    let mut text: String = String::from_utf8_lossy(&bytes).chars().take(300).collect();
    // Some providers and proxies echo the request's key in their error: it would end up in
    // logs, dead letters and `status`.
    if let Some(key) = api_key.filter(|k| !k.is_empty()) {
        text = text.replace(key, "[redacted]");
    }
    Err(match status.as_u16() {
        // Anthropic's 529 `overloaded_error` is a 5xx like any other.
        429 => ProviderError::RateLimited {
            model: model.to_owned(),
            retry_after: after,
        },
        s if s >= 500 => ProviderError::ServerError {
            model: model.to_owned(),
            status: s,
            body: text,
            retry_after: after,
        },
        s => ProviderError::Refused {
            model: model.to_owned(),
            status: s,
            body: text,
        },
    })
}

/// Reads `Retry-After` (seconds) or `retry-after-ms`.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers.get("retry-after-ms").and_then(|v| v.to_str().ok())
        && let Ok(ms) = ms.trim().parse::<f64>()
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let secs = v.trim().parse::<f64>().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

enum BodyError {
    TooLarge,
    Http(reqwest::Error),
}

/// Reads a body of at most `limit` bytes: a provider (or a proxy) that streams without end
/// must not take the worker's memory with it.
async fn read_body(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Http)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn classify_send_error(model: &str, e: reqwest::Error, timeout: Duration) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout {
            model: model.to_owned(),
            after: timeout,
        }
    } else {
        // The URL may carry credentials: report the error without it.
        ProviderError::Connection {
            model: model.to_owned(),
            message: e.without_url().to_string(),
        }
    }
}
