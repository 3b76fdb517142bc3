//! What the Batch API's tests share: an API server over a test's own NATS and Postgres, and
//! an HTTP client that speaks to it as a key.

#![allow(
    dead_code,
    clippy::unwrap_used,
    reason = "each test file uses a part of it"
)]

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use switchyard_api::{Api, ApiOptions};
use switchyard_testkit::{TestDb, TestNats, eventually, settings_for};
use tokio_util::sync::CancellationToken;

pub struct Server {
    pub base: String,
    pub http: reqwest::Client,
    pub _db: TestDb,
    pub _nats: TestNats,
    pub stop: CancellationToken,
    pub pool: sqlx::PgPool,
    /// The server's state (its metrics, its object store, its options).
    pub api: Api,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A server whose uploads are limited to `max_upload_bytes`.
pub async fn server(max_upload_bytes: u64) -> Server {
    server_with(ApiOptions {
        max_upload_bytes,
        ..ApiOptions::default()
    })
    .await
}

/// A server with `options` (its sweeps and looks every 100 ms).
pub async fn server_with(options: ApiOptions) -> Server {
    let db = TestDb::new().await;
    let nats = TestNats::new().await;
    let settings = settings_for(&nats, &db);
    let options = ApiOptions {
        sweep_every: Duration::from_millis(100),
        look_every: Duration::from_millis(100),
        ..options
    };
    let api = Api::connect(&settings, options).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(switchyard_api::serve(api.clone(), listener, stop.clone()));
    Server {
        base,
        http: {
            // The workspace's reqwest has no built-in TLS provider; install one.
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap()
        },
        pool: db.pool.clone(),
        api,
        _db: db,
        _nats: nats,
        stop,
    }
}

impl Server {
    pub async fn key(&self, team: &str) -> String {
        switchyard_api::keys::create(&self.pool, team, Some("test"))
            .await
            .unwrap()
            .1
    }

    pub async fn upload(&self, key: &str, purpose: &str, bytes: Vec<u8>) -> (StatusCode, Value) {
        let form = Form::new()
            .text("purpose", purpose.to_owned())
            .part("file", Part::bytes(bytes).file_name("requests.jsonl"));
        let r = self
            .http
            .post(format!("{}/files", self.base))
            .bearer_auth(key)
            .multipart(form)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }

    pub async fn call(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, key: &str, path: &str) -> (StatusCode, Value) {
        self.call(key, reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, key: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(key, reqwest::Method::POST, path, Some(body))
            .await
    }

    pub async fn create_batch(&self, key: &str, file_id: &str) -> (StatusCode, Value) {
        self.post(
            key,
            "/batches",
            json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                   "completion_window": "24h", "metadata": {"run": "nightly"}}),
        )
        .await
    }

    /// The batch once its background check has finished.
    pub async fn checked(&self, key: &str, id: &str) -> Value {
        eventually(
            "the batch's file is checked",
            Duration::from_secs(20),
            || async {
                let (_, b) = self.get(key, &format!("/batches/{id}")).await;
                let done = b["status"] != "validating" || b["request_counts"]["total"] != 0;
                done.then_some(b)
            },
        )
        .await
    }
}

pub fn request_line(id: &str) -> String {
    json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions",
           "body": {"model": "switchyard:auto", "messages": [{"role": "user", "content": format!("question {id}")}]}})
    .to_string()
}

pub fn good_file(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| request_line(&format!("r{i}")) + "\n")
        .collect::<String>()
        .into_bytes()
}
