//! End-to-end tests: a real simulator on 127.0.0.1:0, called over HTTP with reqwest.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use switchyard_sim::dataset::Replayed as _;
use switchyard_sim::{CallRecord, Dataset, Faults, SimConfig, SimHandle};

const STRONG: &str = "gpt-4-1106-preview";
const WEAK: &str = "mistralai/Mixtral-8x7B-Instruct-v0.1";

/// Two MMLU-like rows (no responses, one-token answers) and two graded summary rows.
const FIXTURE: &str = r#"{"id": "mmlu-1", "task": "mmlu/abstract_algebra", "prompt": "Find the index of <p> in S_5.\nA. 8\nB. 2\nC. 24\nD. 120\nAnswer:", "choices": ["8", "2", "24", "120"], "tokens_estimated": true, "models": {"mistralai/Mixtral-8x7B-Instruct-v0.1": {"score": 0.0, "prompt_tokens": 24, "completion_tokens": 1}, "gpt-4-1106-preview": {"score": 1.0, "prompt_tokens": 24, "completion_tokens": 1}}}
{"id": "mmlu-2", "task": "mmlu/anatomy", "prompt": "Which bone is in the leg?\nA. femur\nB. ulna\nC. radius\nD. humerus\nAnswer:", "choices": ["femur", "ulna", "radius", "humerus"], "models": {"mistralai/Mixtral-8x7B-Instruct-v0.1": {"score": 1.0, "prompt_tokens": 21, "completion_tokens": 1}, "gpt-4-1106-preview": {"score": 1.0, "prompt_tokens": 21, "completion_tokens": 1}}}
"#;

const NEWS: &str = r#"{"id": "news-1", "task": "summarize", "prompt": "Article: The council approved the new bridge on Monday.", "models": {"text-davinci-002": {"score": 0.75, "response": "Council approves bridge.", "prompt_tokens": 12, "completion_tokens": 4}, "T0pp": {"score": 0.25, "response": "A bridge.", "prompt_tokens": 12, "completion_tokens": 3}}}
{"id": "news-2", "task": "summarize", "prompt": "Article: Rain is expected all week.", "models": {"text-davinci-002": {"score": 0.5, "response": "Rainy week ahead.", "prompt_tokens": 8, "completion_tokens": 4}, "T0pp": {"score": 0.5, "response": "None", "prompt_tokens": 8, "completion_tokens": 2}}}
"#;

fn dataset() -> Arc<Dataset> {
    // Two "files", so that the graded news scores do not make the MMLU rows graded too.
    let mut data = Dataset::from_jsonl_str("mmlu.jsonl", FIXTURE).expect("MMLU fixture");
    data.merge(Dataset::from_jsonl_str("news.jsonl", NEWS).expect("news fixture"));
    Arc::new(data)
}

async fn start(config: SimConfig) -> SimHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    switchyard_sim::start(listener, dataset(), config)
        .await
        .expect("start the simulator")
}

fn chat(model: &str, user: &str) -> Value {
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "Answer with the letter only."},
            {"role": "user", "content": user}
        ],
        "max_tokens": 16,
        "temperature": 0,
        "logprobs": true,
        "top_logprobs": 4,
        "seed": 12
    })
}

fn mmlu_prompt(id: &str) -> String {
    dataset().get(id).expect("fixture id").prompt.clone()
}

async fn post(sim: &SimHandle, body: &Value) -> reqwest::Response {
    switchyard_testkit::http::client()
        .post(format!("{}/chat/completions", sim.base_url()))
        .json(body)
        .send()
        .await
        .expect("the simulator answers")
}

#[tokio::test]
async fn known_record_is_replayed_with_usage_and_logprobs() {
    let sim = start(SimConfig::default()).await;
    assert!(sim.base_url().starts_with("http://127.0.0.1:"));
    assert!(sim.base_url().ends_with("/v1"));
    let data = dataset();
    let record = data.get("mmlu-1").unwrap();
    let gold = record.gold_label().unwrap();

    // Padding around the prompt does not matter: it is trimmed.
    let prompt = format!("\n {} \n", record.prompt);
    let strong = post(&sim, &chat(STRONG, &prompt)).await;
    assert_eq!(strong.status(), StatusCode::OK);
    let strong: Value = strong.json().await.unwrap();
    assert_eq!(strong["object"], "chat.completion");
    assert_eq!(strong["model"], STRONG);
    assert!(strong["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(strong["created"].as_u64().unwrap() > 1_700_000_000);
    let choice = &strong["choices"][0];
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], gold.as_str());
    assert_eq!(
        strong["usage"],
        json!({"prompt_tokens": 24, "completion_tokens": 1, "total_tokens": 25})
    );
    let token = &choice["logprobs"]["content"][0];
    assert_eq!(token["token"], gold.as_str());
    assert_eq!(token["bytes"], json!(gold.as_bytes()));
    let top = token["top_logprobs"].as_array().unwrap();
    assert_eq!(top.len(), 4);
    let mass: f64 = top
        .iter()
        .map(|t| t["logprob"].as_f64().unwrap().exp())
        .sum();
    assert!((mass - 1.0).abs() < 1e-6, "{mass}");

    // The weak model got it wrong: a different letter.
    let weak: Value = post(&sim, &chat(WEAK, &record.prompt))
        .await
        .json()
        .await
        .unwrap();
    let weak_answer = weak["choices"][0]["message"]["content"].as_str().unwrap();
    assert_ne!(weak_answer, gold);
    assert!(["A", "B", "C", "D"].contains(&weak_answer));

    // Without `logprobs`, none are sent.
    let mut plain = chat(STRONG, &record.prompt);
    plain["logprobs"] = json!(false);
    let plain: Value = post(&sim, &plain).await.json().await.unwrap();
    assert!(plain["choices"][0]["logprobs"].is_null());

    let calls = sim.calls();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0].record_id.as_deref(), Some("mmlu-1"));
    assert_eq!(calls[0].correct, Some(true));
    assert_eq!(calls[0].score, Some(1.0));
    assert_eq!(calls[0].answer.as_deref(), Some(gold.as_str()));
    let confidence = calls[0].confidence.unwrap();
    assert!((token["logprob"].as_f64().unwrap() - confidence.ln()).abs() < 1e-9);
    assert_eq!(calls[1].correct, Some(false));
    sim.shutdown().await;
}

#[tokio::test]
async fn same_request_same_answer_new_id() {
    let sim = start(SimConfig::default()).await;
    let body = chat(WEAK, &mmlu_prompt("mmlu-2"));
    let a: Value = post(&sim, &body).await.json().await.unwrap();
    let b: Value = post(&sim, &body).await.json().await.unwrap();
    assert_ne!(a["id"], b["id"]);
    assert_eq!(a["choices"], b["choices"]);
    assert_eq!(a["usage"], b["usage"]);
    sim.shutdown().await;
}

#[tokio::test]
async fn graded_summaries_replay_responses() {
    let sim = start(SimConfig::default()).await;
    let prompt = "Article: The council approved the new bridge on Monday.";
    let strong: Value = post(&sim, &chat("text-davinci-002", prompt))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        strong["choices"][0]["message"]["content"],
        "Council approves bridge."
    );
    assert_eq!(strong["usage"]["completion_tokens"], 4);
    let tokens = strong["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    let text: String = tokens
        .iter()
        .map(|t| t["token"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Council approves bridge.");

    post(&sim, &chat("T0pp", prompt)).await;
    let calls = sim.calls();
    // text-davinci-002 has the highest mean score: it is the bar for "correct".
    assert_eq!(calls[0].correct, Some(true));
    assert_eq!(calls[1].correct, Some(false));
    assert_eq!(calls[1].score, Some(0.25));
    sim.shutdown().await;
}

#[tokio::test]
async fn unknown_prompts_get_synthetic_answers() {
    let sim = start(SimConfig::default()).await;
    let words: Vec<String> = (0..100).map(|i| format!("word{i}")).collect();
    let text = words.join(" ");
    let summary: Value = post(&sim, &chat(STRONG, &text)).await.json().await.unwrap();
    let content = summary["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert!(content.starts_with("word0 word1"), "{content}");
    assert!(summary["usage"]["completion_tokens"].as_u64().unwrap() <= 16);

    let labels = json!({
        "model": "some-local-model",
        "messages": [
            {"role": "system", "content": "Classify the text.\nLabels: positive, negative, neutral"},
            {"role": "user", "content": "I loved this film."}
        ],
        "logprobs": true,
        "top_logprobs": 3
    });
    let first: Value = post(&sim, &labels).await.json().await.unwrap();
    let label = first["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        ["positive", "negative", "neutral"].contains(&label),
        "{label}"
    );
    assert_eq!(
        first["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let again: Value = post(&sim, &labels).await.json().await.unwrap();
    assert_eq!(again["choices"], first["choices"]);

    let calls = sim.calls();
    assert_eq!(calls.len(), 3);
    for call in &calls {
        assert_eq!(
            (call.record_id.as_deref(), call.correct, call.score),
            (None, None, None)
        );
        assert!(call.confidence.is_some());
        assert_eq!(call.status, 200);
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn rate_limit_next_answers_429_with_retry_after() {
    let sim = start(SimConfig::default()).await;
    sim.set_faults(Faults {
        rate_limit_next: 2,
        retry_after_secs: 7,
        ..Faults::default()
    });
    let body = chat(STRONG, &mmlu_prompt("mmlu-1"));
    for _ in 0..2 {
        let response = post(&sim, &body).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["retry-after"], "7");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "rate_limit_exceeded");
        assert!(error["error"]["message"].is_string());
        assert!(error["error"]["type"].is_string());
    }
    assert_eq!(post(&sim, &body).await.status(), StatusCode::OK);
    let faults: Vec<Option<String>> = sim.calls().into_iter().map(|c| c.fault).collect();
    assert_eq!(
        faults,
        [
            Some("rate_limit_next".into()),
            Some("rate_limit_next".into()),
            None
        ]
    );
    sim.shutdown().await;
}

/// Calls the strong model with mmlu-1 three times: two answers, then a 429 (returned).
async fn two_calls_pass_and_a_third_is_limited(sim: &SimHandle) -> reqwest::Response {
    let body = chat(STRONG, &mmlu_prompt("mmlu-1"));
    assert_eq!(post(sim, &body).await.status(), StatusCode::OK);
    assert_eq!(post(sim, &body).await.status(), StatusCode::OK);
    let limited = post(sim, &body).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    limited
}

#[tokio::test]
async fn rpm_limit_answers_429_per_model() {
    let sim = start(SimConfig {
        rpm_limit: Some(2),
        ..SimConfig::default()
    })
    .await;
    let limited = two_calls_pass_and_a_third_is_limited(&sim).await;
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // The quota is per model.
    assert_eq!(
        post(&sim, &chat(WEAK, &mmlu_prompt("mmlu-1")))
            .await
            .status(),
        StatusCode::OK
    );

    let calls = sim.calls();
    assert_eq!(calls.len(), 4);
    assert_eq!(calls[2].status, 429);
    assert_eq!(calls[2].fault.as_deref(), Some("rpm_limit"));
    assert_eq!(calls[2].response_id, None);
    sim.shutdown().await;
}

#[tokio::test]
async fn tpm_limit_counts_the_answer_tokens() {
    // mmlu-1 costs 25 tokens: two fit in 60, a third does not.
    let sim = start(SimConfig {
        tpm_limit: Some(60),
        ..SimConfig::default()
    })
    .await;
    let limited = two_calls_pass_and_a_third_is_limited(&sim).await;
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(sim.calls()[2].fault.as_deref(), Some("tpm_limit"));
    sim.shutdown().await;
}

#[tokio::test]
async fn fail_next_answers_500() {
    let sim = start(SimConfig {
        faults: Faults {
            fail_next: 1,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let body = chat(STRONG, &mmlu_prompt("mmlu-1"));
    let failed = post(&sim, &body).await;
    assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let error: Value = failed.json().await.unwrap();
    assert_eq!(error["error"]["type"], "server_error");
    assert_eq!(post(&sim, &body).await.status(), StatusCode::OK);
    let calls = sim.calls();
    assert_eq!(
        (calls[0].status, calls[0].fault.as_deref()),
        (500, Some("fail_next"))
    );
    assert_eq!(calls[0].record_id.as_deref(), Some("mmlu-1"));
    assert_eq!(calls[0].answer, None);
    sim.shutdown().await;
}

#[tokio::test]
async fn error_rate_one_fails_every_call_with_a_5xx() {
    let sim = start(SimConfig::default()).await;
    sim.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    for _ in 0..6 {
        let status = post(&sim, &chat(WEAK, "anything")).await.status();
        assert!([500, 502, 503].contains(&status.as_u16()), "{status}");
    }
    assert!(
        sim.calls()
            .iter()
            .all(|c| c.fault.as_deref() == Some("error_rate"))
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn timeouts_hang_until_the_client_gives_up() {
    let sim = start(SimConfig::default()).await;
    sim.set_faults(Faults {
        timeout_rate: 1.0,
        hang: Duration::from_secs(60),
        ..Faults::default()
    });
    let result = switchyard_testkit::http::client()
        .post(format!("{}/chat/completions", sim.base_url()))
        .timeout(Duration::from_secs(1))
        .json(&chat(STRONG, &mmlu_prompt("mmlu-1")))
        .send()
        .await;
    assert!(result.unwrap_err().is_timeout());
    // The call was logged before the hang.
    let calls = sim.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].fault.as_deref(), Some("timeout"));
    assert_eq!(calls[0].status, 200);
    // Shutting down cuts the hang short instead of waiting a minute.
    tokio::time::timeout(Duration::from_secs(5), sim.shutdown())
        .await
        .unwrap();
}

#[tokio::test]
async fn malformed_bodies_answer_400() {
    let sim = start(SimConfig::default()).await;
    let url = format!("{}/chat/completions", sim.base_url());
    let bodies = [
        "{not json".to_owned(),
        json!({"model": "m"}).to_string(),
        json!({"model": "m", "messages": [{"role": "system", "content": "no user"}]}).to_string(),
        json!({"model": "m", "messages": "hello"}).to_string(),
    ];
    for body in bodies {
        let response = switchyard_testkit::http::client()
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["type"], "invalid_request_error");
        assert!(!error["error"]["message"].as_str().unwrap().is_empty());
        assert!(error["error"]["code"].is_string());
    }
    let calls = sim.calls();
    assert_eq!(calls.len(), 4);
    assert!(calls.iter().all(|c| c.status == 400));
    assert_eq!(calls[1].model, "m");
    sim.shutdown().await;
}

#[tokio::test]
async fn call_log_records_everything_with_unique_ids() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("calls.jsonl");
    let sim = start(SimConfig {
        call_log_path: Some(log_path.clone()),
        faults: Faults {
            fail_next: 1,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let prompts = [
        mmlu_prompt("mmlu-1"),
        mmlu_prompt("mmlu-2"),
        "unknown".to_owned(),
    ];
    let mut statuses = Vec::new();
    for model in [STRONG, WEAK] {
        for prompt in &prompts {
            statuses.push(post(&sim, &chat(model, prompt)).await.status().as_u16());
        }
    }
    statuses.push(
        switchyard_testkit::http::client()
            .post(format!("{}/chat/completions", sim.base_url()))
            .body("garbage")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
    );
    assert_eq!(statuses, [500, 200, 200, 200, 200, 200, 400]);

    let calls = sim.calls();
    assert_eq!(calls.len(), 7);
    assert_eq!(
        calls.iter().map(|c| c.seq).collect::<Vec<_>>(),
        (0..7).collect::<Vec<_>>()
    );
    assert_eq!(calls.iter().map(|c| c.status).collect::<Vec<_>>(), statuses);
    let ids: Vec<String> = calls.iter().filter_map(|c| c.response_id.clone()).collect();
    assert_eq!(ids.len(), 5);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 5);

    // The same log over HTTP and in the file.
    let over_http: Vec<CallRecord> =
        switchyard_testkit::http::get_json(&format!("http://{}/sim/calls", sim.addr())).await;
    assert_eq!(comparable(over_http), comparable(calls.clone()));
    let text = std::fs::read_to_string(&log_path).unwrap();
    let in_file: Vec<CallRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(comparable(in_file), comparable(calls));

    // A restarted simulator never reuses a response id.
    sim.shutdown().await;
    let again = start(SimConfig::default()).await;
    let body: Value = post(&again, &chat(STRONG, &prompts[0]))
        .await
        .json()
        .await
        .unwrap();
    let new_id = body["id"].as_str().unwrap().to_owned();
    assert!(!ids.contains(&new_id));
    again.shutdown().await;
}

/// Call records with confidences rounded: serde_json's default float parsing may be off by one
/// unit in the last place, which is not what these comparisons are about.
fn comparable(calls: Vec<CallRecord>) -> Vec<CallRecord> {
    calls
        .into_iter()
        .map(|mut call| {
            call.confidence = call.confidence.map(|c| (c * 1e9).round() / 1e9);
            call
        })
        .collect()
}

#[tokio::test]
async fn control_routes() {
    let sim = start(SimConfig::default()).await;
    let http = switchyard_testkit::http::client();
    let root = format!("http://{}", sim.addr());

    let health = http.get(format!("{root}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    let models: Value =
        switchyard_testkit::http::get_json(&format!("{}/models", sim.base_url())).await;
    let names: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["T0pp", STRONG, WEAK, "text-davinci-002"]);

    let put = http
        .put(format!("{root}/sim/faults"))
        .json(&json!({"fail_next": 1, "hang": "2s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    assert_eq!(sim.faults().fail_next, 1);
    assert_eq!(sim.faults().hang, Duration::from_secs(2));
    assert_eq!(
        post(&sim, &chat(STRONG, "x")).await.status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let current: Value = switchyard_testkit::http::get_json(&format!("{root}/sim/faults")).await;
    assert_eq!(current["fail_next"], 0);

    let bad = http
        .put(format!("{root}/sim/faults"))
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let missing = http.get(format!("{root}/nope")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    sim.shutdown().await;
}

#[tokio::test]
async fn latency_delays_answers() {
    let sim = start(SimConfig {
        latency: Duration::from_millis(150),
        latency_jitter: Duration::from_millis(50),
        ..SimConfig::default()
    })
    .await;
    let started = std::time::Instant::now();
    assert_eq!(
        post(&sim, &chat(STRONG, "hello")).await.status(),
        StatusCode::OK
    );
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn without_logprobs_samples_are_the_signal_and_n_is_billed_per_choice() {
    let sim = start(SimConfig {
        logprobs: false,
        ..SimConfig::default()
    })
    .await;
    let mut body = chat(WEAK, &mmlu_prompt("mmlu-1"));
    body["n"] = json!(5);
    body["temperature"] = json!(0.7);
    body["seed"] = json!(0);
    let v: Value = post(&sim, &body).await.json().await.unwrap();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 5);
    // Asked for logprobs, none sent.
    assert!(choices.iter().all(|c| c["logprobs"].is_null()));
    // Choice 0 is the replayed answer; every choice is a letter.
    let greedy: Value = post(&sim, &chat(WEAK, &mmlu_prompt("mmlu-1")))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        choices[0]["message"]["content"],
        greedy["choices"][0]["message"]["content"]
    );
    for c in choices {
        let letter = c["message"]["content"].as_str().unwrap();
        assert!(["A", "B", "C", "D"].contains(&letter), "{letter}");
    }
    // The prompt is billed once, each choice's completion.
    assert_eq!(v["usage"]["prompt_tokens"], 24);
    assert_eq!(v["usage"]["completion_tokens"], 5);
    // The same samples one call at a time: seed j is choice j.
    for j in 1..5u64 {
        let mut one = chat(WEAK, &mmlu_prompt("mmlu-1"));
        one["temperature"] = json!(0.7);
        one["seed"] = json!(j);
        let v: Value = post(&sim, &one).await.json().await.unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"],
            choices[j as usize]["message"]["content"]
        );
    }
    // Greedy decoding repeats itself: n choices at temperature 0 are all the answer.
    let mut greedy_n = chat(WEAK, &mmlu_prompt("mmlu-1"));
    greedy_n["n"] = json!(3);
    let v: Value = post(&sim, &greedy_n).await.json().await.unwrap();
    let first = &v["choices"][0]["message"]["content"];
    assert!(
        v["choices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| &c["message"]["content"] == first)
    );
    let calls = sim.calls();
    assert_eq!(calls[0].choices, 5);
    assert_eq!(calls[0].completion_tokens, 5);
    sim.shutdown().await;
}
