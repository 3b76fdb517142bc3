//! Extra samples from a provider without `n` (Anthropic's Messages API) against the
//! simulator over HTTP: a request for `n = 5` is made as five requests under the call's one
//! id, the samples differ more often from wrong answers than from right ones (a real
//! confidence signal for a model without logprobs), and the call's usage is exactly what
//! the provider billed for its requests, also when some sample requests fail.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::sync::Arc;
use std::time::Duration;

use switchyard_core::prompt::Message;
use switchyard_core::samples::sample_agreement;
use switchyard_proto::Task;
use switchyard_sim::{CallRecord, Dataset, Faults, SimConfig, SimHandle};
use switchyard_worker::llm::anthropic::AnthropicClient;
use switchyard_worker::llm::http::Endpoint;
use switchyard_worker::llm::{CompletionRequest, LlmClient as _};

const WEAK: &str = "mistralai/Mixtral-8x7B-Instruct-v0.1";
const QUESTIONS: usize = 100;

/// Question `i`: the weak model is right on the even ones.
fn prompt(i: usize) -> String {
    format!("Question {i}: pick one.\nA. red\nB. green\nC. blue\nD. white\nAnswer:")
}

async fn simulator(faults: Faults) -> SimHandle {
    let rows: String = (0..QUESTIONS)
        .map(|i| {
            let row = serde_json::json!({
                "id": format!("q{i}"),
                "task": "mmlu/colours",
                "prompt": prompt(i),
                "choices": ["red", "green", "blue", "white"],
                "models": {WEAK: {
                    "score": if i % 2 == 0 { 1.0 } else { 0.0 },
                    "prompt_tokens": 30,
                    "completion_tokens": 1,
                }},
            });
            format!("{row}\n")
        })
        .collect();
    let data = Arc::new(Dataset::from_jsonl_str("mmlu.jsonl", &rows).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = SimConfig {
        logprobs: false,
        auroc: 0.9,
        faults,
        ..SimConfig::default()
    };
    switchyard_sim::start(listener, data, config).await.unwrap()
}

fn client(sim: &SimHandle) -> AnthropicClient {
    AnthropicClient::new(Endpoint::new(
        switchyard_worker::llm::openai::http_client().unwrap(),
        &sim.base_url(),
        Some("sk-ant-test".to_owned()),
        Duration::from_secs(10),
        1 << 20,
    ))
}

fn request(i: usize, call_id: &str) -> CompletionRequest {
    CompletionRequest {
        model: WEAK.into(),
        messages: vec![
            Message {
                role: "system".into(),
                content: "Answer with the letter of one choice.".into(),
            },
            Message {
                role: "user".into(),
                content: prompt(i),
            },
        ],
        max_tokens: 4,
        logprobs: false,
        top_logprobs: 0,
        client_request_id: Some(call_id.to_owned()),
        n: 5,
        separate_choices: true,
        temperature: 0.7,
        params: serde_json::Map::new(),
    }
}

fn task() -> Task {
    Task::Classify {
        labels: ["A", "B", "C", "D"].map(String::from).to_vec(),
        instructions: None,
    }
}

/// The provider's records of one call id.
fn records<'a>(calls: &'a [CallRecord], call_id: &str) -> Vec<&'a CallRecord> {
    calls
        .iter()
        .filter(|c| c.client_request_id.as_deref() == Some(call_id))
        .collect()
}

#[tokio::test]
async fn five_choices_are_five_requests_whose_samples_see_wrong_answers() {
    let sim = simulator(Faults::default()).await;
    let client = client(&sim);
    let (mut right, mut wrong) = (Vec::new(), Vec::new());
    for i in 0..QUESTIONS {
        let call_id = uuid::Uuid::now_v7().to_string();
        let c = client.complete(&request(i, &call_id)).await.unwrap();
        assert_eq!(c.samples.len(), 4, "question {i}");
        let calls = sim.calls();
        let mine = records(&calls, &call_id);
        assert_eq!(mine.len(), 5, "question {i}: one request per choice");
        // The call's usage is the sum of what the provider billed for its requests.
        let billed = |f: fn(&CallRecord) -> u32| mine.iter().map(|r| f(r)).sum::<u32>();
        assert_eq!(c.prompt_tokens, billed(|r| r.prompt_tokens), "question {i}");
        assert_eq!(
            c.completion_tokens,
            billed(|r| r.completion_tokens),
            "question {i}"
        );
        let raw: serde_json::Value = serde_json::from_str(c.raw_usage.as_deref().unwrap()).unwrap();
        assert_eq!(raw.as_array().map(Vec::len), Some(5), "{raw}");
        let agreement = sample_agreement(&task(), c.content.trim(), &c.samples).unwrap();
        if i % 2 == 0 { &mut right } else { &mut wrong }.push(agreement);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    // Samples repeat a right answer more often than a wrong one: the agreement is a signal.
    assert!(
        mean(&right) > mean(&wrong) + 0.05,
        "right {right:?} vs wrong {wrong:?}"
    );
    assert!(
        wrong.iter().any(|a| *a < 1.0),
        "samples never differ: {wrong:?}"
    );
}

#[tokio::test]
async fn failed_sample_requests_are_left_out_and_the_usage_stays_what_was_billed() {
    let sim = simulator(Faults {
        error_rate: 0.3,
        ..Faults::default()
    })
    .await;
    let client = client(&sim);
    let (mut answered, mut short_of_samples) = (0, 0);
    for i in 0..QUESTIONS {
        let call_id = uuid::Uuid::now_v7().to_string();
        let Ok(c) = client.complete(&request(i, &call_id)).await else {
            // The answer's own request failed: the caller retries the call.
            continue;
        };
        answered += 1;
        let calls = sim.calls();
        let mine = records(&calls, &call_id);
        let billed: Vec<&&CallRecord> = mine.iter().filter(|r| r.billed()).collect();
        assert_eq!(c.samples.len() + 1, billed.len(), "question {i}");
        if billed.len() < mine.len() {
            short_of_samples += 1;
        }
        let tokens = |f: fn(&CallRecord) -> u32| billed.iter().map(|r| f(r)).sum::<u32>();
        assert_eq!(c.prompt_tokens, tokens(|r| r.prompt_tokens), "question {i}");
        assert_eq!(
            c.completion_tokens,
            tokens(|r| r.completion_tokens),
            "question {i}"
        );
    }
    assert!(
        answered > 0 && short_of_samples > 0,
        "{answered} {short_of_samples}"
    );
}
