//! The simulator's OpenAI Batch API over HTTP: a batch answered line by line and billed at
//! the batch discount, one that expires half-done, one cancelled before it starts, and the
//! list a client searches for batches it created but did not record.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::multipart::{Form, Part};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use switchyard_sim::{ModelPrice, SimConfig, SimHandle};

const WEAK: &str = "mistralai/Mixtral-8x7B-Instruct-v0.1";

async fn start(config: SimConfig) -> SimHandle {
    switchyard_sim::start_one_question(config).await.unwrap()
}

fn input(n: usize) -> String {
    (0..n)
        .map(|i| {
            json!({"custom_id": format!("r{i}"), "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": WEAK, "max_tokens": 4,
                            "messages": [{"role": "user", "content": "Pick one.\nA. a\nB. b\nAnswer:"}]}})
            .to_string()
                + "\n"
        })
        .collect()
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn of(sim: &SimHandle) -> Self {
        Self {
            base: sim.base_url(),
            http: switchyard_testkit::http::client(),
        }
    }

    /// The JSON answer of `request`.
    async fn json(request: reqwest::RequestBuilder) -> Value {
        request.send().await.unwrap().json().await.unwrap()
    }

    async fn batch_of(&self, text: String, metadata: Value) -> Value {
        let form = Form::new()
            .text("purpose", "batch")
            .part("file", Part::bytes(text.into_bytes()).file_name("in.jsonl"));
        let files = self.http.post(format!("{}/files", self.base));
        let file = Self::json(files.multipart(form)).await;
        let create = json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                            "completion_window": "24h", "metadata": metadata});
        Self::json(
            self.http
                .post(format!("{}/batches", self.base))
                .json(&create),
        )
        .await
    }

    async fn get(&self, path: &str) -> Value {
        Self::json(self.http.get(format!("{}{path}", self.base))).await
    }

    async fn ended(&self, id: &str) -> Value {
        switchyard_testkit::eventually("the batch ends", Duration::from_secs(20), || async {
            let b = self.get(&format!("/batches/{id}")).await;
            let s = b["status"].as_str().unwrap_or("").to_owned();
            ["completed", "expired", "cancelled", "failed"]
                .contains(&s.as_str())
                .then_some(b)
        })
        .await
    }

    async fn lines(&self, file: &Value) -> Vec<Value> {
        let Some(id) = file.as_str() else {
            return Vec::new();
        };
        self.http
            .get(format!("{}/files/{id}/content", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

#[tokio::test]
async fn a_batch_is_answered_line_by_line_and_billed_at_the_batch_discount() {
    let sim = start(SimConfig::default()).await;
    let api = Api::of(&sim);
    let b = api.batch_of(input(3), json!({"local_batch": "lb-1"})).await;
    let b = api.ended(b["id"].as_str().unwrap()).await;
    assert_eq!(b["status"], "completed", "{b}");
    assert_eq!(
        b["request_counts"],
        json!({"total": 3, "completed": 3, "failed": 0})
    );
    let out = api.lines(&b["output_file_id"]).await;
    let mut ids: Vec<&str> = out
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["r0", "r1", "r2"]);
    assert!(out.iter().all(|l| l["response"]["status_code"] == 200
        && l["response"]["body"]["object"] == "chat.completion"));
    // A client that lost its record finds the batch by the metadata it gave.
    let listed = api.get("/batches?limit=10").await;
    assert_eq!(
        listed["data"][0]["metadata"]["local_batch"], "lb-1",
        "{listed}"
    );

    // Every line is a call of the log, tagged with its batch, billed at half price.
    let calls = sim.calls();
    assert_eq!(calls.len(), 3);
    assert!(calls.iter().all(switchyard_sim::CallRecord::is_batch_line));
    let price = ModelPrice {
        input_usd_per_mtok: Decimal::from(2),
        output_usd_per_mtok: Decimal::from(4),
        batch_discount: "0.5".parse().unwrap(),
        ..ModelPrice::default()
    };
    let prices = BTreeMap::from([(WEAK.to_owned(), price)]);
    let full = BTreeMap::from([(
        WEAK.to_owned(),
        ModelPrice {
            batch_discount: Decimal::ZERO,
            ..price
        },
    )]);
    let (half, whole) = (
        switchyard_sim::bill::bill(&calls, &prices).usd,
        switchyard_sim::bill::bill(&calls, &full).usd,
    );
    assert!(whole > Decimal::ZERO);
    assert_eq!(half * Decimal::from(2), whole);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_batch_that_expires_half_done_returns_the_rest_as_expired() {
    let sim = start(SimConfig {
        batch_expire_after_lines: Some(2),
        ..SimConfig::default()
    })
    .await;
    let api = Api::of(&sim);
    let b = api.batch_of(input(4), json!({})).await;
    let b = api.ended(b["id"].as_str().unwrap()).await;
    assert_eq!(b["status"], "expired", "{b}");
    assert_eq!(api.lines(&b["output_file_id"]).await.len(), 2);
    let errors = api.lines(&b["error_file_id"]).await;
    assert_eq!(errors.len(), 2);
    assert!(errors.iter().all(|l| l["error"]["code"] == "batch_expired"));
    assert_eq!(sim.calls().len(), 2, "only what it answered was served");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_batch_cancelled_before_it_starts_answers_nothing() {
    let sim = start(SimConfig {
        batch_delay: Duration::from_millis(500),
        ..SimConfig::default()
    })
    .await;
    let api = Api::of(&sim);
    let b = api.batch_of(input(3), json!({})).await;
    let id = b["id"].as_str().unwrap();
    let c = Api::json(api.http.post(format!("{}/batches/{id}/cancel", api.base))).await;
    assert_eq!(c["status"], "cancelling", "{c}");
    let b = api.ended(id).await;
    assert_eq!(b["status"], "cancelled", "{b}");
    let errors = api.lines(&b["error_file_id"]).await;
    assert_eq!(errors.len(), 3);
    assert!(
        errors
            .iter()
            .all(|l| l["error"]["code"] == "batch_cancelled")
    );
    assert!(sim.calls().is_empty());
    sim.shutdown().await;
}
