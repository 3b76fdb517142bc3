//! The simulator's Anthropic Message Batches API over HTTP: a batch answered request by
//! request and billed at the batch discount, its checks, one that expires part-done, one
//! cancelled before it starts, the list paged both ways, deletion and results only once
//! ended, and the results URL under a client tag.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::{Value, json};
use switchyard_sim::{ModelPrice, SimConfig, SimHandle};

const WEAK: &str = "mistralai/Mixtral-8x7B-Instruct-v0.1";

async fn start(config: SimConfig) -> SimHandle {
    switchyard_sim::start_one_question(config).await.unwrap()
}

fn requests(ids: &[&str]) -> Value {
    let requests: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({"custom_id": id, "params": {"model": WEAK, "max_tokens": 4,
                   "messages": [{"role": "user", "content": "Pick one.\nA. a\nB. b\nAnswer:"}]}})
        })
        .collect();
    json!({ "requests": requests })
}

/// Anthropic's API at a simulator: `root` is `http://host:port` or `http://host:port/c/tag`.
struct Api {
    root: String,
    http: reqwest::Client,
}

impl Api {
    fn of(sim: &SimHandle) -> Self {
        Self::at(sim.base_url().trim_end_matches("/v1").to_owned())
    }

    fn at(root: String) -> Self {
        Self {
            root,
            http: switchyard_testkit::http::client(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1/messages/batches{path}", self.root)
    }

    /// The status and JSON answer of `request`, sent as the Anthropic SDK sends it.
    async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request
            .header("x-api-key", "sk-ant-sim")
            .header("anthropic-version", "2023-06-01")
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn create(&self, body: &Value) -> (u16, Value) {
        Self::send(self.http.post(self.url("")).json(body)).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        Self::send(self.http.get(self.url(path))).await
    }

    async fn post(&self, path: &str) -> (u16, Value) {
        Self::send(self.http.post(self.url(path))).await
    }

    async fn delete(&self, id: &str) -> (u16, Value) {
        Self::send(self.http.delete(self.url(&format!("/{id}")))).await
    }

    async fn batch(&self, ids: &[&str]) -> String {
        let (status, b) = self.create(&requests(ids)).await;
        assert_eq!(status, 200, "{b}");
        b["id"].as_str().unwrap().to_owned()
    }

    async fn ended(&self, id: &str) -> Value {
        switchyard_testkit::eventually("the batch ends", Duration::from_secs(20), || async {
            let (_, b) = self.get(&format!("/{id}")).await;
            (b["processing_status"] == "ended").then_some(b)
        })
        .await
    }

    /// The results at `url`, fetched as a client that only has the URL.
    async fn results(&self, url: &str) -> Vec<Value> {
        let response = self.http.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response
            .text()
            .await
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

#[tokio::test]
async fn a_message_batch_is_answered_request_by_request_and_billed_at_the_batch_discount() {
    let sim = start(SimConfig::default()).await;
    let api = Api::of(&sim);
    let (status, created) = api.create(&requests(&["r0", "r1", "r2"])).await;
    assert_eq!(status, 200, "{created}");
    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("msgbatch_"), "{id}");
    assert_eq!(created["type"], "message_batch");
    assert_eq!(created["processing_status"], "in_progress");
    assert_eq!(
        created["request_counts"],
        json!({"processing": 3, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0})
    );
    for null in [
        "ended_at",
        "archived_at",
        "cancel_initiated_at",
        "results_url",
    ] {
        assert!(created[null].is_null(), "{null}: {created}");
    }
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(created["expires_at"].as_str().unwrap() > created["created_at"].as_str().unwrap());

    let b = api.ended(id).await;
    assert!(b["ended_at"].is_string(), "{b}");
    assert_eq!(
        b["request_counts"],
        json!({"processing": 0, "succeeded": 3, "errored": 0, "canceled": 0, "expired": 0})
    );
    let url = b["results_url"].as_str().unwrap();
    assert_eq!(url, api.url(&format!("/{id}/results")));
    let results = api.results(url).await;
    let ids: Vec<&str> = results
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["r0", "r1", "r2"]);
    for line in &results {
        assert_eq!(line["result"]["type"], "succeeded", "{line}");
        let message = &line["result"]["message"];
        assert_eq!(message["type"], "message");
        assert!(
            message["usage"]["input_tokens"].as_u64().unwrap() > 0,
            "{line}"
        );
        assert!(message["usage"]["output_tokens"].is_u64(), "{line}");
    }

    // Every request is a call of the log, tagged with its batch, under its custom id…
    let calls = sim.calls();
    assert_eq!(calls.len(), 3);
    let tag = format!("batch:{id}");
    assert!(
        calls
            .iter()
            .all(|c| c.client.as_deref() == Some(tag.as_str()))
    );
    let request_ids: HashSet<&str> = calls
        .iter()
        .filter_map(|c| c.client_request_id.as_deref())
        .collect();
    assert_eq!(request_ids, HashSet::from(["r0", "r1", "r2"]));
    // …billed at the batch discount.
    let price = ModelPrice {
        input_usd_per_mtok: Decimal::from(3),
        output_usd_per_mtok: Decimal::from(15),
        batch_discount: "0.5".parse().unwrap(),
        ..ModelPrice::default()
    };
    let full = ModelPrice {
        batch_discount: Decimal::ZERO,
        ..price
    };
    let bill =
        |p: ModelPrice| switchyard_sim::bill::bill(&calls, &BTreeMap::from([(WEAK.to_owned(), p)]));
    let (half, whole) = (bill(price), bill(full));
    assert_eq!(half.calls, 3);
    assert!(whole.usd > Decimal::ZERO);
    assert_eq!(half.usd * Decimal::from(2), whole.usd);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_message_batch_is_checked_as_anthropic_checks_it() {
    let sim = start(SimConfig::default()).await;
    let api = Api::of(&sim);
    let (status, e) = api.create(&requests(&["ok", "not ok!"])).await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("not ok!") && message.contains("requests.1"),
        "{message}"
    );

    let (status, e) = api.create(&requests(&["a", "b", "a"])).await;
    assert_eq!(status, 400, "{e}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("not unique") && message.contains("\"a\""),
        "{message}"
    );

    let (status, e) = api.create(&json!({"requests": []})).await;
    assert_eq!(
        (status, &e["error"]["type"]),
        (400, &json!("invalid_request_error"))
    );
    let (status, e) = api.get("/msgbatch_nope").await;
    assert_eq!(status, 404);
    assert_eq!(e["error"]["type"], "not_found_error");
    assert!(sim.calls().is_empty(), "nothing was run");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_message_batch_that_expires_part_done_returns_the_rest_as_expired() {
    let sim = start(SimConfig {
        batch_expire_after_lines: Some(1),
        ..SimConfig::default()
    })
    .await;
    let api = Api::of(&sim);
    let id = api.batch(&["r0", "r1", "r2"]).await;
    let b = api.ended(&id).await;
    assert_eq!(
        b["request_counts"],
        json!({"processing": 0, "succeeded": 1, "errored": 0, "canceled": 0, "expired": 2})
    );
    let results = api.results(b["results_url"].as_str().unwrap()).await;
    let kinds: Vec<&str> = results
        .iter()
        .map(|l| l["result"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["succeeded", "expired", "expired"]);
    assert_eq!(
        results[2],
        json!({"custom_id": "r2", "result": {"type": "expired"}})
    );
    assert_eq!(sim.calls().len(), 1, "only what it answered was served");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_message_batch_cancelled_before_it_starts_answers_nothing() {
    let sim = start(SimConfig {
        batch_delay: Duration::from_millis(500),
        ..SimConfig::default()
    })
    .await;
    let api = Api::of(&sim);
    let id = api.batch(&["r0", "r1", "r2"]).await;

    // Not ended: its results cannot be read, nor can it be deleted.
    let (status, e) = api.get(&format!("/{id}/results")).await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("has not ended"),
        "{e}"
    );
    let (status, e) = api.delete(&id).await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["type"], "invalid_request_error");

    let (status, c) = api.post(&format!("/{id}/cancel")).await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["processing_status"], "canceling", "{c}");
    assert!(c["cancel_initiated_at"].is_string(), "{c}");
    let b = api.ended(&id).await;
    assert_eq!(
        b["request_counts"],
        json!({"processing": 0, "succeeded": 0, "errored": 0, "canceled": 3, "expired": 0})
    );
    let results = api.results(b["results_url"].as_str().unwrap()).await;
    assert!(
        results
            .iter()
            .all(|l| l["result"] == json!({"type": "canceled"}))
    );
    assert!(sim.calls().is_empty());

    // An ended batch is answered unchanged by a cancel, and can be deleted.
    let (status, again) = api.post(&format!("/{id}/cancel")).await;
    assert_eq!((status, &again), (200, &b));
    let (status, gone) = api.delete(&id).await;
    assert_eq!(status, 200, "{gone}");
    assert_eq!(gone, json!({"id": id, "type": "message_batch_deleted"}));
    assert_eq!(api.get(&format!("/{id}")).await.0, 404);
    sim.shutdown().await;
}

#[tokio::test]
async fn the_list_pages_through_every_batch_once_newest_first() {
    let sim = start(SimConfig {
        batch_delay: Duration::from_secs(3600),
        ..SimConfig::default()
    })
    .await;
    let api = Api::of(&sim);
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(api.batch(&["r0"]).await);
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let cursor = after
            .as_ref()
            .map_or(String::new(), |a| format!("&after_id={a}"));
        let (status, page) = api.get(&format!("?limit=2{cursor}")).await;
        assert_eq!(status, 200, "{page}");
        let ids: Vec<String> = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(page["first_id"].as_str(), ids.first().map(String::as_str));
        assert_eq!(page["last_id"].as_str(), ids.last().map(String::as_str));
        seen.extend(ids);
        if page["has_more"] != true {
            break;
        }
        after = page["last_id"].as_str().map(str::to_owned);
    }
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first, "every batch once, newest first");

    // The page before the oldest: the newer ones next to it.
    let (_, page) = api.get(&format!("?limit=2&before_id={}", created[0])).await;
    assert_eq!(page["data"][0]["id"], created[2].as_str());
    assert_eq!(page["data"][1]["id"], created[1].as_str());
    assert_eq!(page["has_more"], true);
    let (_, page) = api.get(&format!("?after_id={}", created[0])).await;
    assert_eq!(
        page,
        json!({"data": [], "has_more": false, "first_id": null, "last_id": null})
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_tagged_client_reads_results_at_the_url_it_is_given() {
    let sim = start(SimConfig {
        batch_creations_lost: 1,
        ..SimConfig::default()
    })
    .await;
    let api = Api::at(sim.base_url_for("w1").trim_end_matches("/v1").to_owned());
    // The first creation is carried out, but its answer is lost.
    let (status, e) = api.create(&requests(&["a"])).await;
    assert_eq!(status, 503, "{e}");
    assert_eq!(e["error"]["type"], "api_error");
    let (_, listed) = api.get("").await;
    let lost = listed["data"][0]["id"].as_str().unwrap().to_owned();

    let id = api.batch(&["a", "b"]).await;
    assert!(id > lost, "ids sort by creation");
    let b = api.ended(&id).await;
    let url = b["results_url"].as_str().unwrap();
    assert!(url.contains("/c/w1/v1/messages/batches/"), "{url}");
    let results = api.results(url).await;
    assert_eq!(results.len(), 2);
    sim.shutdown().await;
}
