//! HTTP for tests, on reqwest: a GET with a deadline, for the servers tests start (the
//! ledger API, the dashboard, the simulator, `/metrics`).

use std::time::Duration;

/// `GET url`: the status and the body as text, within 30 s.
///
/// # Panics
/// When the server does not answer in time or the body is not text: a test failure.
pub async fn get(url: &str) -> (u16, String) {
    // The workspace's reqwest has no built-in TLS provider; install one (once per process).
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client");
    let response = client
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
