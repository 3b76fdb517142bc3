//! The provider side of OpenAI's Batch API against the simulator over HTTP: a tier's
//! requests go up as one input file, come back as completions keyed by `custom_id`, a batch
//! created but never recorded is found again by its metadata, and files are deleted after.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::collections::BTreeMap;
use std::time::Duration;

use switchyard_core::prompt::Message;
use switchyard_openai::objects::BatchStatus;
use switchyard_worker::llm::CompletionRequest;
use switchyard_worker::llm::http::Endpoint;
use switchyard_worker::llm::openai_batch::OpenAiBatchClient;

const WEAK: &str = "mistralai/Mixtral-8x7B-Instruct-v0.1";

fn request(prompt: &str) -> CompletionRequest {
    CompletionRequest {
        model: WEAK.into(),
        messages: vec![Message {
            role: "user".into(),
            content: prompt.into(),
        }],
        max_tokens: 4,
        logprobs: true,
        top_logprobs: 2,
        client_request_id: None,
        n: 1,
        temperature: 0.0,
        separate_choices: false,
        params: serde_json::Map::new(),
    }
}

#[tokio::test]
async fn a_tier_s_requests_go_up_as_one_file_and_come_back_by_custom_id() {
    let sim = switchyard_sim::start_one_question(switchyard_sim::SimConfig::default())
        .await
        .unwrap();
    let endpoint = Endpoint::new(
        switchyard_worker::llm::openai::http_client().unwrap(),
        &sim.base_url(),
        Some("sk-test".to_owned()),
        Duration::from_secs(10),
        1 << 20,
    );
    let client = OpenAiBatchClient::new(endpoint, "sim");
    let jsonl: String = (0..3)
        .map(|i| {
            OpenAiBatchClient::line(
                &format!("item-{i}"),
                &request("Pick one.\nA. a\nB. b\nAnswer:"),
            ) + "\n"
        })
        .collect();
    let file = client
        .upload("lb-7.jsonl", jsonl.into_bytes())
        .await
        .unwrap();
    let metadata = BTreeMap::from([("switchyard_batch".to_owned(), "lb-7".to_owned())]);
    let created = client.create(&file.id, &metadata).await.unwrap();
    // Found again by its metadata, as a worker that died before recording it would.
    let found = client
        .find_by_metadata("switchyard_batch", "lb-7")
        .await
        .unwrap()
        .expect("the unrecorded batch is found");
    assert_eq!(found.id, created.id);
    assert!(
        client
            .find_by_metadata("switchyard_batch", "lb-8")
            .await
            .unwrap()
            .is_none()
    );
    let done =
        switchyard_testkit::eventually("the batch ends", Duration::from_secs(20), || async {
            let b = client.get(&created.id).await.ok()?;
            (b.status == BatchStatus::Completed).then_some(b)
        })
        .await;
    let results = client
        .results(done.output_file_id.as_deref().unwrap())
        .await
        .unwrap();
    let mut ids: Vec<&str> = results.iter().map(|r| r.custom_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["item-0", "item-1", "item-2"]);
    for r in &results {
        let c = r.result.as_ref().unwrap();
        assert!(!c.content.is_empty() && c.prompt_tokens > 0, "{c:?}");
        assert!(c.logprobs.is_some(), "logprobs asked for come back");
    }
    assert_eq!(sim.calls().len(), 3);
    assert!(
        sim.calls()
            .iter()
            .all(switchyard_sim::CallRecord::is_batch_line)
    );
    client.delete_file(&file.id).await.unwrap();
    assert!(client.delete_file(&file.id).await.is_err(), "gone");
    sim.shutdown().await;
}
