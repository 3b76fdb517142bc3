//! The provider side of Anthropic's Message Batches against the simulator over HTTP: a
//! tier's requests go up in one creation, come back as messages keyed by `custom_id`, a
//! batch created but never recorded is found by its results (and is "undecided" while it
//! runs: nothing must be created then), and the batch is deleted after.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::collections::HashSet;
use std::time::Duration;

use switchyard_core::prompt::Message;
use switchyard_worker::llm::CompletionRequest;
use switchyard_worker::llm::anthropic_batch::AnthropicBatchClient;
use switchyard_worker::llm::batch_api::{Lookup, Progress};
use switchyard_worker::llm::http::Endpoint;

const WEAK: &str = "mistralai/Mixtral-8x7B-Instruct-v0.1";

fn request(prompt: &str) -> CompletionRequest {
    CompletionRequest {
        model: WEAK.into(),
        messages: vec![
            Message {
                role: "system".into(),
                content: "Answer with one letter.".into(),
            },
            Message {
                role: "user".into(),
                content: prompt.into(),
            },
        ],
        max_tokens: 4,
        logprobs: false,
        top_logprobs: 0,
        client_request_id: None,
        n: 1,
        temperature: 0.0,
        separate_choices: false,
        params: serde_json::Map::new(),
    }
}

#[tokio::test]
async fn requests_go_up_in_one_batch_and_an_unrecorded_one_is_found_by_its_results() {
    let config = switchyard_sim::SimConfig {
        batch_delay: Duration::from_millis(300),
        ..switchyard_sim::SimConfig::default()
    };
    let sim = switchyard_sim::start_one_question(config).await.unwrap();
    let endpoint = Endpoint::new(
        switchyard_worker::llm::openai::http_client().unwrap(),
        &sim.base_url(),
        Some("sk-ant-test".to_owned()),
        Duration::from_secs(10),
        1 << 20,
    );
    let client = AnthropicBatchClient::new(endpoint, "anthropic");
    let recorded_at = chrono::Utc::now();
    let calls: Vec<String> = (0..3).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let lines: Vec<(String, CompletionRequest)> = calls
        .iter()
        .map(|c| (c.clone(), request("Pick one.\nA. a\nB. b\nAnswer:")))
        .collect();
    let id = client.create(&lines).await.unwrap();
    let none = HashSet::new();

    // While it runs, a batch of our size created since our record cannot be told apart
    // from ours: undecided, so nothing is created twice.
    let lookup = client
        .find_orphan(recorded_at, &calls, calls.len(), &none)
        .await
        .unwrap();
    assert!(matches!(lookup, Lookup::Undecided(_)), "{lookup:?}");
    // Recorded for another local batch, or of another size: not a candidate at all.
    let known = HashSet::from([id.clone()]);
    let lookup = client
        .find_orphan(recorded_at, &calls, calls.len(), &known)
        .await
        .unwrap();
    assert!(matches!(lookup, Lookup::Absent), "{lookup:?}");
    let lookup = client
        .find_orphan(recorded_at, &calls[..2], 2, &none)
        .await
        .unwrap();
    assert!(matches!(lookup, Lookup::Absent), "{lookup:?}");

    let done =
        switchyard_testkit::eventually("the batch ends", Duration::from_secs(20), || async {
            let b = client.get(&id).await.ok()?;
            (b.progress == Progress::Ended).then_some(b)
        })
        .await;
    assert_eq!(done.id, id);
    // Once ended, its results name our calls: found.
    match client
        .find_orphan(recorded_at, &calls, calls.len(), &none)
        .await
        .unwrap()
    {
        Lookup::Found(b) => assert_eq!(b.id, id),
        other => panic!("not found: {other:?}"),
    }
    // Someone else's batch of the same size is not ours.
    let strangers: Vec<String> = (0..3).map(|i| format!("other-{i}")).collect();
    let lookup = client
        .find_orphan(recorded_at, &strangers, strangers.len(), &none)
        .await
        .unwrap();
    assert!(matches!(lookup, Lookup::Absent), "{lookup:?}");

    let results = client.results(&id).await.unwrap();
    let mut ids: Vec<&str> = results.iter().map(|r| r.custom_id.as_str()).collect();
    ids.sort_unstable();
    let mut want: Vec<&str> = calls.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(ids, want);
    for r in &results {
        let c = r.result.as_ref().unwrap();
        assert!(!c.content.is_empty() && c.prompt_tokens > 0, "{c:?}");
        assert!(c.logprobs.is_none(), "Anthropic gives no logprobs");
    }
    let logged = sim.calls();
    assert_eq!(logged.len(), 3);
    assert!(logged.iter().all(switchyard_sim::CallRecord::is_batch_line));
    client.delete(&id).await.unwrap();
    assert!(client.get(&id).await.is_err(), "gone");
    sim.shutdown().await;
}

#[tokio::test]
async fn an_id_anthropic_would_refuse_is_refused_before_anything_is_sent() {
    let endpoint = Endpoint::new(
        switchyard_worker::llm::openai::http_client().unwrap(),
        "http://127.0.0.1:9/v1",
        None,
        Duration::from_secs(1),
        1 << 20,
    );
    let client = AnthropicBatchClient::new(endpoint, "anthropic");
    let err = client
        .create(&[("job:1".to_owned(), request("x"))])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("job:1"), "{err}");
}
