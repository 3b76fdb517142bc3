//! Running the Batch API: batches that stop before their job runs (cancel, expiry, every line
//! refused), per-key request limits, `/metrics`, file retention and HTTPS. No fleet runs
//! here: the fleet's side is `cli/tests/openai_sdk.rs`.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::num::NonZeroU32;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use switchyard_api::ApiOptions;
use switchyard_testkit::eventually;

mod common;
use common::{Server, good_file, server, server_with};

/// The batch once it has ended.
async fn ended(s: &Server, key: &str, id: &str) -> Value {
    eventually("the batch ends", Duration::from_secs(20), || async {
        let (_, b) = s.get(key, &format!("/batches/{id}")).await;
        let end = ["completed", "failed", "expired", "cancelled"];
        end.contains(&b["status"].as_str().unwrap_or(""))
            .then_some(b)
    })
    .await
}

/// The lines of a batch's file.
async fn lines(s: &Server, key: &str, file_id: &Value) -> Vec<Value> {
    let Some(id) = file_id.as_str() else {
        return Vec::new();
    };
    let r = s
        .http
        .get(format!("{}/files/{id}/content", s.base))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A batch of `n` requests, in progress (its job submitted; no dispatcher admits it here).
async fn in_progress(s: &Server, key: &str, n: usize) -> String {
    let (_, f) = s.upload(key, "batch", good_file(n)).await;
    let (_, b) = s.create_batch(key, f["id"].as_str().unwrap()).await;
    let id = b["id"].as_str().unwrap().to_owned();
    eventually(
        "the batch is in progress",
        Duration::from_secs(20),
        || async {
            let (_, b) = s.get(key, &format!("/batches/{id}")).await;
            (b["status"] == "in_progress").then_some(())
        },
    )
    .await;
    id
}

#[tokio::test]
async fn a_batch_past_its_window_expires_and_every_unrun_line_says_so() {
    let s = server(1 << 20).await;
    let a = s.key("team-a").await;
    let id = in_progress(&s, &a, 3).await;
    sqlx::query(
        "UPDATE api_batches SET expires_at = now() - interval '1 second' WHERE batch_id = $1",
    )
    .bind(&id)
    .execute(&s.pool)
    .await
    .unwrap();
    let b = ended(&s, &a, &id).await;
    assert_eq!(b["status"], "expired", "{b}");
    assert!(b["expired_at"].is_i64(), "{b}");
    assert_eq!(b["output_file_id"], Value::Null, "{b}");
    let errors = lines(&s, &a, &b["error_file_id"]).await;
    let mut ids: Vec<&str> = errors
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["r0", "r1", "r2"]);
    for l in &errors {
        assert_eq!(l["error"]["code"], "batch_expired", "{l}");
        assert_eq!(l["response"], Value::Null, "{l}");
    }
    // Its job never runs: a dispatcher that admits the submission later finds it cancelled.
    let status: String = sqlx::query_scalar("SELECT status FROM jobs WHERE job_id = $1")
        .bind(&id)
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(status, "cancelled");
}

#[tokio::test]
async fn a_batch_cancelled_in_progress_ends_cancelled_with_its_lines_in_the_error_file() {
    let s = server(1 << 20).await;
    let a = s.key("team-a").await;
    let id = in_progress(&s, &a, 2).await;
    let (status, b) = s
        .post(&a, &format!("/batches/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(b["status"], "cancelling", "{b}");
    let b = ended(&s, &a, &id).await;
    assert_eq!(b["status"], "cancelled", "{b}");
    assert_eq!(b["request_counts"]["failed"], 2, "{b}");
    let errors = lines(&s, &a, &b["error_file_id"]).await;
    assert_eq!(errors.len(), 2);
    assert!(
        errors
            .iter()
            .all(|l| l["error"]["code"] == "batch_cancelled")
    );
}

#[tokio::test]
async fn requests_the_fleet_cannot_answer_as_asked_go_to_the_error_file_and_nothing_runs() {
    let s = server(1 << 20).await;
    let a = s.key("team-a").await;
    let body = |extra: Value| {
        let mut b = json!({"model": "switchyard:auto",
                           "messages": [{"role": "user", "content": "hi"}]});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let line = |id: &str, b: Value| {
        json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions", "body": b})
            .to_string()
            + "\n"
    };
    let text = line("streamed", body(json!({"stream": true})))
        + &line("two", body(json!({"n": 2})))
        + &line("tools", body(json!({"tools": [{"type": "function"}]})))
        + &line("alias", body(json!({"model": "switchyard:cheapest"})))
        + &line(
            "image",
            body(json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})),
        );
    let (_, f) = s.upload(&a, "batch", text.into_bytes()).await;
    let (_, b) = s.create_batch(&a, f["id"].as_str().unwrap()).await;
    let b = ended(&s, &a, b["id"].as_str().unwrap()).await;
    assert_eq!(b["status"], "completed", "{b}");
    assert_eq!(
        b["request_counts"],
        json!({"total": 5, "completed": 0, "failed": 5})
    );
    let errors = lines(&s, &a, &b["error_file_id"]).await;
    let by_id = |id: &str| {
        errors
            .iter()
            .find(|l| l["custom_id"] == id)
            .unwrap_or_else(|| panic!("{id} missing"))
            .clone()
    };
    for (id, status, param) in [
        ("streamed", 400, "stream"),
        ("two", 400, "n"),
        ("tools", 400, "tools"),
        ("alias", 404, "model"),
        ("image", 400, "messages[0].content[0]"),
    ] {
        let l = by_id(id);
        assert_eq!(l["response"]["status_code"], status, "{l}");
        assert_eq!(l["response"]["body"]["error"]["param"], param, "{l}");
    }
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 0, "no line became an item, so no job was submitted");
    // A policy the batch's metadata names must parse.
    let (status, e) = s
        .post(
            &a,
            "/batches",
            json!({"input_file_id": f["id"], "endpoint": "/v1/chat/completions",
                   "completion_window": "24h", "metadata": {"switchyard_policy": "quality=2"}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["error"]["param"], "metadata.switchyard_policy", "{e}");
}

#[tokio::test]
async fn a_key_over_its_limit_gets_429_with_retry_after_and_other_keys_do_not() {
    let s = server_with(ApiOptions {
        requests_per_minute_per_key: NonZeroU32::new(3).unwrap(),
        ..ApiOptions::default()
    })
    .await;
    let (a, b) = (s.key("team-a").await, s.key("team-b").await);
    for _ in 0..3 {
        assert_eq!(s.get(&a, "/files").await.0, StatusCode::OK);
    }
    let r = s
        .http
        .get(format!("{}/files", s.base))
        .bearer_auth(&a)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "rate_limit_exceeded", "{e}");
    assert_eq!(s.get(&b, "/files").await.0, StatusCode::OK);
    // Counted in /metrics, by route pattern and status.
    let text = s.api.metrics.encode();
    assert!(
        text.contains("switchyard_api_rate_limited_total 1"),
        "{text}"
    );
    assert!(
        text.contains(r#"switchyard_api_requests_total{route="/v1/files",status="429"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"switchyard_api_requests_total{route="/v1/files",status="200"} 4"#),
        "{text}"
    );
}

#[tokio::test]
async fn files_past_their_retention_are_deleted_unless_a_running_batch_reads_them() {
    let s = server(1 << 20).await;
    let a = s.key("team-a").await;
    let (_, old) = s.upload(&a, "batch", good_file(1)).await;
    let running = in_progress(&s, &a, 1).await;
    let (_, young) = s.upload(&a, "batch", good_file(1)).await;
    sqlx::query("UPDATE api_files SET created_at = now() - interval '2 hours' WHERE file_id <> $1")
        .bind(young["id"].as_str().unwrap())
        .execute(&s.pool)
        .await
        .unwrap();
    let deleted = switchyard_api::retention::once(&s.api, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(deleted, 1, "only the old file no batch reads");
    let old_id = old["id"].as_str().unwrap();
    assert_eq!(
        s.get(&a, &format!("/files/{old_id}")).await.0,
        StatusCode::NOT_FOUND
    );
    assert!(s.api.files.get(old_id).await.is_err(), "its bytes are gone");
    assert_eq!(
        s.get(&a, &format!("/files/{}", young["id"].as_str().unwrap()))
            .await
            .0,
        StatusCode::OK
    );
    let (_, b) = s.get(&a, &format!("/batches/{running}")).await;
    let input = b["input_file_id"].as_str().unwrap();
    assert_eq!(
        s.get(&a, &format!("/files/{input}")).await.0,
        StatusCode::OK,
        "a running batch's input stays"
    );
}

#[tokio::test]
async fn tls_by_configuration_serves_https_only() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let tls =
        switchyard_api::tls::acceptor(cert_path.to_str().unwrap(), key_path.to_str().unwrap())
            .unwrap();
    let s = server(1 << 20).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(switchyard_api::serve_tls(
        s.api.clone(),
        listener,
        tls,
        s.stop.clone(),
    ));
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let ok = client
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.text().await.unwrap(), "ok");
    let plain = client
        .get(format!("http://localhost:{port}/healthz"))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP is not served: {plain:?}");
    // A key that does not match its certificate is refused at start, naming the setting.
    let other = rcgen::generate_simple_self_signed(vec!["other".to_owned()]).unwrap();
    std::fs::write(&key_path, other.key_pair.serialize_pem()).unwrap();
    let e = switchyard_api::tls::acceptor(cert_path.to_str().unwrap(), key_path.to_str().unwrap())
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("api.tls_cert"), "{e:#}");
}
