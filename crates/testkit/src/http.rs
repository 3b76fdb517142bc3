//! HTTP for tests, on reqwest: a client with a deadline and GETs of text or JSON, for the
//! servers tests start (the ledger API, the dashboard, the simulator, `/metrics`).

use std::time::Duration;

use serde::de::DeserializeOwned;

/// A client whose requests give up after 30 s.
///
/// # Panics
/// When the client cannot be built: a test failure.
pub fn client() -> reqwest::Client {
    // The workspace's reqwest has no built-in TLS provider; install one (once per process)
    // even for plain HTTP, since reqwest needs it to build a client.
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// `GET url`: the status and the body as text, within 30 s.
///
/// # Panics
/// When the server does not answer in time or the body is not text: a test failure.
pub async fn get(url: &str) -> (u16, String) {
    let response = client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let body = response
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: reading the body: {e}"));
    (status, body)
}

/// `GET url`, its body read as JSON, within 30 s.
///
/// # Panics
/// When the server does not answer in time or the body is not a `T`: a test failure.
pub async fn get_json<T: DeserializeOwned>(url: &str) -> T {
    client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: reading the body as JSON: {e}"))
}
