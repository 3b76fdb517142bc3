//! The body-level faults and client tags, over real HTTP.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_sim::{Dataset, FaultKind, Faults, SimConfig, SimHandle};

const ROW: &str = r#"{"id": "m-1", "task": "mmlu/x", "prompt": "Pick one.\nA. a\nB. b\nAnswer:", "choices": ["a", "b"], "models": {"m": {"score": 1.0, "prompt_tokens": 9, "completion_tokens": 1}}}
"#;

async fn start(faults: Faults) -> SimHandle {
    let data = Arc::new(Dataset::from_jsonl_str("x.jsonl", ROW).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = SimConfig {
        faults,
        ..SimConfig::default()
    };
    switchyard_sim::start(listener, data, config).await.unwrap()
}

async fn call(url: &str) -> Result<(u16, Option<String>, Vec<u8>), reqwest::Error> {
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "Pick one.\nA. a\nB. b\nAnswer:"}]});
    let r = switchyard_testkit::http::client()
        .post(format!("{url}/chat/completions"))
        .json(&body)
        .send()
        .await?;
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = r.bytes().await?;
    Ok((status, retry_after, bytes.to_vec()))
}

#[tokio::test]
async fn each_scripted_fault_looks_like_the_real_thing() {
    let faults = Faults {
        script: [
            FaultKind::Http502,
            FaultKind::RateLimit,
            FaultKind::RateLimitNoRetryAfter,
            FaultKind::Reset,
            FaultKind::MalformedJson,
            FaultKind::NoUsage,
            FaultKind::EmptyChoices,
        ]
        .into(),
        retry_after_secs: 3,
        ..Faults::default()
    };
    let sim = start(faults).await;
    let url = sim.base_url();

    let (status, _, _) = call(&url).await.unwrap();
    assert_eq!(status, 502);
    let (status, retry_after, _) = call(&url).await.unwrap();
    assert_eq!((status, retry_after.as_deref()), (429, Some("3")));
    let (status, retry_after, _) = call(&url).await.unwrap();
    assert_eq!((status, retry_after), (429, None));
    assert!(call(&url).await.is_err(), "a reset breaks the response");
    let (status, _, body) = call(&url).await.unwrap();
    assert_eq!(status, 200);
    assert!(serde_json::from_slice::<Value>(&body).is_err(), "malformed");
    let (_, _, body) = call(&url).await.unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v.get("usage").is_none() && v["choices"][0]["message"]["content"].is_string());
    let (_, _, body) = call(&url).await.unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["choices"], json!([]));
    let (status, _, body) = call(&url).await.unwrap();
    assert_eq!(status, 200);
    assert!(serde_json::from_slice::<Value>(&body).unwrap()["usage"].is_object());

    // Only usable answers keep their response id in the log.
    let calls = sim.calls();
    let with_id: Vec<Option<&str>> = calls
        .iter()
        .map(|c| {
            c.response_id
                .as_ref()
                .map(|_| c.fault.as_deref().unwrap_or("ok"))
        })
        .collect();
    assert_eq!(
        with_id,
        [
            None,
            None,
            None,
            None,
            None,
            Some("no_usage"),
            None,
            Some("ok")
        ]
    );
}

#[tokio::test]
async fn a_trickling_body_arrives_whole_but_slowly() {
    let faults = Faults {
        script: [FaultKind::Trickle].into(),
        trickle: Duration::from_millis(400),
        ..Faults::default()
    };
    let sim = start(faults).await;
    let started = Instant::now();
    let (status, _, body) = call(&sim.base_url()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["usage"].is_object());
}

#[tokio::test]
async fn tagged_calls_are_logged_and_counted_in_flight() {
    let sim = start(Faults {
        script: [FaultKind::Timeout].into(),
        hang: Duration::from_secs(30),
        ..Faults::default()
    })
    .await;
    let url = sim.base_url_for("w7");
    assert!(url.ends_with("/c/w7/v1"), "{url}");
    let hanging = tokio::spawn({
        let url = url.clone();
        async move { call(&url).await }
    });
    switchyard_testkit::eventually("the call in flight", Duration::from_secs(2), || async {
        (sim.in_flight("w7") == 1).then_some(())
    })
    .await;
    assert_eq!(sim.in_flight("w7"), 1);
    assert_eq!(sim.in_flight_total(), 1);
    hanging.abort();
    let _ = hanging.await;
    switchyard_testkit::eventually(
        "the call no longer in flight",
        Duration::from_secs(2),
        || async { (sim.in_flight("w7") == 0).then_some(()) },
    )
    .await;
    assert_eq!(
        sim.in_flight("w7"),
        0,
        "a client that hangs up is no longer in flight"
    );
    let (status, _, _) = call(&url).await.unwrap();
    assert_eq!(status, 200);
    assert!(
        sim.calls()
            .iter()
            .all(|c| c.client.as_deref() == Some("w7"))
    );
}
