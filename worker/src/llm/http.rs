//! What every provider's HTTP exchange shares: send, read a bounded body, and turn the
//! status into a [`ProviderError`] the call loop knows how to treat (429 waits, 5xx and
//! connection failures retry, a timeout after sending is in doubt, a `200` that broke off is
//! billed, other 4xx are refused), with the provider's `Retry-After` and without the
//! API key in any message.

use std::time::Duration;

use super::ProviderError;

/// How an endpoint expects its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer <key>` (OpenAI and every compatible server).
    Bearer,
    /// `x-api-key: <key>` (Anthropic).
    ApiKeyHeader,
}

/// One provider endpoint: where it is, the key it takes and how, how long a request may
/// take and how much of an answer is read. Every client of a provider protocol holds one, so
/// the key is sent, redacted from `Debug` and scrubbed from error bodies in one place.
#[derive(Clone)]
pub struct Endpoint {
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
    auth: Auth,
    timeout: Duration,
    /// Bodies are read up to this many bytes; a longer one is a [`ProviderError::TooLarge`].
    max_body_bytes: usize,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("base", &self.base)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint at `base_url` (ending in `/v1`), sharing `http`'s connection pool, its key
    /// sent as a bearer token (see [`Endpoint::with_auth`]).
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        api_key: Option<String>,
        timeout: Duration,
        max_body_bytes: usize,
    ) -> Self {
        Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            api_key,
            auth: Auth::Bearer,
            timeout,
            max_body_bytes,
        }
    }

    /// The same endpoint with another way of sending the key.
    #[must_use]
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// A request to `path` (after the base URL) with the timeout and the key.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut b = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(self.timeout);
        if let Some(key) = &self.api_key {
            b = match self.auth {
                Auth::Bearer => b.bearer_auth(key),
                Auth::ApiKeyHeader => b.header("x-api-key", key),
            };
        }
        b
    }

    /// Sends `builder` (made by [`Endpoint::request`]) and returns the body of a successful
    /// answer; `label` names the model or provider in errors.
    ///
    /// # Errors
    /// As [`exchange`].
    pub async fn send(
        &self,
        builder: reqwest::RequestBuilder,
        label: &str,
    ) -> Result<Vec<u8>, ProviderError> {
        exchange(
            builder,
            label,
            self.max_body_bytes,
            self.timeout,
            self.api_key.as_deref(),
        )
        .await
    }
}

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
    // The body, or, for an error whose body cannot be read, a note that says why (the status
    // still says what happened; an error's body is only read for its message).
    let body: Result<Vec<u8>, String> = match read_body(response, max_body_bytes).await {
        Ok(bytes) => Ok(bytes),
        Err(BodyError::TooLarge) if !status.is_success() => Err(format!(
            "(error body over {max_body_bytes} bytes, not read)"
        )),
        Err(BodyError::TooLarge) => {
            return Err(ProviderError::TooLarge {
                model: model.to_owned(),
                limit: max_body_bytes,
            });
        }
        // The provider answered `200` and generated the answer: it bills the call though
        // the body broke off (the connection broke, or the timeout struck, while reading).
        Err(BodyError::Http(e, read)) if status.is_success() => {
            let message = if e.is_timeout() {
                format!("timed out after {timeout:?}")
            } else {
                e.without_url().to_string()
            };
            return Err(ProviderError::CutOff {
                model: model.to_owned(),
                message,
                bytes: read,
            });
        }
        Err(BodyError::Http(e, read)) if e.is_timeout() => Err(format!(
            "(error body timed out after {timeout:?}, {read} bytes read)"
        )),
        Err(BodyError::Http(e, read)) => Err(format!(
            "(error body broke off after {read} bytes: {})",
            e.without_url()
        )),
    };
    let mut text = match body {
        Ok(bytes) if status.is_success() => return Ok(bytes),
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(note) => note,
    };
    // Some providers and proxies echo the request's key in their error: it would end up in
    // logs, dead letters and `status`. Redacted before the message is cut short, so a key
    // that straddles the cut cannot leave half of itself behind.
    if let Some(key) = api_key.filter(|k| !k.is_empty()) {
        text = text.replace(key, "[redacted]");
    }
    let text: String = text.chars().take(300).collect();
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

/// The longest wait a provider's `Retry-After` or `retry-after-ms` is taken at: a larger one
/// (an epoch timestamp sent by mistake, `1e23`) would pause the model in this worker for
/// years, or overflow the `Duration` and panic with a billed call unbooked.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Reads `retry-after-ms` or `Retry-After` (seconds), capped at [`MAX_RETRY_AFTER`]; a value
/// that is not a non-negative number is ignored.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let number = |name: &str| {
        let v = headers
            .get(name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()?;
        (v.is_finite() && v >= 0.0).then_some(v)
    };
    let secs = number("retry-after-ms")
        .map(|ms| ms / 1000.0)
        .or_else(|| number(reqwest::header::RETRY_AFTER.as_str()))?;
    Some(Duration::from_secs_f64(
        secs.min(MAX_RETRY_AFTER.as_secs_f64()),
    ))
}

enum BodyError {
    TooLarge,
    /// Reading failed after this many bytes.
    Http(reqwest::Error, usize),
}

/// Reads a body of at most `limit` bytes: a provider (or a proxy) that streams without end
/// must not take the worker's memory with it.
async fn read_body(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BodyError::Http(e, body.len()))?
    {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Whether the request may have reached the provider: not when the connection could not be
/// made, nor when the request could not even be built (a bad URL, a key that is not a valid
/// header value), which `send` reports only when called.
fn sent(e: &reqwest::Error) -> bool {
    !(e.is_connect() || e.is_builder())
}

fn classify_send_error(model: &str, e: reqwest::Error, timeout: Duration) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout {
            model: model.to_owned(),
            after: timeout,
            sent: sent(&e),
        }
    } else {
        // The URL may carry credentials: report the error without it.
        ProviderError::Connection {
            model: model.to_owned(),
            sent: sent(&e),
            message: e.without_url().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A server that answers one request with `head` then `body` and closes the connection.
    async fn answer_once(head: String, body: Vec<u8>) -> String {
        answer_each(vec![(head, body)]).await
    }

    /// A server that answers one request per connection, each with the next of `answers`
    /// (a head, then a body), closing each connection after its answer.
    async fn answer_each(answers: Vec<(String, Vec<u8>)>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move {
            for (head, body) in answers {
                answer_one(&listener, head, body).await;
            }
        });
        url
    }

    async fn answer_one(listener: &tokio::net::TcpListener, head: String, body: Vec<u8>) {
        let (mut socket, _) = listener.accept().await.unwrap();
        // Read the whole request before answering: closing with unread bytes would
        // reset the connection, and the client could see a reset instead of the answer.
        let mut request = Vec::new();
        let mut chunk = [0u8; 4096];
        for _ in 0..64 {
            let n = socket.read(&mut chunk).await.unwrap();
            request.extend_from_slice(&chunk[..n]);
            if n == 0 || head_and_body_read(&request) {
                break;
            }
        }
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.write_all(&body).await.unwrap();
        socket.shutdown().await.unwrap();
    }

    /// Whether `request` holds its head and the body its `content-length` announces.
    fn head_and_body_read(request: &[u8]) -> bool {
        let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&request[..end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        request.len() >= end + 4 + length
    }

    /// A chat completion request to the test server at `url`, as a worker sends it.
    async fn post(url: &str, key: Option<&str>, limit: usize) -> Result<Vec<u8>, ProviderError> {
        let endpoint = Endpoint::new(
            super::super::openai::http_client().unwrap(),
            url,
            key.map(str::to_owned),
            Duration::from_secs(10),
            limit,
        );
        let builder = endpoint.request(reqwest::Method::POST, "/chat/completions");
        endpoint.send(builder, "m").await
    }

    async fn refused_body(head: String, body: Vec<u8>, limit: usize) -> String {
        refused_body_with_key(head, body, limit, None).await
    }

    async fn refused_body_with_key(
        head: String,
        body: Vec<u8>,
        limit: usize,
        key: Option<&str>,
    ) -> String {
        let url = answer_once(head, body).await;
        match post(&url, key, limit).await {
            Err(ProviderError::Refused { status, body, .. }) => {
                assert_eq!(status, 400);
                body
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_error_whose_body_cannot_be_read_says_so() {
        // The body broke off: fewer bytes than its length promised.
        let broken = refused_body(
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 500\r\n\r\n".to_owned(),
            b"{\"error\":".to_vec(),
            1 << 20,
        )
        .await;
        assert!(
            broken.starts_with("(error body broke off after 9 bytes"),
            "{broken}"
        );

        // Over the limit.
        let big = refused_body(
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 2000\r\n\r\n".to_owned(),
            vec![b'x'; 2000],
            100,
        )
        .await;
        assert_eq!(big, "(error body over 100 bytes, not read)");

        // A readable one is the provider's words.
        let words = refused_body(
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n".to_owned(),
            b"bad model id".to_vec(),
            1 << 20,
        )
        .await;
        assert_eq!(words, "bad model id");
    }

    #[tokio::test]
    async fn a_key_echoed_across_the_message_s_cut_is_redacted_whole() {
        // The key starts 5 characters before the 300th: cut first, then redacted, its first
        // 5 characters would stay in the message.
        let key = "sk-test-0123456789abcdef";
        let mut body = "x".repeat(295);
        body.push_str(key);
        let head = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let text = refused_body_with_key(head, body.into_bytes(), 1 << 20, Some(key)).await;
        assert!(!text.contains("sk-te"), "{text}");
        assert_eq!(text.chars().count(), 300);
        assert!(text.ends_with("x[reda"), "{text}");
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed_with_the_key() {
        // Where the redirect points: a server that counts the requests it is sent.
        let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = format!("http://{}/steal", elsewhere.local_addr().unwrap());
        let reached = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = reached.clone();
        tokio::spawn(async move {
            if elsewhere.accept().await.is_ok() {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let url = answer_once(
            format!(
                "HTTP/1.1 307 Temporary Redirect\r\nlocation: {target}\r\ncontent-length: 0\r\n\r\n"
            ),
            Vec::new(),
        )
        .await;
        match post(&url, Some("sk-secret"), 1 << 20).await {
            Err(ProviderError::Refused { status, .. }) => assert_eq!(status, 307),
            other => panic!("expected the 307 as the provider's error, got {other:?}"),
        }
        assert!(!reached.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_redirect_within_the_endpoint_s_server_is_followed() {
        let body = b"{\"ok\":true}".to_vec();
        let url = answer_each(vec![
            (
                "HTTP/1.1 307 Temporary Redirect\r\nlocation: /v1/moved\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    .to_owned(),
                Vec::new(),
            ),
            (
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                ),
                body.clone(),
            ),
        ])
        .await;
        assert_eq!(post(&url, Some("sk-secret"), 1 << 20).await.unwrap(), body);
    }

    #[test]
    fn a_provider_s_wait_is_capped_and_nonsense_is_ignored() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut h = reqwest::header::HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, v.parse().unwrap());
            }
            h
        };
        // Values that would overflow a `Duration`, or a timestamp sent for a delay.
        for v in ["1e23", "1e22", "1764950400000"] {
            assert_eq!(
                retry_after(&headers(&[("retry-after-ms", v)])),
                Some(MAX_RETRY_AFTER),
                "{v}"
            );
            assert_eq!(
                retry_after(&headers(&[("retry-after", v)])),
                Some(MAX_RETRY_AFTER),
                "{v}"
            );
        }
        // Not a number, negative or infinite: the other header, or nothing.
        for v in ["soon", "-5", "inf", "NaN"] {
            assert_eq!(retry_after(&headers(&[("retry-after-ms", v)])), None);
            assert_eq!(
                retry_after(&headers(&[("retry-after-ms", v), ("retry-after", "3")])),
                Some(Duration::from_secs(3))
            );
        }
    }
}
